//! Exact Hamming-radius search by brute force on a GPU: `shaders/hamming_scan.wgsl`.
//!
//! The bank's hashes live in device memory (32 bytes each, in chunks no larger than one
//! storage binding); a batch of queries is uploaded, every (hash, query) pair is compared,
//! and only the pairs within the radius come back. That is the same set the brute-force
//! scan on the CPU finds (the kernel computes the same integer popcounts), so it can stand in
//! for [`HammingIndex`](super::HammingIndex) wherever a batch of queries is matched.
//!
//! Why a scan and not the multi-index on the GPU: a scan reads the bank once per batch,
//! sequentially, whatever the radius, and a GPU's memory bandwidth makes that read short
//! (10 M hashes are 320 MB); what it costs is compute per (hash, query) pair, which a batch
//! of a few hundred queries keeps busy. On a server the CPU cores are what decoding needs,
//! so moving matching onto the GPU frees them. A software adapter (lavapipe) runs the same
//! kernel, slowly: it is how the kernel is tested without a GPU.

use std::sync::{mpsc, Arc, Mutex};

use anyhow::{bail, Context};

use crate::config::{AdapterSelector, HashBackend, MatchConfig};
use crate::hash::gpu::{
    buffer_layout, enumerate, error_scoped, grow, new_instance, pick_adapter, AdapterChoice,
};
use crate::hash::BackendInfo;

const SCAN_WGSL: &str = include_str!("../../shaders/hamming_scan.wgsl");
/// The kernel's workgroup size (`SCAN_GROUP`).
const GROUP: u32 = 64;
/// Bytes per stored hash.
const HASH_BYTES: u64 = 32;
/// Bytes of the output's header (the hit counter and padding), and per hit.
const OUT_HEADER: u64 = 16;
const HIT_BYTES: u64 = 8;
/// Hit slots reserved at first; a batch that finds more runs again with room for all.
const FIRST_CAPACITY: u32 = 4096;
/// Queries per dispatch at most. Mesa's software rasteriser ends any shader loop after 65 535
/// iterations (counted over nested loops), which a dispatch of 65 536 queries reaches; a
/// larger batch is split on the host.
const MAX_QUERIES: usize = 1 << 14;
/// Uniform buffer offsets must be multiples of this (wgpu's default alignment).
const PARAMS_STRIDE: u64 = 256;

/// Opens the scanner `[match]` asks for: none for `cpu`; a real GPU's (or, with
/// `allow_software`, any adapter's) or an error for `gpu`; a real GPU's when there is one for
/// `auto`, else none (and the log says why). With the description logs, metrics and the
/// status API show.
pub fn from_config(config: &MatchConfig) -> anyhow::Result<(Option<Arc<GpuScanner>>, BackendInfo)> {
    let cpu = || BackendInfo::cpu("multi-index");
    let choice = match &config.adapter {
        None => AdapterChoice::Auto,
        Some(AdapterSelector::Index(i)) => AdapterChoice::Index(*i),
        Some(AdapterSelector::Name(n)) => AdapterChoice::Name(n.clone()),
    };
    let scanner = match config.backend {
        HashBackend::Cpu => return Ok((None, cpu())),
        HashBackend::Gpu => {
            GpuScanner::new(choice, config.allow_software).context("match.backend = \"gpu\"")?
        }
        HashBackend::Auto => match GpuScanner::new(choice, false) {
            Ok(s) => s,
            Err(e) => {
                tracing::info!("no usable GPU adapter, large banks are matched on the CPU: {e:#}");
                return Ok((None, cpu()));
            }
        },
    };
    let info = BackendInfo::gpu(scanner.adapter_info());
    Ok((Some(scanner), info))
}

/// Field for field the kernel's `ScanParams`.
#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    count: u32,
    queries: u32,
    radius: u32,
    first_id: u32,
    capacity: u32,
    row: u32,
}

