//! Real peers for the integration tests: clips made with ffmpeg, GStreamer's RTSP server, a
//! webhook receiver that verifies signatures with the Standard Webhooks reference library, and
//! the livewatch binary itself.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SECRET: &str = "whsec_dGVzdC1zZWNyZXQtZm9yLWxpdmV3YXRjaC10ZXN0cw==";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The project's Python environment (made by scripts/setup.sh).
pub fn venv_python() -> PathBuf {
    if let Some(p) = std::env::var_os("LIVEWATCH_PYTHON") {
        return p.into();
    }
    let p = repo().join(".venv/bin/python");
    assert!(
        p.exists(),
        "{} is missing: run scripts/setup.sh first",
        p.display()
    );
    p
}

/// Folder for media made by the tests, kept between runs.
pub fn media_dir() -> PathBuf {
    let d = repo().join("target/test-media");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// A media file made once with the ffmpeg CLI into target/test-media (kept between runs):
/// `args` are ffmpeg's arguments before the output file.
pub fn ffmpeg_clip(file_name: &str, args: &[&str]) -> PathBuf {
    let path = media_dir().join(file_name);
    if path.exists() {
        return path;
    }
    // tests running in parallel may make the same clip: each writes its own file, the first
    // rename wins and the others' are equal
    let tmp = media_dir().join(format!(
        "tmp-{}-{:?}-{file_name}",
        std::process::id(),
        std::thread::current().id()
    ));
    let status = Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-y"])
        .args(args)
        .arg(&tmp)
        .status()
        .expect("ffmpeg runs (scripts/setup.sh installs it)");
    assert!(status.success(), "ffmpeg failed for {file_name}");
    std::fs::rename(&tmp, &path).unwrap();
    path
}

/// A raw H.264 elementary stream (1 s GOP, no B-frames) from an ffmpeg lavfi source, made once.
pub fn h264_clip(name: &str, lavfi: &str, seconds: u32) -> PathBuf {
    let seconds = seconds.to_string();
    ffmpeg_clip(
        &format!("{name}.264"),
        &[
            "-f",
            "lavfi",
            "-i",
            lavfi,
            "-t",
            &seconds,
            "-c:v",
            "libx264",
            "-preset",
            "veryfast",
            "-profile:v",
            "baseline",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "30",
            "-keyint_min",
            "30",
            "-sc_threshold",
            "0",
            "-bf",
            "0",
            "-f",
            "h264",
        ],
    )
}

/// The four test clips. Visually unrelated on purpose: two variants of one synthetic pattern
/// can hash within 31 bits of each other.
pub fn known_clip() -> PathBuf {
    h264_clip("known-mandelbrot", "mandelbrot=size=640x360:rate=30", 4)
}
/// The known content re-encoded as H.265 (a different codec, so slightly different pixels).
/// Closed GOPs: retina flags only IDR as random access.
pub fn known_clip_h265() -> PathBuf {
    ffmpeg_clip(
        "known-mandelbrot.265",
        &[
            "-f",
            "lavfi",
            "-i",
            "mandelbrot=size=640x360:rate=30",
            "-t",
            "4",
            "-c:v",
            "libx265",
            "-preset",
            "veryfast",
            "-pix_fmt",
            "yuv420p",
            "-x265-params",
            "keyint=30:min-keyint=30:scenecut=0:bframes=0:open-gop=0:log-level=error",
            "-f",
            "hevc",
        ],
    )
}

pub fn unrelated_clips() -> Vec<PathBuf> {
    vec![
        h264_clip("other-testsrc2", "testsrc2=size=640x360:rate=30", 4),
        h264_clip(
            "other-life",
            "life=size=640x360:rate=30:mold=10:ratio=0.2:death_color=#202020:life_color=#e0e0e0",
            4,
        ),
        h264_clip(
            "other-cellauto",
            "cellauto=size=640x360:rate=30:rule=110",
            4,
        ),
    ]
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits for a child's `READY <port>` line on stdout.
fn wait_ready(child: &mut Child, what: &str) -> u16 {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(p) = line.strip_prefix("READY ") {
                let _ = tx.send(p.trim().parse::<u16>().ok());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(Some(port)) => port,
        other => panic!("{what} did not become ready: {other:?}"),
    }
}

/// GStreamer's gst-rtsp-server serving looping clips on 127.0.0.1.
pub struct RtspServer {
    child: Child,
    pub port: u16,
}

impl RtspServer {
    pub fn start(port: u16, mounts: &[(&str, &Path)]) -> RtspServer {
        let mut cmd = Command::new("/usr/bin/python3");
        cmd.arg(repo().join("tests/support/rtsp_server.py"))
            .args(["--port", &port.to_string()]);
        for (name, file) in mounts {
            cmd.arg("--mount").arg(format!("{name}={}", file.display()));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start RTSP server");
        let port = wait_ready(&mut child, "RTSP server");
        RtspServer { child, port }
    }

    pub fn url(&self, mount: &str) -> String {
        format!("rtsp://127.0.0.1:{}/{mount}", self.port)
    }

    pub fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RtspServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A webhook receiver that verifies every signature with the `standardwebhooks` PyPI library
/// and records each request (arrival time, verdict, body) as a JSON line.
pub struct Receiver {
    child: Child,
    pub port: u16,
    out: PathBuf,
    args: Vec<String>,
    _dir: tempfile::TempDir,
}

/// TLS files of an HTTPS receiver: its certificate and key, and the CA its clients must have.
pub struct Tls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

impl Receiver {
    pub fn start(fail_first: u32) -> Receiver {
        Self::start_with(0, fail_first, None)
    }

    /// A receiver on `port` (0: any free one), optionally speaking HTTPS.
    pub fn start_with(port: u16, fail_first: u32, tls: Option<&Tls>) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("hooks.jsonl");
        let mut args = vec![
            "--secret".to_string(),
            SECRET.to_string(),
            "--out".to_string(),
            out.display().to_string(),
            "--fail-first".to_string(),
            fail_first.to_string(),
        ];
        if let Some(t) = tls {
            args.extend(["--tls-cert".into(), t.cert.display().to_string()]);
            args.extend(["--tls-key".into(), t.key.display().to_string()]);
            if let Some(ca) = &t.client_ca {
                args.extend(["--client-ca".into(), ca.display().to_string()]);
            }
        }
        let (child, port) = Self::spawn(port, &args);
        Receiver {
            child,
            port,
            out,
            args,
            _dir: dir,
        }
    }

    fn spawn(port: u16, args: &[String]) -> (Child, u16) {
        let mut child = Command::new(venv_python())
            .arg(repo().join("tests/support/webhook_receiver.py"))
            .args(["--port", &port.to_string()])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start webhook receiver");
        let port = wait_ready(&mut child, "webhook receiver");
        (child, port)
    }

    /// Takes the receiver down: connections to its port are refused.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Brings it back on the same port, appending to the same record file.
    pub fn restart(&mut self) {
        self.stop();
        let (child, port) = Self::spawn(self.port, &self.args);
        assert_eq!(port, self.port);
        self.child = child;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn url_path(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Changes how POSTs to `path` are answered (see webhook_receiver.py), e.g.
    /// `"status=500"` or `"status=429&retry_after=2&count=1"`; `"reset=1"` restores it.
    pub fn set_mode(&self, path: &str, query: &str) {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let (status, _) = http_get(addr, &format!("/_mode?path={path}&{query}")).unwrap();
        assert_eq!(status, 200);
    }

    /// Records of POSTs to one path.
    pub fn records_at(&self, path: &str) -> Vec<serde_json::Value> {
        self.records()
            .into_iter()
            .filter(|r| r["path"] == path)
            .collect()
    }

    pub fn records(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The livewatch binary running `serve` with a config written to a temporary folder.
pub struct Livewatch {
    child: Child,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_livewatch")
}

impl Livewatch {
    /// `config` is the TOML without `[server]`; bank files must already be in `dir`.
    pub fn start(dir: tempfile::TempDir, config: &str) -> Livewatch {
        Self::start_with(dir, config, "")
    }

    /// `server` holds extra `[server]` keys (e.g. `api_tokens = [...]`).
    pub fn start_with(dir: tempfile::TempDir, config: &str, server: &str) -> Livewatch {
        let port = free_port();
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\n{server}\n{config}"
        );
        let path = dir.path().join("livewatch.toml");
        std::fs::write(&path, text).unwrap();
        let log = dir.path().join("livewatch.log");
        let child = Command::new(binary())
            .args(["--log-format", "json", "serve", "--config"])
            .arg(&path)
            .env(
                "RUST_LOG",
                "debug,hyper=info,reqwest=info,h2=info,retina=info",
            )
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start livewatch");
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut lw = Livewatch {
            child,
            addr,
            dir,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = lw.child.try_wait().unwrap() {
                panic!("livewatch exited early ({status}):\n{}", lw.logs());
            }
            if http_get(lw.addr, "/readyz")
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
            {
                return lw;
            }
            assert!(
                Instant::now() < deadline,
                "livewatch not ready:\n{}",
                lw.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).expect("livewatch answers HTTP")
    }

    pub fn streams(&self) -> Vec<serde_json::Value> {
        let (status, body) = self.get("/v1/streams");
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["streams"].as_array().unwrap().clone()
    }

    pub fn stream(&self, id: &str) -> serde_json::Value {
        self.streams()
            .into_iter()
            .find(|s| s["id"] == id)
            .unwrap_or_else(|| panic!("no stream {id}"))
    }

    pub fn post(&self, path: &str, body: &str) -> (u16, String) {
        http_request(self.addr, "POST", path, body).expect("livewatch answers HTTP")
    }

    pub fn get_json(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get(path);
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Rewrites the config file (same listener and state directory), for reload tests.
    pub fn rewrite_config(&self, config: &str, server: &str) {
        let text = format!(
            "[server]\nlisten = \"{}\"\nstate_dir = \"state\"\n{server}\n{config}",
            self.addr
        );
        std::fs::write(self.dir.path().join("livewatch.toml"), text).unwrap();
    }

    /// Kills the process with SIGKILL (no shutdown at all) and hands back its folder.
    pub fn kill9(mut self) -> tempfile::TempDir {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap())
    }

    /// Sends SIGTERM, waits for a clean exit, and hands back the logs and the folder (for a
    /// restart on the same state).
    pub fn stop_keep(mut self) -> (String, tempfile::TempDir) {
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let logs_path = dir.path().join("livewatch.log");
        self.log = logs_path;
        let logs = self.terminate();
        (logs, dir)
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) -> String {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "livewatch ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(100));
        }
        self.logs()
    }
}

impl Drop for Livewatch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.1 GET (enough for our own API).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    http_request(addr, "GET", path, "")
}

/// A minimal HTTP/1.1 request with a JSON body.
pub fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
) -> std::io::Result<(u16, String)> {
    http_request_with(addr, method, path, body, &[])
}

/// The same, with extra headers (e.g. `("Authorization", "Bearer ...")`).
pub fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: &str,
    headers: &[(&str, &str)],
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let extra: String = headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}\r\n"))
        .collect();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{extra}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// Polls `check` every 200 ms until it returns `Some`, or panics with `what` after `secs`.
pub fn wait_for<T>(secs: u64, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Builds a bank file from every frame of a clip, using `livewatch hash --video`.
pub fn bank_from_clip(dir: &Path, name: &str, clip: &Path) -> PathBuf {
    let out = Command::new(binary())
        .args(["hash", "--video"])
        .arg(clip)
        .output()
        .expect("run livewatch hash");
    assert!(
        out.status.success(),
        "hash failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut bank = String::from("# frames of the known clip\n");
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let cols: Vec<&str> = line.split(',').collect();
        bank.push_str(&format!("{},known-frame-{},test clip\n", cols[2], cols[0]));
    }
    let path = dir.join(name);
    std::fs::write(&path, bank).unwrap();
    path
}

/// Reads a Prometheus counter/histogram sample value from `/metrics` text.
pub fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.split([' ', '{']).next() == Some(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Reads one labelled sample, given as Prometheus prints it: `name{a="x",b="y"}` (labels in
/// alphabetical order).
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
}

/// Meta's ThreatExchange reference data (`LIVEWATCH_TESTDATA`, else `../shared/testdata/...`),
/// when present.
pub fn threatexchange() -> Option<PathBuf> {
    let dir = std::env::var_os("LIVEWATCH_TESTDATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("../shared/testdata/threatexchange"));
    dir.join("videos").is_dir().then_some(dir)
}

/// A video bank folder in `dir`: the published vPDQ files of `items`, one file per item.
pub fn video_bank(dir: &Path, data: &Path, items: &[&str]) -> PathBuf {
    let bank = dir.join("known-videos");
    std::fs::create_dir_all(&bank).unwrap();
    for item in items {
        std::fs::copy(
            data.join(format!("vpdq-hashes/{item}.txt")),
            bank.join(format!("{item}.txt")),
        )
        .unwrap();
    }
    bank
}
