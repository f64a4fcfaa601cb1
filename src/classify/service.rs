//! The live classifier: inference workers fed frames of every stream.
//!
//! Decoders put the frames a stream samples for the classifier on one bounded queue (the
//! oldest frame of a stream is dropped when it is full). Each worker is two threads: one takes
//! what is queued, up to `max_batch` frames, waiting at most `max_wait` after the first one
//! for more (dynamic batching across streams), and pre-processes the batch into each model's
//! tensor; the other owns one ONNX Runtime session of every model, runs the batches the first
//! one hands over when the sessions are free (so pre-processing the next batch overlaps
//! inference of this one) and hands every frame's scores to the decision stage.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use crossbeam_channel::Sender;
use tracing::{info, warn};

use super::gpu::GpuPreprocessor;
use super::manifest::{InputSpec, Layout, Manifest};
use super::model::{self, Model, SessionOptions};
use super::preprocess::{Picture, Preprocess, Preprocessor};
use super::runtime::{self, ProviderKind};
use crate::config::{ClassifierSpec, HashBackend, ModelSpec};
use crate::decide::{Finding, ModelPolicy, Scored};
use crate::decode::{Frame, FrameQueue};
use crate::health::Beat;
use crate::metrics::{classifier_stage, metrics};
use crate::stream::StreamKey;

/// What the status API shows of a model in use.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct ModelView {
    pub name: String,
    pub description: String,
    /// The model file's sha256.
    pub sha256: String,
    /// The execution provider that runs it.
    pub provider: String,
    /// `enforce` or `shadow`.
    pub mode: String,
    /// Where its pre-processing runs: `gpu` or `cpu`.
    pub preprocess: String,
    pub labels: Vec<String>,
    /// Violence labels and their thresholds.
    #[schema(value_type = Object)]
    pub thresholds: std::collections::BTreeMap<String, f32>,
    pub rule: crate::config::WindowRule,
    pub window_frames: usize,
    pub min_frames: usize,
}

/// The running classifier.
pub struct Classifier {
    /// Decoders push the frames to classify here.
    pub queue: Arc<FrameQueue>,
    pub models: Vec<ModelView>,
    /// ONNX Runtime's library.
    pub runtime: std::path::PathBuf,
    workers: Vec<std::thread::JoinHandle<()>>,
}

/// One model as a worker runs it.
struct Slot {
    model: Model,
    policy: Arc<ModelPolicy>,
    prep: Preprocess,
}

/// Turns a manifest and its `[[classifier.models]]` entry into the decision policy.
pub fn policy(manifest: &Manifest, spec: &ModelSpec) -> anyhow::Result<ModelPolicy> {
    let mut thresholds = manifest.violence.clone();
    for (label, t) in &spec.thresholds {
        if manifest.label_index(label).is_none() {
            bail!(
                "classifier model {:?}: threshold for {label:?}, which is not one of its labels {:?}",
                spec.name,
                manifest.output.labels
            );
        }
        thresholds.insert(label.clone(), *t);
    }
    Ok(ModelPolicy {
        name: manifest.name.as_str().into(),
        version: manifest.sha256[..12].to_string(),
        labels: manifest.output.labels.clone(),
        thresholds: thresholds
            .iter()
            .map(|(l, t)| (manifest.label_index(l).expect("checked"), *t))
            .collect(),
        rule: spec.rule,
        window_frames: spec.window_frames,
        min_frames: spec.min_frames,
        severity: spec.severity,
        action: spec.action,
        store_evidence: spec.store_evidence,
        shadow: spec.shadow,
    })
}

