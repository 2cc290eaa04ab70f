//! The node agent: an OCI Distribution pull API in front of the upstream registries.
//!
//! Requests are parsed strictly ([`request`]), content by digest is served from the local
//! store when present, and otherwise fetched once from the upstream however many clients ask
//! at the same time ([`blobs`], [`manifests`]). Clients get the bytes of a blob as they arrive,
//! read back from the file being written ([`follow`]), and never the last byte of content
//! whose digest did not verify.

mod access;
mod admin;
mod blobs;
mod confine;
mod disk;
pub mod doctor;
mod error;
mod fetch;
mod flight;
mod follow;
#[doc(hidden)]
pub mod fuzzing;
mod gather;
mod http;
mod inflight;
mod lazy;
mod listen;
mod manifests;
mod metrics;
mod origin;
mod p2p;
mod preheat;
mod private;
mod proofs;
mod range;
mod request;
mod sink;
mod sites;
mod sizes;
mod status;
mod transfer;

pub use admin::{serve_admin, serve_control};
pub use listen::{DEFAULT_MAX_ADMIN_CONNECTIONS, DEFAULT_MAX_CONNECTIONS};
pub use metrics::Metrics;
pub use p2p::{
    lazy_key, P2pConfig, DEFAULT_BAN_DURATION, DEFAULT_LAZY_FROM_PEERS, DEFAULT_MAX_PEERS_PER_BLOB,
    DEFAULT_PEER_STALL, DEFAULT_REQUEST_TIMEOUT, DEFAULT_SWARM_WAIT, DEFAULT_TRACKER,
    DEFAULT_UPSTREAM_BUDGET,
};
pub use pollen_swarm::Node;
pub use preheat::{PreheatEvent, PreheatSpec};
pub use sites::{SiteFiles, SiteServing};
pub use status::{BlobStatus, Status, TrackedBlob};

use dashmap::DashMap;
use pollen_oci::Digest;
use pollen_store::Store;
use pollen_upstream::{Upstream, UpstreamConfig};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Agent behaviour that is not about reaching upstreams.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub upstream: UpstreamConfig,
    /// How long a tag's resolution is reused before asking the upstream again.
    pub tag_ttl: Duration,
    /// Largest request head (request line and headers) a client may send.
    pub max_header_bytes: usize,
    /// Deadline for a client to send its request head.
    pub header_read_timeout: Duration,
    /// Sharing and downloading pieces (used when the agent runs with a swarm).
    pub p2p: P2pConfig,
    /// How long a stopping agent lets the client responses in progress finish ([`Agent::drain`]).
    pub drain_timeout: Duration,
    /// Cached objects nobody read for this long are deleted (`--cache-max-age`); zero keeps
    /// them until the quota needs the room.
    pub cache_max_age: Duration,
    /// Client connections the mirror holds open at most (`--max-connections`); at the cap the
    /// oldest is asked to close ([`listen`]).
    pub max_connections: usize,
    /// The same for the admin port and, separately, the control socket
    /// (`--max-admin-connections`).
    pub max_admin_connections: usize,
    /// Largest blob this node fetches or accepts a size claim for (`--max-blob-size`): a
    /// bigger upstream `Content-Length` is refused with an error naming the limit, a peer
    /// claiming more is a peer fault.
    pub max_blob_size: u64,
    /// Off only in tests that play a hostile agent, one that opens any blob it is told of
    /// whatever its disk holds; every agent checks (`disk.rs`).
    #[doc(hidden)]
    pub disk_room_check: bool,
}

/// Default [`AgentConfig::max_blob_size`]: far above real layers (a few GiB), far below what
/// would fill a node's disk by a claim.
pub const DEFAULT_MAX_BLOB_SIZE: u64 = 64 << 30;

/// Default [`AgentConfig::cache_max_age`]: a month without a pull on this node.
pub const DEFAULT_CACHE_MAX_AGE: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often objects past `cache_max_age` are looked for.
const GC_INTERVAL: Duration = Duration::from_secs(60);

/// Default [`AgentConfig::drain_timeout`]: below Kubernetes' default grace period (30 s), so a
/// pod has time to also checkpoint its downloads and leave the swarm before SIGKILL.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            upstream: UpstreamConfig::default(),
            tag_ttl: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(30),
            p2p: P2pConfig::default(),
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            cache_max_age: DEFAULT_CACHE_MAX_AGE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_admin_connections: DEFAULT_MAX_ADMIN_CONNECTIONS,
            max_blob_size: DEFAULT_MAX_BLOB_SIZE,
            disk_room_check: true,
        }
    }
}

