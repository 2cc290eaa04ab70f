//! Partial blobs survive a failed fetch and a restart, and only the missing bytes are fetched.

mod common;

use common::*;
use http::StatusCode;
use pollen_testreg::{Fault, TestRegistry};
use std::time::Duration;

#[tokio::test]
async fn a_restarted_agent_resumes_without_refetching_verified_pieces() {
    let reg = TestRegistry::start().await.unwrap();
    let mut cfg = config_for(&reg);
    cfg.upstream.failure_backoff = Duration::from_millis(1);
    let h = Harness::with(reg, cfg.clone()).await;
    // 10 MiB in pieces of the automatic size.
    let layer = random_bytes(10 << 20, 40);
    let piece = u64::from(
        pollen_proto::PieceGeometry::choose(10 << 20, None)
            .unwrap()
            .piece_size(),
    );
    let digest = h.reg.add_blob("app", layer.clone());
    let path = format!("/v2/app/blobs/{digest}{}", h.ns());

    // The first transfer breaks after 5 MiB and the upstream then fails: the pieces wholly
    // inside those 5 MiB are complete.
    h.reg.set_fault(Fault::Truncate { after: 5 << 20 });
    let watcher = after_first_get(
        &h.reg,
        &digest,
        Fault::Status {
            status: 503,
            count: 1000,
        },
        100_000,
    );
    let r = h.get(&path).await;
    assert!(watcher.await.unwrap());
    assert!(r.body.is_err(), "the failed fetch must not look complete");
    let dir_has_partial = h
        .dir
        .path()
        .join("partial")
        .join(digest.trim_start_matches("sha256:"));
    assert!(
        dir_has_partial.join("state.json").exists(),
        "progress was not kept"
    );

    // Restart: a new agent over the same data dir, the upstream healthy again.
    let (reg, dir) = h.stop();
    reg.set_fault(Fault::None);
    reg.reset_stats();
    let h = Harness::with_dir(reg, cfg, dir, 1 << 30).await;
    let r = h.get(&path).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
    h.wait_stored(&digest).await;
    let stats = h.reg.stats();
    assert_eq!(stats.blob_get_count(&digest), 1);
    assert_eq!(
        stats.blob_bytes_sent,
        (10 << 20) - (5 << 20) / piece * piece,
        "only the pieces after the verified ones may be fetched again"
    );
    assert!(
        !dir_has_partial.exists(),
        "the partial is gone once the blob is complete"
    );
}
