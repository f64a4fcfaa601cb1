//! The classifier end to end: GStreamer's RTSP server → livewatch (decode, pre-processing,
//! ONNX Runtime with the tiny test model, the window rule) → a webhook receiver.
//!
//! The tiny model (`models/tiny-red.toml`) scores "violence" by how red a frame is: a stream
//! of red pictures must raise a classifier incident; ordinary pictures must not. The streams
//! use the default keyframes sampling for hashing, so the classifier's own rate makes the
//! decoders decode between keyframes, which the extra-decode metric shows.

mod common;

use common::*;

fn red_clip() -> std::path::PathBuf {
    h264_clip(
        "red-noise",
        "color=c=0xC81E1E:size=640x360:rate=30,noise=alls=12:allf=t+u",
        4,
    )
}

fn calm_clip() -> std::path::PathBuf {
    h264_clip("calm-testsrc2", "testsrc2=size=640x360:rate=30", 4)
}

fn classifier_config(models: &str, receiver: &Receiver, streams: &[(&str, String)]) -> String {
    let mut config = format!(
        "[alerts]\nupdate_interval_secs = 1\n\n\
         [classifier]\nmodels_dir = \"{}\"\nfps = 5\nmax_batch = 8\nmax_wait_ms = 30\n\n{models}\n\
         [[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n",
        repo().join("models").display(),
        receiver.url()
    );
    for (id, url) in streams {
        config.push_str(&format!("\n[[streams]]\nid = \"{id}\"\nurl = \"{url}\"\n"));
    }
    config
}

fn for_stream<'a>(records: &'a [serde_json::Value], stream: &str) -> Vec<&'a serde_json::Value> {
    records
        .iter()
        .filter(|r| r["body"]["data"]["stream"]["id"] == stream)
        .collect()
}

