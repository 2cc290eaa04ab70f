//! The agent's side of the swarm: what it serves to peers, how it downloads from them, and
//! the node-wide state both share (limits, bans, counters).
//!
//! - [`source`]: the store and the blobs in flight as a [`pollen_peer::PieceSource`], so a
//!   piece is served as soon as it is verified, long before its blob is complete.
//! - [`download`]: one blob's download from peers, a single-writer event loop that carries out
//!   what `pollen_core::download` (peers, requests, the picker, the stall watch) decides.
//! - [`peer_task`]: one session with one uploader, as a task that forwards its events.
//! - [`lazy`]: the pieces of a lazy range (`crate::lazy`) from a peer that holds them.
//! - [`manifest`]: manifests by digest, whole, checked against their digest.
//! - [`tracker`]: the blob's tracker (rendezvous over live trackers) and the membership a
//!   download holds there; [`settle`]: the tracker role's check that no other tracker has a
//!   new blob's swarm already.

mod download;
mod fetching;
mod lazy;
pub(crate) mod manifest;
mod peer_task;
mod settle;
mod source;
pub(crate) mod tracker;

pub use lazy::lazy_key;
pub(crate) use settle::Others;
pub(crate) use source::{PieceShare, StoreSource};

use dashmap::DashMap;
use pollen_oci::Digest;
use pollen_peer::{RateLimiter, SessionConfig, UploadLimits, DEFAULT_MAX_UPLOAD_SESSIONS};
use pollen_swarm::{Node, PeerId};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// Default [`P2pConfig::max_peers_per_blob`].
pub const DEFAULT_MAX_PEERS_PER_BLOB: usize = 8;
/// Default [`P2pConfig::peer_stall`].
pub const DEFAULT_PEER_STALL: Duration = Duration::from_secs(10);
/// Default [`P2pConfig::ban_duration`].
pub const DEFAULT_BAN_DURATION: Duration = Duration::from_secs(600);
/// Default [`P2pConfig::swarm_wait`]: long enough for a DaemonSet's agents, started in the
/// same second, to find one another (bootstrap retries start at 50 ms), short enough that a
/// pull on a node that really is alone is barely delayed.
pub const DEFAULT_SWARM_WAIT: Duration = Duration::from_secs(5);
/// Default [`P2pConfig::tracker`]: every agent coordinates the blobs that rendezvous hashing
/// gives it, so a cluster installed with no role flags fetches each blob once.
pub const DEFAULT_TRACKER: bool = true;
/// As a tracker, the registry may send a large blob this many times in all while it has
/// headroom over the swarm (`--upstream-budget`; 1: each byte once).
pub const DEFAULT_UPSTREAM_BUDGET: f64 = pollen_tracker::DEFAULT_UPSTREAM_BUDGET;
/// Default [`P2pConfig::lazy_from_peers`]: the clients that read layers lazily (the eStargz
/// and SOCI snapshotters) check every chunk against digests the verified manifest pins, and a
/// cluster starting the same container then reads each range from the registry once.
pub const DEFAULT_LAZY_FROM_PEERS: bool = true;
/// Default [`P2pConfig::request_timeout`].
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// How often the provider records of the store's blobs are reconciled with what it holds
/// (new blobs announced, evicted ones withdrawn).
const RECONCILE_INTERVAL: Duration = Duration::from_secs(5);

