//! The agent's Prometheus metrics (`pollen_` prefix).

use prometheus_client::encoding::{text::encode, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::sync::Arc;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub kind: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabels {
    pub source: &'static str,
}

/// Counters shared by all handlers; cheap to update from any task.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    pub requests: Family<RequestLabels, Counter>,
    pub bytes_served: Family<SourceLabels, Counter>,
    pub upstream_requests: Counter,
    pub upstream_bytes: Counter,
    pub digest_mismatch: Counter,
    pub stale_manifests: Counter,
    /// Tags whose tracker answered another digest than this node's upstream (ignored).
    pub tag_hint_mismatch: Counter,
    pub cache_bytes: Gauge,
    pub cache_entries: Gauge,
    pub cache_evictions: Counter,
    pub peer_bytes_received: Counter,
    pub peer_bytes_sent: Counter,
    pub peer_sessions_displaced: Counter,
    pub piece_verification_failures: Counter,
    pub peer_bans: Counter,
    pub banned_peers: Gauge,
    pub connected_peers: Gauge,
    pub cache_quota: Gauge,
    pub cache_disk_free: Gauge,
    pub time_to_first_byte: Family<SourceLabels, Histogram>,
    pub upstream_response: Histogram,
    pub upstream_failures: Counter,
    pub upstream_resumes: Counter,
    /// Lazy ranges answered, by where their pieces came from (`crate::lazy`).
    pub lazy_ranges: Family<SourceLabels, Counter>,
}

/// Seconds from 1 ms to about 65 s, doubling: a cached blob's first byte and a cold fetch's
/// through a slow registry both land in a bucket of their own.
fn latency_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 17)
}

fn latency_histogram() -> Histogram {
    Histogram::new(latency_buckets())
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut r = Registry::with_prefix("pollen");
        let m = Metrics {
            registry: Arc::new(Registry::default()),
            requests: Family::default(),
            bytes_served: Family::default(),
            upstream_requests: Counter::default(),
            upstream_bytes: Counter::default(),
            digest_mismatch: Counter::default(),
            stale_manifests: Counter::default(),
            tag_hint_mismatch: Counter::default(),
            cache_bytes: Gauge::default(),
            cache_entries: Gauge::default(),
            cache_evictions: Counter::default(),
            peer_bytes_received: Counter::default(),
            peer_bytes_sent: Counter::default(),
            peer_sessions_displaced: Counter::default(),
            piece_verification_failures: Counter::default(),
            peer_bans: Counter::default(),
            banned_peers: Gauge::default(),
            connected_peers: Gauge::default(),
            cache_quota: Gauge::default(),
            cache_disk_free: Gauge::default(),
            time_to_first_byte: Family::new_with_constructor(latency_histogram),
            upstream_response: latency_histogram(),
            upstream_failures: Counter::default(),
            upstream_resumes: Counter::default(),
            lazy_ranges: Family::default(),
        };
        r.register(
            "requests",
            "Client requests by kind and result",
            m.requests.clone(),
        );
        r.register(
            "served_bytes",
            "Body bytes sent to clients: from the cache, or from a fetch in progress (peers and upstream)",
            m.bytes_served.clone(),
        );
        r.register(
            "upstream_requests",
            "Requests made to upstream registries",
            m.upstream_requests.clone(),
        );
        r.register(
            "upstream_bytes",
            "Body bytes received from upstream registries",
            m.upstream_bytes.clone(),
        );
        r.register(
            "digest_mismatch",
            "Fetches whose bytes did not match their digest (nothing was stored)",
            m.digest_mismatch.clone(),
        );
        r.register(
            "stale_manifests",
            "Tag requests answered with the last known manifest because every upstream failed",
            m.stale_manifests.clone(),
        );
        r.register(
            "tag_hint_mismatch",
            "Tags whose tracker answered another digest than this node's own upstream (the upstream's was used)",
            m.tag_hint_mismatch.clone(),
        );
        r.register(
            "cache_bytes",
            "Bytes held in the content store",
            m.cache_bytes.clone(),
        );
        r.register(
            "cache_entries",
            "Objects held in the content store",
            m.cache_entries.clone(),
        );
        r.register(
            "cache_evictions",
            "Objects evicted from the content store (quota or age)",
            m.cache_evictions.clone(),
        );
        r.register(
            "peer_bytes_received",
            "Piece bytes received from peers (before verification)",
            m.peer_bytes_received.clone(),
        );
        r.register(
            "peer_bytes_sent",
            "Piece bytes sent to peers",
            m.peer_bytes_sent.clone(),
        );
        r.register(
            "peer_sessions_displaced",
            "Peer sessions turned away from a full upload queue to let in a node holding fewer upload slots elsewhere",
            m.peer_sessions_displaced.clone(),
        );
        r.register(
            "piece_verification_failures",
            "Pieces from peers that did not match their hash (dropped, sender banned)",
            m.piece_verification_failures.clone(),
        );
        r.register(
            "peer_bans",
            "Peers banned for a blob (bad piece, wrong map, protocol violation)",
            m.peer_bans.clone(),
        );
        r.register(
            "banned_peers",
            "Peer and blob bans in force now",
            m.banned_peers.clone(),
        );
        r.register(
            "connected_peers",
            "Peers with a libp2p connection now",
            m.connected_peers.clone(),
        );
        r.register(
            "cache_quota_bytes",
            "The content store's size quota (--cache-size)",
            m.cache_quota.clone(),
        );
        r.register(
            "cache_disk_free_bytes",
            "Free space on the disk holding the cache: below the quota's remaining room, the disk fills before the quota does",
            m.cache_disk_free.clone(),
        );
        r.register(
            "time_to_first_byte_seconds",
            "From a blob request to its first body byte, by source (cache, or a fetch in progress)",
            m.time_to_first_byte.clone(),
        );
        r.register(
            "upstream_response_seconds",
            "From a request to an upstream registry to its response headers (every mirror tried)",
            m.upstream_response.clone(),
        );
        r.register(
            "lazy_ranges",
            "Ranges of blobs not held whole answered from their own pieces alone, by where the pieces came from (kept: read before; peers; upstream)",
            m.lazy_ranges.clone(),
        );
        r.register(
            "upstream_failures",
            "Requests to upstream registries that got no usable answer from any mirror",
            m.upstream_failures.clone(),
        );
        r.register(
            "upstream_resumes",
            "Upstream transfers that broke off mid-body (closed, reset, or silent for the idle timeout) and were resumed with a range request",
            m.upstream_resumes.clone(),
        );
        Metrics {
            registry: Arc::new(r),
            ..m
        }
    }

    pub fn request(&self, kind: &'static str, result: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { kind, result })
            .inc();
    }

    pub fn served(&self, source: &'static str, bytes: u64) {
        self.bytes_served
            .get_or_create(&SourceLabels { source })
            .inc_by(bytes);
    }

    pub fn first_byte(&self, source: &'static str, after: std::time::Duration) {
        self.time_to_first_byte
            .get_or_create(&SourceLabels { source })
            .observe(after.as_secs_f64());
    }

    /// Prometheus text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        out
    }
}
