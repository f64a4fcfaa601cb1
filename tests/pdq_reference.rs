//! PDQ conformance: livewatch's hasher against Meta's reference C++ (the PyPI `pdqhash`
//! wrapper) on identical pixels — the hash and the quality must be identical, bit for bit.
//! With the ThreatExchange reference data present (`LIVEWATCH_TESTDATA`, or
//! `../shared/testdata/threatexchange` beside the checkout) its photos are included and
//! compared with the published hashes too.

mod common;

use std::path::PathBuf;
use std::process::Command;

use common::*;
use livewatch::hash::{Hash256, PdqHasher};

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
