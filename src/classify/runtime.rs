//! Loading ONNX Runtime: finding its shared library, loading it once per process, and the one
//! ONNX Runtime environment every session is built in.
//!
//! livewatch links ONNX Runtime at run time (`ort`'s `load-dynamic`), from the `onnxruntime`
//! wheel on PyPI (CPU) or `onnxruntime-gpu` (CUDA), so that one binary runs on both kinds of
//! server. [`init`] looks for the library in this order and stops at the first place that says
//! where it is:
//!
//! 1. the path given by the caller (the config file's setting);
//! 2. the environment variable `ORT_DYLIB_PATH` (what `scripts/install-onnxruntime-gpu.sh`
//!    prints for the systemd unit);
//! 3. the project-local Python environment that `scripts/setup.sh` makes:
//!    `.venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*`, looked up under
//!    the current directory, then under each ancestor of the executable's folder (so
//!    `target/debug/livewatch` and the test binaries find the checkout's `.venv`).
//!
//! A path given in 1 or 2 that cannot be loaded is an error: livewatch does not go on looking
//! elsewhere, since a different library than the one configured would be a surprise. A relative
//! path there is taken from the current directory; a bare file name is left to the dynamic
//! loader's own search (`LD_LIBRARY_PATH`).
//!
//! The wheels ship no plain `libonnxruntime.so`, only the versioned file, and `ort` needs
//! ONNX Runtime 1.31 or later (its `api-31` feature).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{anyhow, Context as _};
use serde::Deserialize;

/// An ONNX Runtime execution provider livewatch knows how to configure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// ONNX Runtime's own CPU kernels; always available.
    Cpu,
    /// NVIDIA CUDA (needs `onnxruntime-gpu` and the CUDA / cuDNN libraries).
    Cuda,
    /// NVIDIA TensorRT (needs `onnxruntime-gpu` and TensorRT 10, installed separately). Nodes
    /// TensorRT cannot take fall to the next provider in the list, so list CUDA after it.
    #[serde(rename = "tensorrt")]
    TensorRt,
}

impl ProviderKind {
    /// The name used in config files, logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Cpu => "cpu",
            ProviderKind::Cuda => "cuda",
            ProviderKind::TensorRt => "tensorrt",
        }
    }

    /// Whether this provider runs on a GPU.
    pub fn is_gpu(self) -> bool {
        !matches!(self, ProviderKind::Cpu)
    }
}

impl std::fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// ONNX Runtime as loaded into this process.
struct Loaded {
    path: PathBuf,
    version: Option<String>,
    env: ort::environment::Environment,
}

/// The first [`init`]'s outcome; an error is kept as text (the same error for every caller).
static RUNTIME: OnceLock<Result<Loaded, String>> = OnceLock::new();

/// Loads ONNX Runtime once per process and returns the library's path.
///
/// `lib` is the configured path, if any (see the module docs for the search order). Only the
/// first call does anything; later calls return its result, whatever `lib` they pass, because
/// a process can hold one ONNX Runtime only.
pub fn init(lib: Option<&Path>) -> anyhow::Result<PathBuf> {
    let loaded = RUNTIME.get_or_init(|| load(lib).map_err(|e| format!("{e:#}")));
    match loaded {
        Ok(l) => {
            if let Some(asked) = lib {
                if asked != l.path {
                    tracing::warn!(
                        asked = %asked.display(),
                        loaded = %l.path.display(),
                        "ONNX Runtime is already loaded from another path; keeping it"
                    );
                }
            }
            Ok(l.path.clone())
        }
        Err(e) => Err(anyhow!("{e}")),
    }
}

/// The loaded ONNX Runtime's version (e.g. `1.31.1`), when it could be read.
pub fn version() -> Option<&'static str> {
    match RUNTIME.get() {
        Some(Ok(l)) => l.version.as_deref(),
        _ => None,
    }
}

/// The process's ONNX Runtime environment, loading ONNX Runtime first (as `init(None)` does)
/// when nothing has yet.
pub fn environment() -> anyhow::Result<ort::environment::Environment> {
    init(None)?;
    match RUNTIME.get() {
        Some(Ok(l)) => Ok(l.env.clone()),
        Some(Err(e)) => Err(anyhow!("{e}")),
        None => unreachable!("init sets the runtime"),
    }
}

fn load(lib: Option<&Path>) -> anyhow::Result<Loaded> {
    let (path, why) = locate(lib)?;
    let builder = ort::init_from(&path).map_err(|e| {
        // `ort`'s error says only "dlopen failed"; the loader's reason (file not found, wrong
        // architecture, a missing dependency such as libcudnn) is in the libloading error's
        // `source()`, which `ort`'s error does not expose as its own source.
        let text = match &e {
            ort::LoadDynamicError::Dlopen { error, .. } => error_chain(error),
            _ => error_chain(&e),
        };
        anyhow!(
            "cannot load ONNX Runtime from {} ({why}): {text}",
            path.display()
        )
    })?;
    let env = builder
        .with_name("livewatch")
        .with_telemetry(false)
        .build()
        .map_err(|e| anyhow!("{}", error_chain(&e)))
        .with_context(|| {
            format!(
                "ONNX Runtime loaded from {} but its environment could not be created",
                path.display()
            )
        })?;
    let version = build_version(ort::info()).or_else(|| file_version(&path));
    tracing::info!(
        path = %path.display(),
        version = version.as_deref().unwrap_or("unknown"),
        found_by = why,
        "ONNX Runtime loaded"
    );
    Ok(Loaded { path, version, env })
}

