//! What the swarm counts for `pollen status` and metrics: the event loop updates the
//! counters, the handle reads them without asking the loop.

use std::sync::atomic::AtomicUsize;

/// Counters for `pollen status` and metrics, read without asking the event loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    /// Peers we have at least one connection to.
    pub connected_peers: usize,
    /// Peers in the Kademlia routing table (known and recently reachable).
    pub routing_table_peers: usize,
    /// Blobs this node announces as provider.
    pub provided_blobs: usize,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub connected_peers: AtomicUsize,
    pub routing_table_peers: AtomicUsize,
    pub provided_blobs: AtomicUsize,
}