/// A GPU adapter with the scan kernel built; shared by every bank copied onto it.
pub struct GpuScanner {
    info: wgpu::AdapterInfo,
    device: wgpu::Device,
    queue: wgpu::Queue,
    pipeline: wgpu::ComputePipeline,
    layout: wgpu::BindGroupLayout,
    /// Hashes per chunk: what one storage binding may hold.
    chunk_hashes: usize,
    /// Largest storage binding, and largest buffer, in bytes.
    max_binding: u64,
    max_buffer: u64,
    max_groups: u32,
    /// Buffers reused between batches; one batch runs at a time.
    scratch: Mutex<Scratch>,
    _instance: wgpu::Instance,
}

#[derive(Default)]
struct Scratch {
    queries: Option<wgpu::Buffer>,
    params: Option<wgpu::Buffer>,
    out: Option<wgpu::Buffer>,
    readback: Option<wgpu::Buffer>,
    /// Hit slots `out` holds.
    capacity: u32,
}

impl std::fmt::Debug for GpuScanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuScanner")
            .field("adapter", &self.info.name)
            .field("chunk_hashes", &self.chunk_hashes)
            .finish()
    }
}

impl GpuScanner {
    /// Opens the adapter `choice` names and builds the kernel. A software adapter is taken
    /// only with `allow_software`.
    pub fn new(choice: AdapterChoice, allow_software: bool) -> anyhow::Result<Arc<Self>> {
        Self::with_chunk(choice, allow_software, None)
    }

    /// [`new`](Self::new) with chunks of at most `chunk_hashes` hashes, so that tests cross
    /// chunk boundaries on small banks.
    #[doc(hidden)]
    pub fn with_chunk(
        choice: AdapterChoice,
        allow_software: bool,
        chunk_hashes: Option<usize>,
    ) -> anyhow::Result<Arc<Self>> {
        let instance = new_instance();
        let adapter = pick_adapter(enumerate(&instance), &choice, allow_software)?;
        let info = adapter.get_info();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("livewatch hamming scan"),
            required_features: wgpu::Features::empty(),
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .with_context(|| format!("open a device on {}", info.name))?;
        let ((pipeline, layout), err) = error_scoped(&device, || build_pipeline(&device));
        if let Some(e) = err {
            bail!(
                "the Hamming scan kernel does not build on {}: {e}",
                info.name
            );
        }
        let limits = device.limits();
        let binding = limits
            .max_storage_buffer_binding_size
            .min(limits.max_buffer_size);
        let fits = (binding / HASH_BYTES) as usize;
        let chunk_hashes = chunk_hashes.map_or(fits, |c| c.clamp(1, fits));
        Ok(Arc::new(GpuScanner {
            info,
            device,
            queue,
            pipeline,
            layout,
            chunk_hashes,
            max_binding: binding & !255,
            max_buffer: limits.max_buffer_size & !255,
            max_groups: limits.max_compute_workgroups_per_dimension,
            scratch: Mutex::default(),
            _instance: instance,
        }))
    }

    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// A software rasteriser (device type `Cpu`), such as lavapipe.
    pub fn is_software(&self) -> bool {
        self.info.device_type == wgpu::DeviceType::Cpu
    }

    /// Copies `hashes` into device memory; ids are positions in `hashes`.
    pub fn upload(self: &Arc<Self>, hashes: &[[u64; 4]]) -> anyhow::Result<GpuBank> {
        assert!(
            hashes.len() < u32::MAX as usize,
            "ids are u32: at most 2^32 - 1 hashes"
        );
        let (chunks, err) = error_scoped(&self.device, || {
            hashes
                .chunks(self.chunk_hashes)
                .enumerate()
                .map(|(c, part)| {
                    let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                        label: Some("hamming scan bank"),
                        size: part.len() as u64 * HASH_BYTES,
                        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
                        mapped_at_creation: false,
                    });
                    self.queue
                        .write_buffer(&buffer, 0, bytemuck::cast_slice(part));
                    Chunk {
                        buffer,
                        first: (c * self.chunk_hashes) as u32,
                        len: part.len() as u32,
                    }
                })
                .collect::<Vec<_>>()
        });
        if let Some(e) = err {
            bail!(
                "copy {} hashes ({} MB) onto {}: {e}",
                hashes.len(),
                (hashes.len() as u64 * HASH_BYTES) >> 20,
                self.info.name
            );
        }
        Ok(GpuBank {
            scanner: self.clone(),
            chunks,
            len: hashes.len(),
        })
    }
}

