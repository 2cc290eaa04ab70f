//! Agents with swarms on loopback sharing one test registry: set-up and polling helpers.
#![allow(dead_code)]

use super::*;
use http::StatusCode;
use pollen_agent::{AgentConfig, Node, Status};
use pollen_swarm::{Bootstrap, SwarmConfig, SwarmKey};
use pollen_testreg::{Fault, TestRegistry};
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;

pub const DEADLINE: Duration = Duration::from_secs(30);
pub const PIECE: usize = 1 << 20;

/// A swarm key for the tests that need one (`admission.rs`). The other clusters run on
/// loopback without one, which the agent allows: the key's stream cipher is generic code that
/// debug builds run slowly enough to starve the many-agent tests of CPU.
pub fn test_swarm_key() -> SwarmKey {
    SwarmKey::parse(
        "/key/swarm/psk/1.0.0/\n/base16/\n5e1f0c0ffee0ddba11cafebabe5eed5a1ad5eedcafe0ddba11c0ffee5eed5a1a\n",
    )
    .expect("test swarm key")
}

pub fn agent_config(reg: &TestRegistry) -> AgentConfig {
    let mut cfg = config_for(reg);
    cfg.upstream.failure_backoff = Duration::from_millis(1);
    cfg.p2p.session.piece_size = Some(PIECE as u32);
    cfg.p2p.peer_stall = Duration::from_secs(10);
    // One fetcher per blob: the tests of splitting a fetch turn it on themselves.
    cfg.p2p.split_min = 0;
    cfg
}

/// An agent with a swarm on a free loopback port, bootstrapped to `to` if given, once it is
/// connected to it.
pub async fn member(reg: &TestRegistry, cfg: AgentConfig, to: Option<&Harness>) -> Harness {
    member_in(reg, cfg, to, tempfile::tempdir().unwrap()).await
}

pub async fn member_in(
    reg: &TestRegistry,
    cfg: AgentConfig,
    to: Option<&Harness>,
    dir: tempfile::TempDir,
) -> Harness {
    member_with(reg, cfg, to, dir, 1 << 30).await
}

/// [`member_in`] with a cache quota of `quota` bytes.
pub async fn member_with(
    reg: &TestRegistry,
    cfg: AgentConfig,
    to: Option<&Harness>,
    dir: tempfile::TempDir,
    quota: u64,
) -> Harness {
    member_keyed(reg, cfg, to, dir, quota, None).await
}

/// [`member_with`] in a private swarm: only agents with the same `swarm_key` connect.
pub async fn member_keyed(
    reg: &TestRegistry,
    cfg: AgentConfig,
    to: Option<&Harness>,
    dir: tempfile::TempDir,
    quota: u64,
    swarm_key: Option<SwarmKey>,
) -> Harness {
    init_logs();
    let mut swarm = SwarmConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        provider_ttl: Duration::from_secs(4),
        lookup_timeout: Duration::from_secs(5),
        bootstrap_interval: Duration::from_millis(500),
        swarm_key,
        ..SwarmConfig::default()
    };
    if let Some(first) = to {
        let addr = node(first).listen_addrs().await.unwrap()[0].clone();
        swarm.bootstrap = vec![Bootstrap::Addr(addr)];
    }
    let n = Node::start(dir.path(), swarm).await.expect("swarm starts");
    let h = Harness::with_swarm(reg.clone(), cfg, dir, quota, Some(n)).await;
    if let Some(first) = to {
        let want = node(first).peer_id();
        // Connected, and A in the routing table (identify has run), so lookups ask it.
        eventually("bootstrap connection", || async {
            node(&h).connected_peers().await.unwrap().contains(&want)
                && node(&h).stats().routing_table_peers > 0
        })
        .await;
    }
    h
}

pub fn node(h: &Harness) -> Node {
    h.agent.node().expect("agent has a swarm")
}

pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub fn blob_path(h: &Harness, digest: &str) -> String {
    format!("/v2/app/blobs/{digest}{}", h.ns())
}

pub async fn status(h: &Harness) -> Status {
    h.agent.status().await
}

/// Piece bytes this agent took from peers and from the upstream.
pub fn sources(h: &Harness) -> (f64, f64) {
    (
        h.metric("pollen_peer_bytes_received_total"),
        h.metric("pollen_upstream_bytes_total"),
    )
}

/// An agent with the blob complete, and the blob.
pub async fn seeded(reg: &TestRegistry, size: usize, seed: u64) -> (Harness, bytes::Bytes, String) {
    let a = member(reg, agent_config(reg), None).await;
    let (layer, digest) = seed_blob(reg, &a, size, seed).await;
    (a, layer, digest)
}

/// A random blob of `size` bytes in the registry, pulled through `a` until it is stored there;
/// the blob and its digest.
pub async fn seed_blob(
    reg: &TestRegistry,
    a: &Harness,
    size: usize,
    seed: u64,
) -> (bytes::Bytes, String) {
    let layer = random_bytes(size, seed);
    let digest = reg.add_blob("app", layer.clone());
    let r = a.get(&blob_path(a, &digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
    a.wait_stored(&digest).await;
    (layer, digest)
}

pub fn upstream_down(reg: &TestRegistry) {
    reg.set_fault(Fault::Status {
        status: 503,
        count: 1_000_000,
    });
}

/// Logs to stderr when `POLLEN_TEST_LOG` holds a filter (e.g. `pollen_agent=debug`), for
/// debugging a failing test; silent otherwise.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("POLLEN_TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// Starts a GET of `path_of(agent)` on each agent, all at once; the responses, in order.
pub fn get_on_each<'a>(
    agents: impl IntoIterator<Item = &'a Harness>,
    path_of: impl Fn(&Harness) -> String,
) -> Vec<tokio::task::JoinHandle<Resp>> {
    agents
        .into_iter()
        .map(|h| {
            let (client, path) = (h.client(), path_of(h));
            tokio::spawn(async move { client.get(&path).await })
        })
        .collect()
}
