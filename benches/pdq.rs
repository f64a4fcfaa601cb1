//! PDQ throughput: livewatch's CPU implementation against Meta's reference C++ (through the
//! `pdqhash` wheel), on the same frames, in one run. Reports both and their ratio; the hashes
//! must agree bit for bit. Run with `cargo bench --bench pdq` after `scripts/setup.sh`.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use livewatch::hash::PdqHasher;

const W: usize = 1280;
const H: usize = 720;

/// Deterministic frames with structure at several scales (gradients, blocks, noise).
fn frames(n: usize) -> Vec<u8> {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut out = Vec::with_capacity(n * W * H * 3);
    for f in 0..n {
        for y in 0..H {
            for x in 0..W {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state >> 56) as usize % 24;
                let block = ((x / (40 + f * 3)) ^ (y / (30 + f * 2))) % 2 * 90;
                let v = (x * 255 / W + y * 128 / H + block + noise + f * 7) % 256;
                out.extend_from_slice(&[v as u8, (255 - v) as u8, ((v * 3) % 256) as u8]);
            }
        }
    }
    out
}

#[allow(non_snake_case)]
fn main() {
    // `cargo bench` passes --bench; under `cargo test` this runs once, small, as a check
    let full = std::env::args().any(|a| a == "--bench");
    let (N, ROUNDS) = if full { (24, 3) } else { (2, 1) };
    if !full {
        println!("pdq: unoptimised test build, 2 frames: checks the hashes, timings not meaningful");
    }
    let data = frames(N);
    let mut hasher = PdqHasher::new();
    let mut best = f64::INFINITY;
    let mut ours = Vec::new();
    for _ in 0..ROUNDS {
        let t = Instant::now();
        ours = data
            .chunks_exact(W * H * 3)
            .map(|f| hasher.hash_rgb(f, W, H).hash.to_string())
            .collect();
        best = best.min(t.elapsed().as_secs_f64());
    }
    let per_frame_ours = best / N as f64;
    println!(
        "pdq/livewatch-cpu  {W}x{H}: {:.2} ms/frame, {:.0} frames/s (one core)",
        per_frame_ours * 1e3,
        1.0 / per_frame_ours
    );

    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if !python.exists() {
        println!("pdq/reference: SKIPPED — .venv missing, run scripts/setup.sh for the comparison");
        return;
    }
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(&data).unwrap();
    let out = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/support/pdq_reference_timing.py"
        ))
        .arg(file.path())
        .args([W, H, N, ROUNDS].map(|v| v.to_string()))
        .output()
        .expect("run the reference timing");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let per_frame_ref = v["best_seconds"].as_f64().unwrap() / N as f64;
    let theirs: Vec<String> = v["hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ours, theirs, "hashes differ from the reference");
    println!(
        "pdq/reference-cpp  {W}x{H}: {:.2} ms/frame, {:.0} frames/s (one core)",
        per_frame_ref * 1e3,
        1.0 / per_frame_ref
    );
    println!(
        "pdq/ratio: livewatch is {:.2}x the reference's speed; all {N} hashes identical",
        per_frame_ref / per_frame_ours
    );
}