/// How the agent shares and downloads pieces. Every field has a named default.
#[derive(Clone, Debug)]
pub struct P2pConfig {
    /// Deadlines of every session, both directions, and the piece size override (which must
    /// be the same on every agent of a cluster).
    pub session: SessionConfig,
    /// Piece bytes sent to peers per second, all sessions together; 0 is unlimited.
    pub upload_limit: u64,
    /// Piece bytes received from peers per second, all downloads together; 0 is unlimited.
    pub download_limit: u64,
    /// Peers served at once; more wait (choked) for a slot, then get `Busy`.
    pub max_upload_sessions: usize,
    /// Peers one blob is downloaded from at once (sessions waiting choked for a slot do not
    /// count, up to twice as many sessions in all: `Exchange::dial_room`).
    pub max_peers_per_blob: usize,
    /// How long a download may go without a new piece (stored here or announced by a peer)
    /// before the agent fetches the pieces still missing from the upstream itself; where the
    /// swarm's pace is slower the wait follows it, up to four times this.
    pub peer_stall: Duration,
    /// How long a piece request may stay unanswered before the piece is also asked of another
    /// peer (the first answer wins, the other request is cancelled).
    pub request_timeout: Duration,
    /// How long a peer that sent a bad piece (or a map that proved wrong) is not asked for
    /// that blob again.
    pub ban_duration: Duration,
    /// This node also coordinates blobs for others (`--tracker`).
    pub tracker: bool,
    /// For how long after start a pull on a node with no peer yet waits for the first
    /// connection instead of going to the upstream alone (`--swarm-wait`).
    pub swarm_wait: Duration,
    /// As a tracker, the smallest share of a blob given to one more upstream fetcher
    /// (`--split-min`); 0 keeps one fetcher per blob.
    pub split_min: u64,
    /// As a tracker, the most the upstream may send of a large blob, in copies of it, while it
    /// has headroom over the swarm (`--upstream-budget`); 1 sends each byte once.
    pub upstream_budget: f64,
    /// This node is a seed (`--seed`): preferred by trackers for fetching from the upstream.
    pub seed: bool,
    /// A lazy range (`crate::lazy`) takes its pieces from a peer that holds them before this
    /// node's upstream is asked (`--lazy-from-peers`); the peer vouches for their hashes.
    pub lazy_from_peers: bool,
    /// `zone`, `rack` and other labels (`--zone`, `--rack`, `--label k=v`): trackers name
    /// peers with the same labels first.
    pub labels: Vec<(String, String)>,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            session: SessionConfig::default(),
            upload_limit: 0,
            download_limit: 0,
            max_upload_sessions: DEFAULT_MAX_UPLOAD_SESSIONS,
            max_peers_per_blob: DEFAULT_MAX_PEERS_PER_BLOB,
            peer_stall: DEFAULT_PEER_STALL,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            ban_duration: DEFAULT_BAN_DURATION,
            tracker: DEFAULT_TRACKER,
            swarm_wait: DEFAULT_SWARM_WAIT,
            split_min: pollen_tracker::MIN_SHARE,
            upstream_budget: DEFAULT_UPSTREAM_BUDGET,
            seed: false,
            lazy_from_peers: DEFAULT_LAZY_FROM_PEERS,
            labels: Vec::new(),
        }
    }
}

/// Node-wide swarm state, shared by every download and upload.
pub(crate) struct P2p {
    pub node: Node,
    pub cfg: P2pConfig,
    pub uploads: Arc<UploadLimits>,
    pub downloads: RateLimiter,
    pub bans: Bans,
    /// Content this node announces (blobs and manifests, complete or in flight).
    pub provided: dashmap::DashSet<Digest>,
    /// The tracker role, when this node has it.
    pub tracker: Option<Arc<pollen_tracker::Tracker>>,
    pub directory: tracker::Directory,
    /// Blobs this node is fetching from the upstream now: a busy node leaves the fetch of
    /// the next blob to another member (the tracker's `FETCH_DEFER`).
    pub upstream_fetches: std::sync::atomic::AtomicUsize,
    /// Peers asked for pieces now, over all downloads: each adds its own
    /// (`pollen_core::download::NODE_ACTIVE_PEERS` bounds the sum).
    pub active_peers: std::sync::atomic::AtomicUsize,
    /// Upload slots this node holds at other peers now, over all downloads: each adds its
    /// own, and every session tells its uploader on each change (`Request::Holding`).
    pub holding: tokio::sync::watch::Sender<u32>,
    /// When the swarm started: [`P2pConfig::swarm_wait`] counts from here.
    started: tokio::time::Instant,
    /// This swarm, for the tasks it starts (which outlive a borrow of it).
    me: std::sync::Weak<P2p>,
}

