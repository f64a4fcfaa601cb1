//! End to end on real components: GStreamer's RTSP server → livewatch → a webhook receiver
//! that verifies Standard Webhooks signatures with the reference Python library.

mod common;

use common::*;

fn alerts_for<'a>(records: &'a [serde_json::Value], stream: &str) -> Vec<&'a serde_json::Value> {
    records
        .iter()
        .filter(|r| r["body"]["data"]["stream"]["id"] == stream)
        .collect()
}

#[test]
fn five_rtsp_streams_alert_only_for_the_streams_showing_known_content() {
    let known = known_clip();
    let known_h265 = known_clip_h265();
    let others = unrelated_clips();
    let mounts = [
        ("cam0", &others[0]),
        ("cam1", &others[1]),
        ("cam2", &known),
        ("cam3", &others[2]),
        ("cam4", &known_h265),
    ];
    let mounts: Vec<(&str, &std::path::Path)> =
        mounts.iter().map(|(m, p)| (*m, p.as_path())).collect();
    let server = RtspServer::start(free_port(), &mounts);
    let receiver = Receiver::start(0);
    let dir = tempfile::tempdir().unwrap();
    bank_from_clip(dir.path(), "known.pdq", &known);
    let mut config = format!(
        "[alerts]\nupdate_interval_secs = 1\n\n[[banks]]\nname = \"known-violent\"\npath = \"known.pdq\"\n\n\
         [[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n",
        receiver.url()
    );
    for i in 0..5 {
        let url = server.url(&format!("cam{i}"));
        config.push_str(&format!(
            "\n[[streams]]\nid = \"cam-{i}\"\nurl = \"{url}\"\n"
        ));
    }
    let lw = Livewatch::start(dir, &config);

    // an incident and an update for each known stream (H.264 and H.265), every stream analysed a while
    wait_for(
        90,
        "alerts for cam-2 and cam-4, 6 hashed frames on every stream",
        || {
            let hashed = lw
                .streams()
                .iter()
                .all(|s| s["frames_hashed"].as_u64().unwrap_or(0) >= 6);
            let r = receiver.records();
            (hashed && alerts_for(&r, "cam-2").len() >= 2 && alerts_for(&r, "cam-4").len() >= 2)
                .then_some(())
        },
    );

    let records = receiver.records();
    assert!(
        records.iter().all(|r| r["verified"] == true),
        "unverified webhook: {records:#?}"
    );
    let strays: Vec<_> = records
        .iter()
        .filter(|r| {
            !matches!(
                r["body"]["data"]["stream"]["id"].as_str(),
                Some("cam-2" | "cam-4")
            )
        })
        .collect();
    assert!(
        strays.is_empty(),
        "alerts for streams without known content: {strays:#?}"
    );
    let first = &alerts_for(&records, "cam-2")[0]["body"];
    assert_eq!(first["type"], "livewatch.incident.opened");
    let evidence = &first["data"]["evidence"];
    assert_eq!(evidence["bank"], "known-violent");
    assert_eq!(first["data"]["reason"], "hash_match");
    assert_eq!(first["data"]["action"], "suspend");
    assert!(evidence["distance"].as_u64().unwrap() <= 31);
    assert!(evidence["quality"].as_u64().unwrap() >= 50);
    assert!(evidence["item_id"]
        .as_str()
        .unwrap()
        .starts_with("known-frame-"));
    // one incident per stream: the updates carry the same incident id
    for stream in ["cam-2", "cam-4"] {
        let a = alerts_for(&records, stream);
        assert!(a[1..]
            .iter()
            .all(|r| r["body"]["type"] == "livewatch.incident.updated"
                && r["body"]["data"]["incident_id"] == a[0]["body"]["data"]["incident_id"]));
    }
    // the H.265 re-encode differs a little from the bank's H.264 frames, yet stays close
    let h265 = &alerts_for(&records, "cam-4")[0]["body"]["data"];
    println!(
        "H.265 re-encode matched at distance {}",
        h265["evidence"]["distance"]
    );
    // webhook-id is the idempotency key: one per event
    let ids: std::collections::HashSet<_> = records
        .iter()
        .map(|r| r["webhook_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), records.len());

    let (_, metrics) = lw.get("/metrics");
    // the latency is observed for the two opened events
    let observed = metric(&metrics, "livewatch_alert_latency_seconds_count").unwrap_or(0.0);
    assert!(observed >= 2.0, "alert latency not observed:\n{metrics}");
    assert!(
        metrics.contains(
            "livewatch_webhook_deliveries_total{endpoint=\"webhook-0\",outcome=\"delivered\"}"
        ),
        "{metrics}"
    );
    assert!(!metrics.contains("outcome=\"dead_letter\"} 1"), "{metrics}");
    assert!(
        metrics.contains("livewatch_streams{state=\"playing\"} 5"),
        "{metrics}"
    );
    for s in lw.streams() {
        assert_eq!(s["state"], "playing", "{s}");
        assert_eq!(s["codec"], if s["id"] == "cam-4" { "h265" } else { "h264" });
    }

    let logs = lw.terminate();
    assert!(logs.contains("\"stopped\""), "no clean shutdown in logs");
}

#[test]
fn streams_reconnect_after_the_rtsp_server_restarts() {
    let known = known_clip();
    let others = unrelated_clips();
    let port = free_port();
    let server = RtspServer::start(port, &[("live", &known), ("other", &others[0])]);
    let receiver = Receiver::start(0);
    let dir = tempfile::tempdir().unwrap();
    bank_from_clip(dir.path(), "known.pdq", &known);
    let config = format!(
        "[alerts]\nupdate_interval_secs = 1\n\n[source]\nreconnect_min_secs = 0.2\nreconnect_max_secs = 2\n\n\
         [[banks]]\nname = \"known\"\npath = \"known.pdq\"\n\n\
         [[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\n\
         [[streams]]\nid = \"live\"\nurl = \"{}\"\n\n[[streams]]\nid = \"other\"\nurl = \"{}\"\n",
        receiver.url(),
        server.url("live"),
        server.url("other")
    );
    let lw = Livewatch::start(dir, &config);
    wait_for(60, "a first alert", || {
        (!alerts_for(&receiver.records(), "live").is_empty()).then_some(())
    });

    server.stop();
    wait_for(30, "both streams to notice the server is gone", || {
        lw.streams()
            .iter()
            .all(|s| s["state"] != "playing" && !s["last_error"].is_null())
            .then_some(())
    });
    let before = receiver.records().len();
    let gone = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();

    let _server = RtspServer::start(port, &[("live", &known), ("other", &others[0])]);
    wait_for(60, "alerts after the server came back", || {
        let records = receiver.records();
        let fresh = records[before..]
            .iter()
            .filter(|r| {
                r["body"]["data"]["stream"]["id"] == "live"
                    && r["arrived_unix"].as_f64().unwrap() > gone
            })
            .count();
        (fresh > 0).then_some(())
    });
    wait_for(30, "both streams playing again", || {
        lw.streams()
            .iter()
            .all(|s| s["state"] == "playing")
            .then_some(())
    });
    for s in lw.streams() {
        assert!(s["reconnects"].as_u64().unwrap() >= 1, "{s}");
    }
    assert!(receiver.records().iter().all(|r| r["verified"] == true));
    let (_, metrics) = lw.get("/metrics");
    assert!(metric(&metrics, "livewatch_source_reconnects_total").unwrap() >= 2.0);
    assert!(alerts_for(&receiver.records(), "other").is_empty());
}

#[test]
fn bad_streams_get_an_error_state_while_good_ones_keep_working_and_secrets_stay_out() {
    let known = known_clip();
    let server = RtspServer::start(free_port(), &[("cam", &known)]);
    let receiver = Receiver::start(0);
    let dir = tempfile::tempdir().unwrap();
    bank_from_clip(dir.path(), "known.pdq", &known);
    let closed = free_port();
    let good = server
        .url("cam")
        .replace("rtsp://", "rtsp://viewer:s3cretpw@");
    let config = format!(
        "[alerts]\nupdate_interval_secs = 1\n\n[source]\nreconnect_min_secs = 0.2\nreconnect_max_secs = 1\nstall_timeout_secs = 3\n\n\
         [[banks]]\nname = \"known\"\npath = \"known.pdq\"\n\n\
         [[webhooks]]\nurl = \"{hook}\"\nsecret = \"{SECRET}\"\n\n\
         [[streams]]\nid = \"good\"\nurl = \"{good}\"\n\n\
         [[streams]]\nid = \"unreachable\"\nurl = \"rtsp://admin:t0psecret@127.0.0.1:{closed}/x\"\n\n\
         [[streams]]\nid = \"not-rtsp\"\nurl = \"rtsp://admin:t0psecret@127.0.0.1:{http}/x\"\n\n\
         [[streams]]\nid = \"missing-file\"\nurl = \"file:///nonexistent/clip.mp4\"\n\n\
         [[streams]]\nid = \"not-video\"\nurl = \"http://user:t0psecret@127.0.0.1:{http}/healthz?token=t0psecret\"\n",
        hook = receiver.url(),
        http = receiver.port,
    );
    let lw = Livewatch::start(dir, &config);
    wait_for(
        60,
        "the good stream alerting and every bad stream in error",
        || {
            let streams = lw.streams();
            let bad_ok = streams.iter().filter(|s| s["id"] != "good").all(|s| {
                s["state"] != "playing"
                    && s["last_error"]["message"].is_string()
                    && s["reconnects"].as_u64() >= Some(1)
            });
            (bad_ok && !alerts_for(&receiver.records(), "good").is_empty()).then_some(())
        },
    );
    let good = lw.stream("good");
    assert_eq!(good["state"], "playing");
    assert!(good["frames_hashed"].as_u64().unwrap() > 0);
    assert_eq!(lw.stream("unreachable")["last_error"]["kind"], "connect");
    assert_eq!(lw.stream("missing-file")["last_error"]["kind"], "connect");

    let (_, api) = lw.get("/v1/streams");
    let (_, metrics) = lw.get("/metrics");
    let logs = lw.terminate();
    for (what, text) in [
        ("logs", &logs),
        ("/metrics", &metrics),
        ("/v1/streams", &api),
    ] {
        for secret in ["s3cretpw", "t0psecret", "viewer", "admin:"] {
            assert!(
                !text.contains(secret),
                "{secret:?} leaked into {what}:\n{text}"
            );
        }
    }
    // the errors themselves are there, for people to read
    assert!(logs.contains("stream session ended"), "{logs}");
}

/// A receiver that fails at first: the alert is retried, re-signed with a fresh timestamp each
/// time, under the same `webhook-id`, until it is accepted.
#[test]
fn failed_deliveries_are_retried_with_the_same_id_and_fresh_signatures() {
    let known = known_clip();
    let receiver = Receiver::start(2);
    let dir = tempfile::tempdir().unwrap();
    bank_from_clip(dir.path(), "known.pdq", &known);
    // a plain file source, replayed in real time: no RTSP server needed for this one
    let config = format!(
        "[alerts]\ncooldown_secs = 600\n\n[[banks]]\nname = \"known\"\npath = \"known.pdq\"\n\n\
         [[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nretry_schedule_secs = [0.2, 0.2, 0.2, 0.2]\n\n\
         [[streams]]\nid = \"file-1\"\nurl = \"file://{}\"\n",
        receiver.url(),
        known.display()
    );
    let lw = Livewatch::start(dir, &config);
    let records = wait_for(60, "a delivery accepted after two failures", || {
        let r = receiver.records();
        r.iter()
            .any(|x| x["forced_failure"] == false && x["verified"] == true)
            .then_some(r)
    });
    assert_eq!(records.len(), 3, "{records:#?}");
    assert!(records[..2].iter().all(|r| r["forced_failure"] == true));
    let ids: std::collections::HashSet<_> = records
        .iter()
        .map(|r| r["webhook_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), 1, "one event, one id across retries");
    // every attempt carries its own timestamp and a signature that verifies for it
    assert!(
        records.iter().all(|r| r["verified"] == true),
        "{records:#?}"
    );
    let stamps: Vec<i64> = records
        .iter()
        .map(|r| r["webhook_timestamp"].as_str().unwrap().parse().unwrap())
        .collect();
    assert!(stamps.windows(2).all(|w| w[0] <= w[1]), "{stamps:?}");
    let (_, metrics) = lw.get("/metrics");
    assert!(
        metrics.contains(
            "livewatch_webhook_deliveries_total{endpoint=\"webhook-0\",outcome=\"delivered\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("livewatch_webhook_attempts_total{endpoint=\"webhook-0\",result=\"5xx\"} 2"),
        "{metrics}"
    );
}

/// The live pipeline with `backend = "gpu"` on whatever adapter exists (lavapipe in CI): the
/// stream showing known content alerts, the unrelated one does not, and the backend in use is
/// exported. A machine without any Vulkan or GL driver must refuse to start instead.
#[test]
fn gpu_backends_hash_and_match_live_streams_and_say_so() {
    let known = known_clip();
    let others = unrelated_clips();
    let server = RtspServer::start(free_port(), &[("known", &known), ("other", &others[0])]);
    let receiver = Receiver::start(0);
    let dir = tempfile::tempdir().unwrap();
    let bank = bank_from_clip(dir.path(), "known.pdq", &known);
    // padded with unrelated hashes to a size that is matched in GPU memory (4096 and more)
    let mut text = std::fs::read_to_string(&bank).unwrap();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..5000 {
        let mut hex = String::new();
        for _ in 0..4 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            hex.push_str(&format!("{x:016x}"));
        }
        text.push_str(&format!("{hex},padding-{i}\n"));
    }
    std::fs::write(&bank, text).unwrap();
    let config = format!(
        "[hash]\nbackend = \"gpu\"\nallow_software = true\nbatch = 8\n\n\
         [match]\nbackend = \"gpu\"\nallow_software = true\n\n\
         [[banks]]\nname = \"known\"\npath = \"known.pdq\"\n\n\
         [[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\n\
         [[streams]]\nid = \"cam-known\"\nurl = \"{}\"\n\n\
         [[streams]]\nid = \"cam-other\"\nurl = \"{}\"\n",
        receiver.url(),
        server.url("known"),
        server.url("other")
    );
    if livewatch::hash::gpu::list_adapters().is_empty() {
        eprintln!("\n*** SKIPPED: no wgpu adapter on this machine ***\n");
        return;
    }
    let lw = Livewatch::start(dir, &config);
    let records = wait_for(60, "an alert for the known stream", || {
        let r = receiver.records();
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(
        records[0]["body"]["data"]["stream"]["id"], "cam-known",
        "{records:#?}"
    );
    wait_for(30, "frames of both streams hashed", || {
        let s = lw.stream("cam-other");
        (s["frames_hashed"].as_u64().unwrap_or(0) >= 3).then_some(())
    });
    let (_, metrics) = lw.get("/metrics");
    assert!(
        metrics.contains("livewatch_hash_backend_info{adapter=")
            && metrics.contains("backend=\"gpu\""),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "livewatch_hash_gpu_errors_total"),
        Some(0.0)
    );
    let matching = metrics
        .lines()
        .find(|l| l.starts_with("livewatch_match_backend_info{"))
        .unwrap_or_default();
    assert!(matching.contains("backend=\"gpu\""), "{metrics}");
    assert_eq!(
        metric(&metrics, "livewatch_match_gpu_errors_total"),
        Some(0.0)
    );
    let (_, status) = lw.get("/v1/status");
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["match"]["backend"], "gpu", "{status:#}");
    let records = receiver.records();
    assert!(
        records
            .iter()
            .all(|r| r["body"]["data"]["stream"]["id"] == "cam-known"),
        "{records:#?}"
    );
    drop(lw);
}
