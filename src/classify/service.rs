//! The live classifier: inference workers fed frames of every stream.
//!
//! Decoders put the frames a stream samples for the classifier on one bounded queue (the
//! oldest frame of a stream is dropped when it is full). Each worker owns a pre-processor and
//! one ONNX Runtime session of every model; it takes what is queued, up to `max_batch`
//! frames, waiting at most `max_wait` after the first one for more (dynamic batching across
//! streams), pre-processes the batch into each model's tensor, runs it, and hands every
//! frame's scores to the decision stage.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use crossbeam_channel::Sender;
use tracing::{info, warn};

use super::gpu::GpuPreprocessor;
use super::manifest::{Layout, Manifest};
use super::model::{self, Model, SessionOptions};
use super::preprocess::{Picture, Preprocess, Preprocessor};
use super::runtime::{self, ProviderKind};
use crate::config::{ClassifierSpec, HashBackend, ModelSpec};
use crate::decide::{Finding, ModelPolicy, Scored};
use crate::decode::{Frame, FrameQueue};
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
    /// Clip models: each stream's last sampled frames, pre-processed (a sliding window).
    clips: HashMap<StreamKey, std::collections::VecDeque<Vec<f32>>>,
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
                            clips: HashMap::new(),
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
            let beat = health.register(format!("classify-{i}"));
            let (max_batch, max_wait) = (spec.max_batch, spec.max_wait);
            workers.push(
                std::thread::Builder::new()
                    .name(format!("lw-classify-{i}"))
                    .spawn(move || {
                        worker(slots, &queue, max_batch, max_wait, &registry, &tx, &beat)
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

fn worker(
    mut slots: Vec<Slot>,
    queue: &FrameQueue,
    max_batch: usize,
    max_wait: Duration,
    registry: &crate::manager::Registry,
    tx: &Sender<Finding>,
    beat: &crate::health::Beat,
) {
    let m = metrics();
    let mut tensor = Vec::new();
    let mut clip_tensor = Vec::new();
    loop {
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
        for slot in &mut slots {
            let name = slot.policy.name.clone();
            let scores = match score(slot, &batch, &pictures, &mut tensor, &mut clip_tensor) {
                Ok(s) => s,
                Err(e) => {
                    m.classifier_errors.with_label_values(&[&name]).inc();
                    warn!(model = %name, frames = batch.len(), "classifier batch failed: {e:#}");
                    continue;
                }
            };
            for (f, row) in scores {
                let Some(status) = registry.get(f.stream) else {
                    continue; // removed meanwhile
                };
                m.classifier_frames.with_label_values(&[&name]).inc();
                for &(col, _) in &slot.policy.thresholds {
                    m.classifier_score
                        .with_label_values(&[&*name, slot.policy.labels[col].as_str()])
                        .observe(row[col] as f64);
                }
                status.set_scores(&name, &slot.policy.labels, &row, f.pts_us);
                let finding = Finding::Scores(Scored {
                    stream: f.stream,
                    stream_id: status.id.clone(),
                    model: slot.policy.clone(),
                    scores: row,
                    pts_us: f.pts_us,
                    arrival: f.arrival,
                    frame: slot.policy.store_evidence.then(|| f.clone()),
                });
                if tx.send(finding).is_err() {
                    return;
                }
            }
        }
    }
}

/// Pre-processes and runs one model on a batch. Returns the frames scored with their rows
/// (clip models score a frame once its stream has a full clip).
fn score(
    slot: &mut Slot,
    batch: &[Arc<Frame>],
    pictures: &[Picture<'_>],
    tensor: &mut Vec<f32>,
    clip_tensor: &mut Vec<f32>,
) -> anyhow::Result<Vec<(Arc<Frame>, Vec<f32>)>> {
    let m = metrics();
    let input = &slot.model.manifest.input;
    let per = input.frame_len();
    tensor.resize(per * batch.len(), 0.0);
    let t = Instant::now();
    let timings = slot.prep.run_batch(pictures, tensor)?;
    let stage = |s: &str, d: Duration| {
        m.classifier_seconds
            .with_label_values(&[s])
            .observe(d.as_secs_f64())
    };
    stage(classifier_stage::PREPROCESS, t.elapsed());
    if slot.prep.backend() == "gpu" {
        stage(classifier_stage::UPLOAD, timings.upload);
        stage(classifier_stage::READBACK, timings.readback);
    }

    let (frames, input_tensor): (Vec<Arc<Frame>>, &[f32]) = if input.layout == Layout::Ncthw {
        let t_len = input.clip_frames();
        let mut ready = Vec::new();
        clip_tensor.clear();
        for (i, f) in batch.iter().enumerate() {
            let clip = slot.clips.entry(f.stream).or_default();
            clip.push_back(tensor[i * per..(i + 1) * per].to_vec());
            while clip.len() > t_len {
                clip.pop_front();
            }
            if clip.len() == t_len {
                append_clip(
                    clip_tensor,
                    clip,
                    input.width as usize * input.height as usize,
                );
                ready.push(f.clone());
            }
        }
        (ready, clip_tensor.as_slice())
    } else {
        (batch.to_vec(), tensor.as_slice())
    };
    if frames.is_empty() {
        return Ok(Vec::new());
    }
    let t = Instant::now();
    let rows = slot.model.run(input_tensor, frames.len())?;
    stage(classifier_stage::INFERENCE, t.elapsed());
    Ok(frames.into_iter().zip(rows).collect())
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
