//! PDQ on the GPU: the WGSL kernels in `shaders/`, driven by wgpu.
//!
//! The kernels mirror the CPU implementation ([`super::pdq`]) stage by stage, each with the
//! same float operations in the same order, so a frame hashes to the same bits on both (tested
//! on Mesa's lavapipe, bit for bit, stage by stage):
//!
//! | stage | kernel (`shaders/`)                   | CPU twin                             |
//! |-------|---------------------------------------|--------------------------------------|
//! | 1     | `pdq_luma.wgsl` `luma_main`           | `pdq::luma`                          |
//! | 2     | `pdq_box.wgsl` `box_rows`             | `pdq::box_rows`                      |
//! | 3     | `pdq_box.wgsl` `box_cols`             | `pdq::box_cols`                      |
//! | 4     | `pdq_box.wgsl` `box_rows_sampled`     | `pdq::box_rows_sampled`              |
//! | 5     | `pdq_box.wgsl` `box_cols_sampled`     | `pdq::box_cols_sampled`              |
//! | 6     | `pdq_dct.wgsl` `dct_main`             | `pdq::dct64_to_16`, `quality_metric`, `dihedral`, `torben_median`, `dct_to_bits` |
//!
//! One dispatch per stage covers a whole batch of frames of any sizes: a storage buffer of
//! frame descriptors (sizes, offsets, box windows and sample positions, all computed here with
//! the CPU implementation's own functions) tells each invocation where its frame lies. Only
//! luma crosses the bus: 8-bit planes packed four pixels to a word (or f32 luma computed on
//! the CPU for RGB images, since WGSL has no f64), and 68 words of results per frame.
//!
//! A batch is cut into sub-batches that fit the device's storage-buffer binding size; two sets
//! of buffers alternate, so one sub-batch is copied into its mapped staging buffer while the
//! previous one computes.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::ops::Range;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use bytemuck::{Pod, Zeroable};

use super::pdq::{self, Hash256, PdqDihedral, DCT, DOWN, MIN_HASHABLE_DIM};

/// Put in front of each kernel file: the frame descriptor and the correctly rounded division.
const COMMON_WGSL: &str = include_str!("../../shaders/pdq_common.wgsl");
const LUMA_WGSL: &str = include_str!("../../shaders/pdq_luma.wgsl");
const BOX_WGSL: &str = include_str!("../../shaders/pdq_box.wgsl");
const DCT_WGSL: &str = include_str!("../../shaders/pdq_dct.wgsl");

/// u32 words of a frame's result record: quality, 3 spare words, 8 hashes of 8 words.
const RESULT_WORDS: usize = 68;
/// Where the hashes start in a result record.
const HASH_BASE: usize = 4;
/// f32 values of a 16x16 DCT block (after all result records, in the same buffer).
const DCT_WORDS: usize = DCT * DCT;

// Frame descriptor flags, as in the kernels.
const FLAG_LIMITED: u32 = 1;
const FLAG_F32: u32 = 2;
const FLAG_NO_BLUR: u32 = 4;
const FLAG_TINY: u32 = 8;

/// Most frames in one sub-batch.
const MAX_SUB_BATCH: usize = 1024;
/// Most bytes any one buffer holds for a sub-batch, below the device's own limits.
const SUB_BATCH_BYTES: u64 = 128 << 20;
/// Batches of at least this many frames run as two sub-batches at least, so the second
/// uploads while the first computes.
const OVERLAP_MIN_FRAMES: usize = 8;

/// Invocations per workgroup of the luma kernel, and of the box kernels.
const LUMA_GROUP: u32 = 256;
const BOX_GROUP: u32 = 64;

/// Which adapter [`GpuHasher::new`] takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdapterChoice {
    /// The best real GPU (discrete, then integrated, virtual, other); a software adapter only
    /// when allowed and nothing else is there.
    Auto,
    /// The adapter at this index in [`list_adapters`].
    Index(usize),
    /// The first adapter whose name contains this, case-insensitively.
    Name(String),
}

/// One frame to hash.
#[derive(Clone, Copy, Debug)]
pub enum GpuFrame<'a> {
    /// 8-bit luma, rows `stride` bytes apart; `limited`: a limited-range ("TV", 16..235)
    /// video plane, expanded to full range first (as `Pixels::VideoY`), else full range (as
    /// `Pixels::Gray`).
    Luma8 {
        data: &'a [u8],
        width: usize,
        height: usize,
        stride: usize,
        limited: bool,
    },
    /// Luma already computed as f32 (`pdq::luma` of an RGB image), rows tightly packed.
    LumaF32 {
        data: &'a [f32],
        width: usize,
        height: usize,
    },
}

impl GpuFrame<'_> {
    pub fn width(&self) -> usize {
        match *self {
            GpuFrame::Luma8 { width, .. } | GpuFrame::LumaF32 { width, .. } => width,
        }
    }

    pub fn height(&self) -> usize {
        match *self {
            GpuFrame::Luma8 { height, .. } | GpuFrame::LumaF32 { height, .. } => height,
        }
    }

    /// Too small to hash: hash 0, quality 0, as the CPU implementation gives.
    fn is_tiny(&self) -> bool {
        self.width() < MIN_HASHABLE_DIM || self.height() < MIN_HASHABLE_DIM
    }

    /// u32 words per row in the upload.
    fn words_per_row(&self) -> usize {
        match *self {
            GpuFrame::Luma8 { width, .. } => width.div_ceil(4),
            GpuFrame::LumaF32 { width, .. } => width,
        }
    }

    fn check(&self, index: usize) -> anyhow::Result<()> {
        let (w, h) = (self.width(), self.height());
        if self.is_tiny() {
            return Ok(());
        }
        if w > u32::MAX as usize / 4 || h > u32::MAX as usize / 4 {
            bail!("frame {index}: {w}x{h} is too large");
        }
        match *self {
            GpuFrame::Luma8 { data, stride, .. } => {
                if stride < w {
                    bail!("frame {index}: stride {stride} is below the width {w}");
                }
                let need = (h - 1) * stride + w;
                if data.len() < need {
                    bail!(
                        "frame {index}: {} bytes of luma, {w}x{h} with stride {stride} needs {need}",
                        data.len()
                    );
                }
            }
            GpuFrame::LumaF32 { data, .. } => {
                if data.len() < w * h {
                    bail!(
                        "frame {index}: {} luma values, {w}x{h} needs {}",
                        data.len(),
                        w * h
                    );
                }
            }
        }
        Ok(())
    }
}

/// Time spent per phase by [`GpuHasher::hash_batch_profiled`], which runs the phases one
/// after another instead of overlapping them.
#[derive(Clone, Copy, Debug, Default)]
pub struct PhaseTimes {
    /// Packing luma into the staging buffer and copying it to the GPU.
    pub upload: Duration,
    /// The kernels.
    pub compute: Duration,
    /// Copying the results back and decoding them.
    pub readback: Duration,
}

/// Every stage's output for one frame, read back from the GPU to compare with the CPU twins.
/// Stages a frame skips are empty: the blur for a 64x64 frame, everything for a frame too
/// small to hash.
#[derive(Clone, Debug, Default)]
pub struct StageOutputs {
    /// Stage 1: `width x height`.
    pub luma: Vec<f32>,
    /// Stage 2, the row pass: `width x height`.
    pub rows: Vec<f32>,
    /// Stage 3, the column pass: `width x height`.
    pub cols: Vec<f32>,
    /// Stage 4, the row pass at the sampled columns: `height x 64`.
    pub rows_sampled: Vec<f32>,
    /// Stage 5, the decimated image: 64x64 (the luma itself for a 64x64 frame).
    pub down: Vec<f32>,
    /// Stage 6: the 16x16 DCT block, the quality and the 8 dihedral hashes.
    pub dct: Vec<f32>,
    pub quality: u8,
    pub hashes: [Hash256; 8],
}

/// The adapters wgpu finds (Vulkan and GL, or what `WGPU_BACKEND` says), in the order
/// [`AdapterChoice::Index`] counts them.
pub fn list_adapters() -> Vec<wgpu::AdapterInfo> {
    let instance = new_instance();
    enumerate(&instance).iter().map(|a| a.get_info()).collect()
}

pub(crate) fn new_instance() -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::GL;
    wgpu::Instance::new(desc.with_env())
}

