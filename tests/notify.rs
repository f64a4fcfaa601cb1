//! systemd's notification protocol, spoken to a real datagram socket as systemd would listen:
//! READY=1 once running, WATCHDOG=1 while the pipeline threads beat, RELOADING=1 then READY=1
//! around a SIGHUP reload, STOPPING=1 on SIGTERM.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

fn next_message(sock: &UnixDatagram, want: &str, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            let msg = String::from_utf8_lossy(&buf[..n]).to_string();
            let done = msg.lines().any(|l| l == want);
            seen.push(msg);
            if done {
                return seen;
            }
        }
    }
    panic!("no {want} within {within:?}; got {seen:?}");
}

#[test]
fn ready_watchdog_reload_and_stopping_reach_systemd() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let port = free_port();
    let config = dir.path().join("livewatch.toml");
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"127.0.0.1:{port}\"\nstate_dir = \"state\"\n"),
    )
    .unwrap();
    // systemd names the watched process in WATCHDOG_PID: the shell's pid, kept by exec
    let mut child = Command::new("sh")
        .args(["-c", "WATCHDOG_PID=$$ exec \"$0\" serve --config \"$1\""])
        .arg(binary())
        .arg(&config)
        .env("NOTIFY_SOCKET", &sock_path)
        .env("WATCHDOG_USEC", "2000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().to_string();

    next_message(&sock, "READY=1", Duration::from_secs(30));
    // fed every second (half of WATCHDOG_USEC): two in a row
    next_message(&sock, "WATCHDOG=1", Duration::from_secs(10));
    next_message(&sock, "WATCHDOG=1", Duration::from_secs(10));

    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let seen = next_message(&sock, "READY=1", Duration::from_secs(30));
    assert!(
        seen.iter().any(|m| m.lines().any(|l| l == "RELOADING=1")),
        "{seen:?}"
    );
    // still alive and answering after the reload
    assert!(child.try_wait().unwrap().is_none());

    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    next_message(&sock, "STOPPING=1", Duration::from_secs(30));
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
}