/// One chunk of a bank in device memory.
struct Chunk {
    buffer: wgpu::Buffer,
    /// Id of its first hash.
    first: u32,
    len: u32,
}

/// A bank's hashes in device memory, ready to be scanned.
pub struct GpuBank {
    scanner: Arc<GpuScanner>,
    chunks: Vec<Chunk>,
    len: usize,
}

impl std::fmt::Debug for GpuBank {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuBank")
            .field("adapter", &self.scanner.info.name)
            .field("hashes", &self.len)
            .field("chunks", &self.chunks.len())
            .finish()
    }
}

impl GpuBank {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Device memory held, in bytes.
    pub fn device_bytes(&self) -> u64 {
        self.len as u64 * HASH_BYTES
    }

    pub fn scanner(&self) -> &Arc<GpuScanner> {
        &self.scanner
    }

    /// For each query, every `(id, distance)` with `distance <= max_distance`, in ascending
    /// id order: what [`HammingIndex::query`](super::HammingIndex::query) returns.
    pub fn query_batch(
        &self,
        qs: &[[u64; 4]],
        max_distance: u32,
    ) -> anyhow::Result<Vec<Vec<(u32, u32)>>> {
        let mut out: Vec<Vec<(u32, u32)>> = vec![Vec::new(); qs.len()];
        if self.len == 0 || qs.is_empty() {
            return Ok(out);
        }
        // the hit counter is a u32 that keeps counting past the capacity: a dispatch may
        // compare at most u32::MAX pairs
        let per = MAX_QUERIES.min((u32::MAX as usize / self.len).max(1));
        let mut scratch = self
            .scanner
            .scratch
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        for (p, part) in qs.chunks(per).enumerate() {
            let base = p * per;
            for (id, packed) in self.run(&mut scratch, part, max_distance)? {
                let (q, d) = ((packed >> 9) as usize, packed & 511);
                out[base + q].push((id, d));
            }
        }
        for v in &mut out {
            v.sort_unstable();
        }
        Ok(out)
    }

