//! The upstream as the agent's fetches see it: one client with its configuration, swapped
//! whole by a reload (SIGHUP), so a request sees either the old configuration or the new one;
//! and every request counted and timed on its way.

use crate::metrics::Metrics;
use pollen_upstream::{FetchRequest, Upstream, UpstreamError, UpstreamResponse};
use std::sync::{Arc, RwLock};

pub(crate) struct Origin {
    current: RwLock<Arc<Upstream>>,
    metrics: Metrics,
}

impl Origin {
    pub fn new(upstream: Upstream, metrics: Metrics) -> Origin {
        Origin {
            current: RwLock::new(Arc::new(upstream)),
            metrics,
        }
    }

    /// The upstream client and its configuration (routes, mirrors, credentials, timeouts) as
    /// of now.
    pub fn current(&self) -> Arc<Upstream> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// A reload's new client: requests in progress finish with the old one.
    pub fn replace(&self, fresh: Upstream) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
    }

    /// A transfer broke off mid-body and is resumed with a range request.
    pub fn count_resume(&self) {
        self.metrics.upstream_resumes.inc();
    }

    /// Every request to an upstream goes through here: counted, timed to its headers, and
    /// counted again when no mirror gave a usable answer.
    pub async fn fetch(&self, req: &FetchRequest<'_>) -> Result<UpstreamResponse, UpstreamError> {
        self.metrics.upstream_requests.inc();
        let started = tokio::time::Instant::now();
        let result = self.current().fetch(req).await;
        self.metrics
            .upstream_response
            .observe(started.elapsed().as_secs_f64());
        if result.as_ref().map_or(true, |r| r.status.is_server_error()) {
            self.metrics.upstream_failures.inc();
        }
        result
    }
}
