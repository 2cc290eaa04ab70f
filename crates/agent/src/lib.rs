//! The node agent: an OCI Distribution pull API in front of the upstream registries.
//!
//! Requests are parsed strictly ([`request`]), content by digest is served from the local
//! store when present, and otherwise fetched once from the upstream however many clients ask
//! at the same time ([`blobs`], [`manifests`]). Clients get the bytes of a blob as they arrive,
//! read back from the file being written ([`follow`]), and never the last byte of content
//! whose digest did not verify.

mod admin;
mod blobs;
mod error;
mod flight;
mod follow;
mod http;
mod manifests;
mod metrics;
mod p2p;
mod preheat;
mod private;
mod range;
mod request;
mod sink;
mod status;

pub use admin::serve_admin;
pub use metrics::Metrics;
pub use p2p::{
    P2pConfig, DEFAULT_BAN_DURATION, DEFAULT_MAX_PEERS_PER_BLOB, DEFAULT_PEER_STALL,
    DEFAULT_REQUEST_TIMEOUT,
};
pub use pollen_swarm::Node;
pub use preheat::{PreheatEvent, PreheatSpec};
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
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            upstream: UpstreamConfig::default(),
            tag_ttl: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(30),
            p2p: P2pConfig::default(),
        }
    }
}

/// The shared context every request handler works with.
pub(crate) struct Ctx {
    cfg: AgentConfig,
    store: Store,
    upstream: Upstream,
    blobs: DashMap<Digest, Arc<blobs::Inflight>>,
    manifests: manifests::Manifests,
    metrics: Metrics,
    ready: AtomicBool,
    /// The swarm, when peer-to-peer is on.
    p2p: Option<p2p::P2p>,
    /// Content fetched with a client's own credentials: never shared with peers.
    private: private::Private,
    /// Set once by [`Agent::shutdown`]: downloads checkpoint what they have and stop.
    stopping: tokio::sync::watch::Sender<bool>,
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

impl Agent {
    /// An agent over `store`; with a `swarm` it shares pieces with other agents and
    /// downloads from them first, without one it is a single-node mirror.
    pub fn new(cfg: AgentConfig, store: Store, swarm: Option<Node>) -> Result<Agent, AgentError> {
        let upstream =
            Upstream::new(cfg.upstream.clone()).map_err(|e| AgentError::Tls(e.to_string()))?;
        let metrics = Metrics::new();
        let agent = Agent {
            ctx: Arc::new(Ctx {
                manifests: manifests::Manifests::default(),
                p2p: swarm.map(|node| p2p::P2p::new(node, cfg.p2p.clone())),
                stopping: tokio::sync::watch::channel(false).0,
                private: private::Private::load(store.root()),
                cfg,
                store,
                upstream,
                blobs: DashMap::new(),
                metrics,
                ready: AtomicBool::new(false),
            }),
        };
        if let Some(t) = agent.ctx.p2p.as_ref().and_then(|p| p.tracker.as_ref()) {
            t.set_resolver(Arc::new(p2p::tracker::TagResolver(Arc::downgrade(
                &agent.ctx,
            ))));
        }
        Ok(agent)
    }

    /// Serves the mirror API on `listener`, and pieces to peers, until the task is dropped.
    pub async fn serve(&self, listener: tokio::net::TcpListener) {
        let peers = (self.ctx.p2p.is_some()).then(|| {
            let accept = tokio::spawn(p2p::accept_loop(self.ctx.clone()));
            let reconcile = tokio::spawn(p2p::reconcile_loop(self.ctx.clone()));
            let tracker = tokio::spawn(p2p::tracker_loop(self.ctx.clone()));
            let preheat = tokio::spawn(preheat::serve_loop(self.ctx.clone()));
            AbortOnDrop(vec![accept, reconcile, tracker, preheat])
        });
        self.ctx.ready.store(true, Ordering::SeqCst);
        http::serve(self.ctx.clone(), listener).await;
        drop(peers);
    }

    /// Stops gracefully: every download in flight records its verified pieces (so a restart
    /// resumes there) and ends; then the swarm stops. Returns when done, or after `deadline`.
    pub async fn shutdown(&self, deadline: Duration) {
        self.ctx.ready.store(false, Ordering::SeqCst);
        if let Some(tracker) = self.ctx.p2p.as_ref().and_then(|p| p.tracker.as_ref()) {
            // Members' streams close with this node: not their fetchers dying.
            tracker.close();
        }
        self.ctx.stopping.send_replace(true);
        let until = tokio::time::Instant::now() + deadline;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !self.ctx.blobs.is_empty() && tokio::time::Instant::now() < until {
            tick.tick().await;
        }
        if let Some(p2p) = &self.ctx.p2p {
            let _ = p2p.node.shutdown().await;
        }
    }

    /// Preheats an image on the seeds (or every agent): see [`PreheatSpec`]. Progress arrives
    /// on the channel, ending with `Finished` or `Failed`.
    pub fn preheat(&self, spec: PreheatSpec) -> tokio::sync::mpsc::Receiver<PreheatEvent> {
        preheat::start(self.ctx.clone(), spec)
    }

    /// What this node is doing, for `pollen status`.
    pub async fn status(&self) -> Status {
        status::collect(&self.ctx).await
    }

    /// Brings the gauges and counters kept elsewhere (upload limits, bans, the swarm) into
    /// the metrics before a scrape.
    pub fn refresh_peer_metrics(&self) {
        let (Some(p2p), m) = (&self.ctx.p2p, &self.ctx.metrics) else {
            return;
        };
        let sent = p2p.uploads.bytes_sent();
        m.peer_bytes_sent
            .inc_by(sent.saturating_sub(m.peer_bytes_sent.get()));
        m.banned_peers.set(p2p.bans.active() as i64);
        m.connected_peers
            .set(p2p.node.stats().connected_peers as i64);
    }

    /// The swarm node, when peer-to-peer is on.
    pub fn node(&self) -> Option<&Node> {
        self.ctx.p2p.as_ref().map(|p| &p.node)
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
