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
mod range;
mod request;

pub use admin::serve_admin;
pub use metrics::Metrics;

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
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            upstream: UpstreamConfig::default(),
            tag_ttl: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            header_read_timeout: Duration::from_secs(30),
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
    pub fn new(cfg: AgentConfig, store: Store) -> Result<Agent, AgentError> {
        let upstream =
            Upstream::new(cfg.upstream.clone()).map_err(|e| AgentError::Tls(e.to_string()))?;
        let metrics = Metrics::new();
        Ok(Agent {
            ctx: Arc::new(Ctx {
                manifests: manifests::Manifests::default(),
                cfg,
                store,
                upstream,
                blobs: DashMap::new(),
                metrics,
                ready: AtomicBool::new(false),
            }),
        })
    }

    /// Serves the mirror API on `listener` until the task is dropped.
    pub async fn serve(&self, listener: tokio::net::TcpListener) {
        self.ctx.ready.store(true, Ordering::SeqCst);
        http::serve(self.ctx.clone(), listener).await
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
