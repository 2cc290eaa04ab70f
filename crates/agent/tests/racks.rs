//! Agents with rack labels (`--rack`), over the current tracker protocol: the tracker marks
//! rack-mates `Near`, and downloads take from far peers only what their rack lacks
//! (`pollen_core::rack`). The rule's decisions are tested in pollen-core and its effect at
//! scale in pollen-sim; here it runs in real agents, with the upstream down, so a rule that
//! starved a download of pieces only far peers hold would fail the pull.

mod common;

use common::cluster::*;
use http::StatusCode;
use pollen_testreg::TestRegistry;

fn in_rack(reg: &TestRegistry, rack: &str) -> pollen_agent::AgentConfig {
    let mut cfg = agent_config(reg);
    cfg.p2p.tracker = true;
    cfg.p2p.labels = vec![("rack".into(), rack.into())];
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rack_mates_share_and_far_peers_give_what_the_rack_lacks() {
    let reg = TestRegistry::start().await.unwrap();
    // S, alone in rack b, fetches the blob from the registry; then the registry goes down.
    let s = member(&reg, in_rack(&reg, "b"), None).await;
    let (layer, digest) = seed_blob(&reg, &s, 12 * PIECE + 77, 5).await;
    upstream_down(&reg);
    // A is the first of rack a: nobody in its rack holds anything, so every piece is its to
    // import, from S.
    let a = member(&reg, in_rack(&reg, "a"), Some(&s)).await;
    let r = a.get(&blob_path(&a, &digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
    a.wait_stored(&digest).await;
    assert_eq!(sources(&a), (layer.len() as f64, 0.0), "every byte from S");
    // B joins rack a: A is marked near, S is far; between them B gets the whole blob.
    let b = member(&reg, in_rack(&reg, "a"), Some(&s)).await;
    let r = b.get(&blob_path(&b, &digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
    b.wait_stored(&digest).await;
    assert_eq!(
        sources(&b),
        (layer.len() as f64, 0.0),
        "every byte from peers"
    );
    a.agent.refresh_peer_metrics();
    assert!(
        a.metric("pollen_peer_bytes_sent_total") > 0.0,
        "B took pieces from its rack-mate"
    );
    assert_eq!(
        reg.stats().blob_get_count(&digest),
        1,
        "only S went upstream"
    );
}
