//! The operator surfaces under attack: the TCP admin port is read-only and hides private
//! content, the control socket has the rest, and a flood of idle connections on the mirror or
//! the admin port neither exceeds its cap nor keeps a real client from an answer.

mod common;

use common::{config_for, random_bytes, Harness};
use pollen_testreg::TestRegistry;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One HTTP/1.0 exchange over any stream: the status code and the body.
async fn exchange<S>(mut s: S, method: &str, path: &str) -> (u16, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let req = format!("{method} {path} HTTP/1.0\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut raw))
        .await
        .expect("an answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

async fn tcp(addr: std::net::SocketAddr, method: &str, path: &str) -> (u16, String) {
    exchange(TcpStream::connect(addr).await.unwrap(), method, path).await
}

async fn admin_port(h: &Harness) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(pollen_agent::serve_admin(h.agent.clone(), l));
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_port_is_read_only_and_the_control_socket_has_the_rest() {
    let h = Harness::start().await;
    let admin = admin_port(&h).await;
    for (method, path) in [
        ("POST", "/preheat?image=library/alpine:3"),
        ("GET", "/preheat?image=library/alpine:3"),
        ("GET", "/doctor"),
        ("POST", "/status"),
    ] {
        let (code, _) = tcp(admin, method, path).await;
        assert_eq!(code, 404, "{method} {path} on the admin port");
    }
    for path in ["/metrics", "/healthz", "/readyz", "/status"] {
        assert_eq!(tcp(admin, "GET", path).await.0, 200, "{path}");
    }
    // The preheat on the admin port started nothing.
    assert_eq!(h.reg.stats().requests, 0);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("control.sock");
    let l = tokio::net::UnixListener::bind(&path).unwrap();
    tokio::spawn(pollen_agent::serve_control(h.agent.clone(), l));
    let unix = || async { tokio::net::UnixStream::connect(&path).await.unwrap() };
    let (code, body) = exchange(unix().await, "GET", "/doctor").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("upstream"), "{body}");
    assert_eq!(exchange(unix().await, "GET", "/status").await.0, 200);
    let (code, body) = exchange(unix().await, "POST", "/preheat?image=nothing/here:v1").await;
    assert_eq!(code, 200);
    assert!(
        body.contains("\"failed\""),
        "the preheat ran and failed: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_doctor_is_one_run_per_interval_however_often_it_is_asked() {
    let h = Harness::start().await;
    let first = h.agent.doctor_cached().await;
    let after_one = h.reg.stats().requests;
    assert!(after_one > 0, "the doctor asked the upstream");
    for _ in 0..20 {
        assert_eq!(h.agent.doctor_cached().await, first);
    }
    assert_eq!(
        h.reg.stats().requests,
        after_one,
        "20 more doctors made no upstream request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_admin_status_shows_no_private_digest() {
    let reg = TestRegistry::start().await.unwrap();
    // Slow enough that both fetches are in flight while the status is read.
    reg.set_uplink(32 << 10);
    let h = Harness::with(reg.clone(), config_for(&reg)).await;
    let admin = admin_port(&h).await;
    let private = h.reg.add_blob("secret/app", random_bytes(4 << 20, 1));
    let public = h.reg.add_blob("pub/app", random_bytes(4 << 20, 2));
    let ns = h.ns();
    let (c1, c2) = (h.client(), h.client());
    let p1 = format!("/v2/secret/app/blobs/{private}{ns}");
    let p2 = format!("/v2/pub/app/blobs/{public}{ns}");
    let t1 = tokio::spawn(async move {
        c1.send(
            http::Method::GET,
            &p1,
            &[("authorization", "Bearer pod-secret")],
        )
        .await
    });
    let t2 = tokio::spawn(async move { c2.get(&p2).await });
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let full = h.agent.status().await;
        let digests: Vec<_> = full.blobs_in_flight.iter().map(|b| &b.digest).collect();
        if digests.contains(&&private) && digests.contains(&&public) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "both fetches in flight: {digests:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (code, body) = tcp(admin, "GET", "/status").await;
    assert_eq!(code, 200);
    assert!(
        !body.contains(private.trim_start_matches("sha256:")),
        "{body}"
    );
    assert!(!body.contains("secret"), "{body}");
    assert!(body.contains(&public), "the public one is shown: {body}");
    t1.abort();
    t2.abort();
}

/// Opens `n` connections to `addr` that never finish a request: every other one sends
/// nothing, the others half a request head (slowloris); the ones the server accepted or
/// queued.
async fn idle_flood(addr: std::net::SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if let Ok(Ok(mut s)) =
            tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await
        {
            if i % 2 == 1 {
                let _ = s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n").await;
            }
            out.push(s);
        }
    }
    out
}

/// How many of `conns` the server has not closed.
fn still_open(conns: &[TcpStream]) -> usize {
    let mut buf = [0u8; 1];
    conns
        .iter()
        .filter(|s| match s.try_read(&mut buf) {
            Ok(0) => false,
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_connection_flood_holds_the_cap_and_real_clients_are_served() {
    const MIRROR_CAP: usize = 100;
    const ADMIN_CAP: usize = 50;
    let reg = TestRegistry::start().await.unwrap();
    let mut cfg = config_for(&reg);
    cfg.max_connections = MIRROR_CAP;
    cfg.max_admin_connections = ADMIN_CAP;
    let h = Harness::with(reg, cfg).await;
    let admin = admin_port(&h).await;
    let layer = random_bytes(64 << 10, 3);
    let digest = h.reg.add_blob("app", layer.clone());

    let mirror_flood = idle_flood(h.addr, 2_000).await;
    let admin_flood = idle_flood(admin, 1_000).await;
    assert!(mirror_flood.len() > 1_500 && admin_flood.len() > 700);

    // A real client, while the flood holds its connections: answered in time.
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        h.get(&format!("/v2/app/blobs/{digest}{}", h.ns())),
    )
    .await
    .expect("the mirror answers during the flood");
    assert_eq!(r.bytes(), &layer);
    let (code, _) = tokio::time::timeout(Duration::from_secs(5), tcp(admin, "GET", "/readyz"))
        .await
        .expect("the admin port answers during the flood");
    assert_eq!(code, 200);
    assert!(started.elapsed() < Duration::from_secs(10));

    // The server holds at most its cap of the flood (plus the kernel's queue, drained by now).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (m, a) = (still_open(&mirror_flood), still_open(&admin_flood));
        if m <= MIRROR_CAP && a <= ADMIN_CAP {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "flood connections still open: mirror {m} (cap {MIRROR_CAP}), admin {a} (cap {ADMIN_CAP})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