pub(crate) fn enumerate(instance: &wgpu::Instance) -> Vec<wgpu::Adapter> {
    pollster::block_on(instance.enumerate_adapters(wgpu::Backends::all()))
}

fn describe(index: usize, info: &wgpu::AdapterInfo) -> String {
    format!(
        "{index}: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    )
}

fn describe_all(adapters: &[wgpu::Adapter]) -> String {
    let mut s = String::new();
    for (i, a) in adapters.iter().enumerate() {
        let _ = write!(s, "\n  {}", describe(i, &a.get_info()));
    }
    s
}

/// Why an adapter cannot run the kernels, if it cannot.
fn unusable(adapter: &wgpu::Adapter) -> Option<&'static str> {
    if !adapter
        .get_downlevel_capabilities()
        .flags
        .contains(wgpu::DownlevelFlags::COMPUTE_SHADERS)
    {
        return Some("no compute shaders");
    }
    let l = adapter.limits();
    if l.max_storage_buffers_per_shader_stage < 3
        || l.max_compute_invocations_per_workgroup < 256
        || l.max_compute_workgroup_size_x < 256
        || l.max_compute_workgroup_storage_size < 8192
        || l.max_uniform_buffer_binding_size < 4096
    {
        return Some("compute limits below what the kernels need");
    }
    None
}

/// Preference for [`AdapterChoice::Auto`]: lower is better.
fn rank(info: &wgpu::AdapterInfo) -> (u8, u8) {
    let kind = match info.device_type {
        wgpu::DeviceType::DiscreteGpu => 0,
        wgpu::DeviceType::IntegratedGpu => 1,
        wgpu::DeviceType::VirtualGpu => 2,
        wgpu::DeviceType::Other => 3,
        wgpu::DeviceType::Cpu => 4,
    };
    let backend = u8::from(info.backend != wgpu::Backend::Vulkan);
    (kind, backend)
}

pub(crate) fn pick_adapter(
    adapters: Vec<wgpu::Adapter>,
    choice: &AdapterChoice,
    allow_software: bool,
) -> anyhow::Result<wgpu::Adapter> {
    if adapters.is_empty() {
        bail!("no wgpu adapter found (Vulkan or GL; WGPU_BACKEND selects others)");
    }
    let infos: Vec<_> = adapters.iter().map(|a| a.get_info()).collect();
    let index = match choice {
        AdapterChoice::Auto => {
            let mut candidates: Vec<usize> = (0..adapters.len())
                .filter(|&i| unusable(&adapters[i]).is_none())
                .filter(|&i| allow_software || infos[i].device_type != wgpu::DeviceType::Cpu)
                .collect();
            candidates.sort_by_key(|&i| (rank(&infos[i]), i));
            match candidates.first() {
                Some(&i) => i,
                None if allow_software => bail!(
                    "no adapter can run livewatch's kernels; found:{}",
                    describe_all(&adapters)
                ),
                None => bail!(
                    "no hardware GPU adapter (software adapters need allow_software); found:{}",
                    describe_all(&adapters)
                ),
            }
        }
        AdapterChoice::Index(i) => {
            if *i >= adapters.len() {
                bail!(
                    "adapter index {i} out of range: {} adapter(s) found:{}",
                    adapters.len(),
                    describe_all(&adapters)
                );
            }
            *i
        }
        AdapterChoice::Name(name) => {
            let needle = name.to_lowercase();
            infos
                .iter()
                .position(|info| info.name.to_lowercase().contains(&needle))
                .ok_or_else(|| {
                    anyhow!(
                        "no adapter name contains {name:?}; found:{}",
                        describe_all(&adapters)
                    )
                })?
        }
    };
    if let Some(why) = unusable(&adapters[index]) {
        bail!(
            "adapter {} cannot run livewatch's kernels: {why}",
            describe(index, &infos[index])
        );
    }
    if !allow_software && infos[index].device_type == wgpu::DeviceType::Cpu {
        bail!(
            "adapter {} is a software rasteriser; allow_software accepts it",
            describe(index, &infos[index])
        );
    }
    Ok(adapters.into_iter().nth(index).expect("index checked"))
}

/// One frame's descriptor, field for field the kernels' `Frame` (576 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct FrameDesc {
    width: u32,
    height: u32,
    in_offset: u32,
    in_stride: u32,
    plane_offset: u32,
    kept_offset: u32,
    down_offset: u32,
    result_offset: u32,
    dct_offset: u32,
    win_rows: u32,
    win_cols: u32,
    flags: u32,
    variants: u32,
    /// Always 0: the DCT kernel xors its products with it, so no compiler can fuse them.
    zero: u32,
    pad: [u32; 2],
    at_cols: [u32; DOWN],
    at_rows: [u32; DOWN],
}

const _: () = assert!(std::mem::size_of::<FrameDesc>() == 576);

/// Bytes each buffer needs for a set of frames.
#[derive(Clone, Copy, Debug, Default)]
struct Sizes {
    frames: u64,
    input: u64,
    plane: u64,
    kept: u64,
    down: u64,
    results: u64,
}

impl Sizes {
    fn of(frame: &GpuFrame<'_>) -> Sizes {
        let fixed = Sizes {
            frames: std::mem::size_of::<FrameDesc>() as u64,
            down: (DOWN * DOWN * 4) as u64,
            results: ((RESULT_WORDS + DCT_WORDS) * 4) as u64,
            ..Sizes::default()
        };
        if frame.is_tiny() {
            return fixed;
        }
        let (w, h) = (frame.width() as u64, frame.height() as u64);
        Sizes {
            input: h * frame.words_per_row() as u64 * 4,
            plane: w * h * 4,
            kept: h * DOWN as u64 * 4,
            ..fixed
        }
    }

    fn add(self, o: Sizes) -> Sizes {
        Sizes {
            frames: self.frames + o.frames,
            input: self.input + o.input,
            plane: self.plane + o.plane,
            kept: self.kept + o.kept,
            down: self.down + o.down,
            results: self.results + o.results,
        }
    }

    fn largest(&self) -> u64 {
        self.frames
            .max(self.input)
            .max(self.plane)
            .max(self.kept)
            .max(self.down)
            .max(self.results)
    }
}

/// A sub-batch laid out in the buffers.
struct Plan {
    descs: Vec<FrameDesc>,
    sizes: Sizes,
    /// Luma dispatch: workgroups along x and y (z is the frame).
    luma_groups: (u32, u32),
    max_width: u32,
    max_height: u32,
}

impl Plan {
    fn n(&self) -> u32 {
        self.descs.len() as u32
    }

    /// Bytes of result records (without the DCT blocks after them).
    fn record_bytes(&self) -> u64 {
        (self.descs.len() * RESULT_WORDS * 4) as u64
    }
}

struct Pipelines {
    luma_layout: wgpu::BindGroupLayout,
    box_layout: wgpu::BindGroupLayout,
    dct_layout: wgpu::BindGroupLayout,
    luma: wgpu::ComputePipeline,
    rows: wgpu::ComputePipeline,
    cols: wgpu::ComputePipeline,
    rows_sampled: wgpu::ComputePipeline,
    cols_sampled: wgpu::ComputePipeline,
    dct: wgpu::ComputePipeline,
}

struct BindGroups {
    luma: wgpu::BindGroup,
    rows: wgpu::BindGroup,
    cols: wgpu::BindGroup,
    rows_sampled: wgpu::BindGroup,
    cols_sampled: wgpu::BindGroup,
    dct: wgpu::BindGroup,
}

type MapResult = Result<(), wgpu::BufferAsyncError>;

/// The upload staging buffer's mapping.
#[derive(Default)]
enum UploadState {
    #[default]
    Unmapped,
    Mapped,
    /// Mapping again once this submission, the last to read it, is done.
    Pending(wgpu::SubmissionIndex, mpsc::Receiver<MapResult>),
}

/// A sub-batch submitted and not yet read back.
struct InFlight {
    range: Range<usize>,
    submission: wgpu::SubmissionIndex,
    mapped: mpsc::Receiver<MapResult>,
    bytes: u64,
    submitted: Instant,
}

