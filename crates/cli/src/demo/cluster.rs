//! The demo's cluster: an in-process registry behind a rate-limited uplink, serving a
//! generated image, and N agents on loopback on default roles (the first also a seed).

use pollen_agent::{Agent, AgentConfig, Node};
use pollen_store::Store;
use pollen_swarm::{Bootstrap, Limits, SwarmConfig, SwarmKey};
use pollen_testreg::{Image, TestRegistry};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How long the agents may take to find each other.
const CONNECT_DEADLINE: Duration = Duration::from_secs(30);

/// One agent of the demo and what it keeps alive.
pub struct Member {
    pub agent: Agent,
    pub addr: SocketAddr,
    pub roles: &'static str,
    // Removed (with the cache and the node key) when the demo ends.
    _dir: tempfile::TempDir,
}

/// The registry with the demo image.
pub struct Upstream {
    pub reg: TestRegistry,
    pub image: Image,
    /// Bytes of the config and the layers: what each node must receive.
    pub blob_bytes: u64,
}

/// A registry serving `layers` layers of `size` bytes in total (random, incompressible), its
/// blob bodies sharing `rate` bytes per second.
pub async fn upstream(size: u64, layers: usize, rate: u64) -> Result<Upstream, String> {
    let reg = TestRegistry::start()
        .await
        .map_err(|e| format!("starting the demo registry: {e}"))?;
    let layers = layers.max(1) as u64;
    let mut seed = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    let blobs: Vec<bytes::Bytes> = (0..layers)
        .map(|i| {
            let len = size / layers + u64::from(i < size % layers);
            random_bytes(len as usize, &mut seed).into()
        })
        .collect();
    let image = reg.push_image("demo/app", "latest", blobs);
    reg.set_uplink(rate);
    let config = config_len(&image);
    Ok(Upstream {
        reg,
        image,
        blob_bytes: size + config,
    })
}

/// The generated config's size, read from the manifest's descriptor.
fn config_len(image: &Image) -> u64 {
    serde_json::from_slice::<serde_json::Value>(&image.manifest)
        .ok()
        .and_then(|m| m["config"]["size"].as_u64())
        .unwrap_or(0)
}

/// Fast, incompressible filler (xorshift); the content only has to defeat compression.
fn random_bytes(len: usize, state: &mut u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Starts `n` agents that use `reg` as their upstream, on default roles (each a tracker), the
/// first also a seed.
pub async fn agents(reg: &TestRegistry, n: usize) -> Result<Vec<Member>, String> {
    let mut members: Vec<Member> = Vec::with_capacity(n);
    let mut first_addr = None;
    // A swarm key like a real cluster's, made for this run.
    let swarm_key =
        SwarmKey::generate().map_err(|e| format!("generating the demo's swarm key: {e}"))?;
    for i in 0..n {
        let dir = tempfile::tempdir().map_err(|e| format!("a temporary directory: {e}"))?;
        let mut swarm = SwarmConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().map_err(|e| format!("{e}"))?],
            swarm_key: Some(swarm_key),
            // Every agent of the demo connects from 127.0.0.1.
            limits: Limits::one_host(n),
            ..SwarmConfig::default()
        };
        if let Some(addr) = &first_addr {
            swarm.bootstrap = vec![Bootstrap::Addr(Clone::clone(addr))];
        }
        let node = Node::start(dir.path(), swarm)
            .await
            .map_err(|e| format!("starting agent {}'s libp2p node: {e}", i + 1))?;
        if first_addr.is_none() {
            first_addr = node
                .listen_addrs()
                .await
                .map_err(|e| format!("{e}"))?
                .first()
                .cloned();
        }
        let mut cfg = AgentConfig::default();
        cfg.upstream.default_mirrors = vec![reg.url()];
        cfg.upstream.registries.insert(reg.host(), vec![reg.url()]);
        // Default roles, as a cluster installed with no role flags runs: every agent a
        // tracker for the blobs rendezvous hashing gives it; the first also a seed.
        let roles = if i == 0 { "tracker, seed" } else { "tracker" };
        cfg.p2p.seed = i == 0;
        let store =
            Store::open(dir.path(), 1 << 40).map_err(|e| format!("opening a store: {e}"))?;
        let agent = Agent::new(cfg, store, Some(node)).map_err(|e| format!("{e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| format!("binding a loopback port: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("{e}"))?;
        let serving = agent.clone();
        tokio::spawn(async move { serving.serve(listener).await });
        members.push(Member {
            agent,
            addr,
            roles,
            _dir: dir,
        });
    }
    // Ready when every agent knows every tracker: one that knows none would fetch on its own.
    let trackers = members
        .iter()
        .filter(|m| m.roles.contains("tracker"))
        .count();
    let deadline = Instant::now() + CONNECT_DEADLINE;
    for m in &members {
        while m.agent.status().await.trackers.len() < trackers {
            if Instant::now() >= deadline {
                return Err(format!(
                    "the agents did not find each other's trackers within {CONNECT_DEADLINE:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filler_has_the_length_asked_and_differs() {
        let mut s = 1;
        let a = random_bytes(1001, &mut s);
        let b = random_bytes(1001, &mut s);
        assert_eq!(a.len(), 1001);
        assert_ne!(a, b);
    }
}
