//! The classifier on the CPU: what the live worker does per batch against ONNX Runtime alone,
//! on the same model and batch size, in one run.
//!
//! For each real model (`image-safety-classifier-s`, NCHW 224; `open-nsfw`, NHWC 256 → 224
//! crop) at batches of 1 and 16:
//!
//! * **bare**: `Model::run` on a ready tensor (ONNX Runtime itself: `run` wraps the slice
//!   without copying it and reads the output rows back).
//! * **pipeline**: the live worker itself (`service::run_worker`) on a second session of the
//!   same model: decoded 720p frames (`Arc<Frame>`, one per stream) pushed to its
//!   `FrameQueue` as decoders push them; its pre-processing thread takes them with
//!   `next_batch` and pre-processes each batch on the CPU twin (`Preprocess::Cpu`) while its
//!   inference thread runs the previous one through `Model::run`; the scores come back on a
//!   channel (where the live worker hands them to the decision stage).
//!
//! The two alternate in blocks of about half a second (at least four batches, so that the
//! pipeline's filling and draining weigh little) so that the load of this shared machine
//! weighs on both alike, until each has run 8 seconds. Overhead is pipeline ÷ bare − 1 over
//! all blocks, and for the median round (a block of bare batches and the pipeline block right
//! after it); the pre-processing and inference times inside the pipeline come from the
//! worker's own `livewatch_classifier_seconds`. ONNX Runtime runs with its default intra-op
//! threads (one per core); images/s per core divides by `available_parallelism`. The
//! pipeline's scores must equal the bare ones. Other processes' CPU use meanwhile is read from
//! `/proc` and printed in cores: figures taken while it is well above 0 are not worth much.
//!
//! Also measured, in the same run:
//! * the CPU twin's time per 720p and 1080p frame, per model (one thread), on its fastest path
//!   for this CPU (AVX2 where there is AVX2) and on the portable path;
//! * Python's onnxruntime on the same tensor (`benches/support/ort_bench.py`), with its CPU
//!   memory arena (its default) and without (as livewatch's sessions run: `ort`'s
//!   `ep::CPU::default()` turns it off): a cross-check of the bare column; "n/a" without the
//!   project's `.venv`;
//! * the GPU pre-processing (wgpu) per frame, split into upload, compute and readback (the
//!   tensor copied back to the host for ONNX Runtime); on a software adapter such as Mesa's
//!   lavapipe the figures are informational only; "n/a" without an adapter;
//! * H.264 decoding per frame on one thread, every frame against keyframes only, at 720p and
//!   1080p: a keyframes-mode stream decodes every frame once a classifier samples it.
//!
//! Clips: ffmpeg `testsrc2`, 30 fps, H.264 high profile, 1 s GOP, no B-frames, 10 s, made once
//! under `target/classify-bench/`. Needs `scripts/setup.sh` (ONNX Runtime, models, ffmpeg).
//!
//! `CLASSIFY_BENCH_MODELS=open-nsfw` and `CLASSIFY_BENCH_BATCHES=16` (comma-separated lists)
//! run some of the configurations only. `CLASSIFY_BENCH_PROVIDERS=cuda` (or `tensorrt,cuda`)
//! runs the sessions on a GPU instead, as `[classifier] providers` would (the ONNX Runtime GPU
//! build is needed; there is no Python cross-check then).
//!
//! Run with `cargo bench --bench classify`. Without `--bench` (under `cargo test`) it runs each
//! path once on the tiny test model `tiny-red` and a small clip, as a check.

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use ffmpeg_next as ff;
use livewatch::classify::gpu::{GpuPreprocessor, Timings};
use livewatch::classify::manifest::{Activation, Manifest};
use livewatch::classify::model::{find_manifest, Model, SessionOptions};
use livewatch::classify::preprocess::{Picture, Preprocess, Preprocessor};
use livewatch::classify::runtime::{self, ProviderKind};
use livewatch::classify::service::run_worker;
use livewatch::decode::{for_each_video_frame, Frame, FrameQueue};
use livewatch::hash::gpu::{list_adapters, AdapterChoice};
use livewatch::health::Heartbeats;
use livewatch::metrics::{classifier_stage, metrics};

