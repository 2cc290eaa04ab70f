//! The tracker role on loopback: a cluster of agents pulling the same image at the same moment
//! fetches each blob from the upstream once. Every wait polls state under a deadline.

mod common;

use common::cluster::*;
use common::*;
use http::StatusCode;
use pollen_testreg::{Fault, TestRegistry};
use std::time::Duration;

const AGENTS: usize = 8;

/// A tracker (agent 0, also pulling) and `AGENTS - 1` more agents bootstrapped to it.
async fn cluster(reg: &TestRegistry) -> Vec<Harness> {
    let mut cfg = agent_config(reg);
    cfg.p2p.tracker = true;
    let first = member(reg, cfg, None).await;
    let mut all = vec![first];
    for _ in 1..AGENTS {
        let h = member(reg, agent_config(reg), Some(&all[0])).await;
        all.push(h);
    }
    all
}

/// Every agent pulls every layer at once; all get the right bytes.
async fn pull_everywhere(agents: &[Harness], layers: &[(String, bytes::Bytes)]) {
    let mut pulls = Vec::new();
    for h in agents {
        for (digest, _) in layers {
            let (client, path) = (h.client(), blob_path(h, digest));
            pulls.push(tokio::spawn(async move { client.get(&path).await }));
        }
    }
    let expected = agents.iter().flat_map(|_| layers.iter());
    for (pull, (digest, bytes)) in pulls.into_iter().zip(expected) {
        let r = pull.await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{digest}");
        assert_eq!(r.bytes(), bytes, "{digest}");
    }
}

fn image(reg: &TestRegistry) -> Vec<(String, bytes::Bytes)> {
    [6 * PIECE + 3, 3 * PIECE, 200 << 10]
        .iter()
        .enumerate()
        .map(|(i, size)| {
            let b = random_bytes(*size, 100 + i as u64);
            (reg.add_blob("app", b.clone()), b)
        })
        .collect()
}

/// Upstream egress per blob, against the 1.02 x size bound.
fn assert_egress_once(reg: &TestRegistry, layers: &[(String, bytes::Bytes)]) {
    let stats = reg.stats();
    let total: usize = layers.iter().map(|(_, b)| b.len()).sum();
    for (digest, _) in layers {
        assert_eq!(
            stats.blob_get_count(digest),
            1,
            "{digest} fetched more than once"
        );
    }
    assert!(
        stats.blob_bytes_sent as f64 <= 1.02 * total as f64,
        "upstream sent {} bytes for {total} bytes of blobs",
        stats.blob_bytes_sent
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cluster_pulling_at_once_fetches_each_blob_from_the_upstream_once() {
    let reg = TestRegistry::start().await.unwrap();
    let agents = cluster(&reg).await;
    let layers = image(&reg);
    // A registry slow enough that every agent asks while the first fetch is still running.
    reg.set_fault(Fault::Slow {
        chunk: 256 << 10,
        delay: Duration::from_millis(5),
    });
    pull_everywhere(&agents, &layers).await;
    assert_egress_once(&reg, &layers);
    let st = status(&agents[0]).await;
    assert_eq!(st.roles, vec!["tracker".to_string()]);
}
