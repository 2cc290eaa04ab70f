//! A fetch handed on by the tracker looks for holders the tracker does not know before it
//! goes to the upstream: after a tracker restart, or for a node that held the blob before
//! the tracker took it on, Kademlia is the only one that knows them. Found by the soak
//! (benches/README.md, part 11: 1.16 GiB of registry egress after trackers died).

mod common;

use common::cluster::*;
use common::*;
use http::StatusCode;
use pollen_oci::Digest;
use pollen_testreg::{Fault, TestRegistry};
use std::time::Duration;

/// A puller that asks two peers at a time: with sessions to the other two pullers it does not
/// look for more providers (lookups run only with room to dial), and when the fetcher dies it
/// keeps a session, so it looks again only at its next periodic lookup, up to 5 s later.
fn narrow(reg: &TestRegistry) -> pollen_agent::AgentConfig {
    let mut cfg = agent_config(reg);
    cfg.p2p.tracker = false;
    cfg.p2p.max_peers_per_blob = 2;
    cfg.p2p.session.piece_size = Some((256 << 10) as u32);
    cfg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fetch_handed_on_takes_the_rest_from_a_holder_only_kademlia_knows() {
    init_logs();
    let reg = TestRegistry::start().await.unwrap();
    let size = 24 * PIECE;
    let layer = random_bytes(size, 320);
    let digest = reg.add_blob("app", layer.clone());

    let mut cfg = agent_config(&reg);
    cfg.p2p.tracker = true;
    let tracker = member(&reg, cfg, None).await;
    let pullers = [
        member(&reg, narrow(&reg), Some(&tracker)).await,
        member(&reg, narrow(&reg), Some(&tracker)).await,
        member(&reg, narrow(&reg), Some(&tracker)).await,
    ];
    reg.set_fault(Fault::Slow {
        chunk: 64 << 10,
        delay: Duration::from_millis(20),
    });
    let pulls = get_on_each(pullers.iter(), |h| blob_path(h, &digest));
    let dead = fetcher_of(&pullers).await;

    // A node that got the blob elsewhere joins the swarm now: it announces the blob (Kademlia),
    // but never joined the blob's tracker, which does not know it.
    let other = TestRegistry::start().await.unwrap();
    other.add_blob("app", layer.clone());
    let dir = tempfile::tempdir().unwrap();
    let cfg = agent_config(&other);
    let alone = Harness::with_dir(other, cfg, dir, 1 << 30).await;
    assert_eq!(alone.get(&blob_path(&alone, &digest)).await.bytes(), &layer);
    alone.wait_stored(&digest).await;
    let (_, dir) = alone.stop();
    let mut cfg = agent_config(&reg);
    cfg.p2p.tracker = false;
    let holder = member_in(&reg, cfg, Some(&tracker), dir).await;
    let (want, d) = (node(&holder).peer_id(), digest.parse::<Digest>().unwrap());
    eventually("the holder to be findable", || async {
        node(&pullers[dead])
            .find_providers(&d)
            .await
            .is_ok_and(|p| p.contains(&want))
    })
    .await;

    let before = reg.stats().blob_bytes_sent;
    assert!(
        (before as usize) < size / 2,
        "the fetch is still under way: {before} of {size} bytes"
    );
    pullers[dead].agent.shutdown(Duration::from_secs(5)).await;
    for (i, pull) in pulls.into_iter().enumerate().filter(|(i, _)| *i != dead) {
        let r = pull.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "puller {i}");
        assert_eq!(r.bytes(), &layer, "puller {i}");
    }
    let after = reg.stats().blob_bytes_sent;
    assert!(
        after - before <= 4 * (256 << 10),
        "handed the fetch, the heir took the rest from the holder, not the registry: it sent {} more bytes",
        after - before
    );
    holder.agent.refresh_peer_metrics();
    assert!(holder.metric("pollen_peer_bytes_sent_total") > 0.0);
}

/// The puller fetching from the upstream, once it has some of the blob.
async fn fetcher_of(pullers: &[Harness]) -> usize {
    let found = std::sync::Mutex::new(None);
    eventually("a fetcher to be under way", || async {
        for (i, h) in pullers.iter().enumerate() {
            let st = status(h).await;
            if st
                .blobs_in_flight
                .iter()
                .any(|b| b.bytes_from_upstream >= (2 * PIECE) as u64)
            {
                *found.lock().unwrap() = Some(i);
                return true;
            }
        }
        false
    })
    .await;
    let i = found.lock().unwrap().take();
    i.unwrap()
}