/// The live worker's default queue (`[classifier] queue`).
const QUEUE: usize = 256;
/// How long the worker may wait to fill a batch: the bench pushes whole batches, so a batch
/// always fills; a long wait keeps a stall of this busy machine mid-push from splitting one.
const FILL_WAIT: Duration = Duration::from_secs(5);
/// Length of one block of bare or pipeline batches, and the fewest batches in one.
const BLOCK: f64 = 0.5;
const MIN_BLOCK: usize = 4;

/// What a run measures.
struct Plan {
    full: bool,
    models: Vec<String>,
    batches: Vec<usize>,
    /// Seconds per path per configuration (bare, pipeline, Python).
    seconds: f64,
    /// Seconds of pre-processing and of decoding per measurement.
    short_seconds: f64,
    /// Clip sizes: the first feeds the pipeline.
    sizes: &'static [(usize, usize)],
    clip_seconds: u32,
    gpu_batch: usize,
    /// ONNX Runtime's execution providers, as in `[classifier] providers`.
    providers: Vec<ProviderKind>,
}

impl Plan {
    fn new(full: bool) -> Plan {
        if full {
            Plan {
                full,
                models: list(
                    "CLASSIFY_BENCH_MODELS",
                    "image-safety-classifier-s,open-nsfw",
                ),
                batches: list("CLASSIFY_BENCH_BATCHES", "1,16"),
                seconds: 8.0,
                short_seconds: 2.0,
                sizes: &[(1280, 720), (1920, 1080)],
                clip_seconds: 10,
                gpu_batch: 16,
                providers: list::<String>("CLASSIFY_BENCH_PROVIDERS", "cpu")
                    .iter()
                    .map(|p| {
                        serde_json::from_value(serde_json::Value::String(p.clone()))
                            .unwrap_or_else(|e| panic!("CLASSIFY_BENCH_PROVIDERS: {p:?}: {e}"))
                    })
                    .collect(),
            }
        } else {
            Plan {
                full,
                models: vec!["tiny-red".into()],
                batches: vec![1, 4],
                seconds: 0.0,
                short_seconds: 0.0,
                sizes: &[(320, 180)],
                clip_seconds: 1,
                gpu_batch: 2,
                providers: vec![ProviderKind::Cpu],
            }
        }
    }

    /// Frames in the pipeline's batches (one stream each).
    fn frames(&self) -> usize {
        self.batches.iter().copied().max().unwrap_or(1)
    }
}

/// A comma-separated list from the environment, or the default.
fn list<T: std::str::FromStr>(var: &str, default: &str) -> Vec<T> {
    let text = std::env::var(var).unwrap_or_else(|_| default.into());
    text.split(',')
        .map(|v| {
            v.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{var}: cannot read {v:?}"))
        })
        .collect()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A 30 fps H.264 clip of ffmpeg's `testsrc2`, made once (the clips `benches/streams.sh` uses).
fn clip(dir: &Path, w: usize, h: usize, seconds: u32) -> PathBuf {
    let path = dir.join(format!("testsrc2-{w}x{h}-{seconds}s.mp4"));
    if path.exists() {
        return path;
    }
    let tmp = dir.join(format!("tmp-{}-{w}x{h}.mp4", std::process::id()));
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(format!("testsrc2=size={w}x{h}:rate=30"))
        .args(["-t", &seconds.to_string()])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "high",
        ])
        .args(["-pix_fmt", "yuv420p", "-g", "30", "-keyint_min", "30"])
        .args(["-sc_threshold", "0", "-bf", "0"])
        .arg(&tmp)
        .status()
        .unwrap_or_else(|e| panic!("cannot run ffmpeg ({e}); scripts/setup.sh installs it"));
    assert!(status.success(), "ffmpeg failed to make {}", path.display());
    std::fs::rename(&tmp, &path).expect("keep the clip");
    path
}

/// A clip and the decoded frames the pipeline takes from it.
struct Clip {
    w: usize,
    h: usize,
    path: PathBuf,
    frames: Vec<Arc<Frame>>,
}