    /// One dispatch per chunk over `qs`; the hits, unordered. Runs again with more room
    /// when the first run found more hits than there were slots.
    fn run(
        &self,
        scratch: &mut Scratch,
        qs: &[[u64; 4]],
        radius: u32,
    ) -> anyhow::Result<Vec<(u32, u32)>> {
        let s = &*self.scanner;
        let query_bytes = qs.len() as u64 * HASH_BYTES;
        let params_bytes = self.chunks.len() as u64 * PARAMS_STRIDE;
        let mut capacity = scratch.capacity.max(FIRST_CAPACITY);
        loop {
            let out_bytes = OUT_HEADER + u64::from(capacity) * HIT_BYTES;
            if out_bytes > s.max_binding || query_bytes > s.max_binding {
                bail!(
                    "a scan batch needs {out_bytes} bytes for its hits and {query_bytes} for its \
                     queries; one binding on {} holds {}",
                    s.info.name,
                    s.max_binding
                );
            }
            let (cap, map_cap) = (s.max_binding, s.max_buffer);
            let ((), err) = error_scoped(&s.device, || {
                use wgpu::BufferUsages as U;
                grow(
                    &s.device,
                    &mut scratch.queries,
                    query_bytes,
                    cap,
                    U::STORAGE | U::COPY_DST,
                    "hamming scan queries",
                    false,
                );
                grow(
                    &s.device,
                    &mut scratch.params,
                    params_bytes,
                    map_cap,
                    U::UNIFORM | U::COPY_DST,
                    "hamming scan params",
                    false,
                );
                grow(
                    &s.device,
                    &mut scratch.out,
                    out_bytes,
                    cap,
                    U::STORAGE | U::COPY_SRC | U::COPY_DST,
                    "hamming scan hits",
                    false,
                );
                grow(
                    &s.device,
                    &mut scratch.readback,
                    out_bytes,
                    map_cap,
                    U::MAP_READ | U::COPY_DST,
                    "hamming scan readback",
                    false,
                );
            });
            if let Some(e) = err {
                bail!("allocate the scan's buffers on {}: {e}", s.info.name);
            }
            scratch.capacity = capacity;
            let (queries, params) = (buf(&scratch.queries), buf(&scratch.params));
            let (hits, readback) = (buf(&scratch.out), buf(&scratch.readback));
            s.queue.write_buffer(queries, 0, bytemuck::cast_slice(qs));
            let mut plans = Vec::with_capacity(self.chunks.len());
            for (c, chunk) in self.chunks.iter().enumerate() {
                let (groups_x, groups_y) = grid(chunk.len, s.max_groups);
                let p = Params {
                    count: chunk.len,
                    queries: qs.len() as u32,
                    radius,
                    first_id: chunk.first,
                    capacity,
                    row: groups_x * GROUP,
                };
                s.queue
                    .write_buffer(params, c as u64 * PARAMS_STRIDE, bytemuck::bytes_of(&p));
                plans.push((groups_x, groups_y));
            }
            let (submission, err) = error_scoped(&s.device, || {
                let mut encoder =
                    s.device
                        .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                            label: Some("hamming scan"),
                        });
                encoder.clear_buffer(hits, 0, Some(OUT_HEADER));
                {
                    let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                        label: Some("hamming scan"),
                        timestamp_writes: None,
                    });
                    pass.set_pipeline(&s.pipeline);
                    for ((c, chunk), &(gx, gy)) in self.chunks.iter().enumerate().zip(&plans) {
                        let group = s.device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some("hamming scan"),
                            layout: &s.layout,
                            entries: &[
                                entire(0, &chunk.buffer),
                                wgpu::BindGroupEntry {
                                    binding: 1,
                                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                        buffer: queries,
                                        offset: 0,
                                        size: wgpu::BufferSize::new(query_bytes),
                                    }),
                                },
                                wgpu::BindGroupEntry {
                                    binding: 2,
                                    resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                        buffer: params,
                                        offset: c as u64 * PARAMS_STRIDE,
                                        size: wgpu::BufferSize::new(
                                            std::mem::size_of::<Params>() as u64
                                        ),
                                    }),
                                },
                                entire(3, hits),
                            ],
                        });
                        pass.set_bind_group(0, &group, &[]);
                        pass.dispatch_workgroups(gx, gy, 1);
                    }
                }
                encoder.copy_buffer_to_buffer(hits, 0, readback, 0, out_bytes);
                s.queue.submit([encoder.finish()])
            });
            if let Some(e) = err {
                bail!("run the Hamming scan on {}: {e}", s.info.name);
            }
            let (tx, rx) = mpsc::channel();
            readback.map_async(wgpu::MapMode::Read, 0..out_bytes, move |r| {
                let _ = tx.send(r);
            });
            s.device
                .poll(wgpu::PollType::Wait {
                    submission_index: Some(submission),
                    timeout: None,
                })
                .context("wait for the GPU")?;
            rx.recv()
                .context("scan readback mapping dropped")?
                .context("map the scan readback")?;
            let (found, hits) = {
                let view = readback
                    .get_mapped_range(0..out_bytes)
                    .context("view the scan readback")?;
                let words: &[u32] = bytemuck::cast_slice(&view);
                let found = words[0];
                let kept = found.min(capacity) as usize;
                let hits: Vec<(u32, u32)> = words[4..4 + 2 * kept]
                    .chunks_exact(2)
                    .map(|w| (w[0], w[1]))
                    .collect();
                (found, hits)
            };
            readback.unmap();
            if found <= capacity {
                return Ok(hits);
            }
            // too many hits for the slots: run again with room for all of them
            capacity = found.checked_next_power_of_two().unwrap_or(found);
        }
    }
}

