//! Limits on the work other agents can make this node do: a peer names only registries this
//! node is configured for (never an arbitrary `host:port`, whatever
//! `allow_unlisted_registries` says, which is about this node's own clients), each peer gets
//! a bounded number of concurrent preheats and piece sessions, and what goes back to a peer
//! when its request fails says nothing about upstreams or the network behind this node.

use dashmap::DashMap;
use pollen_upstream::Route;
use std::hash::Hash;
use std::sync::Arc;

/// Preheat fetches one peer may have running here at once. The asking agent runs at most 4
/// per preheat across all its targets; two preheats from one agent fit.
pub const MAX_PREHEATS_PER_PEER: usize = 8;
/// Piece sessions (uploads to it) one peer may have open here at once, served or waiting:
/// a downloader opens one per blob it fetches from this node, a few at a time.
pub const MAX_SESSIONS_PER_PEER: usize = 16;

/// What a peer is told when this node will not fetch what it named.
pub const REFUSED: &str = "refused: not a registry this node fetches from";
/// What a peer is told when a fetch it asked for failed (the cause is in this node's log).
pub const FAILED: &str = "the fetch failed on this node";

/// The route for a registry and repository a peer named, only if the registry is one this
/// node's configuration lists: Docker Hub names (served by the `--upstream` mirrors) or a
/// `[registries]` host. `None` otherwise, without any connection made.
pub(crate) fn peer_route(
    cfg: &pollen_upstream::UpstreamConfig,
    registry: Option<&str>,
    name: &str,
) -> Option<Route> {
    let name = pollen_oci::Name::parse(name).ok()?;
    let route = Route::resolve(cfg, registry, &name).ok()?;
    let configured =
        route.registry == pollen_oci::DOCKER_HUB || cfg.registries.contains_key(&route.registry);
    configured.then_some(route)
}

/// Counts what each peer has open, up to a cap per peer. Clones share the counts.
#[derive(Clone)]
pub(crate) struct PerPeer<K: Hash + Eq + Clone> {
    open: Arc<DashMap<K, usize>>,
    cap: usize,
}

/// One unit of a peer's allowance; given back when dropped.
pub(crate) struct PeerTicket<K: Hash + Eq + Clone> {
    open: Arc<DashMap<K, usize>>,
    key: K,
}

impl<K: Hash + Eq + Clone> PerPeer<K> {
    pub fn new(cap: usize) -> PerPeer<K> {
        PerPeer {
            open: Arc::new(DashMap::new()),
            cap,
        }
    }

    /// A ticket for `key`, or `None` when it has `cap` open already.
    pub fn enter(&self, key: K) -> Option<PeerTicket<K>> {
        let mut n = self.open.entry(key.clone()).or_insert(0);
        if *n >= self.cap {
            return None;
        }
        *n += 1;
        drop(n);
        Some(PeerTicket {
            open: self.open.clone(),
            key,
        })
    }
}

impl<K: Hash + Eq + Clone> Drop for PeerTicket<K> {
    fn drop(&mut self) {
        self.open.remove_if_mut(&self.key, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_name_only_configured_registries() {
        let mut cfg = pollen_upstream::UpstreamConfig {
            allow_unlisted_registries: true,
            ..Default::default()
        };
        cfg.registries
            .insert("reg.example".into(), vec!["https://reg.example".into()]);
        assert!(peer_route(&cfg, None, "library/alpine").is_some());
        assert!(peer_route(&cfg, Some("docker.io"), "alpine").is_some());
        assert!(peer_route(&cfg, Some("reg.example"), "team/app").is_some());
        assert!(peer_route(&cfg, Some("REG.example"), "team/app").is_some());
        for host in [
            "127.0.0.1:22",
            "169.254.169.254",
            "evil.example",
            "reg.example:22",
        ] {
            assert!(peer_route(&cfg, Some(host), "x/y").is_none(), "{host}");
        }
        assert!(peer_route(&cfg, None, "../x").is_none());
    }

    #[test]
    fn a_peer_gets_at_most_its_cap() {
        let caps = PerPeer::new(2);
        let a1 = caps.enter("a").unwrap();
        let _a2 = caps.enter("a").unwrap();
        assert!(caps.enter("a").is_none());
        assert!(caps.enter("b").is_some());
        drop(a1);
        assert!(caps.enter("a").is_some());
    }
}
