//! What the `pollen` binary's tests share: starting agents on free ports, raw HTTP requests,
//! swarm keys.

#![allow(dead_code)] // each test file uses its own part of this module

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A swarm address no other test or agent holds.
pub const P2P_ANY_PORT: &str = "/ip4/127.0.0.1/tcp/0";

pub fn pollen() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pollen"));
    // Keep the caller's POLLEN_* settings out of the test.
    for (k, _) in std::env::vars() {
        if k.starts_with("POLLEN_") {
            c.env_remove(k);
        }
    }
    // Each agent its own control socket (the default, /run/pollen/control.sock as root, is
    // one per host and a second agent refuses to take it over).
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pollen-cli-test-{}-{n}", std::process::id()));
    c.env("POLLEN_CONTROL_SOCKET", dir.join("control.sock"));
    c
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A raw HTTP/1.1 GET; returns the status line, or None while nothing listens.
pub fn get(port: u16, path: &str) -> Option<String> {
    get_at("127.0.0.1", port, path)
}

/// [`get`] on `host` (an IPv4 or IPv6 literal).
pub fn get_at(host: &str, port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect((host, port)).ok()?;
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

/// A swarm key file made by `pollen swarm-key --out`, in `dir`.
pub fn swarm_key_in(dir: &std::path::Path) -> std::path::PathBuf {
    let path = dir.join("swarm.key");
    let out = pollen()
        .args(["swarm-key", "--out"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    path
}

/// An agent on free ports with `extra` flags, ready (its `/readyz` answers 200).
pub struct Agent {
    pub child: Child,
    pub port: u16,
    pub metrics: u16,
    /// The admin address, `IP:PORT` or `[IPv6]:PORT`.
    pub admin: String,
    /// The control socket (preheat, doctor, the full status).
    pub socket: std::path::PathBuf,
    pub _dir: Option<tempfile::TempDir>,
}

impl Agent {
    pub fn start(extra: &[&str]) -> Agent {
        Agent::start_with_env(extra, &[])
    }

    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let dir = tempfile::tempdir().unwrap();
        let mut agent = Agent::start_in(dir.path(), extra, env);
        agent._dir = Some(dir);
        agent
    }

    /// An agent over the data dir `dir`, which outlives it (restart tests).
    pub fn start_in(dir: &std::path::Path, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        Agent::start_on("127.0.0.1", dir, extra, env)
    }

    /// An agent whose mirror and admin ports listen on `host` (an IP literal).
    pub fn start_on(
        host: &str,
        dir: &std::path::Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Agent {
        let (port, metrics) = (free_port(), free_port());
        let at = |port: u16| std::net::SocketAddr::new(host.parse().unwrap(), port).to_string();
        let mut c = pollen();
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child = c
            .arg("agent")
            .args(["--listen", &at(port)])
            .args(["--metrics-listen", &at(metrics)])
            .arg("--data-dir")
            .arg(dir)
            .arg("--control-socket")
            .arg(dir.join("control.sock"))
            .args(extra)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if get_at(host, metrics, "/readyz").is_some_and(|s| s.contains("200")) {
                break;
            }
            assert!(Instant::now() < deadline, "agent never became ready");
            assert!(child.try_wait().unwrap().is_none(), "agent exited early");
            std::thread::sleep(Duration::from_millis(20));
        }
        Agent {
            child,
            port,
            metrics,
            admin: at(metrics),
            socket: dir.join("control.sock"),
            _dir: None,
        }
    }

    pub fn admin(&self) -> String {
        self.admin.clone()
    }

    pub fn socket(&self) -> String {
        self.socket.display().to_string()
    }

    pub fn status(&self, json: bool) -> Output {
        let mut c = pollen();
        c.args(["status", "--admin", &self.admin()]);
        if json {
            c.arg("--json");
        }
        c.output().unwrap()
    }

    pub fn status_json(&self) -> pollen_agent::Status {
        let out = self.status(true);
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).expect("pollen status --json is the agent's Status")
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A raw HTTP/1.1 GET: the status line and the body.
pub fn get_body(port: u16, path: &str) -> (String, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.lines().next().unwrap_or_default().to_string();
    (status, raw[split + 4..].to_vec())
}

/// Stops an agent with SIGTERM and waits for a clean exit.
pub fn terminate(agent: &mut Agent) {
    assert!(Command::new("kill")
        .args(["-TERM", &agent.child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(s) = agent.child.try_wait().unwrap() {
            assert!(s.success(), "{s}");
            return;
        }
        assert!(Instant::now() < deadline, "agent ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
}