fn buf(slot: &Option<wgpu::Buffer>) -> &wgpu::Buffer {
    slot.as_ref().expect("allocated before use")
}

fn entire(binding: u32, buffer: &wgpu::Buffer) -> wgpu::BindGroupEntry<'_> {
    wgpu::BindGroupEntry {
        binding,
        resource: buffer.as_entire_binding(),
    }
}

/// Workgroups for `n` invocations as an (x, y) grid within the per-dimension limit.
fn grid(n: u32, max_groups: u32) -> (u32, u32) {
    let groups = n.div_ceil(GROUP).max(1);
    let x = groups.min(max_groups);
    (x, groups.div_ceil(x))
}

fn build_pipeline(device: &wgpu::Device) -> (wgpu::ComputePipeline, wgpu::BindGroupLayout) {
    use wgpu::BufferBindingType;
    let read = BufferBindingType::Storage { read_only: true };
    let layout = buffer_layout(
        device,
        "hamming scan",
        &[
            read,
            read,
            BufferBindingType::Uniform,
            BufferBindingType::Storage { read_only: false },
        ],
    );
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
        label: Some("hamming_scan.wgsl"),
        source: wgpu::ShaderSource::Wgsl(SCAN_WGSL.into()),
    });
    let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
        label: Some("hamming scan"),
        bind_group_layouts: &[Some(&layout)],
        immediate_size: 0,
    });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some("hamming scan"),
        layout: Some(&pl),
        module: &module,
        entry_point: Some("scan_main"),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants: &[],
            // the tile is written before it is read
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    });
    (pipeline, layout)
}

#[cfg(test)]
mod tests {
    use super::super::tests::{brute, flip, Rng};
    use super::*;
    use crate::hash::gpu::list_adapters;

    /// The scanner under test, on any adapter (lavapipe included), with chunks of `chunk`
    /// hashes. None (the test skips, loudly) only when wgpu finds no adapter at all.
    fn scanner(chunk: Option<usize>) -> Option<Arc<GpuScanner>> {
        if list_adapters().is_empty() {
            eprintln!("SKIPPED: no wgpu adapter");
            return None;
        }
        let s = GpuScanner::with_chunk(AdapterChoice::Auto, true, chunk).expect("open an adapter");
        eprintln!(
            "adapter: {} ({:?}), {} hashes per chunk",
            s.info.name, s.info.device_type, s.chunk_hashes
        );
        Some(s)
    }

    /// Random hashes with near-duplicates planted among them (some stored twice), and
    /// queries: near-duplicates of stored hashes (0..=40 bits flipped) and random ones.
    fn corpus(n: usize, queries: usize, seed: u64) -> (Vec<[u64; 4]>, Vec<[u64; 4]>) {
        let mut rng = Rng(seed);
        let mut hashes: Vec<[u64; 4]> = (0..n).map(|_| rng.hash()).collect();
        for i in (0..n).step_by(97) {
            let src = hashes[rng.below(n as u64) as usize];
            let k = rng.below(12) as u32;
            hashes[i] = flip(&mut rng, &src, k);
        }
        let qs = (0..queries)
            .map(|i| {
                if i % 2 == 0 {
                    let src = hashes[rng.below(n as u64) as usize];
                    let k = rng.below(41) as u32;
                    flip(&mut rng, &src, k)
                } else {
                    rng.hash()
                }
            })
            .collect();
        (hashes, qs)
    }

