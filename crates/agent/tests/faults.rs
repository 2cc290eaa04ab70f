//! Upstream failures: corrupt bytes, broken and hung transfers, dead mirrors, outages.

mod common;

use common::*;
use http::StatusCode;
use pollen_testreg::{Fault, TestRegistry};
use std::time::Duration;

#[tokio::test]
async fn corrupt_upstream_bytes_never_complete_a_response_nor_get_stored() {
    let h = Harness::start().await;
    let layer = random_bytes(2 << 20, 10);
    let digest = h.reg.add_blob("app", layer.clone());
    h.reg.set_fault(Fault::Corrupt { offset: 12345 });
    let path = format!("/v2/app/blobs/{digest}{}", h.ns());
    let r = h.get(&path).await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "headers go out before the digest is known"
    );
    assert!(
        r.body.is_err(),
        "a corrupt blob's response must be cut before its last byte"
    );
    assert!(!h
        .agent
        .store()
        .contains(pollen_store::Kind::Blob, &digest.parse().unwrap()));
    assert_eq!(h.metric("pollen_digest_mismatch_total"), 1.0);
    assert_eq!(
        std::fs::read_dir(h.dir.path().join("tmp")).unwrap().count(),
        0
    );

    h.reg.set_fault(Fault::None);
    let r = h.get(&path).await;
    assert_eq!(
        r.bytes(),
        &layer,
        "the next request fetches again and succeeds"
    );
}

/// A 3 MiB blob whose first transfer breaks after 1 MiB through `fault`: the agent serves it
/// whole after one resume (one more GET, asking for the rest: not starting over).
async fn resumed_once(h: &Harness, fault: Fault, seed: u64) {
    let layer = random_bytes(3 << 20, seed);
    let digest = h.reg.add_blob("app", layer.clone());
    h.reg.set_fault(fault);
    // Switch the fault off once the first (broken) transfer is under way, so the resume
    // succeeds.
    let watcher = after_first_get(&h.reg, &digest, Fault::None, 2000);
    let r = h.get(&format!("/v2/app/blobs/{digest}{}", h.ns())).await;
    assert!(watcher.await.unwrap());
    assert_eq!(
        r.bytes(),
        &layer,
        "a broken transfer is resumed, not served short"
    );
    assert_eq!(h.metric("pollen_upstream_resumes_total"), 1.0);
    let stats = h.reg.stats();
    assert_eq!(
        stats.blob_get_count(&digest),
        2,
        "one broken GET, one resume"
    );
    assert!(
        stats.blob_bytes_sent < 2 * layer.len() as u64,
        "resume refetched from the start: {} bytes sent",
        stats.blob_bytes_sent
    );
}

#[tokio::test]
async fn truncated_transfer_resumes_with_a_range_request() {
    let h = Harness::start().await;
    resumed_once(&h, Fault::Truncate { after: 1 << 20 }, 11).await;
}

#[tokio::test]
async fn reset_connection_mid_body_resumes_with_a_range_request() {
    let h = Harness::start().await;
    resumed_once(&h, Fault::Reset { after: 1 << 20 }, 13).await;
}

#[tokio::test]
async fn stall_mid_body_is_cut_at_the_idle_timeout_and_resumed() {
    let reg = TestRegistry::start().await.unwrap();
    let mut cfg = config_for(&reg);
    cfg.upstream.idle_timeout = Duration::from_millis(300);
    let h = Harness::with(reg, cfg).await;
    // One MiB, then a pause far longer than the test: only the idle timeout can end it.
    let stall = Fault::Slow {
        chunk: 1 << 20,
        delay: Duration::from_secs(3600),
    };
    resumed_once(&h, stall, 14).await;
}

#[tokio::test]
async fn hung_upstream_times_out_instead_of_hanging_the_pull() {
    let reg = TestRegistry::start().await.unwrap();
    let mut cfg = config_for(&reg);
    cfg.upstream.idle_timeout = Duration::from_millis(200);
    cfg.upstream.failure_backoff = Duration::from_millis(1);
    let h = Harness::with(reg, cfg).await;
    let digest = h.reg.add_blob("app", random_bytes(1 << 20, 12));
    h.reg.set_fault(Fault::Hang);
    let r = h.get(&format!("/v2/app/blobs/{digest}{}", h.ns())).await;
    assert!(
        r.body.is_err(),
        "a hung upstream must end in an aborted response"
    );
    assert_eq!(
        h.reg.stats().blob_get_count(&digest),
        4,
        "first try plus three resumes"
    );
}