#[test]
fn a_red_stream_raises_a_classifier_incident_and_calm_streams_do_not() {
    let (red, calm, known) = (red_clip(), calm_clip(), known_clip());
    let server = RtspServer::start(
        free_port(),
        &[("red", &red), ("calm", &calm), ("fractal", &known)],
    );
    let receiver = Receiver::start(0);
    let config = classifier_config(
        "[[classifier.models]]\nname = \"tiny-red\"\nwindow_frames = 4\nmin_frames = 3\n\
         severity = \"critical\"\naction = \"suspend\"\n",
        &receiver,
        &[
            ("cam-red", server.url("red")),
            ("cam-calm", server.url("calm")),
            ("cam-fractal", server.url("fractal")),
        ],
    );
    let lw = Livewatch::start(tempfile::tempdir().unwrap(), &config);

    wait_for(
        90,
        "a classifier incident for cam-red and 20 classified frames on every stream",
        || {
            let classified = lw
                .streams()
                .iter()
                .all(|s| s["frames_classified"].as_u64().unwrap_or(0) >= 20);
            (classified && !for_stream(&receiver.records(), "cam-red").is_empty()).then_some(())
        },
    );

    let records = receiver.records();
    assert!(records.iter().all(|r| r["verified"] == true));
    let strays: Vec<_> = records
        .iter()
        .filter(|r| r["body"]["data"]["stream"]["id"] != "cam-red")
        .collect();
    assert!(strays.is_empty(), "incidents for calm streams: {strays:#?}");
    let opened = &for_stream(&records, "cam-red")[0]["body"]["data"];
    assert_eq!(opened["event"], "opened");
    assert_eq!(opened["reason"], "classifier");
    assert_eq!(opened["severity"], "critical");
    assert_eq!(opened["action"], "suspend");
    let ev = &opened["evidence"];
    assert_eq!(ev["kind"], "classifier");
    assert_eq!(ev["model"], "tiny-red");
    assert_eq!(ev["label"], "violence");
    assert_eq!(ev["rule"], "k_of_n");
    // the window holds the last 4 scored frames: 3 of them are enough to open
    assert!(
        (3..=4).contains(&ev["window_frames"].as_u64().unwrap()),
        "{ev}"
    );
    assert!(ev["frames_above"].as_u64().unwrap() >= 3, "{ev}");
    let threshold = ev["threshold"].as_f64().unwrap();
    assert!(ev["score"].as_f64().unwrap() >= threshold, "{ev}");
    assert_eq!(opened["items"][0]["bank"], "tiny-red");
    assert_eq!(opened["items"][0]["item_id"], "violence");

    // the latest scores per stream: red high, the others low
    let score = |id: &str| {
        lw.stream(id)["classifier"]["tiny-red"]["scores"]["violence"]
            .as_f64()
            .unwrap_or_else(|| panic!("no scores for {id}: {}", lw.stream(id)))
    };
    assert!(score("cam-red") >= threshold);
    assert!(score("cam-calm") < threshold);
    assert!(score("cam-fractal") < threshold);

    // which provider runs, and the cost of decoding between keyframes, are visible
    let status = lw.get_json("/v1/status");
    assert_eq!(status["onnx_providers"], serde_json::json!(["cpu"]));
    assert_eq!(status["classifier"]["models"][0]["mode"], "enforce");
    let (_, text) = lw.get("/metrics");
    assert_eq!(
        sample(
            &text,
            "livewatch_classifier_info{mode=\"enforce\",model=\"tiny-red\",preprocess=\"cpu\",provider=\"cpu\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert!(metric(&text, "livewatch_classifier_extra_decoded_total").unwrap() > 0.0);
    assert!(
        sample(
            &text,
            "livewatch_classifier_frames_total{model=\"tiny-red\"}"
        )
        .unwrap()
            >= 60.0
    );
    assert!(
        sample(
            &text,
            "livewatch_classifier_triggers_total{label=\"violence\",mode=\"enforce\",model=\"tiny-red\"}"
        )
        .unwrap()
            >= 1.0
    );
    // hashing still sees keyframes only
    assert!(lw.stream("cam-calm")["frames_hashed"].as_u64().unwrap() >= 1);
    lw.terminate();
}

#[test]
fn a_shadow_model_records_would_be_incidents_and_sends_nothing() {
    let red = red_clip();
    let server = RtspServer::start(free_port(), &[("red", &red)]);
    let receiver = Receiver::start(0);
    let config = classifier_config(
        "[[classifier.models]]\nname = \"tiny-red\"\nshadow = true\nwindow_frames = 3\nmin_frames = 2\n",
        &receiver,
        &[("cam-red", server.url("red"))],
    );
    let lw = Livewatch::start(tempfile::tempdir().unwrap(), &config);
    let shadow = wait_for(60, "a would-be incident in /v1/classifier", || {
        let v = lw.get_json("/v1/classifier");
        let alerts = v["shadow_alerts"].as_array().cloned().unwrap_or_default();
        (!alerts.is_empty()).then_some(v)
    });
    assert_eq!(shadow["models"][0]["mode"], "shadow");
    let first = &shadow["shadow_alerts"][0];
    assert_eq!(first["stream"], "cam-red");
    assert_eq!(first["evidence"]["kind"], "classifier");
    assert_eq!(first["evidence"]["label"], "violence");
    // keep scoring a while: still nothing is sent, and no incident exists
    wait_for(60, "30 classified frames", || {
        (lw.stream("cam-red")["frames_classified"]
            .as_u64()
            .unwrap_or(0)
            >= 30)
            .then_some(())
    });
    assert!(receiver.records().is_empty(), "{:#?}", receiver.records());
    let alerts = lw.get_json("/v1/alerts");
    assert_eq!(
        alerts["alerts"].as_array().map(Vec::len),
        Some(0),
        "{alerts}"
    );
    let (_, text) = lw.get("/metrics");
    assert!(
        sample(
            &text,
            "livewatch_classifier_triggers_total{label=\"violence\",mode=\"shadow\",model=\"tiny-red\"}"
        )
        .unwrap()
            >= 1.0
    );
    lw.terminate();
}

#[test]
fn a_model_that_cannot_be_used_stops_the_start_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // a manifest whose file is missing, next to a copy of the real tiny model's manifest
    let models = dir.path().join("models");
    std::fs::create_dir(&models).unwrap();
    let manifest = std::fs::read_to_string(repo().join("models/tiny-red.toml")).unwrap();
    std::fs::write(models.join("tiny-red.toml"), &manifest).unwrap();
    let config = format!(
        "[server]\nlisten = \"127.0.0.1:{}\"\nstate_dir = \"state\"\n\
         [classifier]\nmodels_dir = \"models\"\n[[classifier.models]]\nname = \"tiny-red\"\n",
        free_port()
    );
    let path = dir.path().join("livewatch.toml");
    std::fs::write(&path, &config).unwrap();
    let run = || {
        std::process::Command::new(binary())
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tiny-red.onnx"), "{err}");
    assert!(err.contains("setup"), "{err}");

    // the file present but not the one the manifest names
    std::fs::write(models.join("tiny-red.onnx"), b"not a model").unwrap();
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sha256"), "{err}");
    // check-config finds it too, before a restart would
    let out = std::process::Command::new(binary())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sha256"));

    // a threshold for a label the model does not have
    std::fs::copy(
        repo().join("models/tiny-red.onnx"),
        models.join("tiny-red.onnx"),
    )
    .unwrap();
    std::fs::write(&path, format!("{config}thresholds = {{ gore = 0.5 }}\n")).unwrap();
    let out = run();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("\"gore\"") && err.contains("violence"),
        "{err}"
    );
}

/// The same incident with the WGSL pre-processing, on Mesa's software Vulkan (the kernels'
/// results equal the CPU twin's there; `allow_software` lets a test use it).
#[test]
fn gpu_pre_processing_raises_the_same_incident() {
    if livewatch::hash::gpu::list_adapters().is_empty() {
        eprintln!("\n*** SKIPPED: no wgpu adapter at all (install mesa-vulkan-drivers) ***\n");
        return;
    }
    let (red, calm) = (red_clip(), calm_clip());
    let server = RtspServer::start(free_port(), &[("red", &red), ("calm", &calm)]);
    let receiver = Receiver::start(0);
    let config = classifier_config(
        "[[classifier.models]]\nname = \"tiny-red\"\nwindow_frames = 4\nmin_frames = 3\n",
        &receiver,
        &[
            ("cam-red", server.url("red")),
            ("cam-calm", server.url("calm")),
        ],
    )
    .replace(
        "[classifier]\n",
        "[classifier]\npreprocess = \"gpu\"\nallow_software = true\n",
    );
    let lw = Livewatch::start(tempfile::tempdir().unwrap(), &config);
    wait_for(
        120,
        "a classifier incident for cam-red and 10 classified frames of cam-calm",
        || {
            let calm = lw.stream("cam-calm")["frames_classified"]
                .as_u64()
                .unwrap_or(0);
            (calm >= 10 && !for_stream(&receiver.records(), "cam-red").is_empty()).then_some(())
        },
    );
    let records = receiver.records();
    assert!(for_stream(&records, "cam-calm").is_empty(), "{records:#?}");
    assert_eq!(
        for_stream(&records, "cam-red")[0]["body"]["data"]["reason"],
        "classifier"
    );
    let (_, text) = lw.get("/metrics");
    assert_eq!(
        sample(
            &text,
            "livewatch_classifier_info{mode=\"enforce\",model=\"tiny-red\",preprocess=\"gpu\",provider=\"cpu\"}"
        ),
        Some(1.0),
        "{text}"
    );
    lw.terminate();
}