/// The shared context every request handler works with.
pub(crate) struct Ctx {
    cfg: AgentConfig,
    store: Store,
    /// The upstream, counted; its client is replaced whole by [`Agent::reload`].
    origin: Arc<origin::Origin>,
    blobs: DashMap<Digest, Arc<inflight::Inflight>>,
    manifests: manifests::Manifests,
    metrics: Metrics,
    ready: AtomicBool,
    /// The swarm, or [`fetch::NoPeers`] when peer-to-peer is off.
    peers: Arc<dyn fetch::Peers>,
    /// Content fetched with a client's own credentials: never shared with peers.
    private: private::Private,
    /// Which client credentials the upstream lately let read which repository.
    access: access::Access,
    /// Set once by [`Agent::shutdown`]: downloads checkpoint what they have and stop.
    stopping: tokio::sync::watch::Sender<bool>,
    /// Set by [`Agent::drain`]: no new client connections; open ones finish their response.
    draining: tokio::sync::watch::Sender<bool>,
    /// Client connections open now.
    clients: tokio::sync::watch::Sender<usize>,
    /// The doctor's last answer, reused briefly ([`doctor::Cache`]).
    doctor: doctor::Cache,
    /// Blob sizes from verified manifests ([`sizes`]).
    sizes: sizes::KnownSizes,
    /// Lazy ranges ([`lazy`]): one writer per partial blob (a whole fetch or a lazy range),
    /// what is offered to peers, and who supplied pieces.
    lazy: lazy::Lazy,
}

/// A running agent's handle; cheap to clone.
#[derive(Clone)]
pub struct Agent {
    ctx: Arc<Ctx>,
}

/// Startup failures, worded for the operator.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("setting up TLS for upstreams: {0}")]
    Tls(String),
}

/// Deletes cached objects unused for `cache_max_age`, now and then (the quota's LRU eviction
/// happens as objects arrive).
async fn gc_loop(ctx: Arc<Ctx>) {
    let max_age = ctx.cfg.cache_max_age;
    if max_age.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval(GC_INTERVAL);
    loop {
        tick.tick().await;
        let store = ctx.store.clone();
        if let Ok(n) = tokio::task::spawn_blocking(move || store.evict_unused_for(max_age)).await {
            if n > 0 {
                tracing::info!(objects = n, ?max_age, "evicted objects unused for too long");
            }
        }
    }
}

impl Ctx {
    /// The swarm as the fetch path sees it.
    pub(crate) fn peers(&self) -> &dyn fetch::Peers {
        &*self.peers
    }
}

impl Agent {
    /// An agent over `store`; with a `swarm` it shares pieces with other agents and
    /// downloads from them first, without one it is a single-node mirror.
    pub fn new(cfg: AgentConfig, store: Store, swarm: Option<Node>) -> Result<Agent, AgentError> {
        let upstream =
            Upstream::new(cfg.upstream.clone()).map_err(|e| AgentError::Tls(e.to_string()))?;
        let metrics = Metrics::new();
        let origin = Arc::new(origin::Origin::new(upstream, metrics.clone()));
        let swarm = swarm.map(|node| {
            let mut p2p_cfg = cfg.p2p.clone();
            p2p_cfg.session.max_blob_size = cfg.max_blob_size;
            p2p::P2p::new(node, p2p_cfg)
        });
        let peers: Arc<dyn fetch::Peers> = match &swarm {
            Some(p2p) => p2p.clone(),
            None => Arc::new(fetch::NoPeers),
        };
        let agent = Agent {
            ctx: Arc::new(Ctx {
                manifests: manifests::Manifests::default(),
                peers,
                sizes: sizes::KnownSizes::default(),
                lazy: lazy::Lazy::default(),
                stopping: tokio::sync::watch::channel(false).0,
                draining: tokio::sync::watch::channel(false).0,
                clients: tokio::sync::watch::channel(0).0,
                doctor: doctor::Cache::default(),
                private: private::Private::load(store.root()),
                access: access::Access::default(),
                cfg,
                store,
                origin,
                blobs: DashMap::new(),
                metrics,
                ready: AtomicBool::new(false),
            }),
        };
        if let Some((p2p, t)) = swarm.as_ref().and_then(|p| Some((p, p.tracker.as_ref()?))) {
            t.set_resolver(Arc::new(manifests::TagResolver(Arc::downgrade(&agent.ctx))));
            t.set_others(Arc::new(p2p::Others(Arc::downgrade(p2p))));
        }
        Ok(agent)
    }

    /// Serves the mirror API on `listener`, and pieces to peers, until the task is dropped.
    pub async fn serve(&self, listener: tokio::net::TcpListener) {
        // The swarm's own tasks: serving pieces, tracking, preheat requests.
        let peers = self.ctx.peers.swarm().map(|p2p| {
            let ctx = &self.ctx;
            let accept = tokio::spawn(p2p::accept_loop(ctx.clone(), p2p.clone()));
            let reconcile = tokio::spawn(p2p::reconcile_loop(ctx.clone(), p2p.clone()));
            let directory = tokio::spawn(p2p::directory_loop(p2p.clone()));
            let tracker = tokio::spawn(p2p::tracker_loop(p2p.clone()));
            let preheat = tokio::spawn(preheat::serve_loop(ctx.clone(), p2p));
            AbortOnDrop(vec![accept, reconcile, directory, tracker, preheat])
        });
        let gc = AbortOnDrop(vec![tokio::spawn(gc_loop(self.ctx.clone()))]);
        self.ctx.ready.store(true, Ordering::SeqCst);
        http::serve(self.ctx.clone(), listener).await;
        drop(peers);
        drop(gc);
    }