/// Opens the pre-processing backend the config asks for (like `[hash] backend`).
pub fn open_preprocess(spec: &ClassifierSpec, manifest: &Manifest) -> anyhow::Result<Preprocess> {
    use crate::config::AdapterSelector;
    use crate::hash::gpu::AdapterChoice;
    let choice = || match &spec.adapter {
        None => AdapterChoice::Auto,
        Some(AdapterSelector::Index(i)) => AdapterChoice::Index(*i),
        Some(AdapterSelector::Name(n)) => AdapterChoice::Name(n.clone()),
    };
    Ok(match spec.preprocess {
        HashBackend::Cpu => Preprocess::Cpu(Preprocessor::new(&manifest.input)),
        HashBackend::Gpu => Preprocess::Gpu(Box::new(
            GpuPreprocessor::new(&manifest.input, choice(), spec.allow_software)
                .context("classifier.preprocess = \"gpu\"")?,
        )),
        HashBackend::Auto => match GpuPreprocessor::new(&manifest.input, choice(), false) {
            Ok(g) => Preprocess::Gpu(Box::new(g)),
            Err(e) => {
                tracing::debug!("classifier pre-processing on the CPU: {e:#}");
                Preprocess::Cpu(Preprocessor::new(&manifest.input))
            }
        },
    })
}

/// Session options from `[classifier]`. TensorRT caches its engines in systemd's
/// `$CACHE_DIRECTORY` when there is one, else in the state directory.
pub fn session_options(spec: &ClassifierSpec, state_dir: &std::path::Path) -> SessionOptions {
    let cache = std::env::var_os("CACHE_DIRECTORY")
        .map(|v| {
            // systemd may list several, separated by ':'; the first is ours
            std::path::PathBuf::from(v.to_string_lossy().split(':').next().unwrap_or_default())
        })
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or_else(|| state_dir.to_path_buf());
    SessionOptions {
        providers: spec.providers.clone(),
        allow_cpu_fallback: spec.allow_cpu_fallback,
        intra_threads: spec.intra_threads,
        device_id: spec.device_id,
        trt_cache_dir: Some(cache.join("tensorrt")),
        max_batch: spec.max_batch,
    }
}

/// Loads ONNX Runtime and checks every configured model's manifest, file, sha256 and shapes
/// (for `check-config`). Sessions are built on the CPU: registering GPU providers (and
/// TensorRT's engine builds) is left to the start, which reports its own errors.
pub fn check(spec: &ClassifierSpec) -> anyhow::Result<Vec<String>> {
    runtime::init(spec.onnxruntime.as_deref())?;
    let opts = SessionOptions {
        providers: vec![ProviderKind::Cpu],
        intra_threads: 1,
        ..SessionOptions::default()
    };
    spec.models
        .iter()
        .map(|m| {
            let manifest = model::find_manifest(&spec.models_dir, &m.name)
                .with_context(|| format!("classifier model {:?}", m.name))?;
            policy(&manifest, m)?;
            let model = Model::load(&manifest, &opts)?;
            drop(model);
            Ok(manifest.name)
        })
        .collect()
}

