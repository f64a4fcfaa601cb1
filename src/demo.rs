//! `livewatch demo`: the appliance's main job with nothing to set up.
//!
//! It makes four short clips with the `ffmpeg` tool (once, cached), hashes one of them into a
//! bank, replays all four as live streams, receives its own webhooks on a local port (verifying
//! each signature) and prints every alert with its latency.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context as _};
use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use tokio_util::sync::CancellationToken;

/// The demo's streams: (stream id, lavfi source). The last one is the "known" clip.
const CLIPS: &[(&str, &str)] = &[
    ("studio-1", "testsrc2=size=640x360:rate=30"),
    (
        "game-2",
        "life=size=640x360:rate=30:mold=10:ratio=0.2:death_color=#202020:life_color=#e0e0e0",
    ),
    ("outdoor-3", "cellauto=size=640x360:rate=30:rule=110"),
    ("known-4", "mandelbrot=size=640x360:rate=30"),
];
const KNOWN: &str = "known-4";
const SECRET: &str = "whsec_ZGVtby1zZWNyZXQtZm9yLWxpdmV3YXRjaC1kZW1vLW9ubHk=";

fn demo_dir() -> PathBuf {
    std::env::var_os("LIVEWATCH_DEMO_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("livewatch-demo"))
}

/// Makes a 10 s H.264 clip (1 s GOP, no B-frames) unless it is already there.
fn make_clip(dir: &Path, id: &str, source: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{id}.mp4"));
    if path.is_file() {
        return Ok(path);
    }
    let tmp = dir.join(format!("{id}.tmp.mp4"));
    let status = Command::new("ffmpeg")
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            source,
            "-t",
            "10",
        ])
        .args([
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "baseline",
            "-pix_fmt",
            "yuv420p",
        ])
        .args([
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
            "-bf",
            "0",
        ])
        .arg(&tmp)
        .status()
        .context("running ffmpeg to make the demo clips (install it: apt-get install ffmpeg)")?;
    if !status.success() {
        bail!("ffmpeg failed to make the {id} clip ({status})");
    }
    std::fs::rename(&tmp, &path)?;
    Ok(path)
}

pub async fn run(
    listen: String,
    duration: Option<f64>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let dir = demo_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    println!("livewatch demo: preparing clips in {}", dir.display());
    let mut clips = Vec::new();
    for (id, source) in CLIPS {
        let dir = dir.clone();
        let (id2, source) = (id.to_string(), source.to_string());
        let path = tokio::task::spawn_blocking(move || make_clip(&dir, &id2, &source)).await??;
        clips.push((*id, path));
    }

    // the bank: every keyframe-interval frame of the known clip
    let known_path = clips
        .iter()
        .find(|(id, _)| *id == KNOWN)
        .map(|(_, p)| p.clone())
        .expect("known clip");
    let hashes = {
        let p = known_path.clone();
        tokio::task::spawn_blocking(move || {
            crate::decode::hash_video_file_with(&p, 0.5, crate::decode::VideoPixels::Luma)
        })
        .await??
    };
    let mut bank = String::from("# demo bank: frames of the known-4 clip\n");
    for h in &hashes {
        bank.push_str(&format!(
            "{},demo-clip-frame-{},demo known clip\n",
            h.hash.hash, h.frame_number
        ));
    }
    std::fs::write(dir.join("known.pdq"), bank)?;

    // the receiver: verifies each signature like a platform would, prints the alert
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let hook_addr = receiver.local_addr()?;
    let verifier =
        std::sync::Arc::new(standardwebhooks::Webhook::new(SECRET).expect("demo secret"));
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let verifier = verifier.clone();
            async move { receive(&verifier, &headers, &body) }
        }),
    );
    let receiver_cancel = cancel.clone();
    tokio::spawn(async move {
        let _ = axum::serve(receiver, app)
            .with_graceful_shutdown(async move { receiver_cancel.cancelled().await })
            .await;
    });

    let mut toml = format!(
        "[server]\nlisten = \"{listen}\"\nstate_dir = \"state\"\n\n\
         [alerts]\ncooldown_secs = 15\nupdate_interval_secs = 5\nresolve_after_secs = 10\n\n\
         [[banks]]\nname = \"known-violent\"\npath = \"known.pdq\"\nstore_evidence = true\n\n\
         [[webhooks]]\nurl = \"http://{hook_addr}/hook\"\nsecret = \"{SECRET}\"\n"
    );
    // the default violence model, when the set-up has fetched it (scripts/setup.sh)
    let models = std::env::current_dir()?.join("models");
    let classify = models.join(format!("{DEMO_MODEL}.onnx")).is_file();
    if classify {
        toml.push_str(&format!(
            "\n[classifier]\nmodels_dir = \"{}\"\nfps = 1\n\n\
             [[classifier.models]]\nname = \"{DEMO_MODEL}\"\n",
            models.display()
        ));
    }
    for (id, path) in &clips {
        toml.push_str(&format!(
            "\n[[streams]]\nid = \"{id}\"\nurl = \"file://{}\"\n",
            path.display()
        ));
    }
    let config_path = dir.join("demo.toml");
    std::fs::write(&config_path, &toml)?;
    let config = crate::config::load(&config_path)?;

    println!(
        "livewatch demo: {} streams replayed live, bank \"known-violent\" holds {} hashes of stream {KNOWN}",
        clips.len(),
        hashes.len()
    );
    println!(
        "livewatch demo: metrics at http://{listen}/metrics, streams at http://{listen}/v1/streams"
    );
    println!(
        "livewatch demo: config written to {} (run it yourself with `livewatch serve -c`)",
        config_path.display()
    );
    if classify {
        println!(
            "livewatch demo: classifier \"{DEMO_MODEL}\" scores every stream once a second; the latest scores are printed every 10 s"
        );
        tokio::spawn(print_scores(listen.clone(), cancel.clone()));
    } else {
        println!(
            "livewatch demo: no classifier (models/{DEMO_MODEL}.onnx is missing: scripts/setup.sh fetches it)"
        );
    }
    if let Some(secs) = duration {
        let c = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs_f64(secs)).await;
            c.cancel();
        });
    }
    crate::run(config, cancel, crate::RunHooks::default()).await
}