/// One set of buffers: a sub-batch's inputs, intermediates and results.
#[derive(Default)]
struct BufferSet {
    frames: Option<wgpu::Buffer>,
    /// Mapped staging memory the luma is written into (MAP_WRITE | COPY_SRC).
    upload: Option<wgpu::Buffer>,
    upload_state: UploadState,
    input: Option<wgpu::Buffer>,
    /// Luma, then the column pass.
    plane_a: Option<wgpu::Buffer>,
    /// The row pass.
    plane_b: Option<wgpu::Buffer>,
    kept: Option<wgpu::Buffer>,
    down: Option<wgpu::Buffer>,
    results: Option<wgpu::Buffer>,
    readback: Option<wgpu::Buffer>,
    groups: Option<BindGroups>,
    in_flight: Option<InFlight>,
}

fn buf(b: &Option<wgpu::Buffer>) -> &wgpu::Buffer {
    b.as_ref().expect("buffer allocated before use")
}

/// PDQ hashing on a GPU adapter. Pipelines are built once; buffers grow to the largest batch
/// seen and are reused.
pub struct GpuHasher {
    info: wgpu::AdapterInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipelines: Pipelines,
    /// The limited-to-full-range table and the DCT matrix (uniform buffers).
    lut: wgpu::Buffer,
    matrix: wgpu::Buffer,
    sets: [BufferSet; 2],
    /// Most bytes in any one buffer of a sub-batch.
    sub_batch_bytes: u64,
    max_sub_batch: usize,
    max_groups: u32,
    _instance: wgpu::Instance,
}

