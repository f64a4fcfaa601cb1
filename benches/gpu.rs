//! PDQ throughput on a GPU adapter (the WGSL kernels in `shaders/`): frames per second for
//! batches of 720p and 1080p limited-range luma planes, as the appliance hashes video, and the
//! time per frame split into upload, compute and readback. Every hash is checked against the
//! CPU implementation first.
//!
//! * `frames/s` is `hash_batch` as the appliance calls it: sub-batches double-buffered, the
//!   upload of one overlapping the kernels of the one before.
//! * the split comes from `hash_batch_profiled`, which runs the three phases one after the
//!   other and waits for each, so its sum is above the overlapped time per frame.
//!
//! On a software adapter (lavapipe: a CPU emulating a GPU) the figures are informational only.
//! Run with `cargo bench --bench gpu`; without `--bench` (a test run) it hashes two small
//! batches once, as a check. `WGPU_BACKEND` picks the backend, `LIVEWATCH_GPU_ADAPTER` an
//! adapter by index or by part of its name.

use std::time::{Duration, Instant};

use livewatch::hash::gpu::{list_adapters, AdapterChoice, GpuFrame, GpuHasher, PhaseTimes};
use livewatch::hash::{PdqHasher, Pixels};

/// Deterministic limited-range Y planes with structure at several scales (gradients, blocks,
/// noise), `n` frames of `w x h` back to back.
fn y_planes(n: usize, w: usize, h: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut out = Vec::with_capacity(n * w * h);
    for f in 0..n {
        for y in 0..h {
            for x in 0..w {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state >> 56) as usize % 24;
                let block = ((x / (40 + f * 3)) ^ (y / (30 + f * 2))) % 2 * 90;
                let v = (x * 255 / w + y * 128 / h + block + noise + f * 7) % 256;
                out.push((16 + v * 219 / 255) as u8);
            }
        }
    }
    out
}

fn ms(d: Duration, frames: usize) -> f64 {
    d.as_secs_f64() * 1e3 / frames as f64
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this runs once, small, as a check
    let full = std::env::args().any(|a| a == "--bench");
    if list_adapters().is_empty() {
        println!("gpu: SKIPPED — no wgpu adapter (Vulkan or GL)");
        return;
    }
    let choice = match std::env::var("LIVEWATCH_GPU_ADAPTER") {
        Ok(s) => match s.parse() {
            Ok(i) => AdapterChoice::Index(i),
            Err(_) => AdapterChoice::Name(s),
        },
        Err(_) => AdapterChoice::Auto,
    };
    let mut gpu = GpuHasher::new(choice, true).expect("open the GPU adapter");
    let info = gpu.adapter_info().clone();
    println!(
        "gpu: adapter {} ({:?}, {:?}, {} {})",
        info.name, info.device_type, info.backend, info.driver, info.driver_info
    );
    if gpu.is_software() {
        println!(
            "gpu: software adapter (a CPU emulating a GPU): timings are informational only, \
             not what a GPU does"
        );
    }
    let (batches, rounds): (&[usize], usize) = match (full, gpu.is_software()) {
        (false, _) => (&[2], 1),
        (true, true) => (&[8], 2),
        (true, false) => (&[16, 64], 5),
    };
    if !full {
        println!("gpu: test build, batches of 2: checks the hashes, timings not meaningful");
    }
    let mut cpu = PdqHasher::new();
    for (w, h) in [(1280usize, 720usize), (1920, 1080)] {
        let most = batches.iter().copied().max().unwrap_or(1);
        let planes = y_planes(most, w, h);
        for &n in batches {
            let frames: Vec<GpuFrame<'_>> = (0..n)
                .map(|i| GpuFrame::Luma8 {
                    data: &planes[i * w * h..(i + 1) * w * h],
                    width: w,
                    height: h,
                    stride: w,
                    limited: true,
                })
                .collect();
            // first call: grows the buffers, and its hashes are checked
            let hashes = gpu.hash_batch(&frames, false).expect("hash a batch");
            for (i, got) in hashes.iter().enumerate() {
                let data = &planes[i * w * h..(i + 1) * w * h];
                let want = cpu.hash(Pixels::VideoY { data, stride: w }, w, h);
                assert_eq!(
                    (got.hashes[0], got.quality),
                    (want.hash, want.quality),
                    "{w}x{h} frame {i}: GPU and CPU hashes differ"
                );
            }
            let mut best = Duration::MAX;
            for _ in 0..rounds {
                let t = Instant::now();
                gpu.hash_batch(&frames, false).expect("hash a batch");
                best = best.min(t.elapsed());
            }
            let mut split = PhaseTimes {
                upload: Duration::MAX,
                compute: Duration::MAX,
                readback: Duration::MAX,
            };
            for _ in 0..rounds {
                let (_, t) = gpu
                    .hash_batch_profiled(&frames, false)
                    .expect("hash a batch");
                split.upload = split.upload.min(t.upload);
                split.compute = split.compute.min(t.compute);
                split.readback = split.readback.min(t.readback);
            }
            println!(
                "gpu/{w}x{h} batch {n:3}: {:8.1} frames/s ({:.3} ms/frame); sequential phases \
                 per frame: upload {:.3} ms, compute {:.3} ms, readback {:.3} ms; \
                 all {n} hashes equal the CPU's",
                n as f64 / best.as_secs_f64(),
                ms(best, n),
                ms(split.upload, n),
                ms(split.compute, n),
                ms(split.readback, n),
            );
        }
    }
}