    #[test]
    fn scan_equals_brute_force_across_chunks_and_thresholds() {
        // 777-hash chunks: 5000 hashes take 7 dispatches, the last one partial
        let Some(s) = scanner(Some(777)) else { return };
        let (hashes, qs) = corpus(5000, 300, 7);
        let bank = s.upload(&hashes).unwrap();
        assert_eq!(bank.chunks.len(), 7);
        let index = super::super::HammingIndex::new(&hashes);
        for r in [0, 1, 8, 31, 48, 70] {
            let got = bank.query_batch(&qs, r).unwrap();
            let mut found = 0;
            for (q, g) in qs.iter().zip(&got) {
                assert_eq!(*g, brute(&hashes, q, r), "r = {r}");
                assert_eq!(*g, index.query(q, r), "r = {r}, against the index");
                found += g.len();
            }
            if r >= 31 {
                assert!(
                    found >= 100,
                    "r = {r}: only {found} hits, the corpus plants more"
                );
            }
        }
    }

    #[test]
    fn more_hits_than_slots_are_all_returned() {
        // radius 256: every pair is a hit, 3000 x 5 = 15 000 against 4096 slots at first
        let Some(s) = scanner(None) else { return };
        let (hashes, qs) = corpus(3000, 5, 11);
        let bank = s.upload(&hashes).unwrap();
        let got = bank.query_batch(&qs, 256).unwrap();
        for (q, g) in qs.iter().zip(&got) {
            assert_eq!(g.len(), hashes.len());
            assert_eq!(*g, brute(&hashes, q, 256));
        }
        // the slots grown for that batch serve the next one
        assert!(s.scratch.lock().unwrap().capacity >= 15_000);
        let again = bank.query_batch(&qs[..1], 31).unwrap();
        assert_eq!(again[0], brute(&hashes, &qs[0], 31));
    }

    #[test]
    fn batches_beyond_one_dispatch_keep_query_order() {
        // more queries than one dispatch takes: every part's hits land on the right queries,
        // up to the last query of a batch of 65 536 (beyond lavapipe's loop limit)
        let Some(s) = scanner(None) else { return };
        let (hashes, _) = corpus(4, 0, 3);
        let mut rng = Rng(5);
        let qs: Vec<[u64; 4]> = (0..4 * MAX_QUERIES + 700)
            .map(|i| match i % 3 {
                0 => flip(&mut rng, &hashes[i % 4], (i % 29) as u32),
                _ => rng.hash(),
            })
            .collect();
        let bank = s.upload(&hashes).unwrap();
        let got = bank.query_batch(&qs, 28).unwrap();
        let mut hits = 0;
        let bad: Vec<usize> = (0..qs.len())
            .filter(|&i| got[i] != brute(&hashes, &qs[i], 28))
            .collect();
        let extra: Vec<usize> = (0..qs.len())
            .filter(|&i| got[i].len() > brute(&hashes, &qs[i], 28).len())
            .collect();
        eprintln!(
            "extra {} {:?} {:?} {:?}",
            extra.len(),
            &extra[..extra.len().min(5)],
            got[61683],
            brute(&hashes, &qs[61683], 28)
        );
        eprintln!(
            "bad {} first {:?} last {:?}",
            bad.len(),
            &bad[..bad.len().min(10)],
            bad.last()
        );
        for (q, g) in qs.iter().zip(&got) {
            assert_eq!(*g, brute(&hashes, q, 28));
            hits += g.len();
        }
        assert!(hits > MAX_QUERIES / 4, "{hits} hits");
    }

    #[test]
    fn empty_banks_and_batches_answer_nothing() {
        let Some(s) = scanner(None) else { return };
        let empty = s.upload(&[]).unwrap();
        assert!(empty.is_empty());
        assert_eq!(
            empty.query_batch(&[[1, 2, 3, 4]], 256).unwrap(),
            vec![vec![]]
        );
        let bank = s.upload(&[[1, 2, 3, 4]]).unwrap();
        assert!(bank.query_batch(&[], 31).unwrap().is_empty());
        assert_eq!(
            bank.query_batch(&[[1, 2, 3, 4]], 0).unwrap(),
            vec![vec![(0, 0)]]
        );
    }
}