#[tokio::test]
async fn failing_mirror_is_skipped_and_the_next_one_serves() {
    let bad = TestRegistry::start().await.unwrap();
    let good = TestRegistry::start().await.unwrap();
    let img = good.push_image("app", "v1", vec![random_bytes(1 << 20, 13)]);
    bad.push_image("app", "v1", vec![random_bytes(1 << 20, 13)]);
    bad.set_fault(Fault::Status {
        status: 503,
        count: 1000,
    });
    let mut cfg = config_for(&good);
    cfg.upstream
        .registries
        .insert("registry.example".into(), vec![bad.url(), good.url()]);
    let h = Harness::with(good, cfg).await;
    let ns = "?ns=registry.example";
    let m = h.get(&format!("/v2/app/manifests/v1{ns}")).await;
    assert_eq!(m.header("docker-content-digest"), img.manifest_digest);
    let b = h
        .get(&format!("/v2/app/blobs/{}{ns}", img.layer_digests[0]))
        .await;
    assert_eq!(sha256(b.bytes()), img.layer_digests[0]);
    // The dead mirror was tried once, then skipped while its backoff lasts.
    assert_eq!(bad.stats().requests, 1);
}

#[tokio::test]
async fn all_mirrors_down_gives_502_and_stale_tag_is_served() {
    let reg = TestRegistry::start().await.unwrap();
    let mut cfg = config_for(&reg);
    cfg.tag_ttl = Duration::ZERO;
    let h = Harness::with(reg, cfg).await;
    let img = h.reg.push_image("app", "v1", vec![random_bytes(100, 14)]);
    let ns = h.ns();
    assert_eq!(
        h.get(&format!("/v2/app/manifests/v1{ns}")).await.status,
        StatusCode::OK
    );
    h.reg.set_fault(Fault::Status {
        status: 503,
        count: 1000,
    });
    let m = h.get(&format!("/v2/app/manifests/v1{ns}")).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.header("docker-content-digest"), img.manifest_digest);
    assert_eq!(h.metric("pollen_stale_manifests_total"), 1.0);
    let never_seen = h.get(&format!("/v2/app/manifests/other{ns}")).await;
    assert_eq!(never_seen.status, StatusCode::BAD_GATEWAY);
    assert_eq!(never_seen.json()["errors"][0]["code"], "UNAVAILABLE");
    assert_eq!(
        h.metric("pollen_upstream_failures_total"),
        2.0,
        "both tag requests found every mirror failing"
    );
}

#[tokio::test]
async fn unreachable_upstream_is_a_clear_502() {
    let reg = TestRegistry::start().await.unwrap();
    let mut cfg = config_for(&reg);
    // Nothing listens on port 1 of loopback.
    cfg.upstream
        .registries
        .insert("dead.example".into(), vec!["http://127.0.0.1:1".into()]);
    let h = Harness::with(reg, cfg).await;
    let r = h
        .get(&format!("/v2/app/blobs/{}?ns=dead.example", sha256(b"x")))
        .await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let msg = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("127.0.0.1:1"),
        "error should name the upstream: {msg}"
    );
}

#[tokio::test]
async fn quota_evicts_old_blobs_but_keeps_serving() {
    let reg = TestRegistry::start().await.unwrap();
    let cfg = config_for(&reg);
    let dir = tempfile::tempdir().unwrap();
    let h = Harness::with_dir(reg, cfg, dir, 3 << 20).await;
    let ns = h.ns();
    let mut digests = Vec::new();
    for i in 0..4 {
        let d = h.reg.add_blob("app", random_bytes(1 << 20, 20 + i));
        let r = h.get(&format!("/v2/app/blobs/{d}{ns}")).await;
        assert_eq!(sha256(r.bytes()), d);
        h.wait_stored(&d).await;
        digests.push(d);
    }
    // The fourth blob does not fit: its bytes count as they land (nothing is reserved up
    // front), and when they cross the quota the least recently used go down to the low
    // watermark (90 % of it), which here is the first blob alone.
    let usage = h.agent.store().usage();
    assert!(usage.bytes <= 3 << 20, "{usage:?}");
    assert_eq!(usage.evictions, 1, "{usage:?}");
    let stored = |i: usize| {
        h.agent
            .store()
            .contains(pollen_store::Kind::Blob, &digests[i].parse().unwrap())
    };
    assert!(!stored(0) && stored(1) && stored(2) && stored(3));
}