/// The default violence model the demo runs when it is there.
const DEMO_MODEL: &str = "image-safety-classifier-s";

/// Prints each stream's latest classifier scores every 10 s, read from the demo's own API.
async fn print_scores(listen: String, cancel: CancellationToken) {
    let client = reqwest::Client::new();
    let url = format!("http://{listen}/v1/streams");
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
        let Ok(r) = client.get(&url).send().await else {
            continue;
        };
        let Ok(body) = r.bytes().await else {
            continue;
        };
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(&body) else {
            continue;
        };
        let mut line = String::from("SCORES");
        for s in v["streams"].as_array().into_iter().flatten() {
            let scores = &s["classifier"][DEMO_MODEL]["scores"];
            if let Some(m) = scores.as_object() {
                let parts: Vec<String> = m
                    .iter()
                    .map(|(k, v)| format!("{k}={:.3}", v.as_f64().unwrap_or(0.0)))
                    .collect();
                line.push_str(&format!(
                    " {}[{}]",
                    s["id"].as_str().unwrap_or("?"),
                    parts.join(" ")
                ));
            }
        }
        println!("{line}");
    }
}

fn receive(verifier: &standardwebhooks::Webhook, headers: &HeaderMap, body: &[u8]) -> StatusCode {
    if let Err(e) = verifier.verify(body, headers) {
        println!("REJECTED webhook: bad signature ({e})");
        return StatusCode::BAD_REQUEST;
    }
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let d = &v["data"];
    // for an opened event: how long after the frame arrived the platform heard of it
    let latency = d["last_evidence"]["at"]
        .as_str()
        .and_then(|t| {
            time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
        })
        .map(|t| (time::OffsetDateTime::from(SystemTime::now()) - t).as_seconds_f64() * 1000.0);
    let found = if d["reason"] == "classifier" {
        let e = &d["evidence"];
        format!(
            "model={} label={} score={:.3} frames_above={}/{}",
            e["model"].as_str().unwrap_or("?"),
            e["label"].as_str().unwrap_or("?"),
            e["score"].as_f64().unwrap_or(0.0),
            e["frames_above"],
            e["window_frames"]
        )
    } else {
        format!(
            "bank={} item={} distance={}",
            d["evidence"]["bank"].as_str().unwrap_or("?"),
            d["evidence"]["item_id"].as_str().unwrap_or("?"),
            d["evidence"]["distance"]
        )
    };
    println!(
        "ALERT {} incident={} stream={} reason={} action={} {found} evidence_frames={} {}={} (signature verified)",
        v["type"].as_str().unwrap_or("?"),
        d["incident_id"].as_str().unwrap_or("?"),
        d["stream"]["id"].as_str().unwrap_or("?"),
        d["reason"].as_str().unwrap_or("?"),
        d["action"].as_str().unwrap_or("?"),
        d["evidence_count"],
        if d["event"] == "opened" { "latency" } else { "last_evidence_age" },
        latency
            .map(|l| format!("{l:.0} ms"))
            .unwrap_or_else(|| "?".into()),
    );
    StatusCode::NO_CONTENT
}