impl Classifier {
    /// Loads ONNX Runtime and every model (checking files, checksums and shapes: a problem
    /// stops the start here), then starts the workers.
    pub fn start(
        spec: &ClassifierSpec,
        state_dir: &std::path::Path,
        registry: Arc<crate::manager::Registry>,
        tx: Sender<Finding>,
        health: &crate::health::Heartbeats,
    ) -> anyhow::Result<Self> {
        let lib = runtime::init(spec.onnxruntime.as_deref())?;
        let opts = session_options(spec, state_dir);
        let trt = spec.providers.contains(&ProviderKind::TensorRt);
        let mut manifests = Vec::new();
        for m in &spec.models {
            let manifest = model::find_manifest(&spec.models_dir, &m.name)
                .with_context(|| format!("classifier model {:?}", m.name))?;
            let policy = Arc::new(policy(&manifest, m)?);
            manifests.push((manifest, policy));
        }
        // TensorRT builds its engines on the first start: keep systemd waiting meanwhile
        let loading = std::sync::atomic::AtomicBool::new(true);
        let mut per_worker = Vec::new();
        std::thread::scope(|scope| -> anyhow::Result<()> {
            if trt {
                scope.spawn(|| {
                    while loading.load(std::sync::atomic::Ordering::Relaxed) {
                        crate::systemd::extend_start_timeout(
                            Duration::from_secs(90),
                            "loading models (TensorRT may be building engines)",
                        );
                        std::thread::sleep(Duration::from_millis(500));
                    }
                });
            }
            let result = (|| {
                for _ in 0..spec.workers {
                    let mut slots = Vec::new();
                    for (manifest, policy) in &manifests {
                        let t = Instant::now();
                        let model = Model::load(manifest, &opts)?;
                        let prep = open_preprocess(spec, manifest)?;
                        info!(
                            model = %manifest.name,
                            provider = model.provider.as_str(),
                            preprocess = prep.backend(),
                            secs = t.elapsed().as_secs_f64(),
                            "model loaded"
                        );
                        slots.push(Slot {
                            model,
                            policy: policy.clone(),
                            prep,
                        });
                    }
                    per_worker.push(slots);
                }
                Ok(())
            })();
            loading.store(false, std::sync::atomic::Ordering::Relaxed);
            result
        })?;

        let first = per_worker.first().expect("at least one worker");
        let mut models = Vec::new();
        for (slot, (manifest, spec_m)) in first
            .iter()
            .zip(manifests.iter().map(|(m, _)| m).zip(&spec.models))
        {
            let mode = if spec_m.shadow { "shadow" } else { "enforce" };
            metrics()
                .classifier_info
                .with_label_values(&[
                    &manifest.name,
                    slot.model.provider.as_str(),
                    mode,
                    slot.prep.backend(),
                ])
                .set(1);
            metrics()
                .classifier_frames
                .with_label_values(&[&manifest.name]);
            metrics()
                .classifier_errors
                .with_label_values(&[&manifest.name]);
            models.push(ModelView {
                name: manifest.name.clone(),
                description: manifest.description.clone(),
                sha256: manifest.sha256.clone(),
                provider: slot.model.provider.as_str().into(),
                mode: mode.into(),
                preprocess: slot.prep.backend().into(),
                labels: manifest.output.labels.clone(),
                thresholds: slot
                    .policy
                    .thresholds
                    .iter()
                    .map(|(c, t)| (manifest.output.labels[*c].clone(), *t))
                    .collect(),
                rule: spec_m.rule,
                window_frames: spec_m.window_frames,
                min_frames: spec_m.min_frames,
            });
        }

        let queue = Arc::new(FrameQueue::new(spec.queue));
        let mut workers = Vec::new();
        for (i, slots) in per_worker.into_iter().enumerate() {
            let (queue, registry, tx) = (queue.clone(), registry.clone(), tx.clone());
            let beats = [
                health.register(format!("classify-{i}")),
                health.register(format!("classify-{i}-prep")),
            ];
            let (max_batch, max_wait) = (spec.max_batch, spec.max_wait);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("lw-classify-{i}"))
                    .spawn(move || {
                        let policies: Vec<Arc<ModelPolicy>> =
                            slots.iter().map(|s| s.policy.clone()).collect();
                        let models = slots.into_iter().map(|s| (s.model, s.prep)).collect();
                        run_worker(
                            models,
                            &queue,
                            max_batch,
                            max_wait,
                            beats,
                            |i, frames, rows| deliver(&policies[i], frames, rows, &registry, &tx),
                        )
                    })
                    .context("spawn classifier thread")?,
            );
        }
        Ok(Classifier {
            queue,
            models,
            runtime: lib,
            workers,
        })
    }

    /// Waits for the workers once the queue is closed and drained.
    pub fn join(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// Takes up to `max` frames: what is queued, then whatever arrives within `max_wait` of the
/// first one. Empty when nothing came for a while (or the queue closed).
pub fn next_batch(queue: &FrameQueue, max: usize, max_wait: Duration) -> Vec<Arc<Frame>> {
    let mut batch = queue.pop_batch(max, Duration::from_millis(200));
    if batch.is_empty() {
        return batch;
    }
    let deadline = Instant::now() + max_wait;
    while batch.len() < max {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        let more = queue.pop_batch(max - batch.len(), deadline - now);
        if more.is_empty() && queue.is_closed() {
            break;
        }
        batch.extend(more);
    }
    batch
}

/// Hands a model's scores of a batch to the status API, the metrics and the decision stage.
/// `false` once the decision stage is gone (shutting down).
fn deliver(
    policy: &Arc<ModelPolicy>,
    frames: Vec<Arc<Frame>>,
    rows: Vec<Vec<f32>>,
    registry: &crate::manager::Registry,
    tx: &Sender<Finding>,
) -> bool {
    let m = metrics();
    let name = &*policy.name;
    for (f, row) in frames.into_iter().zip(rows) {
        let Some(status) = registry.get(f.stream) else {
            continue; // removed meanwhile
        };
        m.classifier_frames.with_label_values(&[name]).inc();
        for &(col, _) in &policy.thresholds {
            m.classifier_score
                .with_label_values(&[name, policy.labels[col].as_str()])
                .observe(row[col] as f64);
        }
        status.set_scores(&policy.name, &policy.labels, &row, f.pts_us);
        let finding = Finding::Scores(Scored {
            stream: f.stream,
            stream_id: status.id.clone(),
            model: policy.clone(),
            scores: row,
            pts_us: f.pts_us,
            arrival: f.arrival,
            frame: policy.store_evidence.then(|| f.clone()),
        });
        if tx.send(finding).is_err() {
            return false;
        }
    }
    true
}

/// One model's share of a batch, pre-processed: the frames it scores (clip models: those
/// whose stream has a full clip) and their tensor.
struct Ready {
    frames: Vec<Arc<Frame>>,
    tensor: Vec<f32>,
}

/// What a worker runs: the pre-processing thread takes batches from the queue and
/// pre-processes them for every model while the calling thread runs the previous batch
/// through the sessions, so the two overlap. The hand-over is a rendezvous: the next batch
/// waits, pre-processed, until the sessions are free, and nothing more is taken from the
/// queue meanwhile (frames keep their place in its drop-oldest policy). `on_scores(model, frames, rows)` gets each
/// model's scores of a batch; returning `false` stops the worker. Returns once the queue is
/// closed and drained, or stopped.
///
/// `beats`: the inference thread's and the pre-processing thread's.
pub fn run_worker(
    models: Vec<(Model, Preprocess)>,
    queue: &FrameQueue,
    max_batch: usize,
    max_wait: Duration,
    beats: [Beat; 2],
    mut on_scores: impl FnMut(usize, Vec<Arc<Frame>>, Vec<Vec<f32>>) -> bool,
) {
    let m = metrics();
    let (mut sessions, preps): (Vec<Model>, Vec<Preprocess>) = models.into_iter().unzip();
    let inputs: Vec<InputSpec> = sessions.iter().map(|s| s.manifest.input.clone()).collect();
    let names: Vec<String> = sessions.iter().map(|s| s.manifest.name.clone()).collect();
    let (ready_tx, ready_rx) = crossbeam_channel::bounded::<Vec<Option<Ready>>>(0);
    // tensors go back to the pre-processing thread: no allocation (and page faults) per batch
    let (spare_tx, spare_rx) = crossbeam_channel::unbounded::<Vec<f32>>();
    let stop = AtomicBool::new(false);
    let [infer_beat, prep_beat] = beats;
    let name = std::thread::current()
        .name()
        .map_or_else(|| "lw-classify".to_string(), |n| format!("{n}-prep"));
    std::thread::scope(|scope| {
        let (stop, names) = (&stop, &names);
        let spawned = std::thread::Builder::new()
            .name(name)
            .spawn_scoped(scope, move || {
                prepare_loop(
                    preps, &inputs, names, queue, max_batch, max_wait, &prep_beat, ready_tx,
                    spare_rx, stop,
                )
            });
        if let Err(e) = spawned {
            // the pre-processing thread's heartbeat then goes stale: the watchdog restarts us
            tracing::error!(
                "classifier: cannot start a pre-processing thread, this worker stops: {e}"
            );
            return;
        }
        'batches: loop {
            infer_beat.beat();
            let batch = match ready_rx.recv_timeout(Duration::from_millis(200)) {
                Ok(b) => b,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
            };
            for (i, ready) in batch.into_iter().enumerate() {
                let Some(Ready { frames, tensor }) = ready else {
                    continue;
                };
                let t = Instant::now();
                let result = sessions[i].run(&tensor, frames.len());
                let _ = spare_tx.send(tensor);
                match result {
                    Ok(rows) => {
                        m.classifier_seconds
                            .with_label_values(&[classifier_stage::INFERENCE])
                            .observe(t.elapsed().as_secs_f64());
                        if !on_scores(i, frames, rows) {
                            break 'batches;
                        }
                    }
                    Err(e) => {
                        m.classifier_errors.with_label_values(&[&names[i]]).inc();
                        warn!(model = %names[i], frames = frames.len(), "classifier batch failed: {e:#}");
                    }
                }
            }
        }
        stop.store(true, Ordering::Relaxed);
        drop(ready_rx);
    });
}

