//! What `pollen status` shows: the node's identity and peers, the blobs in flight with their
//! progress, and where the bytes came from. Served as JSON on the admin endpoint (`/status`);
//! rates are computed by the client from two samples of the counters.

use crate::Ctx;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;

/// The node as a whole. Missing fields read as their defaults, so a newer `pollen status`
/// still reads an older agent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Status {
    pub version: String,
    /// `None` when peer-to-peer is off.
    pub peer_id: Option<String>,
    pub listen_addrs: Vec<String>,
    /// Peers connected now.
    pub peers: Vec<String>,
    pub routing_table_peers: usize,
    pub provided_blobs: usize,
    pub banned_peers: usize,
    pub blobs_in_flight: Vec<BlobStatus>,
    pub bytes_from_peers: u64,
    pub bytes_from_upstream: u64,
    pub bytes_to_peers: u64,
    pub cache_bytes: u64,
    pub cache_quota: u64,
    pub cache_entries: u64,
    /// `tracker`, `seed`: the roles this node has besides serving.
    pub roles: Vec<String>,
    /// On a tracker: the blobs it coordinates now.
    pub tracked_blobs: Vec<TrackedBlob>,
    /// The trackers this node would ask (itself included when it is one); empty: downloads
    /// are not coordinated (Kademlia providers, then the upstream).
    pub trackers: Vec<String>,
    /// Piece bytes per second sent to peers, all together; 0: unlimited (changes on SIGHUP).
    pub upload_limit: u64,
    /// Piece bytes per second received from peers, all together; 0: unlimited.
    pub download_limit: u64,
}

/// One blob a tracker coordinates.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TrackedBlob {
    pub digest: String,
    /// Agents working on it now.
    pub members: usize,
    /// Agents known to hold all of it.
    pub holders: usize,
    /// One of the members is fetching it from the upstream.
    pub fetching: bool,
}

/// One blob being downloaded.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BlobStatus {
    pub digest: String,
    /// `None` until the first answer says how large it is.
    pub size: Option<u64>,
    pub pieces: u32,
    pub pieces_present: u32,
    pub bytes_from_peers: u64,
    pub bytes_from_upstream: u64,
}

/// The node's status; without `full`, the digests of private content (fetched with a
/// client's own credentials) are left out, for readers that are not the node's operator.
pub(crate) async fn collect(ctx: &Ctx, full: bool) -> Status {
    let usage = ctx.store.usage();
    let mut s = Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        bytes_from_peers: ctx.metrics.peer_bytes_received.get(),
        bytes_from_upstream: ctx.metrics.upstream_bytes.get(),
        cache_bytes: usage.bytes,
        cache_quota: usage.quota,
        cache_entries: usage.entries,
        ..Status::default()
    };
    s.blobs_in_flight = ctx
        .blobs
        .iter()
        .filter(|e| full || !ctx.private.contains(e.key()))
        .map(|e| {
            let share = e.value().share();
            let (size, pieces, present) = match &share {
                Some(sh) => (
                    Some(sh.geometry.size()),
                    sh.geometry.count(),
                    sh.state.borrow().have.count_ones(),
                ),
                None => (None, 0, 0),
            };
            BlobStatus {
                digest: e.key().to_string(),
                size,
                pieces,
                pieces_present: present,
                bytes_from_peers: e.value().from_peers.load(Ordering::Relaxed),
                bytes_from_upstream: e.value().from_upstream.load(Ordering::Relaxed),
            }
        })
        .collect();
    s.blobs_in_flight.sort_by(|a, b| a.digest.cmp(&b.digest));
    if let Some(p2p) = &ctx.peers().swarm() {
        if p2p.cfg.tracker {
            s.roles.push("tracker".into());
        }
        if p2p.cfg.seed {
            s.roles.push("seed".into());
        }
        s.upload_limit = p2p.uploads.rate().rate();
        s.download_limit = p2p.downloads.rate();
        if let Some(t) = &p2p.tracker {
            s.tracked_blobs = t
                .summary()
                .into_iter()
                .filter(|b| full || !ctx.private.contains(&b.digest))
                .map(|b| TrackedBlob {
                    digest: b.digest.to_string(),
                    members: b.members,
                    holders: b.holders,
                    fetching: b.fetching,
                })
                .collect();
        }
        s.trackers = p2p
            .directory
            .trackers(p2p)
            .await
            .iter()
            .map(|p| p.to_string())
            .collect();
        let stats = p2p.node.stats();
        s.peer_id = Some(p2p.node.peer_id().to_string());
        s.routing_table_peers = stats.routing_table_peers;
        s.provided_blobs = stats.provided_blobs;
        s.banned_peers = p2p.bans.active();
        s.bytes_to_peers = p2p.uploads.bytes_sent();
        if let Ok(addrs) = p2p.node.listen_addrs().await {
            s.listen_addrs = addrs.iter().map(|a| a.to_string()).collect();
        }
        if let Ok(peers) = p2p.node.connected_peers().await {
            s.peers = peers.iter().map(|p| p.to_string()).collect();
        }
    }
    s
}
