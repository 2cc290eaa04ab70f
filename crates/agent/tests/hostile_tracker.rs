//! A tag's digest comes from the node's own upstream, never from the tag's tracker: a hostile
//! tracker (a real agent whose upstream has another image under the same tag) cannot make the
//! victim answer the tag with its digest, with the victim's upstream up or down.

mod common;

use common::cluster::*;
use common::*;
use http::StatusCode;
use pollen_testreg::TestRegistry;
use std::time::Duration;

/// The attacker: a tracker that resolves `victim`'s registry through `own`, so it answers the
/// victim's tag with the digest of `own`'s image.
async fn hostile_tracker(victim: &TestRegistry, own: &TestRegistry) -> Harness {
    let mut cfg = agent_config(victim);
    cfg.upstream.default_mirrors = vec![own.url()];
    cfg.upstream
        .registries
        .insert(victim.host(), vec![own.url()]);
    cfg.p2p.tracker = true;
    member(own, cfg, None).await
}

fn tag_path(h: &Harness) -> String {
    format!("/v2/pub/app/manifests/v1{}", h.ns())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hostile_tracker_cannot_rewrite_a_tag() {
    let reg = TestRegistry::start().await.unwrap();
    let evil = TestRegistry::start().await.unwrap();
    let good = reg.push_image("pub/app", "v1", vec![random_bytes(1000, 80)]);
    let bad = evil.push_image("pub/app", "v1", vec![random_bytes(1000, 81)]);
    assert_ne!(good.manifest_digest, bad.manifest_digest);
    let tracker = hostile_tracker(&reg, &evil).await;
    // Every tag request of the victim goes to its upstream again.
    let mut cfg = agent_config(&reg);
    cfg.tag_ttl = Duration::ZERO;
    let victim = member(&reg, cfg.clone(), Some(&tracker)).await;

    // The tracker is asked (and answers its digest), the victim's upstream wins.
    let r = victim.get(&tag_path(&victim)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-content-digest"), good.manifest_digest);
    assert_eq!(r.bytes(), &good.manifest);
    assert_eq!(
        victim.metric("pollen_tag_hint_mismatch_total"),
        1.0,
        "the tracker was asked and its answer set aside"
    );
    assert!(
        evil.stats().manifest_get_count("v1") >= 1,
        "the tracker resolved it"
    );

    // The victim's upstream down: its own last confirmed answer, not the tracker's.
    upstream_down(&reg);
    let r = victim.get(&tag_path(&victim)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-content-digest"), good.manifest_digest);
    assert_eq!(r.bytes(), &good.manifest);

    // A node that never had an answer refuses rather than take the tracker's.
    let fresh = member(&reg, cfg, Some(&tracker)).await;
    let r = fresh.get(&tag_path(&fresh)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.header("docker-content-digest").is_empty());
    assert_ne!(r.bytes(), &bad.manifest);
    assert!(
        !fresh.agent.store().contains(
            pollen_store::Kind::Manifest,
            &bad.manifest_digest.parse().unwrap()
        ),
        "the tracker's manifest was not even fetched"
    );
}
