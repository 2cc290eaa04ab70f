//! The `pollen` binary's contract: help, configuration errors, start-up with defaults, SIGTERM.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pollen() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pollen"));
    // Keep the caller's POLLEN_* settings out of the test.
    for (k, _) in std::env::vars() {
        if k.starts_with("POLLEN_") {
            c.env_remove(k);
        }
    }
    c
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw HTTP/1.1 GET; returns the status line, or None while nothing listens.
fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines().next().map(str::to_string)
}

#[test]
fn help_reads_well() {
    let out = pollen().arg("--help").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(text.contains("agent"), "{text}");
    let out = pollen().args(["agent", "--help"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--config",
        "--listen",
        "--data-dir",
        "--upstream",
        "--registry",
        "--cache-size",
        "--metrics-listen",
        "--log-format",
    ] {
        assert!(text.contains(flag), "agent --help lacks {flag}");
    }
}

#[test]
fn bad_configuration_is_refused_with_a_reason() {
    let out = pollen()
        .args(["agent", "--cache-size", "a lot"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cache-size"), "{err}");
}

#[test]
fn starts_with_defaults_serves_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (port, metrics) = (free_port(), free_port());
    // Only the addresses and data dir are set (through the environment): everything else is
    // the defaults, as with a bare `pollen agent`.
    let mut child = pollen()
        .arg("agent")
        .env("POLLEN_LISTEN", format!("127.0.0.1:{port}"))
        .env("POLLEN_METRICS_LISTEN", format!("127.0.0.1:{metrics}"))
        .env("POLLEN_DATA_DIR", dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Some(status) = get(metrics, "/readyz") {
            break status;
        }
        assert!(Instant::now() < deadline, "agent never became ready");
        assert!(child.try_wait().unwrap().is_none(), "agent exited early");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(ready.contains("200"), "{ready}");
    assert!(get(port, "/v2/").unwrap().contains("200"));
    assert!(get(metrics, "/metrics").unwrap().contains("200"));
    assert!(dir.path().join("blobs/sha256").is_dir());

    // SIGTERM: the agent exits cleanly.
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "agent ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