impl P2p {
    pub fn new(node: Node, cfg: P2pConfig) -> Arc<P2p> {
        Arc::new_cyclic(|me| P2p {
            me: me.clone(),
            uploads: Arc::new(UploadLimits::new(cfg.max_upload_sessions, cfg.upload_limit)),
            downloads: RateLimiter::new(cfg.download_limit),
            bans: Bans::new(cfg.ban_duration),
            provided: dashmap::DashSet::new(),
            tracker: cfg.tracker.then(|| {
                let t = pollen_tracker::Tracker::with_split_min(cfg.split_min);
                Arc::new(t.with_upstream_budget(cfg.upstream_budget))
            }),
            directory: tracker::Directory::default(),
            upstream_fetches: std::sync::atomic::AtomicUsize::new(0),
            active_peers: std::sync::atomic::AtomicUsize::new(0),
            holding: tokio::sync::watch::Sender::new(0),
            started: tokio::time::Instant::now(),
            node,
            cfg,
        })
    }

    /// Right after start, with no peer yet: waits (at most until `swarm_wait` after start)
    /// for the first connection and a fresh list of trackers, so that a node which started
    /// before its bootstrap peers joins the swarm's fetch instead of fetching alone beside it.
    pub async fn wait_for_swarm(&self) {
        let deadline = self.started + self.cfg.swarm_wait;
        if self.node.joined() || tokio::time::Instant::now() >= deadline {
            return;
        }
        debug!("no peer yet: waiting for the swarm before fetching");
        if self.node.wait_connected(deadline).await {
            self.directory.refresh(self).await;
        } else {
            info!(waited = ?self.cfg.swarm_wait, "no peer reachable; fetching from the upstream alone");
        }
    }

    /// Announces content in the background (a failed announcement only means fewer peers find
    /// us) and remembers it, so the reconcile withdraws it once the store no longer has it.
    pub fn provide(&self, digest: Digest) {
        if self.provided.insert(digest) {
            self.announce(digest);
        }
    }

    /// Announces a role key (tracker, seed): not content, never withdrawn by the reconcile.
    pub fn announce(&self, key: Digest) {
        let node = self.node.clone();
        tokio::spawn(async move {
            if let Err(e) = node.provide(&key).await {
                debug!(%key, error = %e, "announcing failed");
            }
        });
    }

    pub fn unprovide(&self, digest: Digest) {
        self.provided.remove(&digest);
        let node = self.node.clone();
        tokio::spawn(async move {
            if let Err(e) = node.unprovide(&digest).await {
                debug!(%digest, error = %e, "withdrawing a blob failed");
            }
        });
    }
}

/// Peers not to ask for a blob for a while, because they sent a bad piece or a wrong map.
pub(crate) struct Bans {
    until: DashMap<(Digest, PeerId), Instant>,
    duration: Duration,
}

impl Bans {
    fn new(duration: Duration) -> Bans {
        Bans {
            until: DashMap::new(),
            duration,
        }
    }

    pub fn ban(&self, digest: Digest, peer: PeerId, why: &str) {
        warn!(%digest, %peer, reason = why, for_secs = self.duration.as_secs(), "banning peer for this blob");
        self.until
            .insert((digest, peer), Instant::now() + self.duration);
    }

    pub fn is_banned(&self, digest: &Digest, peer: &PeerId) -> bool {
        self.until
            .get(&(*digest, *peer))
            .is_some_and(|t| *t > Instant::now())
    }

    /// Bans in force now (expired ones are dropped on the way).
    pub fn active(&self) -> usize {
        let now = Instant::now();
        self.until.retain(|_, t| *t > now);
        self.until.len()
    }
}

