//! Every injected fault, as a client sees it, plus shutdown in their
//! presence.

mod common;

use std::time::{Duration, Instant};

use common::{data, digest, fetch, get, read_reply, Conn};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use pollen_testreg::{Fault, TestRegistry};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Generous bound for things that should happen "promptly"; only reached if
/// the behaviour under test is broken.
const PROMPT: Duration = Duration::from_secs(5);

async fn registry_with_blob(len: usize) -> (TestRegistry, bytes::Bytes, String) {
    let reg = TestRegistry::start().await.unwrap();
    let blob = data(len, 9);
    let d = reg.add_blob("r", blob.clone());
    (reg, blob, format!("/v2/r/blobs/{d}"))
}

#[tokio::test]
async fn status_fault_exhausts_then_recovers() {
    let (reg, blob, path) = registry_with_blob(100).await;
    reg.push_image("r", "t", vec![]);
    reg.set_fault(Fault::Status {
        status: 503,
        count: 2,
    });

    // The ping is exempt and does not consume the fault.
    assert_eq!(get(&reg, "/v2/").await.status, StatusCode::OK);

    let r = get(&reg, "/v2/r/manifests/t").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error_code(), "UNKNOWN");
    let r = fetch(&reg, Method::HEAD, &path, &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    let r = get(&reg, &path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, blob);
    assert_eq!(reg.stats().blob_get_count(&digest(&blob)), 1);
    assert_eq!(get(&reg, "/v2/r/manifests/t").await.status, StatusCode::OK);

    reg.set_fault(Fault::Status {
        status: 429,
        count: 1,
    });
    assert_eq!(get(&reg, &path).await.error_code(), "TOOMANYREQUESTS");
    assert_eq!(get(&reg, &path).await.status, StatusCode::OK);
}

#[tokio::test]
async fn truncate_sends_short_body_then_closes() {
    let (reg, _blob, path) = registry_with_blob(1000).await;
    reg.set_fault(Fault::Truncate { after: 100 });
    let r = get(&reg, &path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.content_length(), 1000);
    assert_eq!(r.body.len(), 100);
    assert!(!r.complete, "client must see the transfer fail");

    // Nothing at all after the head.
    reg.set_fault(Fault::Truncate { after: 0 });
    let r = get(&reg, &path).await;
    assert_eq!(
        (r.content_length(), r.body.len(), r.complete),
        (1000, 0, false)
    );

    // `after` counts from the start of a range.
    reg.set_fault(Fault::Truncate { after: 10 });
    let r = fetch(&reg, Method::GET, &path, &[("range", "bytes=500-")]).await;
    assert_eq!(
        (r.status, r.content_length(), r.body.len()),
        (StatusCode::PARTIAL_CONTENT, 500, 10)
    );

    reg.set_fault(Fault::None);
    assert!(get(&reg, &path).await.complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_flushes_everything_before_closing() {
    // Far more than socket and hyper buffers hold, so the cut-off point is
    // reached while earlier bytes are still queued.
    let (reg, blob, path) = registry_with_blob(8 << 20).await;
    reg.set_fault(Fault::Truncate { after: 3 << 20 });
    let r = get(&reg, &path).await;
    assert_eq!(r.content_length(), 8 << 20);
    assert_eq!(r.body, blob.slice(..3 << 20));
    assert!(!r.complete);
    assert_eq!(reg.stats().blob_bytes_sent, 3 << 20);
}

#[tokio::test]
async fn reset_ends_the_connection_with_a_tcp_reset() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (reg, _blob, path) = registry_with_blob(1 << 20).await;
    reg.set_fault(Fault::Reset { after: 1000 });
    let mut s = tokio::net::TcpStream::connect(reg.addr()).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nhost: {}\r\n\r\n", reg.host());
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0usize;
    let end = loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) => break None,
            Ok(Ok(n)) => got += n,
            Ok(Err(e)) => break Some(e.kind()),
            Err(_) => panic!("no reset within 10 s ({got} bytes read)"),
        }
    };
    assert_eq!(
        end,
        Some(std::io::ErrorKind::ConnectionReset),
        "after {got} bytes the connection must be reset, not closed"
    );
    assert!(got < 1 << 20, "the body was cut short ({got} bytes)");
}