/// `n` decoded pictures of a clip, one every half second, each from its own stream (pictures
/// are repeated when the clip is short).
fn frames(path: &Path, n: usize) -> Vec<Arc<Frame>> {
    let mut out: Vec<Arc<Frame>> = Vec::new();
    for_each_video_frame(path, 0.5, |_, _, f| {
        if out.len() < n {
            out.push(Arc::new(f));
        }
        Ok(())
    })
    .unwrap_or_else(|e| panic!("decode {}: {e:#}", path.display()));
    assert!(!out.is_empty(), "{}: no frames", path.display());
    let have = out.len();
    (0..n)
        .map(|i| {
            let mut f = (*out[i % have]).clone();
            f.stream = i as u32;
            Arc::new(f)
        })
        .collect()
}

/// Loads a model on the plan's providers, with the worker's other defaults; a missing model
/// or provider stops the bench with load's own message (which says what to do).
fn load(plan: &Plan, manifest: &Manifest) -> Model {
    let opts = SessionOptions {
        providers: plan.providers.clone(),
        ..SessionOptions::default()
    };
    Model::load(manifest, &opts).unwrap_or_else(|e| panic!("{e}"))
}

/// The pipeline's time: wall time of its blocks, and the time its two threads spent in
/// pre-processing and in inference (from the worker's own `livewatch_classifier_seconds`).
#[derive(Default, Clone, Copy)]
struct Split {
    batches: usize,
    wall: Duration,
    prep: f64,
    infer: f64,
}

impl Split {
    fn add(&mut self, o: &Split) {
        self.batches += o.batches;
        self.wall += o.wall;
        self.prep += o.prep;
        self.infer += o.infer;
    }
}

/// Seconds recorded so far in a stage of `livewatch_classifier_seconds`.
fn stage_seconds(stage: &str) -> f64 {
    metrics()
        .classifier_seconds
        .with_label_values(&[stage])
        .get_sample_sum()
}