/// Accepts pieces streams from other nodes and serves each in a task of its own, until the
/// swarm stops: on `pollen_proto::PROTOCOL`, and on `LEGACY_PROTOCOL` for agents of the
/// version before (a rolling upgrade), served alike but for `SignedHashes`, which the legacy
/// id does not know. The per-peer session cap spans both.
pub(crate) async fn accept_loop(ctx: Arc<crate::Ctx>, p2p: Arc<P2p>) {
    let source: Arc<dyn pollen_peer::PieceSource> = Arc::new(StoreSource::new(&ctx));
    let per_peer = crate::confine::PerPeer::new(crate::confine::MAX_SESSIONS_PER_PEER);
    let legacy = tokio::spawn(accept_on(
        pollen_proto::LEGACY_PROTOCOL,
        p2p.clone(),
        source.clone(),
        per_peer.clone(),
    ));
    accept_on(pollen_proto::PROTOCOL, p2p, source, per_peer).await;
    legacy.abort();
}

async fn accept_on(
    protocol: &'static str,
    p2p: Arc<P2p>,
    source: Arc<dyn pollen_peer::PieceSource>,
    per_peer: crate::confine::PerPeer<PeerId>,
) {
    let mut incoming = match p2p.node.incoming_streams_on(protocol) {
        Ok(i) => i,
        Err(e) => {
            warn!(error = %e, protocol, "cannot accept peer streams; this node will not upload on it");
            return;
        }
    };
    while let Some((peer, stream)) = incoming.next().await {
        let (source, limits) = (source.clone(), p2p.uploads.clone());
        let mut cfg = p2p.cfg.session.clone();
        // Peers on the legacy id know no `SignedHashes`.
        cfg.signed_hashes &= protocol == pollen_proto::PROTOCOL;
        let Some(ticket) = per_peer.enter(peer) else {
            debug!(%peer, "closing a piece stream: this peer has too many sessions here");
            continue;
        };
        tokio::spawn(async move {
            use tokio_util::compat::FuturesAsyncReadCompatExt;
            let _ticket = ticket;
            let who = Some(peer.to_bytes());
            match pollen_peer::serve_peer(stream.compat(), source, limits, &cfg, who).await {
                Ok(s) => {
                    debug!(%peer, digest = %s.digest, bytes = s.bytes_sent, end = ?s.end, "upload session ended")
                }
                Err(e) => debug!(%peer, error = %e, "upload session failed"),
            }
        });
    }
}

/// Keeps the provider records in step with the store: announces every complete blob and
/// manifest at start and each new one, withdraws evicted ones.
pub(crate) async fn reconcile_loop(ctx: Arc<crate::Ctx>, p2p: Arc<P2p>) {
    let mut tick = tokio::time::interval(RECONCILE_INTERVAL);
    loop {
        tick.tick().await;
        let store = ctx.store.clone();
        let Ok(now) = tokio::task::spawn_blocking(move || store.digests()).await else {
            continue;
        };
        let mut now: std::collections::HashSet<Digest> = now.into_iter().collect();
        now.retain(|d| !ctx.private.contains(d));
        let fresh: Vec<_> = now
            .iter()
            .filter(|d| !p2p.provided.contains(*d))
            .copied()
            .collect();
        for d in &fresh {
            p2p.provide(*d);
        }
        // Announced at download start or here, and gone from the store since (evicted, or the
        // download failed): withdraw.
        let gone: Vec<Digest> = p2p
            .provided
            .iter()
            .map(|d| *d)
            .filter(|d| !now.contains(d) && !ctx.blobs.contains_key(d))
            .collect();
        for d in gone {
            p2p.unprovide(d);
        }
        if !fresh.is_empty() {
            info!(blobs = fresh.len(), "announced blobs to peers");
        }
    }
}

