//! PDQ throughput on one core: livewatch's CPU implementation against Meta's reference C++
//! (through the `pdqhash` wheel) on the same frames, in one run, at 720p and 1080p. Reports
//! frames per second for both and their ratio; the hashes must agree bit for bit.
//!
//! Two inputs, as the appliance meets them:
//! * video: the decoded frame's Y plane (limited range). livewatch hashes it directly; the
//!   reference gets the same pixels as grey RGB (R = G = B = the full-range luma), which its
//!   luma conversion maps back to exactly those values.
//! * image: colour RGB, luma computed by both sides.
//!
//! Timing: best of 3 rounds on each side. A reference round hashes the 16 frames once (0.3-1 s);
//! a livewatch round hashes them as many times over as fills 0.5 s, so that both sides' rounds
//! are long enough to average out short bursts of other work on a shared machine.
//!
//! Run with `cargo bench --bench pdq` after `scripts/setup.sh`.

use std::hint::black_box;
use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use livewatch::hash::pdq::{instruction_set, limited_to_full_lut};
use livewatch::hash::{PdqHasher, Pixels};

/// Deterministic frames with structure at several scales (gradients, blocks, noise): the Y
/// plane (16..=235) and a colour RGB rendering of it.
fn frames(n: usize, w: usize, h: usize) -> (Vec<u8>, Vec<u8>) {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut y_plane = Vec::with_capacity(n * w * h);
    let mut rgb = Vec::with_capacity(n * w * h * 3);
    for f in 0..n {
        for y in 0..h {
            for x in 0..w {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let noise = (state >> 56) as usize % 24;
                let block = ((x / (40 + f * 3)) ^ (y / (30 + f * 2))) % 2 * 90;
                let v = (x * 255 / w + y * 128 / h + block + noise + f * 7) % 256;
                y_plane.push((16 + v * 219 / 255) as u8);
                rgb.extend_from_slice(&[v as u8, (255 - v) as u8, ((v * 3) % 256) as u8]);
            }
        }
    }
    (y_plane, rgb)
}

struct Timing {
    seconds_per_frame: f64,
    hashes: Vec<String>,
}

/// Best of `rounds` rounds, each hashing the `n` frames as many times over as fills about
/// `round_secs` (at least once). The reference's rounds hash the frames once and last 0.3-1 s,
/// so rounds of similar length give both sides the same exposure to a shared machine's noise:
/// a short round would catch a quiet moment more easily than a long one.
fn time_ours(
    n: usize,
    rounds: usize,
    round_secs: f64,
    mut hash_one: impl FnMut(usize) -> String,
) -> Timing {
    let t = Instant::now();
    let hashes: Vec<String> = (0..n).map(&mut hash_one).collect();
    let once = t.elapsed().as_secs_f64();
    let passes = ((round_secs / once).ceil() as usize).max(1);
    let mut best = f64::INFINITY;
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..passes {
            for i in 0..n {
                black_box(hash_one(i));
            }
        }
        best = best.min(t.elapsed().as_secs_f64() / passes as f64);
    }
    Timing {
        seconds_per_frame: best / n as f64,
        hashes,
    }
}

fn time_reference(
    python: &PathBuf,
    rgb: &[u8],
    w: usize,
    h: usize,
    n: usize,
    rounds: usize,
) -> Timing {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(rgb).unwrap();
    let out = Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/benches/support/pdq_reference_timing.py"
        ))
        .arg(file.path())
        .args([w, h, n, rounds].map(|v| v.to_string()))
        .output()
        .expect("run the reference timing");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    Timing {
        seconds_per_frame: v["best_seconds"].as_f64().unwrap() / n as f64,
        hashes: v["hashes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h.as_str().unwrap().to_string())
            .collect(),
    }
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` this runs once, small, as a check
    let full = std::env::args().any(|a| a == "--bench");
    let (n, rounds, round_secs) = if full { (16, 3, 0.5) } else { (2, 1, 0.0) };
    if !full {
        println!("pdq: test build, 2 frames: checks the hashes, timings not meaningful");
    }
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    let have_reference = python.exists();
    if !have_reference {
        println!("pdq/reference: SKIPPED — .venv missing, run scripts/setup.sh for the comparison");
    }
    println!("pdq: CPU path uses {}; one thread", instruction_set());
    let lut = limited_to_full_lut();
    let mut hasher = PdqHasher::new();
    for (w, h) in [(1280usize, 720usize), (1920, 1080)] {
        let (y_plane, rgb) = frames(n, w, h);
        let video = time_ours(n, rounds, round_secs, |i| {
            let data = &y_plane[i * w * h..(i + 1) * w * h];
            hasher
                .hash(Pixels::VideoY { data, stride: w }, w, h)
                .hash
                .to_string()
        });
        let image = time_ours(n, rounds, round_secs, |i| {
            hasher
                .hash(Pixels::Rgb(&rgb[i * w * h * 3..(i + 1) * w * h * 3]), w, h)
                .hash
                .to_string()
        });
        let grey: Vec<u8> = y_plane
            .iter()
            .flat_map(|&y| [lut[y as usize] as u8; 3])
            .collect();
        for (input, ours, theirs_rgb) in [("video Y", &video, &grey), ("image RGB", &image, &rgb)] {
            println!(
                "pdq/livewatch  {w}x{h} {input:9}: {:6.2} ms/frame, {:6.0} frames/s",
                ours.seconds_per_frame * 1e3,
                1.0 / ours.seconds_per_frame
            );
            if !have_reference {
                continue;
            }
            let theirs = time_reference(&python, theirs_rgb, w, h, n, rounds);
            assert_eq!(
                ours.hashes, theirs.hashes,
                "{w}x{h} {input}: hashes differ from the reference"
            );
            println!(
                "pdq/reference  {w}x{h} {input:9}: {:6.2} ms/frame, {:6.0} frames/s",
                theirs.seconds_per_frame * 1e3,
                1.0 / theirs.seconds_per_frame
            );
            println!(
                "pdq/ratio      {w}x{h} {input:9}: livewatch {:.1}x the reference per core; all {n} hashes identical",
                theirs.seconds_per_frame / ours.seconds_per_frame
            );
        }
    }
}
