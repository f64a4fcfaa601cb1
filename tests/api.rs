//! The control API against a live instance: bearer-token auth, streams attached and detached
//! at run time (persisted across restarts), admission control, reload by SIGHUP and by API,
//! bank items added at run time, `/v1/status`, and the OpenAPI document checked by a real
//! validator.

mod common;

use std::process::Command;

use common::*;

const TOKEN: &str = "lw-test-token-5f1c9a7e2b";

fn call(lw: &Livewatch, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    let auth = format!("Bearer {TOKEN}");
    let (status, text) =
        http_request_with(lw.addr, method, path, body, &[("Authorization", &auth)]).unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
    )
}

fn stream_ids(lw: &Livewatch) -> Vec<String> {
    let (_, v) = call(lw, "GET", "/v1/streams", "");
    v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn the_api_needs_a_token_except_for_metrics_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let lw = Livewatch::start_with(dir, "", &format!("api_tokens = [\"{TOKEN}\"]\n"));
    for open in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(lw.get(open).0, 200, "{open}");
    }
    let (status, body) = lw.get("/v1/streams");
    assert_eq!(status, 401);
    assert!(body.contains("Bearer"), "{body}");
    let wrong = http_request_with(
        lw.addr,
        "GET",
        "/v1/status",
        "",
        &[("Authorization", "Bearer lw-test-token-5f1c9a7e2c")],
    )
    .unwrap();
    assert_eq!(wrong.0, 401);
    let (status, v) = call(&lw, "GET", "/v1/status", "");
    assert_eq!(status, 200);
    assert_eq!(v["version"], env!("CARGO_PKG_VERSION"));
    assert!(v["hash"]["backend"].is_string(), "{v}");
    assert!(v["queues"]["frames_capacity"].as_u64().unwrap() > 0);
    assert!(v["capacity"]["max_streams"].as_u64().unwrap() > 0);
    // a short token is refused at start, naming the key
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("c.toml");
    std::fs::write(&cfg, "[server]\napi_tokens = [\"short\"]\n").unwrap();
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.api_tokens"));
    // listening beyond loopback without a token is refused too
    std::fs::write(&cfg, "[server]\nlisten = \"0.0.0.0:9\"\n").unwrap();
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("server.api_tokens"));
}