/// The live worker (`service::run_worker`: a pre-processing thread feeding the session's
/// thread) running on its own thread, fed through a `FrameQueue`, the scores coming back on
/// a channel.
struct Pipeline {
    queue: Arc<FrameQueue>,
    scores: Receiver<Vec<Vec<f32>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Pipeline {
    fn start(model: Model, prep: Preprocess, n: usize) -> Pipeline {
        let queue = Arc::new(FrameQueue::new(QUEUE));
        let (tx, scores) = crossbeam_channel::unbounded();
        let q = queue.clone();
        let thread = std::thread::spawn(move || {
            let health = Heartbeats::default();
            let beats = [health.register("infer"), health.register("prep")];
            run_worker(
                vec![(model, prep)],
                &q,
                n,
                FILL_WAIT,
                beats,
                |_, _, rows| tx.send(rows).is_ok(),
            );
        });
        Pipeline {
            queue,
            scores,
            thread: Some(thread),
        }
    }

    /// Pushes `k` batches of `frames` (one frame per stream each) as decoders would and waits
    /// for all their scores. Returns the last batch's.
    fn run(&self, frames: &[Arc<Frame>], k: usize, t: &mut Split) -> Vec<Vec<f32>> {
        let (prep, infer) = (
            stage_seconds(classifier_stage::PREPROCESS),
            stage_seconds(classifier_stage::INFERENCE),
        );
        let started = Instant::now();
        let mut last = Vec::new();
        // at most QUEUE frames queued at once: none is dropped
        let per_push = (QUEUE / frames.len()).max(1);
        let mut pushed = 0;
        let mut scored = 0;
        while scored < k {
            while pushed < k && pushed - scored < per_push {
                for f in frames {
                    self.queue.push(f.clone());
                }
                pushed += 1;
            }
            last = self.scores.recv().expect("the worker stopped");
            assert_eq!(last.len(), frames.len(), "the worker took a partial batch");
            scored += 1;
        }
        t.batches += k;
        t.wall += started.elapsed();
        t.prep += stage_seconds(classifier_stage::PREPROCESS) - prep;
        t.infer += stage_seconds(classifier_stage::INFERENCE) - infer;
        last
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.queue.close();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Bare against pipeline for one model and batch size.
struct Compared {
    model: String,
    n: usize,
    bare: Duration,
    bare_batches: usize,
    pipe: Split,
    /// Overhead of each round (pipeline ÷ bare − 1), sorted.
    rounds: Vec<f64>,
    /// Cores' worth of other processes' CPU meanwhile.
    others: Option<f64>,
    /// Python onnxruntime's ms per batch with and without the memory arena, and other
    /// processes' load meanwhile.
    python: Option<(Option<f64>, Option<f64>, Option<f64>)>,
}

impl Compared {
    fn bare_ms(&self) -> f64 {
        ms(self.bare) / self.bare_batches as f64
    }
    fn pipe_ms(&self) -> f64 {
        ms(self.pipe.wall) / self.pipe.batches as f64
    }
    /// Pre-processing per batch, on the worker's pre-processing thread.
    fn prep_ms(&self) -> f64 {
        self.pipe.prep * 1e3 / self.pipe.batches as f64
    }
    /// Inference per batch inside the pipeline.
    fn infer_ms(&self) -> f64 {
        self.pipe.infer * 1e3 / self.pipe.batches as f64
    }
    fn overhead(&self) -> f64 {
        self.pipe_ms() / self.bare_ms() - 1.0
    }
    /// The median round's overhead: each round pairs a block of bare batches with the block of
    /// pipeline batches right after it, so a burst of other work skews few rounds.
    fn median_overhead(&self) -> f64 {
        self.rounds[self.rounds.len() / 2]
    }
}

fn compare(
    plan: &Plan,
    manifest: &Manifest,
    frames: &[Arc<Frame>],
    n: usize,
    dir: &Path,
    python: Option<&Path>,
    cores: usize,
) -> Compared {
    let frames = &frames[..n];
    let per = manifest.input.frame_len();
    let mut model = load(plan, manifest);
    let pipeline = Pipeline::start(
        load(plan, manifest),
        Preprocess::Cpu(Preprocessor::new(&manifest.input)),
        n,
    );

    // the ready tensor: the same frames, pre-processed once
    let pictures: Vec<Picture<'_>> = frames.iter().map(|f| f.picture()).collect();
    let mut ready = vec![0.0f32; per * n];
    Preprocess::Cpu(Preprocessor::new(&manifest.input))
        .run_batch(&pictures, &mut ready)
        .expect("pre-process the batch");
    let want = model.run(&ready, n).expect("run the batch");
    let mut warm = Split::default();
    let got = pipeline.run(frames, 1, &mut warm);
    for (g, w) in got.iter().zip(&want) {
        for (a, b) in g.iter().zip(w) {
            assert!((a - b).abs() <= 1e-5, "pipeline {g:?} against bare {w:?}");
        }
    }

    // warm-up, then blocks of about BLOCK seconds each (at least MIN_BLOCK batches, so that
    // the pipeline's filling and draining weigh little), alternating
    let t = Instant::now();
    let warm_runs = if plan.full { 2 } else { 0 };
    for _ in 0..warm_runs {
        black_box(model.run(&ready, n).expect("run the batch"));
    }
    pipeline.run(frames, warm_runs, &mut warm);
    let per_batch = t.elapsed().as_secs_f64() / (2 * warm_runs).max(1) as f64;
    let k = if plan.full {
        ((BLOCK / per_batch).round() as usize).max(MIN_BLOCK)
    } else {
        1
    };
    let (mut bare, mut bare_batches, mut pipe, mut rounds) =
        (Duration::ZERO, 0, Split::default(), Vec::new());
    let load = Load::now();
    loop {
        let t = Instant::now();
        for _ in 0..k {
            black_box(model.run(black_box(&ready), n).expect("run the batch"));
        }
        let b = t.elapsed();
        let mut s = Split::default();
        black_box(pipeline.run(frames, k, &mut s));
        rounds.push(s.wall.as_secs_f64() / b.as_secs_f64() - 1.0);
        bare += b;
        bare_batches += k;
        pipe.add(&s);
        if bare.as_secs_f64() >= plan.seconds && pipe.wall.as_secs_f64() >= plan.seconds {
            break;
        }
    }
    rounds.sort_by(f64::total_cmp);
    drop(pipeline);

    let others = load.and_then(|l| l.others_since(cores));
    let python = python.map(|py| {
        let file = dir.join(format!("{}-batch{n}.f32", manifest.name));
        let bytes: Vec<u8> = ready.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&file, bytes).expect("write the tensor");
        let load = Load::now();
        let arena = python_ms(py, plan, manifest, &file, n, true, &want);
        let no_arena = python_ms(py, plan, manifest, &file, n, false, &want);
        let others = load.and_then(|l| l.others_since(cores));
        (arena, no_arena, others)
    });
    Compared {
        model: manifest.name.clone(),
        n,
        bare,
        bare_batches,
        pipe,
        rounds,
        others,
        python,
    }
}

/// Python onnxruntime's ms per batch on the same tensor (`benches/support/ort_bench.py`), with
/// or without the CPU memory arena; its scores are checked against livewatch's.
fn python_ms(
    py: &Path,
    plan: &Plan,
    manifest: &Manifest,
    tensor: &Path,
    n: usize,
    arena: bool,
    want: &[Vec<f32>],
) -> Option<f64> {
    let shape: Vec<String> = manifest
        .input
        .shape(n)
        .iter()
        .map(|d| d.to_string())
        .collect();
    let out = Command::new(py)
        .arg(repo().join("benches/support/ort_bench.py"))
        .arg(&manifest.file)
        .args([&manifest.input.name, &manifest.output.name])
        .arg(tensor)
        .arg(shape.join(","))
        .arg((plan.seconds / 2.0).to_string())
        .arg(if arena { "arena" } else { "no-arena" })
        .output()
        .expect("run benches/support/ort_bench.py");
    if !out.status.success() {
        println!(
            "classify/python: n/a — ort_bench.py failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ort_bench.py JSON");
    if manifest.output.activation == Activation::None {
        let rows = v["scores"].as_array().expect("scores");
        for (row, w) in rows.iter().zip(want) {
            for (a, b) in row.as_array().expect("a row").iter().zip(w) {
                let a = a.as_f64().expect("a score") as f32;
                assert!(
                    (a - b).abs() <= 1e-4,
                    "{}: Python onnxruntime scores {a}, livewatch {b}",
                    manifest.name
                );
            }
        }
    }
    v["ms_per_batch"].as_f64()
}

/// CPU ticks from `/proc` (Linux): the machine's, busy and in all, and this process's with its
/// waited-for children. On a shared machine they say how much else was running meanwhile.
#[derive(Clone, Copy)]
struct Load {
    total: u64,
    busy: u64,
    mine: u64,
}

impl Load {
    fn now() -> Option<Load> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        // cpu  user nice system idle iowait irq softirq steal ...
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        if cpu.len() < 8 {
            return None;
        }
        let me = std::fs::read_to_string("/proc/self/stat").ok()?;
        // after "pid (comm) ", fields 3 onwards: utime stime cutime cstime are 14 to 17
        let fields: Vec<i64> = me[me.rfind(')')? + 1..]
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        let mine = fields.get(11..15)?.iter().map(|&t| t.max(0) as u64).sum();
        Some(Load {
            total: cpu.iter().sum(),
            busy: cpu[0] + cpu[1] + cpu[2] + cpu[5] + cpu[6],
            mine,
        })
    }

    /// Cores' worth of CPU time other processes used since this reading, on average.
    fn others_since(&self, cores: usize) -> Option<f64> {
        let now = Load::now()?;
        let per_core = now.total.checked_sub(self.total)? as f64 / cores as f64;
        let mine = now.mine.saturating_sub(self.mine);
        let others = now.busy.saturating_sub(self.busy).saturating_sub(mine);
        (per_core > 0.0).then(|| others as f64 / per_core)
    }
}

/// The CPU twin's time per frame on these frames, one thread: its fastest path on this CPU,
/// or the portable one.
fn cpu_prep_ms(plan: &Plan, manifest: &Manifest, frames: &[Arc<Frame>], portable: bool) -> f64 {
    let mut p = if portable {
        Preprocessor::portable(&manifest.input)
    } else {
        Preprocessor::new(&manifest.input)
    };
    let mut out = vec![0.0f32; manifest.input.frame_len()];
    let (mut done, t) = (0usize, Instant::now());
    loop {
        for f in frames {
            p.run(&f.picture(), &mut out).expect("pre-process");
            black_box(&out);
        }
        done += frames.len();
        if t.elapsed().as_secs_f64() >= plan.short_seconds {
            break;
        }
    }
    ms(t.elapsed()) / done as f64
}

/// GPU pre-processing per frame (upload, compute, readback) and the largest difference from
/// the CPU twin's tensor; `Err` says why there is none.
fn gpu_prep(
    plan: &Plan,
    manifest: &Manifest,
    frames: &[Arc<Frame>],
) -> Result<(String, bool, Timings, f32), String> {
    let frames = &frames[..plan.gpu_batch.min(frames.len())];
    let mut gpu = GpuPreprocessor::new(&manifest.input, AdapterChoice::Auto, true)
        .map_err(|e| format!("{e:#}"))?;
    let info = gpu.adapter_info().clone();
    let software = info.device_type == wgpu::DeviceType::Cpu;
    let pictures: Vec<Picture<'_>> = frames.iter().map(|f| f.picture()).collect();
    let per = manifest.input.frame_len();
    let mut out = vec![0.0f32; per * frames.len()];
    gpu.run_batch(&pictures, &mut out)
        .map_err(|e| format!("{e:#}"))?;
    let mut cpu = vec![0.0f32; out.len()];
    Preprocess::Cpu(Preprocessor::new(&manifest.input))
        .run_batch(&pictures, &mut cpu)
        .expect("pre-process");
    let diff = out
        .iter()
        .zip(&cpu)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    let rounds = if plan.full { 3 } else { 1 };
    let mut sum = Timings::default();
    for _ in 0..rounds {
        let t = gpu
            .run_batch(&pictures, &mut out)
            .map_err(|e| format!("{e:#}"))?;
        sum.upload += t.upload;
        sum.compute += t.compute;
        sum.readback += t.readback;
    }
    let per_frame = |d: Duration| d / (rounds * frames.len()) as u32;
    Ok((
        format!("{} ({:?})", info.name, info.backend),
        software,
        Timings {
            upload: per_frame(sum.upload),
            compute: per_frame(sum.compute),
            readback: per_frame(sum.readback),
        },
        diff,
    ))
}

/// Decoding on one thread, as a live stream's decoder runs: every frame, or the keyframes only
/// (with libavcodec's low-delay flag, as keyframes mode opens its decoder). Returns ms per
/// decoded frame and the frames decoded per pass.
fn decode_ms(plan: &Plan, path: &Path, keyframes_only: bool) -> (f64, usize) {
    livewatch::init_media();
    let mut input = ff::format::input(path).expect("open the clip");
    let stream = input
        .streams()
        .best(ff::media::Type::Video)
        .expect("a video stream");
    let (index, params) = (stream.index(), stream.parameters());
    let packets: Vec<ff::Packet> = input
        .packets()
        .filter(|(s, p)| s.index() == index && (!keyframes_only || p.is_key()))
        .map(|(_, p)| p)
        .collect();
    let (mut frames, mut spent) = (0usize, Duration::ZERO);
    let per_pass = loop {
        let mut ctx = ff::codec::context::Context::from_parameters(params.clone())
            .expect("decoder parameters");
        ctx.set_threading(ff::codec::threading::Config::count(1));
        if keyframes_only {
            ctx.set_flags(ff::codec::Flags::LOW_DELAY);
        }
        let mut decoder = ctx.decoder().video().expect("open the decoder");
        let mut picture = ff::frame::Video::empty();
        let mut n = 0;
        let t = Instant::now();
        for p in &packets {
            decoder.send_packet(p).expect("decode");
            while decoder.receive_frame(&mut picture).is_ok() {
                n += 1;
            }
        }
        decoder.send_eof().expect("flush");
        while decoder.receive_frame(&mut picture).is_ok() {
            n += 1;
        }
        spent += t.elapsed();
        frames += n;
        if spent.as_secs_f64() >= plan.short_seconds {
            break n;
        }
    };
    (ms(spent) / frames as f64, per_pass)
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this runs once, small, as a check
    let full = std::env::args().any(|a| a == "--bench");
    let plan = Plan::new(full);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run_load = Load::now();
    let lib = runtime::init(None).unwrap_or_else(|e| panic!("{e:#}"));
    println!(
        "classify: ONNX Runtime {} ({}), providers {:?}, default intra-op threads; {cores} \
         cores ({})",
        runtime::version().unwrap_or("?"),
        lib.file_name().unwrap_or_default().to_string_lossy(),
        plan.providers,
        cpu_model()
    );
    if !full {
        println!(
            "classify: test build, tiny-red and a small clip, each path once: checks the \
             paths, timings not meaningful"
        );
    }
    let dir = repo().join("target/classify-bench");
    std::fs::create_dir_all(&dir).expect("create target/classify-bench");
    let models_dir = repo().join("models");
    let manifests: Vec<Manifest> = plan
        .models
        .iter()
        .map(|name| {
            find_manifest(&models_dir, name)
                .unwrap_or_else(|e| panic!("{e:#}\n(scripts/setup.sh fetches the models)"))
        })
        .collect();
    let python = repo().join(".venv/bin/python");
    let cpu_only = plan.providers.iter().all(|p| *p == ProviderKind::Cpu);
    let python = (python.exists() && cpu_only).then_some(python);
    if !cpu_only {
        println!("classify/python: n/a — the cross-check runs on the CPU provider only");
    } else if python.is_none() {
        println!("classify/python: n/a — .venv missing, run scripts/setup.sh for the cross-check");
    }

    let clips: Vec<Clip> = plan
        .sizes
        .iter()
        .map(|&(w, h)| {
            let path = clip(&dir, w, h, plan.clip_seconds);
            let frames = frames(&path, plan.frames());
            Clip { w, h, path, frames }
        })
        .collect();
    let main = &clips[0];

    // the CPU twin per frame, per model and size: its fastest path here and the portable one
    let path = Preprocessor::new(&manifests[0].input).path();
    let mut prep_rows = Vec::new();
    for m in &manifests {
        for Clip { w, h, frames, .. } in &clips {
            let t = cpu_prep_ms(&plan, m, frames, false);
            let portable = cpu_prep_ms(&plan, m, frames, true);
            println!(
                "classify/preprocess {} {w}x{h}: {t:.2} ms/frame (CPU twin, {path} path, one \
                 thread); portable path {portable:.2}",
                m.name
            );
            prep_rows.push((m.name.clone(), (*w, *h), t, portable));
        }
    }

    // bare against pipeline
    let mut results = Vec::new();
    for m in &manifests {
        for &n in &plan.batches {
            let c = compare(&plan, m, &main.frames, n, &dir, python.as_deref(), cores);
            let opt =
                |v: Option<f64>, unit: &str| v.map_or("n/a".into(), |v| format!("{v:.2}{unit}"));
            println!(
                "classify/{} batch {n:2}: bare {:.2} ms/batch, pipeline {:.2} (pre-processing \
                 {:.2} beside inference {:.2}); overhead {:+.1} % (inference alone {:+.1} %; \
                 median round {:+.1} %, rounds {:+.1}..{:+.1} %); other processes {} cores",
                c.model,
                c.bare_ms(),
                c.pipe_ms(),
                c.prep_ms(),
                c.infer_ms(),
                c.overhead() * 100.0,
                c.infer_ms() / c.bare_ms() * 100.0 - 100.0,
                c.median_overhead() * 100.0,
                c.rounds[0] * 100.0,
                c.rounds[c.rounds.len() - 1] * 100.0,
                opt(c.others, ""),
            );
            if let Some((arena, no_arena, others)) = c.python {
                println!(
                    "classify/{} batch {n:2}: python onnxruntime {} with its memory arena \
                     (the default), {} without (as livewatch's session); other processes {} \
                     cores",
                    c.model,
                    opt(arena, " ms/batch"),
                    opt(no_arena, " ms/batch"),
                    opt(others, ""),
                );
            }
            results.push(c);
        }
    }

    // GPU pre-processing
    let mut gpu_rows = Vec::new();
    if list_adapters().is_empty() {
        println!("classify/gpu-preprocess: n/a — no wgpu adapter (Vulkan or GL)");
    } else {
        for m in &manifests {
            match gpu_prep(&plan, m, &main.frames) {
                Ok((adapter, software, t, diff)) => {
                    println!(
                        "classify/gpu-preprocess {} {}x{} batch {}: upload {:.3} ms/frame, \
                         compute {:.3}, readback {:.3} ({:.0} KB tensor per frame); adapter {adapter}{}; \
                         largest difference from the CPU twin {diff}",
                        m.name,
                        main.w,
                        main.h,
                        plan.gpu_batch,
                        ms(t.upload),
                        ms(t.compute),
                        ms(t.readback),
                        (m.input.frame_len() * 4) as f64 / 1000.0,
                        if software {
                            " — software: informational only"
                        } else {
                            ""
                        },
                    );
                    gpu_rows.push((m.name.clone(), adapter, software, t));
                }
                Err(e) => println!("classify/gpu-preprocess {}: n/a — {e}", m.name),
            }
        }
    }

    // decoding every frame against keyframes only
    let mut decode_rows = Vec::new();
    for Clip { w, h, path, .. } in &clips {
        let (all, n_all) = decode_ms(&plan, path, false);
        let (key, n_key) = decode_ms(&plan, path, true);
        println!(
            "classify/decode {w}x{h}: every frame {all:.2} ms/frame ({n_all} frames), keyframes \
             only {key:.2} ms/keyframe ({n_key} keyframes); one thread"
        );
        decode_rows.push(((*w, *h), all, key, n_all, n_key));
    }

    // summary
    println!();
    println!(
        "| model | batch | bare ms/image | pipeline ms/image | preprocess ms/image | overhead | \
         median round | inference in the pipeline | bare images/s | per core | pipeline images/s | \
         per core | Python ORT ms/image, arena | no arena | other load, cores |"
    );
    println!(
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for c in &results {
        let n = c.n as f64;
        let py = |v: Option<f64>| v.map_or("n/a".into(), |p| format!("{:.2}", p / n));
        let (arena, no_arena) = c.python.map_or((None, None), |(a, b, _)| (a, b));
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.2} | {:+.1} % | {:+.1} % | {:+.1} % | {:.1} | {:.1} | \
             {:.1} | {:.1} | {} | {} | {} |",
            c.model,
            c.n,
            c.bare_ms() / n,
            c.pipe_ms() / n,
            c.prep_ms() / n,
            c.overhead() * 100.0,
            c.median_overhead() * 100.0,
            c.infer_ms() / c.bare_ms() * 100.0 - 100.0,
            1e3 * n / c.bare_ms(),
            1e3 * n / c.bare_ms() / cores as f64,
            1e3 * n / c.pipe_ms(),
            1e3 * n / c.pipe_ms() / cores as f64,
            py(arena),
            py(no_arena),
            c.others.map_or("n/a".into(), |o| format!("{o:.2}")),
        );
    }
    println!();
    println!("| model | frame | CPU twin ms/frame ({path}) | portable path |");
    println!("| --- | --- | --- | --- |");
    for (name, (w, h), t, portable) in &prep_rows {
        println!("| {name} | {w}x{h} | {t:.2} | {portable:.2} |");
    }
    if !gpu_rows.is_empty() {
        println!();
        println!("| model | adapter | upload ms/frame | compute | readback |");
        println!("| --- | --- | --- | --- | --- |");
        for (name, adapter, software, t) in &gpu_rows {
            println!(
                "| {name} | {adapter}{} | {:.3} | {:.3} | {:.3} |",
                if *software { ", software" } else { "" },
                ms(t.upload),
                ms(t.compute),
                ms(t.readback)
            );
        }
    }
    println!();
    println!(
        "| clip | every frame ms/frame | keyframes only ms/keyframe | % of a core per 30 fps \
         stream, every frame | keyframes only (1 s GOP) |"
    );
    println!("| --- | --- | --- | --- | --- |");
    for ((w, h), all, key, n_all, n_key) in &decode_rows {
        // frames and keyframes per second of this 30 fps clip
        let seconds = *n_all as f64 / 30.0;
        println!(
            "| {w}x{h} | {all:.2} | {key:.2} | {:.1} % | {:.2} % |",
            30.0 * all / 10.0,
            *n_key as f64 / seconds * key / 10.0
        );
    }
    println!();
    println!(
        "classify: other processes used {} cores on average during this run",
        run_load
            .and_then(|l| l.others_since(cores))
            .map_or("n/a".into(), |o| format!("{o:.2}"))
    );
}
