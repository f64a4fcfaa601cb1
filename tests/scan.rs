//! `livewatch scan` on Meta's ThreatExchange sample media: vPDQ video items found in edited
//! copies, images matched through rotations (dihedral) and from CSV exports, and
//! clear errors for bad banks and unreadable media.

mod common;

use std::process::Command;

use common::*;

fn scan(args: &[&str]) -> (i32, Vec<serde_json::Value>, String) {
    let out = Command::new(binary())
        .arg("scan")
        .args(args)
        .output()
        .unwrap();
    let lines = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).expect("every line is JSON"))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        lines,
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn of_type<'a>(lines: &'a [serde_json::Value], t: &str) -> Vec<&'a serde_json::Value> {
    lines.iter().filter(|l| l["type"] == t).collect()
}

#[test]
fn scan_finds_banked_videos_in_edited_copies_and_nothing_in_others() {
    let Some(data) = threatexchange() else {
        eprintln!("\n*** SKIPPED: ThreatExchange videos (set LIVEWATCH_TESTDATA) ***\n");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bank = video_bank(
        dir.path(),
        &data,
        &["chair-orig-22-sd-bar", "pattern-sd-grey-bar"],
    );
    let v = |n: &str| data.join(format!("videos/{n}.mp4")).display().to_string();
    let (code, lines, err) = scan(&[
        "--bank",
        bank.to_str().unwrap(),
        "--fps",
        "5",
        &v("chair-22-sd-grey-bar"),
        &v("pattern-sd-with-small-logo-bar"),
        &v("doorknob-hd-no-bar"),
        "/nonexistent/clip.mp4",
    ]);
    assert_eq!(code, 1, "one unreadable medium: {err}");
    let videos = of_type(&lines, "video_match");
    let found: Vec<(String, String)> = videos
        .iter()
        .map(|l| {
            let media = l["media"].as_str().unwrap();
            let name = media.rsplit('/').next().unwrap().to_string();
            (name, l["item"].as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(
        found,
        [
            (
                "chair-22-sd-grey-bar.mp4".to_string(),
                "chair-orig-22-sd-bar".to_string()
            ),
            (
                "pattern-sd-with-small-logo-bar.mp4".to_string(),
                "pattern-sd-grey-bar".to_string()
            ),
        ]
    );
    for l in &videos {
        assert!(l["match_percent"].as_f64().unwrap() >= 80.0, "{l}");
        assert!(l["matching_frames"].as_u64().unwrap() >= 5, "{l}");
        assert!(l["time"].as_f64().is_some() && l["frame"].as_u64().is_some());
    }
    // per-frame matches name the item; none for the unrelated video
    let matches = of_type(&lines, "match");
    assert!(matches.len() >= 10);
    assert!(!matches
        .iter()
        .any(|l| l["media"].as_str().unwrap().contains("doorknob")));
    let errors = of_type(&lines, "error");
    assert_eq!(errors.len(), 1);
    assert!(errors[0]["error"]
        .as_str()
        .unwrap()
        .contains("/nonexistent/clip.mp4"));
}

#[test]
fn scan_matches_images_through_rotations_and_csv_exports() {
    let Some(data) = threatexchange() else {
        eprintln!("\n*** SKIPPED: ThreatExchange images (set LIVEWATCH_TESTDATA) ***\n");
        return;
    };
    let original = data.join("pdq/dih/bridge-1-original.jpg");
    let rotated = data.join("pdq/dih/bridge-2-rotate-90.jpg");
    let out = Command::new(binary())
        .args(["hash", "--backend", "cpu"])
        .arg(&original)
        .output()
        .unwrap();
    let hex = String::from_utf8(out.stdout).unwrap()[..64].to_string();
    let dir = tempfile::tempdir().unwrap();
    // a ThreatExchange-style CSV export: a PDQ row, and a row of another signal type
    let csv = dir.path().join("export.csv");
    std::fs::write(
        &csv,
        format!(
            "signal_type,signal,id,tags\nvideo_md5,d41d8cd98f00b204e9800998ecf8427e,9,x\npdq,{hex},item-bridge,\"bridge,photo\"\n"
        ),
    )
    .unwrap();
    let (o, r) = (original.to_str().unwrap(), rotated.to_str().unwrap());
    let (code, lines, err) = scan(&["--bank", csv.to_str().unwrap(), o, r]);
    assert_eq!(code, 0, "{err}");
    let m = of_type(&lines, "match");
    assert_eq!(m.len(), 1, "the rotated copy needs --dihedral: {lines:?}");
    assert_eq!(m[0]["item"], "item-bridge");
    assert_eq!(m[0]["label"], "bridge,photo");
    assert_eq!(m[0]["distance"], 0);
    let (_, lines, _) = scan(&["--dihedral", "--bank", csv.to_str().unwrap(), o, r]);
    let m = of_type(&lines, "match");
    assert_eq!(m.len(), 2, "{lines:?}");
    assert!(m[1]["media"]
        .as_str()
        .unwrap()
        .ends_with("bridge-2-rotate-90.jpg"));
    assert!(m[1]["distance"].as_u64().unwrap() <= 16, "{}", m[1]);

    // a bad bank stops the scan before any media, naming file and line
    let bad = dir.path().join("bad.pdq");
    std::fs::write(&bad, format!("{hex}\nzz{}\n", &hex[2..])).unwrap();
    let (code, lines, err) = scan(&["--bank", bad.to_str().unwrap(), o]);
    assert_eq!(code, 2);
    assert!(lines.is_empty());
    assert!(err.contains("bad.pdq:2:"), "{err}");
}

/// `scan --model`: one `scores` line per sampled frame and model, in the same JSON-lines
/// stream as the matches, for images and videos; the tiny model's trigger (red) scores high.
#[test]
fn scan_scores_images_and_videos_with_classifier_models() {
    let dir = tempfile::tempdir().unwrap();
    let red = dir.path().join("red.png");
    let grey = dir.path().join("grey.png");
    for (path, colour) in [(&red, "0xD01818"), (&grey, "0x808080")] {
        let ok = Command::new("ffmpeg")
            .args(["-loglevel", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("color=c={colour}:size=96x64"))
            .args(["-frames:v", "1"])
            .arg(path)
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }
    // 2 s of red at 10 fps, sampled at 2 fps: frames 0, 5, 10, 15
    let clip = ffmpeg_clip(
        "red-2s.mp4",
        &[
            "-f",
            "lavfi",
            "-i",
            "color=c=0xD01818:size=160x120:rate=10",
            "-t",
            "2",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
        ],
    );
    let models = repo().join("models");
    let (code, lines, err) = scan(&[
        "--model",
        "tiny-red",
        "--model",
        "image-safety-classifier-s",
        "--models-dir",
        models.to_str().unwrap(),
        "--fps",
        "2",
        red.to_str().unwrap(),
        grey.to_str().unwrap(),
        clip.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    let scores = of_type(&lines, "scores");
    let tiny: Vec<_> = scores.iter().filter(|l| l["model"] == "tiny-red").collect();
    let violence = |media: &std::path::Path| -> Vec<f64> {
        tiny.iter()
            .filter(|l| l["media"] == media.to_str().unwrap())
            .map(|l| l["scores"]["violence"].as_f64().unwrap())
            .collect()
    };
    assert!(violence(&red)[0] > 0.9, "{tiny:#?}");
    assert!(violence(&grey)[0] < 0.5, "{tiny:#?}");
    let frames: Vec<u64> = tiny
        .iter()
        .filter(|l| l["media"] == clip.to_str().unwrap())
        .map(|l| l["frame"].as_u64().unwrap())
        .collect();
    assert_eq!(frames, vec![0, 5, 10, 15]);
    assert!(violence(&clip).iter().all(|v| *v > 0.9));
    // the real model gives its three labels, summing to one, for every sampled frame
    let real: Vec<_> = scores
        .iter()
        .filter(|l| l["model"] == "image-safety-classifier-s")
        .collect();
    assert_eq!(real.len(), 6);
    for l in &real {
        let s = l["scores"].as_object().unwrap();
        assert_eq!(s.len(), 3, "{l}");
        let sum: f64 = ["NSFL", "NSFW", "SFW"]
            .iter()
            .map(|k| s[*k].as_f64().unwrap())
            .sum();
        assert!((sum - 1.0).abs() < 1e-3, "{l}");
        assert!(l["time"].is_number());
    }

    // an unknown model is an error naming what exists
    let (code, _, err) = scan(&[
        "--model",
        "no-such-model",
        "--models-dir",
        models.to_str().unwrap(),
        red.to_str().unwrap(),
    ]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no-such-model") && err.contains("tiny-red"),
        "{err}"
    );
}