/// A platform attaches a broadcast, gets an incident carrying its metadata, detaches it;
/// bad requests get 4xx with a reason; capacity is enforced; API streams survive a restart
/// and a reload; the config file's streams are not the API's to change.
#[test]
fn streams_are_attached_and_detached_at_run_time_and_persist() {
    let known = known_clip();
    let other = &unrelated_clips()[0];
    let receiver = Receiver::start(0);
    let dir = tempfile::tempdir().unwrap();
    bank_from_clip(dir.path(), "known.pdq", &known);
    let base = format!(
        "[[banks]]\nname = \"known\"\npath = \"known.pdq\"\n\n\
         [[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n\n\
         [[streams]]\nid = \"from-config\"\nurl = \"file://{}\"\n",
        receiver.url(),
        other.display()
    );
    let server = format!("api_tokens = [\"{TOKEN}\"]\nmax_streams = 3\n");
    let lw = Livewatch::start_with(dir, &base, &server);

    let body = format!(
        "{{\"url\": \"file://{}\", \"metadata\": {{\"account_id\": \"acct-7\", \"title\": \"Live now\", \"risk_tier\": 3}}}}",
        known.display()
    );
    let (status, v) = call(&lw, "PUT", "/v1/streams/broadcast-1", &body);
    assert_eq!(status, 201, "{v}");
    assert_eq!(v["applied"], "created");
    assert_eq!(v["origin"], "api");
    let (status, v) = call(&lw, "PUT", "/v1/streams/broadcast-1", &body);
    assert_eq!((status, v["applied"].as_str()), (200, Some("unchanged")));

    // the incident carries the platform's metadata
    let records = wait_for(60, "an incident for the attached broadcast", || {
        let r = receiver.records();
        (!r.is_empty()).then_some(r)
    });
    let d = &records[0]["body"]["data"];
    assert_eq!(d["stream"]["id"], "broadcast-1");
    assert_eq!(d["stream"]["metadata"]["account_id"], "acct-7");
    let (_, s) = call(&lw, "GET", "/v1/streams/broadcast-1", "");
    assert!(s["frames_hashed"].as_u64().unwrap() > 0, "{s}");
    assert_eq!(s["metadata"]["risk_tier"], 3);
    wait_for(10, "rates measured", || {
        let (_, s) = call(&lw, "GET", "/v1/streams/broadcast-1", "");
        s["fps_in"].as_f64().filter(|f| *f > 0.0)
    });

    // bad requests
    let bad = [
        ("PUT", "/v1/streams/x", "not json", 400),
        ("PUT", "/v1/streams/x", "{\"url\": \"ftp://nope/a\"}", 422),
        (
            "PUT",
            "/v1/streams/x",
            "{\"url\": \"rtsp://h/a\", \"colour\": 1}",
            400,
        ),
        (
            "PUT",
            "/v1/streams/bad%20id",
            "{\"url\": \"rtsp://h/a\"}",
            422,
        ),
        (
            "PUT",
            "/v1/streams/x",
            "{\"url\": \"rtsp://h/a\", \"sampling\": {\"rate\": 0}}",
            422,
        ),
        // no classifier model is configured here
        (
            "PUT",
            "/v1/streams/x",
            "{\"url\": \"rtsp://h/a\", \"sampling\": {\"classify_fps\": 2}}",
            422,
        ),
        (
            "PUT",
            "/v1/streams/from-config",
            "{\"url\": \"rtsp://h/a\"}",
            409,
        ),
        ("DELETE", "/v1/streams/from-config", "", 409),
        ("DELETE", "/v1/streams/never-was", "", 404),
        ("POST", "/v1/streams", "", 405),
        ("GET", "/v1/nothing-here", "", 404),
    ];
    for (method, path, body, want) in bad {
        let (status, v) = call(&lw, method, path, body);
        assert_eq!(status, want, "{method} {path} {body}: {v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    // capacity: 3 streams at most (one from the config file, one above, one more)
    let rtsp = "{\"url\": \"rtsp://127.0.0.1:9/none\"}";
    assert_eq!(call(&lw, "PUT", "/v1/streams/broadcast-2", rtsp).0, 201);
    let (status, v) = call(&lw, "PUT", "/v1/streams/broadcast-3", rtsp);
    assert_eq!(status, 429, "{v}");
    assert!(v["error"].as_str().unwrap().contains("max_streams"));
    let (_, list) = call(&lw, "GET", "/v1/streams", "");
    assert_eq!(list["capacity"]["load"], 1.0);

    // detach one; the other survives a restart, and a reload
    assert_eq!(call(&lw, "DELETE", "/v1/streams/broadcast-1", "").0, 204);
    assert_eq!(call(&lw, "GET", "/v1/streams/broadcast-1", "").0, 404);
    wait_for(10, "the detached stream gone", || {
        (!stream_ids(&lw).contains(&"broadcast-1".to_string())).then_some(())
    });
    let (logs, dir) = lw.stop_keep();
    assert!(logs.contains("stream removed through the API"));
    let lw = Livewatch::start_with(dir, &base, &server);
    let mut ids = stream_ids(&lw);
    ids.sort();
    assert_eq!(ids, ["broadcast-2", "from-config"]);

    // SIGHUP: the config file's new stream starts, the removed one stops, API streams stay
    let changed = base.replace("id = \"from-config\"", "id = \"from-config-2\"");
    lw.rewrite_config(&changed, &server);
    let hup = Command::new("kill")
        .args(["-HUP", &lw.pid().to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    wait_for(20, "the reloaded stream list", || {
        let mut ids = stream_ids(&lw);
        ids.sort();
        (ids == ["broadcast-2", "from-config-2"]).then_some(())
    });
    // a broken config file on reload changes nothing and says why
    lw.rewrite_config("[[streams]]\nid = \"x\"\n", &server);
    let (status, v) = call(&lw, "POST", "/v1/reload", "");
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("url"), "{v}");
    assert_eq!(stream_ids(&lw).len(), 2);
}

/// Items added to a bank through the API are matched from then on and kept across restarts;
/// a bad line adds nothing; removed items stay removed.
#[test]
fn bank_items_are_added_at_run_time() {
    let known = known_clip();
    let dir = tempfile::tempdir().unwrap();
    let bank = dir.path().join("known.pdq");
    std::fs::write(&bank, "# starts empty\n").unwrap();
    // the items to add: the clip's hashes
    let hashes = {
        let d = tempfile::tempdir().unwrap();
        std::fs::read_to_string(bank_from_clip(d.path(), "b.pdq", &known)).unwrap()
    };
    let config = format!(
        "[[banks]]\nname = \"known\"\npath = \"known.pdq\"\n\n\
         [[streams]]\nid = \"s1\"\nurl = \"file://{}\"\n",
        known.display()
    );
    let server = format!("api_tokens = [\"{TOKEN}\"]\n");
    let lw = Livewatch::start_with(dir, &config, &server);
    let (status, v) = call(&lw, "POST", "/v1/banks/known/items", "f00d,x\n");
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains(":1:"), "{v}");
    assert_eq!(call(&lw, "POST", "/v1/banks/nope/items", "").0, 404);
    let (status, v) = call(&lw, "POST", "/v1/banks/known/items", &hashes);
    assert_eq!(status, 200, "{v}");
    let added = v["added"].as_u64().unwrap();
    assert!(added > 0);
    wait_for(30, "matches against the added items", || {
        let (_, m) = lw.get("/metrics");
        metric(&m, "livewatch_matches_total").filter(|v| *v > 0.0)
    });
    // a bank file broken on disk: the reload is refused, naming file and line, and the bank
    // in force stays
    let (_, before) = call(&lw, "GET", "/v1/banks", "");
    std::fs::write(lw.dir.path().join("known.pdq"), "# broken\nnot-a-hash\n").unwrap();
    let (status, v) = call(&lw, "POST", "/v1/banks/reload", "");
    assert_eq!(status, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("known.pdq:2:"), "{v}");
    let (_, after) = call(&lw, "GET", "/v1/banks", "");
    assert_eq!(before, after);
    std::fs::write(lw.dir.path().join("known.pdq"), "# starts empty\n").unwrap();

    // one item removed (all its hashes), also kept across restarts
    let item = hashes
        .lines()
        .find(|l| !l.starts_with('#'))
        .and_then(|l| l.split(',').nth(1))
        .unwrap()
        .to_string();
    let (status, v) = call(&lw, "DELETE", &format!("/v1/banks/known/items/{item}"), "");
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["removed_hashes"], 1);
    assert_eq!(
        call(&lw, "DELETE", "/v1/banks/known/items/no-such-item", "").0,
        404
    );
    let (_, dir) = lw.stop_keep();
    let lw = Livewatch::start_with(dir, &config, &server);
    let (_, v) = call(&lw, "GET", "/v1/banks", "");
    assert_eq!(v["banks"][0]["hashes"].as_u64(), Some(added - 1));
}

/// The OpenAPI document served by a live instance is valid OpenAPI (checked by the PyPI
/// `openapi-spec-validator`) and lists the control API; a live `/metrics` scrape passes
/// `promtool check metrics`.
#[test]
fn openapi_document_is_valid_and_metrics_pass_promtool() {
    let dir = tempfile::tempdir().unwrap();
    let lw = Livewatch::start(dir, "");
    let (status, doc) = lw.get("/openapi.json");
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&doc).unwrap();
    for path in [
        "/v1/streams/{id}",
        "/v1/alerts",
        "/v1/status",
        "/v1/webhooks",
    ] {
        assert!(v["paths"][path].is_object(), "{path} missing");
    }
    assert!(v["paths"]["/v1/streams/{id}"]["put"]["requestBody"].is_object());
    let file = lw.dir.path().join("openapi.json");
    std::fs::write(&file, &doc).unwrap();
    let out = Command::new(venv_python())
        .args(["-m", "openapi_spec_validator"])
        .arg(&file)
        .output()
        .expect("run openapi-spec-validator");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let (_, metrics) = lw.get("/metrics");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is missing: run scripts/setup.sh");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics:\n{said}"
    );
}