#[tokio::test]
async fn corrupt_flips_one_byte() {
    let (reg, blob, path) = registry_with_blob(200_000).await;
    reg.set_fault(Fault::Corrupt { offset: 70_000 });
    let r = get(&reg, &path).await;
    assert!(r.complete);
    assert_eq!(r.body.len(), blob.len());
    assert_ne!(digest(&r.body), digest(&blob));
    let diffs: Vec<usize> = (0..blob.len()).filter(|&i| r.body[i] != blob[i]).collect();
    assert_eq!(diffs, vec![70_000]);

    // Blob-relative: a range covering the offset is damaged at the same spot,
    let r = fetch(&reg, Method::GET, &path, &[("range", "bytes=69990-70009")]).await;
    assert_ne!(r.body[10], blob[70_000]);
    assert_eq!(r.body[..10], blob[69_990..70_000]);
    // and one that does not is intact.
    let r = fetch(&reg, Method::GET, &path, &[("range", "bytes=0-999")]).await;
    assert_eq!(r.body, blob.slice(..1000));

    // Offsets past the end still damage a full download.
    reg.set_fault(Fault::Corrupt { offset: u64::MAX });
    let r = get(&reg, &path).await;
    assert_eq!(r.body[..blob.len() - 1], blob[..blob.len() - 1]);
    assert_ne!(r.body[blob.len() - 1], blob[blob.len() - 1]);
}

#[tokio::test]
async fn slow_paces_the_body() {
    let (reg, blob, path) = registry_with_blob(5000).await;
    let delay = Duration::from_millis(40);
    reg.set_fault(Fault::Slow { chunk: 1000, delay });
    let started = Instant::now();
    let r = get(&reg, &path).await;
    // Five chunks means four pauses; timers never fire early.
    assert!(
        started.elapsed() >= delay * 4,
        "took {:?}",
        started.elapsed()
    );
    assert!(r.complete);
    assert_eq!(r.body, blob);
}

#[tokio::test]
async fn hang_sends_headers_but_no_body() {
    let (reg, blob, path) = registry_with_blob(1000).await;
    reg.set_fault(Fault::Hang);
    let mut conn = Conn::open(&reg).await;
    let resp = conn.send(Method::GET, &path, &[]).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-length"], "1000");
    let mut body = resp.into_body();
    assert!(
        timeout(Duration::from_millis(200), body.frame())
            .await
            .is_err(),
        "body must not arrive"
    );

    // Other connections are unaffected once the fault is lifted.
    reg.set_fault(Fault::None);
    assert_eq!(get(&reg, &path).await.body, blob);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_with_hung_and_idle_connections() {
    let (reg, _blob, path) = registry_with_blob(1 << 20).await;
    let addr = reg.addr();

    let mut idle = Conn::open(&reg).await;
    assert_eq!(
        idle.fetch(Method::GET, "/v2/", &[]).await.status,
        StatusCode::OK
    );

    reg.set_fault(Fault::Slow {
        chunk: 1,
        delay: Duration::from_secs(1),
    });
    let slow = Conn::open(&reg).await.send(Method::GET, &path, &[]).await;
    reg.set_fault(Fault::Hang);
    let hung = Conn::open(&reg).await.send(Method::GET, &path, &[]).await;

    timeout(PROMPT, reg.shutdown())
        .await
        .expect("shutdown must not wait for hung transfers");

    for resp in [hung, slow] {
        let r = timeout(PROMPT, read_reply(resp))
            .await
            .expect("connection closed by shutdown");
        assert!(!r.complete);
    }
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "listener must be closed"
    );
}

#[tokio::test]
async fn dropping_the_last_handle_stops_the_server() {
    let (reg, _blob, path) = registry_with_blob(1000).await;
    reg.set_fault(Fault::Hang);
    let hung = Conn::open(&reg).await.send(Method::GET, &path, &[]).await;

    let clone = reg.clone();
    drop(reg);
    // Still served through the remaining clone.
    assert_eq!(get(&clone, "/v2/").await.status, StatusCode::OK);

    drop(clone);
    let r = timeout(PROMPT, read_reply(hung))
        .await
        .expect("hung connection aborted on drop");
    assert!(!r.complete);
}