/// The pre-processing thread of [`run_worker`].
#[allow(clippy::too_many_arguments)]
fn prepare_loop(
    mut preps: Vec<Preprocess>,
    inputs: &[InputSpec],
    names: &[String],
    queue: &FrameQueue,
    max_batch: usize,
    max_wait: Duration,
    beat: &Beat,
    ready_tx: Sender<Vec<Option<Ready>>>,
    spare: crossbeam_channel::Receiver<Vec<f32>>,
    stop: &AtomicBool,
) {
    let m = metrics();
    let mut clips: Vec<Clips> = inputs.iter().map(|_| HashMap::new()).collect();
    let mut scratch = Vec::new();
    // tensors a model did not use for a batch (a clip model still filling its windows, an error)
    let mut unused: Vec<Vec<f32>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        beat.beat();
        let batch = next_batch(queue, max_batch, max_wait);
        m.classifier_queue.set(queue.len() as i64);
        if batch.is_empty() {
            if queue.is_closed() {
                return;
            }
            continue;
        }
        for f in &batch {
            m.classifier_seconds
                .with_label_values(&[classifier_stage::QUEUE])
                .observe(f.arrival.elapsed().as_secs_f64());
        }
        m.classifier_batch.observe(batch.len() as f64);
        let pictures: Vec<Picture<'_>> = batch.iter().map(|f| f.picture()).collect();
        let mut ready = Vec::with_capacity(preps.len());
        for (i, prep) in preps.iter_mut().enumerate() {
            let mut tensor = unused
                .pop()
                .or_else(|| spare.try_recv().ok())
                .unwrap_or_default();
            let r = prepare(
                prep,
                &inputs[i],
                &mut clips[i],
                &batch,
                &pictures,
                &mut tensor,
                &mut scratch,
            );
            if tensor.capacity() > 0 {
                unused.push(tensor);
            }
            ready.push(r.unwrap_or_else(|e| {
                m.classifier_errors.with_label_values(&[&names[i]]).inc();
                warn!(model = %names[i], frames = batch.len(), "classifier pre-processing failed: {e:#}");
                None
            }));
        }
        // hand the batch over, beating while the sessions are busy with the previous one
        let mut item = ready;
        loop {
            match ready_tx.send_timeout(item, Duration::from_millis(200)) {
                Ok(()) => break,
                Err(crossbeam_channel::SendTimeoutError::Timeout(back)) => {
                    beat.beat();
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    item = back;
                }
                Err(crossbeam_channel::SendTimeoutError::Disconnected(_)) => return,
            }
        }
    }
}