/// Where the library is, and which rule found it.
fn locate(lib: Option<&Path>) -> anyhow::Result<(PathBuf, &'static str)> {
    if let Some(p) = lib.filter(|p| !p.as_os_str().is_empty()) {
        return Ok((absolute(p), "configured path"));
    }
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH").filter(|p| !p.is_empty()) {
        return Ok((absolute(Path::new(&p)), "ORT_DYLIB_PATH"));
    }
    let mut roots = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Some(exe_dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        roots.extend(exe_dir.ancestors().map(Path::to_path_buf));
    }
    let mut searched = Vec::new();
    for root in roots {
        let venv = root.join(".venv");
        if searched.contains(&venv) {
            continue;
        }
        if let Some(found) = find_in_venv(&venv) {
            return Ok((found, "the project's .venv"));
        }
        searched.push(venv);
    }
    Err(anyhow!(
        "ONNX Runtime not found: no path configured, ORT_DYLIB_PATH is not set, and no \
         onnxruntime wheel in {}. Run scripts/setup.sh (CPU) or scripts/install-onnxruntime-gpu.sh \
         (GPU servers), or point ORT_DYLIB_PATH at onnxruntime/capi/libonnxruntime.so.<version>",
        searched
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// A relative path with a folder in it is taken from the current directory (`ort` would try the
/// executable's folder first); a bare file name is left to the dynamic loader's search
/// (`LD_LIBRARY_PATH`, the ld.so cache).
fn absolute(p: &Path) -> PathBuf {
    if p.is_relative() && p.components().count() > 1 {
        if let Ok(cwd) = std::env::current_dir() {
            return cwd.join(p);
        }
    }
    p.to_path_buf()
}

/// `<venv>/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*`, the newest
/// Python folder first when there are several.
fn find_in_venv(venv: &Path) -> Option<PathBuf> {
    let mut pythons: Vec<PathBuf> = std::fs::read_dir(venv.join("lib"))
        .ok()?
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("python3"))
        .map(|e| e.path())
        .collect();
    pythons.sort();
    pythons.into_iter().rev().find_map(|py| {
        let capi = py.join("site-packages/onnxruntime/capi");
        let mut libs: Vec<PathBuf> = std::fs::read_dir(&capi)
            .ok()?
            .filter_map(|e| e.ok())
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .starts_with("libonnxruntime.so.")
            })
            .map(|e| e.path())
            .collect();
        libs.sort();
        libs.pop()
    })
}

/// An error and its causes on one line: `ort` keeps the dlopen reason in `source()`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let c_text = c.to_string();
        if !text.contains(&c_text) {
            text.push_str(": ");
            text.push_str(&c_text);
        }
        cause = c.source();
    }
    text
}

/// The version in ONNX Runtime's build string (`... git-branch=rel-1.31.1, ...`).
fn build_version(info: &str) -> Option<String> {
    let rest = &info[info.find("git-branch=rel-")? + "git-branch=rel-".len()..];
    let v: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    (!v.is_empty()).then_some(v)
}

/// The version in the library's file name (`libonnxruntime.so.1.31.1`).
fn file_version(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    let v = name.strip_prefix("libonnxruntime.so.")?;
    (!v.is_empty()).then(|| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_round_trip_through_config() {
        for p in [
            ProviderKind::Cpu,
            ProviderKind::Cuda,
            ProviderKind::TensorRt,
        ] {
            let parsed: ProviderKind =
                serde_json::from_str(&format!("\"{}\"", p.as_str())).unwrap();
            assert_eq!(parsed, p);
        }
        assert!(serde_json::from_str::<ProviderKind>("\"CUDA\"").is_err());
        assert!(serde_json::from_str::<ProviderKind>("\"tensor_rt\"").is_err());
    }

    #[test]
    fn versions_are_read_from_the_build_string_or_the_file_name() {
        let info = "ORT Build Info: git-branch=rel-1.31.1, git-commit-id=abc, build type=Release";
        assert_eq!(build_version(info).as_deref(), Some("1.31.1"));
        assert_eq!(build_version("ORT Build Info: git-branch=main"), None);
        let p = Path::new("/x/onnxruntime/capi/libonnxruntime.so.1.31.1");
        assert_eq!(file_version(p).as_deref(), Some("1.31.1"));
        assert_eq!(file_version(Path::new("/x/libonnxruntime.so")), None);
    }

    #[test]
    fn finds_the_wheel_library_in_a_venv() {
        let dir = tempfile::tempdir().unwrap();
        let capi = dir
            .path()
            .join(".venv/lib/python3.11/site-packages/onnxruntime/capi");
        std::fs::create_dir_all(&capi).unwrap();
        assert_eq!(find_in_venv(&dir.path().join(".venv")), None);
        std::fs::write(capi.join("libonnxruntime_providers_shared.so"), b"").unwrap();
        std::fs::write(capi.join("libonnxruntime.so.1.31.1"), b"").unwrap();
        assert_eq!(
            find_in_venv(&dir.path().join(".venv")),
            Some(capi.join("libonnxruntime.so.1.31.1"))
        );
    }
}