/// Keeps the list of trackers warm, so that a download joining its tracker (a rollout: every
/// blob at once) does not wait for a Kademlia query: looked up again shortly after every
/// change in this node's connections, every second during the first `DIRECTORY_STARTUP`
/// (while a DaemonSet's agents are still finding one another every agent must end up with
/// the same list, or two trackers would each make a fetcher), every 5 s after.
pub(crate) async fn directory_loop(p2p: Arc<P2p>) {
    let mut changes = p2p.node.connected_changes();
    let refreshing = Arc::new(tokio::sync::Semaphore::new(MAX_REFRESHES));
    loop {
        let every = if p2p.started.elapsed() < DIRECTORY_STARTUP {
            DIRECTORY_STARTUP_EVERY
        } else {
            DIRECTORY_EVERY
        };
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return; // the swarm stopped
                }
                // A burst of connections is one lookup.
                tokio::time::sleep(DIRECTORY_SETTLE).await;
            }
            () = tokio::time::sleep(every) => {}
        }
        // A lookup that waits for a peer that does not answer (one still starting) takes up
        // to the lookup timeout; the next ones do not wait behind it.
        if let Ok(slot) = refreshing.clone().try_acquire_owned() {
            let p2p = p2p.clone();
            tokio::spawn(async move {
                p2p.directory.refresh(&p2p).await;
                drop(slot);
            });
        }
    }
}

/// Tracker lookups of [`directory_loop`] running at once.
const MAX_REFRESHES: usize = 4;

/// See [`directory_loop`].
const DIRECTORY_STARTUP: Duration = Duration::from_secs(30);
/// See [`directory_loop`].
const DIRECTORY_STARTUP_EVERY: Duration = Duration::from_secs(1);
/// See [`directory_loop`].
const DIRECTORY_EVERY: Duration = Duration::from_secs(5);
/// See [`directory_loop`].
const DIRECTORY_SETTLE: Duration = Duration::from_millis(100);

/// The provider key under which seeds announce themselves (for preheat).
pub(crate) fn seed_key() -> pollen_oci::Digest {
    pollen_oci::Digest::of(b"/pollen/seed/1")
}

/// Serves the tracker role: announces it, and serves every member stream, until the swarm
/// stops.
pub(crate) async fn tracker_loop(p2p: Arc<P2p>) {
    if p2p.cfg.seed {
        p2p.announce(seed_key());
    }
    let Some(tracker) = p2p.tracker.clone() else {
        return;
    };
    let incoming = |protocol| match p2p.node.incoming_streams_on(protocol) {
        Ok(i) => Some(i),
        Err(e) => {
            warn!(error = %e, protocol, "cannot accept tracker streams; this node will not coordinate");
            None
        }
    };
    let (Some(current), Some(legacy)) = (
        incoming(pollen_proto::TRACKER_PROTOCOL),
        incoming(pollen_proto::LEGACY_TRACKER_PROTOCOL),
    ) else {
        return;
    };
    p2p.announce(tracker::tracker_key());
    info!("tracker role on: coordinating blobs for other agents");
    // Agents of the version before speak the legacy id: served alike, without `Near`.
    let legacy = tokio::spawn(serve_members(legacy, tracker.clone(), false));
    serve_members(current, tracker, true).await;
    legacy.abort();
}

/// Serves every member stream arriving on one protocol id (`marks`: it has `Near`).
async fn serve_members(
    mut incoming: pollen_swarm::IncomingStreams,
    tracker: Arc<pollen_tracker::Tracker>,
    marks: bool,
) {
    while let Some((peer, stream)) = incoming.next().await {
        let tracker = tracker.clone();
        tokio::spawn(async move {
            use tokio_util::compat::FuturesAsyncReadCompatExt;
            let r = pollen_tracker::serve(
                tracker,
                peer.to_bytes(),
                stream.compat(),
                pollen_tracker::DEFAULT_MEMBER_IDLE,
                marks,
            )
            .await;
            if let Err(e) = r {
                debug!(%peer, error = %e, "tracker stream ended");
            }
        });
    }
}