impl GpuHasher {
    /// Opens the adapter `choice` names and builds the kernels. A software adapter (Mesa's
    /// lavapipe, device type `Cpu`) is taken only with `allow_software`: it gives the same
    /// results, slowly.
    pub fn new(choice: AdapterChoice, allow_software: bool) -> anyhow::Result<Self> {
        let instance = new_instance();
        let adapter = pick_adapter(enumerate(&instance), &choice, allow_software)?;
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("livewatch pdq"),
            required_features: wgpu::Features::empty(),
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .with_context(|| format!("open a device on {}", info.name))?;

        let (pipelines, err) = error_scoped(&device, || build_pipelines(&device, &[]));
        if let Some(e) = err {
            bail!("the PDQ kernels do not build on {}: {e}", info.name);
        }

        let lut = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pdq lut"),
            size: 256 * 4,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        queue.write_buffer(&lut, 0, bytemuck::cast_slice(pdq::limited_to_full_lut()));
        let matrix = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("pdq dct matrix"),
            size: (DCT * DOWN * 4) as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let flat: Vec<f32> = pdq::dct_matrix().iter().flatten().copied().collect();
        queue.write_buffer(&matrix, 0, bytemuck::cast_slice(&flat));

        let limits = device.limits();
        let sub_batch_bytes = SUB_BATCH_BYTES
            .min(limits.max_storage_buffer_binding_size)
            .min(limits.max_buffer_size)
            & !255;
        let max_groups = limits.max_compute_workgroups_per_dimension;
        Ok(GpuHasher {
            info,
            device,
            queue,
            pipelines,
            lut,
            matrix,
            sets: Default::default(),
            sub_batch_bytes,
            max_sub_batch: MAX_SUB_BATCH.min(max_groups as usize),
            max_groups,
            _instance: instance,
        })
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// A software rasteriser (device type `Cpu`), such as lavapipe.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Hashes a batch of frames: with their 8 dihedral variants when `dihedral`, else only
    /// the original (`hashes[0]`; the other 7 are zero). Frames too small to hash get hash
    /// 0 and quality 0.
    pub fn hash_batch(
        &mut self,
        frames: &[GpuFrame<'_>],
        dihedral: bool,
    ) -> anyhow::Result<Vec<PdqDihedral>> {
        self.scoped(|g| g.run(frames, dihedral, None))
    }

    /// As [`hash_batch`](Self::hash_batch), with the phases run one after the other (no
    /// overlap) and timed.
    pub fn hash_batch_profiled(
        &mut self,
        frames: &[GpuFrame<'_>],
        dihedral: bool,
    ) -> anyhow::Result<(Vec<PdqDihedral>, PhaseTimes)> {
        let mut times = PhaseTimes::default();
        let out = self.scoped(|g| g.run(frames, dihedral, Some(&mut times)))?;
        Ok((out, times))
    }

    /// Runs `f` with wgpu's validation and out-of-memory errors returned as its error rather
    /// than left to the device's default handler (a panic). After one, every buffer is
    /// dropped, so the next batch allocates afresh.
    fn scoped<T>(&mut self, f: impl FnOnce(&mut Self) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let device = self.device.clone();
        match error_scoped(&device, || f(self)) {
            (_, Some(e)) => {
                self.sets = Default::default();
                Err(anyhow!("GPU error on {}: {e}", self.info.name))
            }
            (result, None) => result,
        }
    }

    fn run(
        &mut self,
        frames: &[GpuFrame<'_>],
        dihedral: bool,
        mut times: Option<&mut PhaseTimes>,
    ) -> anyhow::Result<Vec<PdqDihedral>> {
        for (i, f) in frames.iter().enumerate() {
            f.check(i)?;
        }
        let chunks = self.split(frames, true)?;
        let mut out = vec![
            PdqDihedral {
                hashes: [Hash256::default(); 8],
                quality: 0,
            };
            frames.len()
        ];
        let result = (|| {
            for (i, range) in chunks.into_iter().enumerate() {
                let s = i % 2;
                if self.sets[s].in_flight.is_some() {
                    self.finish(s, &mut out)?;
                }
                self.submit(s, frames, range, dihedral, times.as_deref_mut())?;
                if let Some(t) = times.as_deref_mut() {
                    let started = self.sets[s].in_flight.as_ref().map(|f| f.submitted);
                    self.finish(s, &mut out)?;
                    t.readback += started.map_or(Duration::ZERO, |s| s.elapsed());
                }
            }
            Ok(())
        })();
        // read back (or drop) whatever is still in flight, so both sets are idle after
        let mut drained = Ok(());
        for s in self.pending_order() {
            if let Err(e) = self.finish(s, &mut out) {
                drained = drained.and(Err(e));
            }
        }
        result.and(drained)?;
        Ok(out)
    }

    /// The sets with a sub-batch in flight, oldest first.
    fn pending_order(&self) -> Vec<usize> {
        let mut v: Vec<usize> = (0..2)
            .filter(|&s| self.sets[s].in_flight.is_some())
            .collect();
        v.sort_by_key(|&s| self.sets[s].in_flight.as_ref().map(|f| f.range.start));
        v
    }

    /// Cuts a batch into sub-batches whose every buffer fits the device's binding size.
    fn split(&self, frames: &[GpuFrame<'_>], overlap: bool) -> anyhow::Result<Vec<Range<usize>>> {
        let cap = self.sub_batch_bytes;
        let mut chunks = Vec::new();
        let (mut start, mut acc) = (0usize, Sizes::default());
        for (i, f) in frames.iter().enumerate() {
            let s = Sizes::of(f);
            if s.largest() > cap {
                bail!(
                    "frame {i} ({}x{}) needs a {:.1} MiB GPU buffer; {} allows {:.1} MiB",
                    f.width(),
                    f.height(),
                    s.largest() as f64 / f64::from(1 << 20),
                    self.info.name,
                    cap as f64 / f64::from(1 << 20)
                );
            }
            if i > start && (acc.add(s).largest() > cap || i - start >= self.max_sub_batch) {
                chunks.push(start..i);
                start = i;
                acc = Sizes::default();
            }
            acc = acc.add(s);
        }
        if start < frames.len() {
            chunks.push(start..frames.len());
        }
        if overlap && chunks.len() == 1 && frames.len() >= OVERLAP_MIN_FRAMES {
            let mid = frames.len() / 2;
            chunks = vec![0..mid, mid..frames.len()];
        }
        Ok(chunks)
    }

    fn plan(&self, frames: &[GpuFrame<'_>], dihedral: bool) -> Plan {
        let n = frames.len();
        let mut descs = Vec::with_capacity(n);
        let mut sizes = Sizes::default();
        let (mut max_words, mut max_width, mut max_height) = (0u64, 0u32, 0u32);
        for (i, f) in frames.iter().enumerate() {
            let (w, h) = (f.width(), f.height());
            let tiny = f.is_tiny();
            let mut flags = 0;
            match *f {
                GpuFrame::Luma8 { limited: true, .. } => flags |= FLAG_LIMITED,
                GpuFrame::Luma8 { .. } => {}
                GpuFrame::LumaF32 { .. } => flags |= FLAG_F32,
            }
            if tiny {
                flags |= FLAG_TINY;
            } else if w == DOWN && h == DOWN {
                flags |= FLAG_NO_BLUR;
            }
            let (dw, dh) = if tiny { (0, 0) } else { (w, h) };
            let desc = FrameDesc {
                width: dw as u32,
                height: dh as u32,
                in_offset: (sizes.input / 4) as u32,
                in_stride: if tiny { 0 } else { f.words_per_row() as u32 },
                plane_offset: (sizes.plane / 4) as u32,
                kept_offset: (sizes.kept / 4) as u32,
                down_offset: (sizes.down / 4) as u32,
                result_offset: (i * RESULT_WORDS) as u32,
                dct_offset: (n * RESULT_WORDS + i * DCT_WORDS) as u32,
                win_rows: if tiny {
                    0
                } else {
                    pdq::jarosz_window(w, DOWN) as u32
                },
                win_cols: if tiny {
                    0
                } else {
                    pdq::jarosz_window(h, DOWN) as u32
                },
                flags,
                variants: if dihedral { 8 } else { 1 },
                zero: 0,
                pad: [0; 2],
                at_cols: if tiny {
                    [0; DOWN]
                } else {
                    pdq::sample_positions(w)
                },
                at_rows: if tiny {
                    [0; DOWN]
                } else {
                    pdq::sample_positions(h)
                },
            };
            let s = Sizes::of(f);
            max_words = max_words.max(s.input / 4);
            max_width = max_width.max(desc.width);
            max_height = max_height.max(desc.height);
            sizes = sizes.add(s);
            descs.push(desc);
        }
        let groups = max_words.div_ceil(u64::from(LUMA_GROUP)).max(1);
        let gx = groups.min(u64::from(self.max_groups));
        let gy = groups.div_ceil(gx);
        Plan {
            descs,
            sizes,
            luma_groups: (gx as u32, gy as u32),
            max_width,
            max_height,
        }
    }

    /// Grows set `s`'s buffers to hold `plan` (readback of `readback` bytes), rebuilding its
    /// bind groups when one grew.
    fn prepare(&mut self, s: usize, plan: &Plan, readback: u64) {
        use wgpu::BufferUsages as U;
        let storage = U::STORAGE | U::COPY_DST | U::COPY_SRC;
        let device = &self.device;
        let cap = self.sub_batch_bytes;
        let set = &mut self.sets[s];
        let sizes = &plan.sizes;
        let mut grew = false;
        grew |= grow(
            device,
            &mut set.frames,
            sizes.frames,
            cap,
            storage,
            "pdq frames",
            false,
        );
        let upload = U::MAP_WRITE | U::COPY_SRC;
        if grow(
            device,
            &mut set.upload,
            sizes.input,
            cap,
            upload,
            "pdq upload",
            true,
        ) {
            set.upload_state = UploadState::Mapped;
        }
        grew |= grow(
            device,
            &mut set.input,
            sizes.input,
            cap,
            storage,
            "pdq input",
            false,
        );
        grew |= grow(
            device,
            &mut set.plane_a,
            sizes.plane,
            cap,
            storage,
            "pdq plane a",
            false,
        );
        grew |= grow(
            device,
            &mut set.plane_b,
            sizes.plane,
            cap,
            storage,
            "pdq plane b",
            false,
        );
        grew |= grow(
            device,
            &mut set.kept,
            sizes.kept,
            cap,
            storage,
            "pdq kept",
            false,
        );
        grew |= grow(
            device,
            &mut set.down,
            sizes.down,
            cap,
            storage,
            "pdq down",
            false,
        );
        grew |= grow(
            device,
            &mut set.results,
            sizes.results,
            cap,
            storage,
            "pdq results",
            false,
        );
        let read = U::MAP_READ | U::COPY_DST;
        grow(
            device,
            &mut set.readback,
            readback,
            cap,
            read,
            "pdq readback",
            false,
        );
        if grew || set.groups.is_none() {
            let groups = self.bind_groups(s);
            self.sets[s].groups = Some(groups);
        }
    }

    fn bind_groups(&self, s: usize) -> BindGroups {
        let set = &self.sets[s];
        let p = &self.pipelines;
        let group = |layout: &wgpu::BindGroupLayout, label: &str, bufs: &[&wgpu::Buffer]| {
            let entries: Vec<_> = bufs
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: b.as_entire_binding(),
                })
                .collect();
            self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some(label),
                layout,
                entries: &entries,
            })
        };
        let (frames, a, b) = (buf(&set.frames), buf(&set.plane_a), buf(&set.plane_b));
        let (kept, down) = (buf(&set.kept), buf(&set.down));
        BindGroups {
            luma: group(
                &p.luma_layout,
                "pdq luma",
                &[frames, &self.lut, buf(&set.input), a],
            ),
            rows: group(&p.box_layout, "pdq rows", &[frames, a, b]),
            cols: group(&p.box_layout, "pdq cols", &[frames, b, a]),
            rows_sampled: group(&p.box_layout, "pdq rows sampled", &[frames, a, kept]),
            cols_sampled: group(&p.box_layout, "pdq cols sampled", &[frames, kept, down]),
            dct: group(
                &p.dct_layout,
                "pdq dct",
                &[frames, &self.matrix, down, buf(&set.results)],
            ),
        }
    }

    /// Waits until set `s`'s upload staging buffer is mapped.
    fn map_upload(&mut self, s: usize) -> anyhow::Result<()> {
        match std::mem::take(&mut self.sets[s].upload_state) {
            UploadState::Mapped => {}
            UploadState::Pending(submission, rx) => {
                self.wait(submission)?;
                rx.recv()
                    .context("upload buffer mapping dropped")?
                    .context("map the upload buffer")?;
            }
            UploadState::Unmapped => {
                let (tx, rx) = mpsc::channel();
                buf(&self.sets[s].upload).map_async(wgpu::MapMode::Write, .., move |r| {
                    let _ = tx.send(r);
                });
                self.device
                    .poll(wgpu::PollType::wait_indefinitely())
                    .context("wait for the GPU")?;
                rx.recv()
                    .context("upload buffer mapping dropped")?
                    .context("map the upload buffer")?;
            }
        }
        self.sets[s].upload_state = UploadState::Mapped;
        Ok(())
    }

    fn wait(&self, submission: wgpu::SubmissionIndex) -> anyhow::Result<()> {
        self.device
            .poll(wgpu::PollType::Wait {
                submission_index: Some(submission),
                timeout: None,
            })
            .context("wait for the GPU")?;
        Ok(())
    }

    /// Packs the frames' luma into set `s`'s mapped staging buffer and unmaps it.
    fn fill_upload(
        &mut self,
        s: usize,
        frames: &[GpuFrame<'_>],
        plan: &Plan,
    ) -> anyhow::Result<()> {
        if plan.sizes.input == 0 {
            return Ok(());
        }
        self.map_upload(s)?;
        let upload = buf(&self.sets[s].upload);
        {
            let mut view = upload
                .get_mapped_range_mut(0..plan.sizes.input)
                .context("view the upload buffer")?;
            for (f, d) in frames.iter().zip(&plan.descs) {
                if d.flags & FLAG_TINY != 0 {
                    continue;
                }
                let base = d.in_offset as usize * 4;
                let pitch = d.in_stride as usize * 4;
                match *f {
                    GpuFrame::Luma8 {
                        data,
                        width,
                        height,
                        stride,
                        ..
                    } => {
                        if stride == width && width % 4 == 0 {
                            view.slice(base..base + width * height)
                                .copy_from_slice(&data[..width * height]);
                        } else {
                            for r in 0..height {
                                let at = base + r * pitch;
                                view.slice(at..at + width)
                                    .copy_from_slice(&data[r * stride..r * stride + width]);
                            }
                        }
                    }
                    GpuFrame::LumaF32 {
                        data,
                        width,
                        height,
                    } => {
                        let bytes: &[u8] = bytemuck::cast_slice(&data[..width * height]);
                        view.slice(base..base + bytes.len()).copy_from_slice(bytes);
                    }
                }
            }
        }
        upload.unmap();
        self.sets[s].upload_state = UploadState::Unmapped;
        Ok(())
    }

    /// Records the six dispatches for `plan` on set `s`; with `luma_copy`, the luma plane is
    /// copied there before the blur overwrites it.
    fn encode_passes(
        &self,
        encoder: &mut wgpu::CommandEncoder,
        s: usize,
        plan: &Plan,
        luma_copy: Option<&wgpu::Buffer>,
    ) {
        let set = &self.sets[s];
        let g = set.groups.as_ref().expect("bind groups built");
        let p = &self.pipelines;
        let n = plan.n();
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("pdq luma"),
                timestamp_writes: None,
            });
            pass.set_pipeline(&p.luma);
            pass.set_bind_group(0, &g.luma, &[]);
            pass.dispatch_workgroups(plan.luma_groups.0, plan.luma_groups.1, n);
        }
        if let Some(dst) = luma_copy {
            if plan.sizes.plane > 0 {
                encoder.copy_buffer_to_buffer(buf(&set.plane_a), 0, dst, 0, plan.sizes.plane);
            }
        }
        let rows = plan.max_height.div_ceil(BOX_GROUP).max(1);
        let cols = plan.max_width.div_ceil(BOX_GROUP).max(1);
        let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
            label: Some("pdq blur and dct"),
            timestamp_writes: None,
        });
        pass.set_pipeline(&p.rows);
        pass.set_bind_group(0, &g.rows, &[]);
        pass.dispatch_workgroups(rows, n, 1);
        pass.set_pipeline(&p.cols);
        pass.set_bind_group(0, &g.cols, &[]);
        pass.dispatch_workgroups(cols, n, 1);
        pass.set_pipeline(&p.rows_sampled);
        pass.set_bind_group(0, &g.rows_sampled, &[]);
        pass.dispatch_workgroups(rows, n, 1);
        pass.set_pipeline(&p.cols_sampled);
        pass.set_bind_group(0, &g.cols_sampled, &[]);
        pass.dispatch_workgroups(1, n, 1);
        pass.set_pipeline(&p.dct);
        pass.set_bind_group(0, &g.dct, &[]);
        pass.dispatch_workgroups(n, 1, 1);
    }

    fn encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("pdq") })
    }

    /// Uploads and submits sub-batch `range` on set `s`, which must be idle. With `times`,
    /// waits after the upload and after the kernels to time them.
    fn submit(
        &mut self,
        s: usize,
        frames: &[GpuFrame<'_>],
        range: Range<usize>,
        dihedral: bool,
        mut times: Option<&mut PhaseTimes>,
    ) -> anyhow::Result<()> {
        let sub = &frames[range.clone()];
        let plan = self.plan(sub, dihedral);
        let record_bytes = plan.record_bytes();
        self.prepare(s, &plan, record_bytes);
        let started = Instant::now();
        self.fill_upload(s, sub, &plan)?;
        let set = &self.sets[s];
        self.queue
            .write_buffer(buf(&set.frames), 0, bytemuck::cast_slice(&plan.descs));
        let mut encoder = self.encoder();
        if plan.sizes.input > 0 {
            encoder.copy_buffer_to_buffer(
                buf(&set.upload),
                0,
                buf(&set.input),
                0,
                plan.sizes.input,
            );
        }
        if let Some(t) = times.as_deref_mut() {
            let idx = self.queue.submit([encoder.finish()]);
            self.wait(idx)?;
            t.upload += started.elapsed();
            encoder = self.encoder();
        }
        let computing = Instant::now();
        self.encode_passes(&mut encoder, s, &plan, None);
        if let Some(t) = times {
            let idx = self.queue.submit([encoder.finish()]);
            self.wait(idx)?;
            t.compute += computing.elapsed();
            encoder = self.encoder();
        }
        let submitted = Instant::now();
        encoder.copy_buffer_to_buffer(buf(&set.results), 0, buf(&set.readback), 0, record_bytes);
        let submission = self.queue.submit([encoder.finish()]);
        self.after_submit(s, submission.clone());
        let (tx, rx) = mpsc::channel();
        buf(&self.sets[s].readback).map_async(wgpu::MapMode::Read, 0..record_bytes, move |r| {
            let _ = tx.send(r);
        });
        self.sets[s].in_flight = Some(InFlight {
            range,
            submission,
            mapped: rx,
            bytes: record_bytes,
            submitted,
        });
        Ok(())
    }

    /// Asks for set `s`'s upload buffer to be mapped again once `submission` is done with it.
    fn after_submit(&mut self, s: usize, submission: wgpu::SubmissionIndex) {
        let set = &mut self.sets[s];
        if matches!(set.upload_state, UploadState::Unmapped) {
            let (tx, rx) = mpsc::channel();
            buf(&set.upload).map_async(wgpu::MapMode::Write, .., move |r| {
                let _ = tx.send(r);
            });
            set.upload_state = UploadState::Pending(submission, rx);
        }
    }

    /// Waits for set `s`'s sub-batch and decodes its results into `out`.
    fn finish(&mut self, s: usize, out: &mut [PdqDihedral]) -> anyhow::Result<()> {
        let Some(f) = self.sets[s].in_flight.take() else {
            return Ok(());
        };
        self.wait(f.submission)?;
        f.mapped
            .recv()
            .context("readback mapping dropped")?
            .context("map the readback buffer")?;
        let readback = buf(&self.sets[s].readback);
        {
            let view = readback
                .get_mapped_range(0..f.bytes)
                .context("view the readback buffer")?;
            let words: &[u32] = bytemuck::cast_slice(&view);
            for (i, o) in out[f.range.clone()].iter_mut().enumerate() {
                *o = decode_record(&words[i * RESULT_WORDS..(i + 1) * RESULT_WORDS]);
            }
        }
        readback.unmap();
        Ok(())
    }

    /// Runs one batch through every kernel and reads back every stage's output, for tests
    /// and diagnostics (all 8 dihedral hashes). The batch must fit in one sub-batch.
    pub fn stage_outputs(&mut self, frames: &[GpuFrame<'_>]) -> anyhow::Result<Vec<StageOutputs>> {
        self.scoped(|g| g.stage_outputs_unscoped(frames))
    }

    fn stage_outputs_unscoped(
        &mut self,
        frames: &[GpuFrame<'_>],
    ) -> anyhow::Result<Vec<StageOutputs>> {
        for (i, f) in frames.iter().enumerate() {
            f.check(i)?;
        }
        if frames.is_empty() {
            return Ok(Vec::new());
        }
        if self.split(frames, false)?.len() != 1 {
            bail!("stage_outputs: the frames do not fit in one sub-batch");
        }
        let plan = self.plan(frames, true);
        let s = 0;
        self.prepare(s, &plan, plan.record_bytes());
        self.fill_upload(s, frames, &plan)?;
        let temp = |size: u64, label: &str| {
            self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: size.max(4),
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let set = &self.sets[s];
        let sources = [
            (buf(&set.plane_b), plan.sizes.plane),
            (buf(&set.plane_a), plan.sizes.plane),
            (buf(&set.kept), plan.sizes.kept),
            (buf(&set.down), plan.sizes.down),
            (buf(&set.results), plan.sizes.results),
        ];
        let luma_read = temp(plan.sizes.plane, "pdq luma readback");
        let reads: Vec<_> = sources
            .iter()
            .map(|&(_, size)| temp(size, "pdq stage readback"))
            .collect();
        self.queue
            .write_buffer(buf(&set.frames), 0, bytemuck::cast_slice(&plan.descs));
        let mut encoder = self.encoder();
        if plan.sizes.input > 0 {
            encoder.copy_buffer_to_buffer(
                buf(&set.upload),
                0,
                buf(&set.input),
                0,
                plan.sizes.input,
            );
        }
        self.encode_passes(&mut encoder, s, &plan, Some(&luma_read));
        for ((src, size), dst) in sources.iter().zip(&reads) {
            if *size > 0 {
                encoder.copy_buffer_to_buffer(src, 0, dst, 0, *size);
            }
        }
        let submission = self.queue.submit([encoder.finish()]);
        self.after_submit(s, submission.clone());
        let mut all = vec![&luma_read];
        all.extend(reads.iter());
        let mut receivers = Vec::new();
        for b in &all {
            let (tx, rx) = mpsc::channel();
            b.map_async(wgpu::MapMode::Read, .., move |r| {
                let _ = tx.send(r);
            });
            receivers.push(rx);
        }
        self.wait(submission)?;
        let mut data: Vec<Vec<f32>> = Vec::new();
        for (b, rx) in all.iter().zip(receivers) {
            rx.recv()
                .context("stage readback dropped")?
                .context("map a stage readback")?;
            data.push(bytemuck::cast_slice(&b.get_mapped_range(..)?).to_vec());
            b.unmap();
        }
        let [luma, rows, cols, kept, down, results] = &data[..] else {
            unreachable!("six readbacks");
        };
        let n = frames.len();
        Ok(plan
            .descs
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let words: Vec<u32> = results[i * RESULT_WORDS..(i + 1) * RESULT_WORDS]
                    .iter()
                    .map(|v| v.to_bits())
                    .collect();
                let record = decode_record(&words);
                if d.flags & FLAG_TINY != 0 {
                    return StageOutputs {
                        quality: record.quality,
                        hashes: record.hashes,
                        ..StageOutputs::default()
                    };
                }
                let plane = d.plane_offset as usize..(d.plane_offset + d.width * d.height) as usize;
                let blurred = d.flags & FLAG_NO_BLUR == 0;
                let dct = n * RESULT_WORDS + i * DCT_WORDS;
                StageOutputs {
                    luma: luma[plane.clone()].to_vec(),
                    rows: if blurred {
                        rows[plane.clone()].to_vec()
                    } else {
                        Vec::new()
                    },
                    cols: if blurred {
                        cols[plane].to_vec()
                    } else {
                        Vec::new()
                    },
                    rows_sampled: kept[d.kept_offset as usize..][..d.height as usize * DOWN]
                        .to_vec(),
                    down: down[d.down_offset as usize..][..DOWN * DOWN].to_vec(),
                    dct: results[dct..dct + DCT_WORDS].to_vec(),
                    quality: record.quality,
                    hashes: record.hashes,
                }
            })
            .collect())
    }
}

/// Runs `f` with wgpu's validation and out-of-memory errors caught rather than left to the
/// device's default handler (a panic): its result, and the first such error, if any. Both
/// kernel drivers (PDQ and the classifier's pre-processing) go through it.
pub(crate) fn error_scoped<T>(
    device: &wgpu::Device,
    f: impl FnOnce() -> T,
) -> (T, Option<wgpu::Error>) {
    let oom = device.push_error_scope(wgpu::ErrorFilter::OutOfMemory);
    let invalid = device.push_error_scope(wgpu::ErrorFilter::Validation);
    let result = f();
    let invalid = pollster::block_on(invalid.pop());
    let oom = pollster::block_on(oom.pop());
    (result, oom.or(invalid))
}

/// Allocates (or reallocates, larger) `slot` for `need` bytes, at most `cap` (a multiple of
/// 256 and at least `need`); true when it did. The classifier's kernels use it too.
pub(crate) fn grow(
    device: &wgpu::Device,
    slot: &mut Option<wgpu::Buffer>,
    need: u64,
    cap: u64,
    usage: wgpu::BufferUsages,
    label: &str,
    mapped: bool,
) -> bool {
    let need = need.max(256).next_multiple_of(256);
    if slot.as_ref().is_some_and(|b| b.size() >= need) {
        return false;
    }
    // a quarter more than asked, so a slowly growing batch does not reallocate every time,
    // but never more than a binding may hold
    let size = (need + need / 4).next_multiple_of(256).min(cap).max(need);
    *slot = Some(device.create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size,
        usage,
        mapped_at_creation: mapped,
    }));
    true
}

