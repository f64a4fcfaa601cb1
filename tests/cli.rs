//! The command line: `check-config` finds bad configurations and names the field and line;
//! `serve` needs a configuration and never falls back to the demo.

mod common;

use std::process::Command;

use common::*;

fn check(config: &str, bank: Option<&str>) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    if let Some(b) = bank {
        std::fs::write(dir.path().join("bank.pdq"), b).unwrap();
    }
    let path = dir.path().join("c.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

const HEX: &str = "f8f8f0cee0f4a84f06370a22038f63f0b36e2ed596621e1d33e6b39c4e9c9b22";

#[test]
fn check_config_accepts_the_documented_example() {
    let text = std::fs::read_to_string(repo().join("examples/livewatch.toml")).unwrap();
    // the example's models folder is the repository's, relative to examples/
    let models = format!(
        "models_dir = {:?}",
        repo().join("models").display().to_string()
    );
    assert!(text.contains("models_dir = \"../models\""));
    let text = text.replacen("models_dir = \"../models\"", &models, 1);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("banks")).unwrap();
    std::fs::write(dir.path().join("banks/known.pdq"), format!("{HEX}\n")).unwrap();
    let path = dir.path().join("livewatch.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("ok"), "{stdout}");
    assert!(
        stdout.contains("1 models: image-safety-classifier-s"),
        "{stdout}"
    );
}

#[test]
fn check_config_names_the_bad_field_and_line() {
    let cases: &[(&str, Option<&str>, &[&str])] = &[
        ("[server]\nlisten = \"nowhere\"\n", None, &["server.listen", ":2"]),
        ("[[streams]]\nid = \"a\"\nurl = \"gopher://h/x\"\n", None, &["streams[0].url", ":3", "gopher"]),
        ("[[streams]]\nid = \"a\"\nurl = \"rtsp://h/x\"\nsampling = { mode = \"sometimes\" }\n", None, &[":4", "sometimes"]),
        ("[[banks]]\nname = \"k\"\npath = \"missing.pdq\"\n", None, &["banks[0].path", ":3", "does not exist"]),
        ("[[banks]]\nname = \"k\"\npath = \"bank.pdq\"\n", Some("# ok\nnot-hex\n"), &["bank.pdq:2", "64 hex digits"]),
        ("[[webhooks]]\nurl = \"http://127.0.0.1:9/h\"\nsecret = \"plain\"\n", None, &["webhooks[0].secret", ":3"]),
        ("[serverr]\nlisten = \"127.0.0.1:1\"\n", None, &[":1", "serverr"]),
        ("[[streams]]\nid = \"a\"\nurl = \"rtsp://h/x\"\n[[streams]]\nid = \"a\"\nurl = \"rtsp://h/y\"\n", None, &[":5", "duplicate"]),
    ];
    for (config, bank, expect) in cases {
        let (ok, text) = check(config, *bank);
        assert!(!ok, "accepted bad config:\n{config}");
        for e in *expect {
            assert!(
                text.contains(e),
                "for config\n{config}\nexpected {e:?} in: {text}"
            );
        }
    }
}

#[test]
fn serve_without_config_is_an_error_not_the_demo() {
    let out = Command::new(binary()).arg("serve").output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

#[test]
fn serve_with_a_missing_bank_file_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, "[[banks]]\nname = \"k\"\npath = \"gone.pdq\"\n").unwrap();
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("banks[0].path") && err.contains("gone.pdq"),
        "{err}"
    );
}

#[test]
fn hash_video_prints_vpdq_lines() {
    let clip = known_clip();
    let out = Command::new(binary())
        .args(["hash", "--video"])
        .arg(&clip)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 120, "4 s at 30 fps");
    for (i, l) in lines.iter().enumerate() {
        let cols: Vec<&str> = l.split(',').collect();
        assert_eq!(cols.len(), 4, "{l}");
        assert_eq!(cols[0], i.to_string());
        assert_eq!(cols[2].len(), 64);
        let q: u32 = cols[1].parse().unwrap();
        assert!(q <= 100);
    }
}