/// Clip models: each stream's last sampled frames, pre-processed (a sliding window).
type Clips = HashMap<StreamKey, std::collections::VecDeque<Vec<f32>>>;

/// Pre-processes a batch for one model into `tensor` (taken into the result). `None` when no
/// frame is ready (a clip model before any stream has a full clip); `tensor` is left to the
/// caller then, and on an error.
fn prepare(
    prep: &mut Preprocess,
    input: &InputSpec,
    clips: &mut Clips,
    batch: &[Arc<Frame>],
    pictures: &[Picture<'_>],
    tensor: &mut Vec<f32>,
    scratch: &mut Vec<f32>,
) -> anyhow::Result<Option<Ready>> {
    let m = metrics();
    let per = input.frame_len();
    let clip = input.layout == Layout::Ncthw;
    let target = if clip { &mut *scratch } else { &mut *tensor };
    target.resize(per * batch.len(), 0.0);
    let t = Instant::now();
    let timings = prep.run_batch(pictures, target)?;
    let stage = |s: &str, d: Duration| {
        m.classifier_seconds
            .with_label_values(&[s])
            .observe(d.as_secs_f64())
    };
    stage(classifier_stage::PREPROCESS, t.elapsed());
    if prep.backend() == "gpu" {
        stage(classifier_stage::UPLOAD, timings.upload);
        stage(classifier_stage::READBACK, timings.readback);
    }
    if !clip {
        return Ok(Some(Ready {
            frames: batch.to_vec(),
            tensor: std::mem::take(tensor),
        }));
    }
    let t_len = input.clip_frames();
    let mut frames = Vec::new();
    tensor.clear();
    for (i, f) in batch.iter().enumerate() {
        let window = clips.entry(f.stream).or_default();
        window.push_back(scratch[i * per..(i + 1) * per].to_vec());
        while window.len() > t_len {
            window.pop_front();
        }
        if window.len() == t_len {
            append_clip(tensor, window, input.width as usize * input.height as usize);
            frames.push(f.clone());
        }
    }
    Ok((!frames.is_empty()).then(|| Ready {
        frames,
        tensor: std::mem::take(tensor),
    }))
}

/// Appends one `[3, T, H, W]` clip made of T planar `[3, H, W]` frames.
pub(crate) fn append_clip(
    out: &mut Vec<f32>,
    frames: &std::collections::VecDeque<Vec<f32>>,
    plane: usize,
) {
    for c in 0..3 {
        for f in frames {
            out.extend_from_slice(&f[c * plane..(c + 1) * plane]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clips_are_channel_major_then_time() {
        // two 1x2 frames: channel c of frame t holds 10*t + c
        let frames: std::collections::VecDeque<Vec<f32>> = (0..2)
            .map(|t| {
                (0..3)
                    .flat_map(|c| [10.0 * t as f32 + c as f32; 2])
                    .collect()
            })
            .collect();
        let mut out = Vec::new();
        append_clip(&mut out, &frames, 2);
        assert_eq!(
            out,
            vec![0.0, 0.0, 10.0, 10.0, 1.0, 1.0, 11.0, 11.0, 2.0, 2.0, 12.0, 12.0]
        );
    }

    #[test]
    fn a_batch_takes_what_arrives_within_the_wait() {
        let q = Arc::new(FrameQueue::new(16));
        let frame = |k| {
            Arc::new(Frame {
                stream: k,
                pts_us: None,
                arrival: Instant::now(),
                width: 1,
                height: 1,
                luma: vec![0],
                full_range: true,
                chroma: None,
                matrix: crate::classify::preprocess::Matrix::Bt601,
            })
        };
        q.push(frame(1));
        let q2 = q.clone();
        let late = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            q2.push(frame(2));
        });
        // the second frame comes within the wait: one batch of both, returned when full
        let b = next_batch(&q, 2, Duration::from_secs(3600));
        late.join().unwrap();
        assert_eq!(b.iter().map(|f| f.stream).collect::<Vec<_>>(), vec![1, 2]);
        assert!(q.is_empty());
        // nothing more comes: the batch leaves after the wait with what it has
        q.push(frame(3));
        assert_eq!(next_batch(&q, 8, Duration::from_millis(30)).len(), 1);
        // a full batch returns at once
        for k in 0..4 {
            q.push(frame(k));
        }
        assert_eq!(next_batch(&q, 4, Duration::from_secs(3600)).len(), 4);
    }
}