fn decode_record(words: &[u32]) -> PdqDihedral {
    let hashes = std::array::from_fn(|v| {
        let w = &words[HASH_BASE + v * 8..HASH_BASE + (v + 1) * 8];
        Hash256 {
            words: std::array::from_fn(|k| (w[k / 2] >> (16 * (k % 2))) as u16),
        }
    });
    PdqDihedral {
        hashes,
        quality: words[0] as u8,
    }
}

/// A kernel file with the shared declarations in front of it.
fn kernel_source(kernel: &str) -> String {
    format!("{COMMON_WGSL}\n{kernel}")
}

/// A bind group layout of buffers for compute kernels, bound at 0, 1, ... in the order of
/// `types`. The PDQ, pre-processing and bank-scan kernels all bind plain buffers this way.
pub(crate) fn buffer_layout(
    device: &wgpu::Device,
    label: &str,
    types: &[wgpu::BufferBindingType],
) -> wgpu::BindGroupLayout {
    let entries: Vec<_> = types
        .iter()
        .enumerate()
        .map(|(i, &ty)| wgpu::BindGroupLayoutEntry {
            binding: i as u32,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        })
        .collect();
    device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
        label: Some(label),
        entries: &entries,
    })
}

/// The kernels' pipelines; `division` sets the box and DCT kernels' division overrides
/// (`DIV_NUDGE`, `DIV_WALK`: tests only).
fn build_pipelines(device: &wgpu::Device, division: &[(&str, f64)]) -> Pipelines {
    use wgpu::BufferBindingType;
    let read = BufferBindingType::Storage { read_only: true };
    let write = BufferBindingType::Storage { read_only: false };
    let uniform = BufferBindingType::Uniform;
    let layout = |label: &str, types: &[BufferBindingType]| buffer_layout(device, label, types);
    let luma_layout = layout("pdq luma", &[read, uniform, read, write]);
    let box_layout = layout("pdq box", &[read, read, write]);
    let dct_layout = layout("pdq dct", &[read, uniform, read, write]);
    let module = |label: &str, source: &'static str| {
        device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some(label),
            source: wgpu::ShaderSource::Wgsl(Cow::Owned(kernel_source(source))),
        })
    };
    let luma_module = module("pdq_luma.wgsl", LUMA_WGSL);
    let box_module = module("pdq_box.wgsl", BOX_WGSL);
    let dct_module = module("pdq_dct.wgsl", DCT_WGSL);
    let pipeline = |layout: &wgpu::BindGroupLayout,
                    module: &wgpu::ShaderModule,
                    entry: &str,
                    constants: &[(&str, f64)]| {
        let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some(entry),
            bind_group_layouts: &[Some(layout)],
            immediate_size: 0,
        });
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pl),
            module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants,
                // every kernel writes its workgroup memory before reading it
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
    };
    Pipelines {
        luma: pipeline(&luma_layout, &luma_module, "luma_main", &[]),
        rows: pipeline(&box_layout, &box_module, "box_rows", division),
        cols: pipeline(&box_layout, &box_module, "box_cols", division),
        rows_sampled: pipeline(&box_layout, &box_module, "box_rows_sampled", division),
        cols_sampled: pipeline(&box_layout, &box_module, "box_cols_sampled", division),
        dct: pipeline(&dct_layout, &dct_module, "dct_main", division),
        luma_layout,
        box_layout,
        dct_layout,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::{PdqHasher, Pixels};

    /// The hasher under test: any adapter, software included. None (the test skips, loudly)
    /// only when wgpu finds no adapter at all.
    fn hasher() -> Option<GpuHasher> {
        if list_adapters().is_empty() {
            eprintln!("SKIPPED: no wgpu adapter");
            return None;
        }
        let gpu = GpuHasher::new(AdapterChoice::Auto, true).expect("open a wgpu adapter");
        let info = gpu.adapter_info();
        eprintln!(
            "adapter: {} ({:?}, {:?})",
            info.name, info.backend, info.device_type
        );
        Some(gpu)
    }

    /// Photo-like 8-bit content: gradients, blocks, noise; limited-range codes mostly within
    /// 16..=235 with some outside, to exercise the table's clamping. Bytes past the width of
    /// each row are junk the kernels must ignore.
    fn picture(w: usize, h: usize, stride: usize, seed: u64, limited: bool) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut out = vec![0xa5u8; (h.max(1) - 1) * stride + w];
        let (bw, bh) = (w / 7 + 1, h / 5 + 1);
        for y in 0..h {
            for x in 0..w {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state >> 40) as usize % 29;
                let block = ((x / bw) ^ (y / bh)) % 2 * 77;
                let v = (x * 255 / w + y * 128 / h + block + noise + seed as usize * 13) % 256;
                out[y * stride + x] = if limited && !(state >> 20).is_multiple_of(50) {
                    (16 + v * 219 / 255) as u8
                } else {
                    v as u8
                };
            }
        }
        out
    }

    fn rgb_picture(w: usize, h: usize, seed: u64) -> Vec<u8> {
        let grey = picture(w, h, w, seed, false);
        grey.iter()
            .enumerate()
            .flat_map(|(i, &v)| [v, v.wrapping_mul(3) ^ (i as u8), 255 - v / 2])
            .collect()
    }

    enum Input {
        Luma8 {
            data: Vec<u8>,
            stride: usize,
            limited: bool,
        },
        /// Luma of RGB pixels, computed on the CPU as `pdq::luma` does.
        Rgb { rgb: Vec<u8>, luma: Vec<f32> },
    }

    struct TestFrame {
        name: String,
        width: usize,
        height: usize,
        input: Input,
    }

    impl TestFrame {
        fn luma8(w: usize, h: usize, stride: usize, limited: bool, seed: u64) -> Self {
            TestFrame {
                name: format!(
                    "{w}x{h} stride {stride} {}",
                    if limited { "limited" } else { "full" }
                ),
                width: w,
                height: h,
                input: Input::Luma8 {
                    data: picture(w, h, stride, seed, limited),
                    stride,
                    limited,
                },
            }
        }

        fn flat(w: usize, h: usize, value: u8) -> Self {
            TestFrame {
                name: format!("{w}x{h} flat {value}"),
                width: w,
                height: h,
                input: Input::Luma8 {
                    data: vec![value; w * h],
                    stride: w,
                    limited: false,
                },
            }
        }

        fn rgb(w: usize, h: usize, seed: u64) -> Self {
            let rgb = rgb_picture(w, h, seed);
            let mut luma = Vec::new();
            pdq::luma(Pixels::Rgb(&rgb), w, h, &mut luma);
            TestFrame {
                name: format!("{w}x{h} rgb"),
                width: w,
                height: h,
                input: Input::Rgb { rgb, luma },
            }
        }

        fn gpu(&self) -> GpuFrame<'_> {
            let (width, height) = (self.width, self.height);
            match &self.input {
                Input::Luma8 {
                    data,
                    stride,
                    limited,
                } => GpuFrame::Luma8 {
                    data,
                    width,
                    height,
                    stride: *stride,
                    limited: *limited,
                },
                Input::Rgb { luma, .. } => GpuFrame::LumaF32 {
                    data: luma,
                    width,
                    height,
                },
            }
        }

        fn pixels(&self) -> Pixels<'_> {
            match &self.input {
                Input::Luma8 {
                    data,
                    stride,
                    limited: true,
                } => Pixels::VideoY {
                    data,
                    stride: *stride,
                },
                Input::Luma8 { data, stride, .. } => Pixels::Gray {
                    data,
                    stride: *stride,
                },
                Input::Rgb { rgb, .. } => Pixels::Rgb(rgb),
            }
        }
    }

    /// Sizes and inputs in one batch: HD with padded rows, odd sizes and strides, exactly
    /// 64x64 (no blur), thin strips, frames too small to hash, RGB-derived f32 luma.
    fn mixed_batch() -> Vec<TestFrame> {
        vec![
            TestFrame::luma8(1280, 720, 1312, true, 1),
            TestFrame::luma8(333, 517, 333, false, 2),
            TestFrame::luma8(64, 64, 64, true, 3),
            TestFrame::luma8(7, 9, 10, false, 4),
            TestFrame::luma8(4, 4, 4, false, 5),
            TestFrame::luma8(1000, 5, 1000, true, 6),
            TestFrame::luma8(5, 1000, 7, false, 7),
            TestFrame::luma8(3, 300, 3, true, 8),
            TestFrame::luma8(640, 480, 640, false, 9),
            TestFrame::luma8(129, 64, 131, true, 10),
            TestFrame::flat(96, 80, 128),
            TestFrame::rgb(200, 150, 11),
            TestFrame::rgb(64, 64, 12),
        ]
    }

    /// None when equal bit for bit, else where and how they differ.
    fn differ(a: &[f32], b: &[f32]) -> Option<String> {
        if a.len() != b.len() {
            return Some(format!("{} values, expected {}", a.len(), b.len()));
        }
        let bad: Vec<usize> = (0..a.len())
            .filter(|&i| a[i].to_bits() != b[i].to_bits())
            .collect();
        let &first = bad.first()?;
        Some(format!(
            "{} of {} values differ, first at {first}: gpu {:e} cpu {:e}",
            bad.len(),
            a.len(),
            a[first],
            b[first]
        ))
    }

    fn square<const N: usize>(v: &[f32]) -> [[f32; N]; N] {
        std::array::from_fn(|i| v[i * N..(i + 1) * N].try_into().unwrap())
    }

    #[test]
    fn every_wgsl_file_parses_and_validates() {
        // each kernel file as it is built (the shared declarations in front), and the shared
        // file alone
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        let mut checked = 0;
        let mut failures = Vec::new();
        for entry in std::fs::read_dir(&dir).expect("read shaders/") {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("wgsl") {
                continue;
            }
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&path).unwrap();
            let source = if name == "pdq_common.wgsl" {
                text
            } else {
                assert!(
                    !text.contains("struct Frame"),
                    "{name}: declares Frame again; it lives in pdq_common.wgsl"
                );
                kernel_source(&text)
            };
            checked += 1;
            let module = match naga::front::wgsl::parse_str(&source) {
                Ok(m) => m,
                Err(e) => {
                    failures.push(format!("{name}: {}", e.emit_to_string(&source)));
                    continue;
                }
            };
            let mut validator = naga::valid::Validator::new(
                naga::valid::ValidationFlags::all(),
                naga::valid::Capabilities::default(),
            );
            if let Err(e) = validator.validate(&module) {
                failures.push(format!("{name}: {}", e.emit_to_string(&source)));
            }
        }
        assert!(
            checked >= 4,
            "found only {checked} .wgsl files in {}",
            dir.display()
        );
        assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    }

    #[test]
    fn the_kernels_built_in_are_the_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        for (name, text) in [
            ("pdq_common.wgsl", COMMON_WGSL),
            ("pdq_luma.wgsl", LUMA_WGSL),
            ("pdq_box.wgsl", BOX_WGSL),
            ("pdq_dct.wgsl", DCT_WGSL),
        ] {
            assert_eq!(
                std::fs::read_to_string(dir.join(name)).unwrap(),
                text,
                "{name}"
            );
        }
    }

    #[test]
    fn every_kernel_equals_its_cpu_twin() {
        let Some(mut gpu) = hasher() else { return };
        let failures = stage_failures(&mut gpu, &mixed_batch());
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    /// Rebuilds the kernels with the division overrides.
    fn with_division(gpu: &mut GpuHasher, constants: &[(&str, f64)]) {
        gpu.pipelines = build_pipelines(&gpu.device, constants);
        // bind groups belong to the old layouts
        gpu.sets = Default::default();
    }

    #[test]
    fn division_is_correctly_rounded_from_a_nudged_quotient() {
        let Some(mut gpu) = hasher() else { return };
        let batch = mixed_batch();
        // the nudge alone (-2..+2 units in the last place) changes results ...
        with_division(&mut gpu, &[("DIV_NUDGE", 1.0), ("DIV_WALK", 0.0)]);
        let failures = stage_failures(&mut gpu, &batch);
        for stage in [
            "box_rows",
            "box_cols",
            "box_rows_sampled",
            "box_cols_sampled",
        ] {
            assert!(
                failures.iter().any(|f| f.contains(&format!(": {stage}: "))),
                "nudging left {stage} unchanged"
            );
        }
        // ... and the walk takes every quotient back to the correctly rounded one
        with_division(&mut gpu, &[("DIV_NUDGE", 1.0)]);
        let failures = stage_failures(&mut gpu, &batch);
        assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    }

    /// Every way the GPU's stage outputs differ from their CPU twins' on the same inputs.
    fn stage_failures(gpu: &mut GpuHasher, batch: &[TestFrame]) -> Vec<String> {
        let frames: Vec<_> = batch.iter().map(TestFrame::gpu).collect();
        let outs = gpu.stage_outputs(&frames).unwrap();
        let mut failures = Vec::new();
        let mut fail = |frame: &str, stage: &str, why: String| {
            failures.push(format!("{frame}: {stage}: {why}"));
        };
        for (t, o) in batch.iter().zip(&outs) {
            let (w, h, name) = (t.width, t.height, t.name.as_str());
            if w < MIN_HASHABLE_DIM || h < MIN_HASHABLE_DIM {
                if o.quality != 0 || o.hashes != [Hash256::default(); 8] {
                    fail(name, "tiny frame", "hash or quality not zero".into());
                }
                continue;
            }
            // each stage's CPU twin runs on the GPU's output of the stage before
            let mut luma = Vec::new();
            match &t.input {
                Input::Luma8 { .. } => pdq::luma(t.pixels(), w, h, &mut luma),
                Input::Rgb { luma: l, .. } => luma.clone_from(l),
            }
            if let Some(why) = differ(&o.luma, &luma) {
                fail(name, "luma", why);
            }
            let down: Vec<f32> = if w == DOWN && h == DOWN {
                o.luma.clone()
            } else {
                let (wr, wc) = (pdq::jarosz_window(w, DOWN), pdq::jarosz_window(h, DOWN));
                let mut rows = vec![0f32; w * h];
                pdq::box_rows(&o.luma, &mut rows, h, w, wr);
                if let Some(why) = differ(&o.rows, &rows) {
                    fail(name, "box_rows", why);
                }
                let mut cols = vec![0f32; w * h];
                pdq::box_cols(&o.rows, &mut cols, h, w, wc);
                if let Some(why) = differ(&o.cols, &cols) {
                    fail(name, "box_cols", why);
                }
                let mut kept = vec![0f32; h * DOWN];
                pdq::box_rows_sampled(&o.cols, &mut kept, h, w, wr, &pdq::sample_positions(w));
                if let Some(why) = differ(&o.rows_sampled, &kept) {
                    fail(name, "box_rows_sampled", why);
                }
                let down = pdq::box_cols_sampled(&o.rows_sampled, h, wc, &pdq::sample_positions(h));
                down.iter().flatten().copied().collect()
            };
            if let Some(why) = differ(&o.down, &down) {
                fail(name, "box_cols_sampled", why);
            }
            let gpu_down: [[f32; DOWN]; DOWN] = square(&o.down);
            let dct: Vec<f32> = pdq::dct64_to_16(&gpu_down)
                .iter()
                .flatten()
                .copied()
                .collect();
            if let Some(why) = differ(&o.dct, &dct) {
                fail(name, "dct64_to_16", why);
            }
            let quality = pdq::quality_metric(&gpu_down);
            if o.quality != quality {
                fail(
                    name,
                    "quality_metric",
                    format!("gpu {} cpu {quality}", o.quality),
                );
            }
            let gpu_dct: [[f32; DCT]; DCT] = square(&o.dct);
            let hashes = pdq::dihedral(&gpu_dct).map(|v| pdq::dct_to_bits(&v));
            for (v, (g, c)) in o.hashes.iter().zip(&hashes).enumerate() {
                if g != c {
                    fail(
                        name,
                        pdq::DIHEDRAL_NAMES[v],
                        format!("gpu {g} cpu {c}, {} bits apart", g.distance(c)),
                    );
                }
            }
        }
        failures
    }

    #[test]
    fn batches_hash_as_the_cpu_does() {
        let Some(mut gpu) = hasher() else { return };
        let batch = mixed_batch();
        let frames: Vec<_> = batch.iter().map(TestFrame::gpu).collect();
        let mut cpu = PdqHasher::new();
        let dihedral = gpu.hash_batch(&frames, true).unwrap();
        let single = gpu.hash_batch(&frames, false).unwrap();
        assert_eq!(dihedral.len(), batch.len());
        for (i, t) in batch.iter().enumerate() {
            let expected = cpu.hash_dihedral(t.pixels(), t.width, t.height);
            assert_eq!(dihedral[i], expected, "{}: dihedral", t.name);
            let one = cpu.hash(t.pixels(), t.width, t.height);
            assert_eq!(
                (single[i].hashes[0], single[i].quality),
                (one.hash, one.quality),
                "{}: original only",
                t.name
            );
            assert!(
                single[i].hashes[1..]
                    .iter()
                    .all(|h| *h == Hash256::default()),
                "{}: variants not asked for are zero",
                t.name
            );
        }
        assert!(gpu.hash_batch(&[], true).unwrap().is_empty());
    }

    #[test]
    fn small_sub_batches_double_buffer_and_reuse_buffers() {
        let Some(mut gpu) = hasher() else { return };
        // 150x100 needs 60 KB planes: at most 3 frames a sub-batch, so 12 frames take 4
        // sub-batches alternating between the two buffer sets
        gpu.sub_batch_bytes = 200 << 10;
        let mut cpu = PdqHasher::new();
        for round in 0..2u64 {
            let batch: Vec<_> = (0..12u64)
                .map(|i| {
                    let (w, h) = if i % 5 == 4 { (90, 60) } else { (150, 100) };
                    TestFrame::luma8(w, h, w + (i as usize % 3), i % 2 == 0, 100 + i + round * 20)
                })
                .collect();
            let frames: Vec<_> = batch.iter().map(TestFrame::gpu).collect();
            assert!(gpu.split(&frames, true).unwrap().len() >= 4);
            let (profiled, times) = gpu.hash_batch_profiled(&frames, true).unwrap();
            let overlapped = gpu.hash_batch(&frames, true).unwrap();
            assert!(times.compute > Duration::ZERO);
            for (i, t) in batch.iter().enumerate() {
                let expected = cpu.hash_dihedral(t.pixels(), t.width, t.height);
                assert_eq!(
                    overlapped[i], expected,
                    "round {round} frame {i} {}",
                    t.name
                );
                assert_eq!(
                    profiled[i], expected,
                    "round {round} frame {i} {} (profiled)",
                    t.name
                );
            }
        }
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let Some(mut gpu) = hasher() else { return };
        let data = vec![0u8; 100];
        let short = GpuFrame::Luma8 {
            data: &data,
            width: 20,
            height: 20,
            stride: 20,
            limited: false,
        };
        let err = gpu.hash_batch(&[short], false).unwrap_err().to_string();
        assert!(
            err.contains("frame 0") && err.contains("needs 400"),
            "{err}"
        );
        let narrow = GpuFrame::Luma8 {
            data: &data,
            width: 10,
            height: 5,
            stride: 8,
            limited: false,
        };
        let err = gpu.hash_batch(&[narrow], false).unwrap_err().to_string();
        assert!(err.contains("stride 8"), "{err}");
        gpu.sub_batch_bytes = 64 << 10;
        let big = vec![0u8; 200 * 200];
        let large = GpuFrame::Luma8 {
            data: &big,
            width: 200,
            height: 200,
            stride: 200,
            limited: false,
        };
        let err = gpu.hash_batch(&[large], false).unwrap_err().to_string();
        assert!(err.contains("GPU buffer"), "{err}");
    }

    #[test]
    fn adapter_choice_errors_name_the_adapters() {
        let adapters = list_adapters();
        if adapters.is_empty() {
            eprintln!("SKIPPED: no wgpu adapter");
            let err = GpuHasher::new(AdapterChoice::Auto, true).err().unwrap();
            assert!(err.to_string().contains("no wgpu adapter"), "{err}");
            return;
        }
        let err = GpuHasher::new(AdapterChoice::Index(adapters.len()), true)
            .err()
            .expect("index out of range");
        let text = format!("{err:#}");
        assert!(text.contains("out of range"), "{text}");
        assert!(
            text.contains(&adapters[0].name),
            "lists the adapters: {text}"
        );
        let err = GpuHasher::new(AdapterChoice::Name("no such adapter 1234".into()), true)
            .err()
            .expect("name not found");
        assert!(
            format!("{err:#}").contains("no adapter name contains"),
            "{err:#}"
        );
        if adapters
            .iter()
            .all(|a| a.device_type == wgpu::DeviceType::Cpu)
        {
            let err = GpuHasher::new(AdapterChoice::Auto, false)
                .err()
                .expect("software only without allow_software");
            assert!(format!("{err:#}").contains("allow_software"), "{err:#}");
        }
        // by name, case-insensitively: the first adapter
        let name = adapters[0].name.to_uppercase();
        if let Ok(gpu) = GpuHasher::new(AdapterChoice::Name(name), true) {
            assert_eq!(gpu.adapter_info().name, adapters[0].name);
            assert_eq!(
                gpu.is_software(),
                adapters[0].device_type == wgpu::DeviceType::Cpu
            );
        }
    }
}