    /// Serves the mirror API to other sites on `listener`, over TLS to clients that
    /// authenticate ([`SiteServing`]), until the agent drains. Run beside [`Agent::serve`].
    pub async fn serve_sites(&self, listener: tokio::net::TcpListener, site: SiteServing) {
        http::serve_with(self.ctx.clone(), listener, Some(Arc::new(site))).await;
    }

    /// The first step of stopping (SIGTERM): not ready any more, no new client connections,
    /// and the responses in progress finish (keep-alive connections close after theirs), for
    /// up to the configured `drain_timeout`. Returns how many connections were still open.
    pub async fn drain(&self) -> usize {
        self.ctx.ready.store(false, Ordering::SeqCst);
        self.ctx.draining.send_replace(true);
        let mut clients = self.ctx.clients.subscribe();
        let _ =
            tokio::time::timeout(self.ctx.cfg.drain_timeout, clients.wait_for(|n| *n == 0)).await;
        let open = *self.ctx.clients.borrow();
        open
    }

    /// Stops gracefully: every download in flight records its verified pieces (so a restart
    /// resumes there) and ends; then the swarm stops. Returns when done, or after `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        self.ctx.ready.store(false, Ordering::SeqCst);
        self.ctx.peers.stop();
        self.ctx.stopping.send_replace(true);
        let until = tokio::time::Instant::now() + deadline;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !self.ctx.blobs.is_empty() && tokio::time::Instant::now() < until {
            tick.tick().await;
        }
        self.ctx.peers.shutdown().await;
    }

    /// Preheats an image on the seeds (or every agent): see [`PreheatSpec`]. Progress arrives
    /// on the channel, ending with `Finished` or `Failed`.
    pub fn preheat(&self, spec: PreheatSpec) -> tokio::sync::mpsc::Receiver<PreheatEvent> {
        preheat::start(self.ctx.clone(), spec)
    }

    /// What this node is doing, for `pollen status` (the control socket's `/status`).
    pub async fn status(&self) -> Status {
        status::collect(&self.ctx, true).await
    }

    /// [`Agent::status`] without the digests of private content: the admin port's `/status`,
    /// which anyone reaching the node's IP may read.
    pub async fn public_status(&self) -> Status {
        status::collect(&self.ctx, false).await
    }

    /// `/readyz`: serving, and the cache's disk not full (a miss could not be stored, so it
    /// could not be served either). Nothing softer: readiness gates a DaemonSet's rolling
    /// update, so a disk smaller than the quota or a failing upstream (the agent still serves
    /// its cache and its peers, and the runtime falls back to the registry by itself) is the
    /// doctor's and the alerts' to report, not a reason to stop a rollout.
    pub fn readiness(&self) -> Result<(), String> {
        if !self.is_ready() {
            return Err("the mirror listener is not serving (starting or stopping)".into());
        }
        match disk::full(&self.ctx.store) {
            Some(why) => Err(why),
            None => Ok(()),
        }
    }

    /// Applies what of a new configuration can change without a restart (SIGHUP): the
    /// upstream configuration (mirrors, registries, credentials, timeouts) and the peer rate
    /// limits. Requests in progress finish with the old upstream; mirror health and cached
    /// tokens start afresh; the new rates apply to the next bytes. Everything else in `cfg` is
    /// ignored (it needs a restart).
    pub fn reload(&self, cfg: AgentConfig) -> Result<(), AgentError> {
        let fresh = Upstream::new(cfg.upstream).map_err(|e| AgentError::Tls(e.to_string()))?;
        self.ctx.origin.replace(fresh);
        self.ctx.doctor.invalidate();
        (self.ctx.peers).set_rates(cfg.p2p.upload_limit, cfg.p2p.download_limit);
        Ok(())
    }

    /// The agent's health checks (upstreams, cache disk, peers, trackers) for `pollen doctor`.
    /// Asks every upstream mirror and tracker now.
    pub async fn doctor(&self) -> Vec<doctor::Check> {
        doctor::run(&self.ctx).await
    }

    /// [`Agent::doctor`] for the control socket's `/doctor`: a run costs a request to every
    /// upstream mirror and tracker, so its answer is reused for [`doctor::CACHE_TTL`] (until a
    /// reload) and concurrent callers share one run.
    pub async fn doctor_cached(&self) -> Vec<doctor::Check> {
        self.ctx.doctor.get(&self.ctx).await
    }

    /// Brings the gauges and counters kept elsewhere (upload limits, bans, the swarm) into
    /// the metrics before a scrape.
    pub fn refresh_peer_metrics(&self) {
        self.ctx.peers.refresh_metrics(&self.ctx.metrics);
    }

    /// The swarm node, when peer-to-peer is on.
    pub fn node(&self) -> Option<Node> {
        self.ctx.peers.swarm().map(|p| p.node.clone())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.ctx.metrics
    }

    pub fn is_ready(&self) -> bool {
        self.ctx.ready.load(Ordering::SeqCst)
    }

    pub fn store(&self) -> &Store {
        &self.ctx.store
    }
}

/// Background tasks that end with the agent's serve call.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for t in &self.0 {
            t.abort();
        }
    }
}
