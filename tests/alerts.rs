//! Alerts that are never lost, on real peers: the livewatch binary replaying a clip with known
//! content, and webhook receivers that verify every delivery with the `standardwebhooks` PyPI
//! library. Incidents, the durable outbox across `kill -9`, receivers that fail, throttle, are
//! gone, time out or are slow, dead letters, secret rotation and mutual TLS.

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::*;

const OTHER_SECRET: &str = "whsec_b2xkLXNlY3JldC1iZWluZy1yb3RhdGVkLW91dC0xMjM0NQ==";

fn stream(id: &str, clip: &Path) -> String {
    format!(
        "\n[[streams]]\nid = \"{id}\"\nurl = \"file://{}\"\n",
        clip.display()
    )
}

fn data(r: &serde_json::Value) -> &serde_json::Value {
    &r["body"]["data"]
}

fn of_stream<'a>(records: &'a [serde_json::Value], id: &str) -> Vec<&'a serde_json::Value> {
    records
        .iter()
        .filter(|r| data(r)["stream"]["id"] == id)
        .collect()
}

fn gauge(lw: &Livewatch, series: &str) -> Option<f64> {
    let (_, text) = lw.get("/metrics");
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// GET returning status, content type and raw bytes (for the thumbnail).
fn get_bytes(lw: &Livewatch, path: &str) -> (u16, String, Vec<u8>) {
    let mut s = TcpStream::connect(lw.addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&buf[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type: ")
                .map(str::to_string)
        })
        .unwrap_or_default();
    (status, ctype, buf[split + 4..].to_vec())
}

/// A stream that keeps matching is one incident with updates; acknowledging and resolving
/// through the API emit their own events; after resolution the cooldown holds; the stream's
/// metadata, the bank's severity and action, and the evidence thumbnail (only where the bank
/// allows it) come with the incident.
#[test]
fn a_matching_stream_is_one_incident_with_updates_acknowledged_and_resolved_through_the_api() {
    let known = known_clip();
    let other = &unrelated_clips()[0];
    let receiver = Receiver::start(0);
    let dir = tempfile::tempdir().unwrap();
    bank_from_clip(dir.path(), "known.pdq", &known);
    bank_from_clip(dir.path(), "never-stored.pdq", other);
    let mut config = format!(
        "[alerts]\nupdate_interval_secs = 1\nresolve_after_secs = 600\ncooldown_secs = 600\n\n\
         [[banks]]\nname = \"known\"\npath = \"known.pdq\"\nseverity = \"high\"\nstore_evidence = true\n\n\
         [[banks]]\nname = \"never-stored\"\npath = \"never-stored.pdq\"\naction = \"review\"\n\n\
         [[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\n",
        receiver.url()
    );
    config.push_str(&stream("cam-a", &known));
    config.push_str(
        "metadata = { account_id = \"acct-42\", title = \"Evening show\", risk_tier = 2 }\n",
    );
    config.push_str(&stream("cam-b", other));
    let lw = Livewatch::start(dir, &config);

    let records = wait_for(
        90,
        "an incident with 3 updates on cam-a, one on cam-b",
        || {
            let r = receiver.records();
            (of_stream(&r, "cam-a").len() >= 4 && !of_stream(&r, "cam-b").is_empty()).then_some(r)
        },
    );
    assert!(
        records.iter().all(|r| r["verified"] == true),
        "{records:#?}"
    );
    let a = of_stream(&records, "cam-a");
    let id = data(a[0])["incident_id"].as_str().unwrap().to_string();
    assert_eq!(a[0]["body"]["type"], "livewatch.incident.opened");
    for (i, r) in a.iter().enumerate() {
        let d = data(r);
        assert_eq!(d["incident_id"], id.as_str(), "one incident: {r:#}");
        // delivered in order: the sequence counts up by one per event
        assert_eq!(d["sequence"], i as u64 + 1, "{r:#}");
        assert_eq!(d["schema_version"], 2);
        assert_eq!(d["event_id"], r["webhook_id"]);
        if i > 0 {
            assert_eq!(r["body"]["type"], "livewatch.incident.updated");
        }
    }
    let d = data(a[a.len() - 1]);
    assert!(d["evidence_count"].as_u64().unwrap() >= 2);
    assert_eq!(d["reason"], "hash_match");
    assert_eq!(d["severity"], "high");
    assert_eq!(d["action"], "suspend");
    assert_eq!(d["status"], "open");
    assert_eq!(d["stream"]["metadata"]["account_id"], "acct-42");
    assert_eq!(d["stream"]["metadata"]["risk_tier"], 2);
    assert_eq!(d["evidence"]["kind"], "hash_match");
    assert_eq!(d["evidence"]["bank"], "known");
    assert!(d["first_evidence"]["at"].is_string());
    assert!(d["items"][0]["item_id"]
        .as_str()
        .unwrap()
        .starts_with("known-frame-"));

    // evidence: a JPEG for the bank that allows it, nothing for the one that does not
    let thumb = d["thumbnail"].as_str().unwrap();
    assert_eq!(thumb, format!("/v1/alerts/{id}/thumbnail"));
    let (status, ctype, jpeg) = get_bytes(&lw, thumb);
    assert_eq!((status, ctype.as_str()), (200, "image/jpeg"));
    assert_eq!(&jpeg[..3], &[0xff, 0xd8, 0xff], "a JPEG");
    let b = data(of_stream(&records, "cam-b")[0]).clone();
    assert!(b["thumbnail"].is_null(), "{b:#}");
    assert_eq!(b["action"], "review");
    assert_eq!(b["severity"], "critical");
    let b_id = b["incident_id"].as_str().unwrap();
    assert_eq!(
        get_bytes(&lw, &format!("/v1/alerts/{b_id}/thumbnail")).0,
        404
    );

    // the API lists and shows it, with its events and their delivery
    let list = lw.get_json("/v1/alerts?stream=cam-a");
    assert_eq!(list["alerts"].as_array().unwrap().len(), 1);
    assert_eq!(list["alerts"][0]["incident_id"], id.as_str());
    let one = lw.get_json(&format!("/v1/alerts/{id}"));
    assert_eq!(one["event_log"][0]["event"], "opened");
    assert_eq!(one["event_log"][0]["deliveries"][0]["status"], "delivered");
    assert_eq!(lw.get("/v1/alerts/nope").0, 404);
    assert_eq!(lw.get("/v1/alerts?limit=0").0, 400);

    // acknowledge, then resolve
    let (status, body) = lw.post(
        &format!("/v1/alerts/{id}/acknowledge"),
        "{\"by\": \"oncall\", \"note\": \"looking\"}",
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = lw.post(&format!("/v1/alerts/{id}/acknowledge"), "{\"who\": 1}");
    assert_eq!(status, 400, "{body}");
    let (status, body) = lw.post(&format!("/v1/alerts/{id}/resolve"), "");
    assert_eq!(status, 200, "{body}");
    let resolved: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(lw.post(&format!("/v1/alerts/{id}/resolve"), "").0, 409);
    assert_eq!(
        lw.post(
            "/v1/alerts/0190f1e2-0000-7000-8000-000000000000/resolve",
            ""
        )
        .0,
        404
    );
    let records = wait_for(30, "the acknowledged and resolved events", || {
        let r = receiver.records();
        let types: Vec<_> = of_stream(&r, "cam-a")
            .iter()
            .map(|x| x["body"]["type"].as_str().unwrap().to_string())
            .collect();
        types
            .contains(&"livewatch.incident.resolved".to_string())
            .then_some(r)
    });
    let a = of_stream(&records, "cam-a");
    let ack = a
        .iter()
        .find(|r| r["body"]["type"] == "livewatch.incident.acknowledged")
        .expect("acknowledged event");
    assert_eq!(data(ack)["acknowledged"]["by"], "oncall");
    assert_eq!(data(ack)["status"], "acknowledged");
    let seqs: Vec<u64> = a
        .iter()
        .map(|r| data(r)["sequence"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());

    // in cooldown: the stream still matches, but no new incident opens
    let suppressed = |lw: &Livewatch| gauge(lw, "livewatch_alerts_suppressed_total").unwrap_or(0.0);
    let before = suppressed(&lw);
    wait_for(30, "matches suppressed by the cooldown", || {
        (suppressed(&lw) > before).then_some(())
    });
    let opened: Vec<_> = of_stream(&receiver.records(), "cam-a")
        .into_iter()
        .filter(|r| r["body"]["type"] == "livewatch.incident.opened")
        .cloned()
        .collect();
    assert_eq!(opened.len(), 1, "{opened:#?}");
    assert_eq!(gauge(&lw, "livewatch_incidents_open"), Some(1.0));
}

/// The receiver is down for a while, then up: every event arrives, none lost, and each
/// stream's events arrive in order.
#[test]
fn events_wait_for_a_receiver_that_is_down_and_arrive_in_order_when_it_is_back() {
    let known = known_clip();
    let mut receiver = Receiver::start(0);
    receiver.stop();
    let dir = tempfile::tempdir().unwrap();
    bank_from_clip(dir.path(), "known.pdq", &known);
    let mut config = format!(
        "[alerts]\nupdate_interval_secs = 1\nresolve_after_secs = 600\n\n\
         [[banks]]\nname = \"known\"\npath = \"known.pdq\"\n\n\
         [[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nretry_schedule_secs = [{}]\n",
        receiver.url(),
        ["1"; 20].join(", ")
    );
    config.push_str(&stream("s1", &known));
    config.push_str(&stream("s2", &known));
    let lw = Livewatch::start(dir, &config);
    let pending = "livewatch_outbox_pending{endpoint=\"webhook-0\"}";
    wait_for(90, "events piling up while the receiver is down", || {
        (gauge(&lw, pending).unwrap_or(0.0) >= 6.0).then_some(())
    });
    let failed = gauge(
        &lw,
        "livewatch_webhook_attempts_total{endpoint=\"webhook-0\",result=\"error\"}",
    );
    assert!(failed.unwrap_or(0.0) >= 1.0);

    receiver.restart();
    wait_for(60, "the backlog delivered", || {
        (gauge(&lw, pending) == Some(0.0)).then_some(())
    });
    let logs = lw.terminate();
    let records = receiver.records();
    assert!(
        records.iter().all(|r| r["verified"] == true),
        "{records:#?}"
    );
    for s in ["s1", "s2"] {
        let seqs: Vec<u64> = of_stream(&records, s)
            .iter()
            .map(|r| data(r)["sequence"].as_u64().unwrap())
            .collect();
        assert!(seqs.len() >= 3, "{s}: {seqs:?}");
        // all of them, in order, each once
        assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "{s}");
    }
    let ids: HashSet<_> = records
        .iter()
        .map(|r| r["webhook_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids.len(), records.len());
    assert!(logs.contains("\"stopped\""));
}

/// `kill -9` after an event is committed and before it is delivered: after the restart it is
/// delivered, with the same `webhook-id`.
#[test]
fn an_event_committed_before_a_kill_9_is_delivered_after_the_restart_with_the_same_id() {
    let known = known_clip();
    let port = free_port(); // nobody listens yet
    let dir = tempfile::tempdir().unwrap();
    bank_from_clip(dir.path(), "known.pdq", &known);
    let hooks = format!(
        "[alerts]\nupdate_interval_secs = 600\n\n[[banks]]\nname = \"known\"\npath = \"known.pdq\"\n\n\
         [[webhooks]]\nurl = \"http://127.0.0.1:{port}/hook\"\nsecret = \"{SECRET}\"\nretry_schedule_secs = [0.5, 600]\n"
    );
    let lw = Livewatch::start(dir, &format!("{hooks}{}", stream("s1", &known)));
    let (id, webhook_id) = wait_for(60, "an incident whose delivery failed once", || {
        let list = lw.get_json("/v1/alerts");
        let id = list["alerts"][0]["incident_id"].as_str()?.to_string();
        let one = lw.get_json(&format!("/v1/alerts/{id}"));
        let ev = &one["event_log"][0];
        (ev["deliveries"][0]["attempts"].as_u64()? >= 1
            && ev["deliveries"][0]["status"] == "pending")
            .then(|| (id, ev["webhook_id"].as_str().unwrap().to_string()))
    });
    let dir = lw.kill9();

    let receiver = Receiver::start_with(port, 0, None);
    // restart without streams: whatever arrives was committed before the kill
    let lw = Livewatch::start(dir, &hooks);
    let records = wait_for(30, "the event delivered after the restart", || {
        let r = receiver.records();
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];
    assert_eq!(r["verified"], true);
    assert_eq!(r["webhook_id"], webhook_id.as_str());
    assert_eq!(data(r)["incident_id"], id.as_str());
    assert_eq!(r["body"]["type"], "livewatch.incident.opened");
    assert!(lw
        .logs()
        .contains("resuming deliveries left from the last run"));
    // the incident outlived the process too
    let one = lw.get_json(&format!("/v1/alerts/{id}"));
    assert_eq!(one["incident_id"], id.as_str());
}

/// One receiver process plays several endpoints by path. Each endpoint has its own queue: a
/// slow one does not delay the others; 500s are retried under one id; 429 with Retry-After
/// pauses the endpoint that long; 410 disables it until re-enabled through the API; exhausted
/// retries land in the dead letters and can be redelivered; several secrets sign at once; a
/// filter keeps other reasons away.
#[test]
fn each_endpoint_fails_throttles_disables_and_dead_letters_on_its_own() {
    let known = known_clip();
    let receiver = Receiver::start(0);
    receiver.set_mode("/slow", "status=204&delay=5");
    receiver.set_mode("/flaky", "status=500&count=2");
    receiver.set_mode("/throttled", "status=429&retry_after=2&count=1");
    receiver.set_mode("/gone", "status=410");
    receiver.set_mode("/dead", "status=500");
    let dir = tempfile::tempdir().unwrap();
    bank_from_clip(dir.path(), "known.pdq", &known);
    let hook = |name: &str, extra: &str| {
        format!(
            "\n[[webhooks]]\nname = \"{name}\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\n{extra}",
            receiver.url_path(&format!("/{name}"))
        )
    };
    let mut config = String::from(
        "[alerts]\nupdate_interval_secs = 600\n\n[[banks]]\nname = \"known\"\npath = \"known.pdq\"\n",
    );
    config.push_str(&hook("ok", ""));
    config.push_str(&hook(
        "slow",
        "timeout_secs = 1\nretry_schedule_secs = [120]\n",
    ));
    config.push_str(&hook(
        "flaky",
        "retry_schedule_secs = [0.2, 0.2, 0.2, 0.2]\n",
    ));
    config.push_str(&hook(
        "throttled",
        "retry_schedule_secs = [0.2, 0.2, 0.2]\n",
    ));
    config.push_str(&hook("gone", ""));
    config.push_str(&hook("dead", "retry_schedule_secs = [0.2, 0.2]\n"));
    config.push_str(&format!(
        "\n[[webhooks]]\nname = \"rotated\"\nurl = \"{}\"\nsecrets = [\"{OTHER_SECRET}\", \"{SECRET}\"]\n",
        receiver.url_path("/rotated")
    ));
    config.push_str(&hook("filtered", "reasons = [\"classifier\"]\n"));
    config.push_str(&stream("s1", &known));
    let lw = Livewatch::start(dir, &config);

    let view = |name: &str| -> serde_json::Value {
        let all = lw.get_json("/v1/webhooks");
        all["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["name"] == name)
            .cloned()
            .unwrap()
    };
    // the healthy endpoint is served while the slow one is still timing out
    wait_for(60, "delivery to the healthy endpoint", || {
        (view("ok")["delivered"] == 1).then_some(())
    });
    assert_eq!(view("slow")["delivered"], 0);
    wait_for(30, "the slow endpoint timing out", || {
        gauge(
            &lw,
            "livewatch_webhook_attempts_total{endpoint=\"slow\",result=\"timeout\"}",
        )
        .filter(|v| *v >= 1.0)
    });
    assert_eq!(view("slow")["pending"], 1);
    let id = receiver.records_at("/ok")[0]["webhook_id"]
        .as_str()
        .unwrap()
        .to_string();

    // 500, 500, then accepted: one id throughout
    let flaky = wait_for(30, "the flaky endpoint accepting", || {
        let r = receiver.records_at("/flaky");
        (r.len() >= 3).then_some(r)
    });
    assert!(flaky
        .iter()
        .all(|r| r["webhook_id"] == id.as_str() && r["verified"] == true));
    wait_for(10, "flaky delivered", || {
        (view("flaky")["delivered"] == 1).then_some(())
    });

    // 429 with Retry-After: 2 — the retry waits those 2 s, not the 0.2 s of the schedule
    let throttled = wait_for(30, "the throttled endpoint retried", || {
        let r = receiver.records_at("/throttled");
        (r.len() >= 2).then_some(r)
    });
    let gap = throttled[1]["arrived_unix"].as_f64().unwrap()
        - throttled[0]["arrived_unix"].as_f64().unwrap();
    assert!(
        gap >= 1.9,
        "Retry-After not honoured: retried after {gap} s"
    );
    assert_eq!(throttled[1]["webhook_id"], id.as_str());

    // 410: disabled, persisted, no more attempts; re-enabled through the API, then delivered
    wait_for(30, "the gone endpoint disabled", || {
        (view("gone")["disabled"] == true).then_some(())
    });
    assert_eq!(
        gauge(
            &lw,
            "livewatch_webhook_endpoint_disabled{endpoint=\"gone\"}"
        ),
        Some(1.0)
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(receiver.records_at("/gone").len(), 1);
    assert_eq!(view("gone")["pending"], 1);
    receiver.set_mode("/gone", "reset=1");
    assert_eq!(lw.post("/v1/webhooks/gone/enable", "").0, 200);
    assert_eq!(lw.post("/v1/webhooks/nope/enable", "").0, 404);
    let gone = wait_for(30, "delivery after re-enabling", || {
        let r = receiver.records_at("/gone");
        (r.len() >= 2).then_some(r)
    });
    assert_eq!(gone[1]["webhook_id"], id.as_str());
    assert_eq!(
        gauge(
            &lw,
            "livewatch_webhook_endpoint_disabled{endpoint=\"gone\"}"
        ),
        Some(0.0)
    );

    // three failures with a two-retry schedule: a dead letter, redelivered on request
    let dead = wait_for(30, "a dead letter", || {
        let d = lw.get_json("/v1/webhooks/dead/dead-letters");
        (!d["dead_letters"].as_array().unwrap().is_empty()).then_some(d)
    });
    assert_eq!(dead["dead_letters"][0]["webhook_id"], id.as_str());
    assert_eq!(dead["dead_letters"][0]["attempts"], 3);
    assert_eq!(receiver.records_at("/dead").len(), 3);
    assert_eq!(
        gauge(&lw, "livewatch_webhook_dead_letters{endpoint=\"dead\"}"),
        Some(1.0)
    );
    assert_eq!(
        gauge(
            &lw,
            "livewatch_webhook_deliveries_total{endpoint=\"dead\",outcome=\"dead_letter\"}"
        ),
        Some(1.0)
    );
    receiver.set_mode("/dead", "reset=1");
    let (status, body) = lw.post(
        &format!("/v1/webhooks/dead/dead-letters/{id}/redeliver"),
        "",
    );
    assert_eq!((status, body.as_str()), (200, "{\"requeued\":1}"));
    wait_for(30, "the dead letter delivered", || {
        (view("dead")["delivered"] == 1).then_some(())
    });
    assert_eq!(
        receiver.records_at("/dead").last().unwrap()["webhook_id"],
        id.as_str()
    );
    let d = lw.get_json("/v1/webhooks/dead/dead-letters");
    assert!(d["dead_letters"].as_array().unwrap().is_empty());

    // rotation: two signatures, and a receiver knowing only the new secret accepts
    let rotated = &receiver.records_at("/rotated")[0];
    assert_eq!(rotated["verified"], true);
    assert_eq!(rotated["signature"].as_str().unwrap().split(' ').count(), 2);
    // the filter: this endpoint takes classifier incidents only
    assert!(receiver.records_at("/filtered").is_empty());
    assert!(receiver
        .records()
        .iter()
        .all(|r| r["verified"] == true || r["path"] == "/slow"));
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_pki(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=livewatch test CA",
            ],
        ]
        .concat(),
    );
    for (name, ext) in [
        (
            "server",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        ),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ] {
        std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
        openssl(
            dir,
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                    "-subj",
                    &format!("/CN=livewatch test {name}"),
                ],
            ]
            .concat(),
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &format!("{name}.pem"),
                "-extfile",
                &format!("{name}.ext"),
            ],
        );
    }
}

/// HTTPS with a private CA and mutual TLS: the endpoint with the client certificate delivers;
/// the one without it is refused by the receiver and keeps its event pending.
#[test]
fn https_with_a_private_ca_and_a_client_certificate() {
    let known = known_clip();
    let pki = tempfile::tempdir().unwrap();
    make_pki(pki.path());
    let p = |f: &str| pki.path().join(f);
    let receiver = Receiver::start_with(
        0,
        0,
        Some(&Tls {
            cert: p("server.pem"),
            key: p("server.key"),
            client_ca: Some(p("ca.pem")),
        }),
    );
    let dir = tempfile::tempdir().unwrap();
    bank_from_clip(dir.path(), "known.pdq", &known);
    let url = |path: &str| format!("https://127.0.0.1:{}{path}", receiver.port);
    let mut config = format!(
        "[alerts]\nupdate_interval_secs = 600\n\n[[banks]]\nname = \"known\"\npath = \"known.pdq\"\n\n\
         [[webhooks]]\nname = \"mtls\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nca_file = \"{}\"\n\
         client_cert_file = \"{}\"\nclient_key_file = \"{}\"\n\n\
         [[webhooks]]\nname = \"no-client-cert\"\nurl = \"{}\"\nsecret = \"{SECRET}\"\nca_file = \"{}\"\nretry_schedule_secs = [600]\n",
        url("/mtls"),
        p("ca.pem").display(),
        p("client.pem").display(),
        p("client.key").display(),
        url("/anonymous"),
        p("ca.pem").display(),
    );
    config.push_str(&stream("s1", &known));
    let lw = Livewatch::start(dir, &config);
    let records = wait_for(60, "a delivery over mutual TLS", || {
        let r = receiver.records_at("/mtls");
        (!r.is_empty()).then_some(r)
    });
    assert_eq!(records[0]["verified"], true);
    wait_for(30, "the anonymous endpoint refused", || {
        gauge(
            &lw,
            "livewatch_webhook_attempts_total{endpoint=\"no-client-cert\",result=\"error\"}",
        )
        .filter(|v| *v >= 1.0)
    });
    assert!(receiver.records_at("/anonymous").is_empty());
    // a CA file that is not PEM is a configuration error naming the key
    std::fs::write(pki.path().join("bad.pem"), "not a certificate").unwrap();
    let bad = lw.dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "[[webhooks]]\nurl = \"{}\"\nsecret = \"{SECRET}\"\nca_file = \"{}\"\n",
            url("/x"),
            p("bad.pem").display()
        ),
    )
    .unwrap();
    let out = Command::new(binary())
        .arg("check-config")
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("webhooks[0].ca_file"), "{err}");
}
