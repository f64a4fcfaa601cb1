//! PDQ conformance: livewatch's hasher against Meta's reference C++ (the PyPI `pdqhash`
//! wrapper) on identical pixels — the hash and the quality must be identical, bit for bit.
//! With the ThreatExchange reference data present (`LIVEWATCH_TESTDATA`, or
//! `../shared/testdata/threatexchange` beside the checkout) its photos are included and
//! compared with the published hashes too.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use livewatch::hash::{Hash256, PdqHasher, Pixels};

fn testdata() -> Option<PathBuf> {
    let dir = std::env::var_os("LIVEWATCH_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/testdata/threatexchange"));
    dir.join("pdq-expected.csv").is_file().then_some(dir)
}

#[test]
fn pdq_is_identical_to_the_reference_on_identical_pixels() {
    let out = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(venv_python());
    cmd.arg(repo().join("tests/support/pdq_oracle.py"))
        .arg("--out")
        .arg(out.path());
    let data = testdata();
    match &data {
        Some(d) => {
            cmd.arg("--testdata").arg(d);
        }
        None => eprintln!(
            "\n*** SKIPPED: ThreatExchange conformance images (set LIVEWATCH_TESTDATA to the \
             threatexchange folder); synthetic images still run ***\n"
        ),
    }
    let result = cmd.output().expect("run pdq_oracle.py");
    assert!(
        result.status.success(),
        "oracle failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    println!("{}", String::from_utf8_lossy(&result.stdout));

    let manifest: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    let mut hasher = PdqHasher::new();
    let mut mismatches = Vec::new();
    let mut from_testdata = 0;
    for e in &manifest {
        let (w, h) = (
            e["width"].as_u64().unwrap() as usize,
            e["height"].as_u64().unwrap() as usize,
        );
        let rgb = std::fs::read(out.path().join(e["file"].as_str().unwrap())).unwrap();
        let ours = hasher.hash_rgb(&rgb, w, h);
        let expected: Hash256 = e["pdq_hex"].as_str().unwrap().parse().unwrap();
        let quality = e["quality"].as_u64().unwrap() as u8;
        let dihedral = hasher.hash_dihedral(Pixels::Rgb(&rgb), w, h);
        for (k, want) in e["dihedral"].as_array().unwrap().iter().enumerate() {
            let want: Hash256 = want.as_str().unwrap().parse().unwrap();
            if dihedral.hashes[k] != want {
                mismatches.push(format!(
                    "{} dihedral {}: ours {} / reference {want}",
                    e["name"],
                    livewatch::hash::pdq::DIHEDRAL_NAMES[k],
                    dihedral.hashes[k]
                ));
            }
        }
        if ours.hash != expected || ours.quality != quality {
            mismatches.push(format!(
                "{}: ours {} q{} / reference {} q{} (distance {})",
                e["name"],
                ours.hash,
                ours.quality,
                expected,
                quality,
                ours.hash.distance(&expected)
            ));
        }
        if e["source"] == "testdata" {
            from_testdata += 1;
            // the published hashes come from other JPEG decoders: upstream accepts 16 bits
            if let Some(published) = e["expected_pdq_hex"].as_str() {
                let published: Hash256 = published.parse().unwrap();
                let d = ours.hash.distance(&published);
                assert!(d <= 16, "{}: {d} bits from the published hash", e["name"]);
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{} of {} differ:\n{}",
        mismatches.len(),
        manifest.len(),
        mismatches.join("\n")
    );
    assert!(manifest.len() >= 13);
    if data.is_some() {
        assert!(
            from_testdata >= 20,
            "expected the ThreatExchange photos, found {from_testdata}"
        );
    }
    println!(
        "{} images identical to the reference ({} from ThreatExchange)",
        manifest.len(),
        from_testdata
    );
}

/// The command-line tool on image files: PNGs holding the oracle's exact pixels must hash to the
/// oracle's values, dihedral variants included; the ThreatExchange JPEGs, decoded by our own
/// decoder, must stay within the upstream tolerance of the published hashes.
#[test]
fn hash_command_on_image_files() {
    let out = tempfile::tempdir().unwrap();
    let result = Command::new(venv_python())
        .arg(repo().join("tests/support/pdq_oracle.py"))
        .arg("--out")
        .arg(out.path())
        .output()
        .expect("run pdq_oracle.py");
    assert!(
        result.status.success(),
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    let manifest: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(out.path().join("manifest.json")).unwrap()).unwrap();
    let pngs: Vec<PathBuf> = manifest
        .iter()
        .map(|e| out.path().join(e["png"].as_str().unwrap()))
        .collect();
    // the CPU path, and the GPU kernels on whatever adapter exists (lavapipe in CI)
    let mut backends = vec![vec!["--backend", "cpu"]];
    if !livewatch::hash::gpu::list_adapters().is_empty() {
        backends.push(vec!["--backend", "gpu", "--allow-software"]);
    } else {
        eprintln!("\n*** SKIPPED: the GPU backend (no wgpu adapter) ***\n");
    }
    for backend in backends {
        let run = Command::new(env!("CARGO_BIN_EXE_livewatch"))
            .args(["hash", "--dihedral"])
            .args(&backend)
            .args(&pngs)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        let stdout = String::from_utf8(run.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(
            lines.len(),
            manifest.len(),
            "{backend:?}: one line per image:\n{stdout}"
        );
        for (line, e) in lines.iter().zip(&manifest) {
            let fields: Vec<&str> = line.split(',').collect();
            assert_eq!(fields.len(), 11, "hash,quality,8 variants,path: {line}");
            assert_eq!(
                fields[0],
                e["pdq_hex"].as_str().unwrap(),
                "{backend:?}: {line}"
            );
            assert_eq!(fields[1], e["quality"].to_string(), "{line}");
            let dihedral: Vec<&str> = e["dihedral"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            assert_eq!(&fields[2..10], &dihedral[..], "{backend:?}: {line}");
            assert!(fields[10].ends_with(e["png"].as_str().unwrap()), "{line}");
        }
    }

    // a file that is not an image: reported, the others still hashed, exit status 1
    let bad = out.path().join("not-an-image.jpg");
    std::fs::write(&bad, b"no pixels here").unwrap();
    let run = Command::new(env!("CARGO_BIN_EXE_livewatch"))
        .args(["hash", "--backend", "cpu"])
        .arg(&bad)
        .arg(&pngs[0])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&run.stderr).contains("not-an-image.jpg"));
    assert_eq!(String::from_utf8_lossy(&run.stdout).lines().count(), 1);

    let Some(data) = testdata() else {
        eprintln!("\n*** SKIPPED: ThreatExchange JPEGs (set LIVEWATCH_TESTDATA) ***\n");
        return;
    };
    let csv = std::fs::read_to_string(data.join("pdq-expected.csv")).unwrap();
    let mut rows = Vec::new();
    for line in csv.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        if data.join(f[0]).is_file() {
            rows.push((
                f[0].to_string(),
                f[1].parse::<Hash256>().unwrap(),
                f[2].to_string(),
            ));
        }
    }
    assert!(
        rows.len() >= 20,
        "expected the ThreatExchange rows, found {}",
        rows.len()
    );
    let files: Vec<PathBuf> = rows.iter().map(|r| data.join(&r.0)).collect();
    let run = Command::new(env!("CARGO_BIN_EXE_livewatch"))
        .args(["hash", "--backend", "cpu"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let stdout = String::from_utf8(run.stdout).unwrap();
    let mut distances = Vec::new();
    let mut high_quality_over_10 = Vec::new();
    for (line, (file, published, reference)) in stdout.lines().zip(&rows) {
        let f: Vec<&str> = line.split(',').collect();
        let ours: Hash256 = f[0].parse().unwrap();
        let quality: u8 = f[1].parse().unwrap();
        let d = ours.distance(published);
        println!("{d:3}  q={quality:3}  {reference:17} {file}");
        assert!(
            d <= 16,
            "{file}: {d} bits from the published hash ({reference})"
        );
        if quality >= 80 && d > 10 {
            high_quality_over_10.push(format!("{file} ({d} bits, q {quality})"));
        }
        distances.push(d);
    }
    distances.sort_unstable();
    println!(
        "our JPEG decoder vs the published hashes, {} rows: exact {}, <=10 {}, max {}, median {}; \
         quality >= 80 and > 10 bits: {:?}",
        distances.len(),
        distances.iter().filter(|&&d| d == 0).count(),
        distances.iter().filter(|&&d| d <= 10).count(),
        distances.last().unwrap(),
        distances[distances.len() / 2],
        high_quality_over_10
    );
    // Not asserted: the upstream "quality >= 80: within 10 bits" rule for other decoders. Two
    // rows published as `python-reference` (bridge-3-rotate-180, bridge-8-flip-minus-1) are 12
    // bits from Meta's own C++ on libjpeg's pixels too (see the test above), so that rule does
    // not hold for the published values themselves; the list above reports where we stand.
}
