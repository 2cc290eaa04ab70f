//! The tracker's shared state: the membership policy (`pollen_core::tracker`, sans I/O) behind
//! one lock, fed tokio's clock (so tests drive the time-based rules — holder expiry, failover
//! grace — on a paused clock), with each member's stream writer to deliver its pushes.

pub use pollen_core::tracker::{
    BlobSummary, DEFAULT_UPSTREAM_BUDGET, FETCH_DEFER, HEADROOM, MAX_FETCHERS, MIN_SHARE,
    REJOIN_GRACE, SPLIT_WAIT,
};
use pollen_core::tracker::{Push, Sized, Swarms};
use pollen_oci::Digest;
use pollen_proto::TrackerReply;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use tokio::sync::mpsc;

/// One agent's membership in a blob's swarm, with where pushes to it go.
pub(crate) struct Member {
    pub peer: Vec<u8>,
    pub seed: bool,
    pub labels: Vec<(String, String)>,
    pub pieces: u32,
    pub busy: bool,
    /// Where pushes to this agent go (its stream's writer).
    pub tx: mpsc::UnboundedSender<TrackerReply>,
}

/// Resolves a tag for the cluster: the tracker's own node asks its upstream (or its tag
/// cache) and so holds the manifest for the others. The answer is a hint to the asking
/// nodes, which confirm the digest with their own upstream. The tracker crate knows nothing
/// of registries, so its node supplies this.
pub trait Resolver: Send + Sync + 'static {
    fn resolve<'a>(
        &'a self,
        registry: Option<&'a str>,
        name: &'a str,
        tag: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Digest, String>> + Send + 'a>>;
}

/// The other trackers, as this tracker's node sees them. Every agent is a tracker by default
/// and an agent joins the tracker rendezvous hashing ranks first among those it knows; while
/// a cluster starts, agents' lists differ for a moment, and a tracker may be asked about a
/// blob whose swarm another tracker coordinates already. Before it makes a first member the
/// fetcher, it asks the node (which knows libp2p) for such a tracker and sends the member
/// there (`Redirect`).
pub trait OtherTrackers: Send + Sync + 'static {
    /// A tracker (its peer id bytes) that has members or holders of `digest`, if one of the
    /// next trackers in this node's order does; or that is asking the same question and
    /// ranks above this one (so of two trackers asking at once, one gives way).
    fn coordinating<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Vec<u8>>> + Send + 'a>>;
}

#[derive(Default)]
struct Inner {
    swarms: Swarms,
    /// Each member's stream writer, by member id.
    writers: HashMap<u64, mpsc::UnboundedSender<TrackerReply>>,
}

impl Inner {
    fn deliver(&self, pushes: Vec<Push>) {
        for (id, reply) in pushes {
            if let Some(tx) = self.writers.get(&id) {
                let _ = tx.send(reply);
            }
        }
    }
}

/// The tracker's state, shared by every agent stream it serves.
pub struct Tracker {
    inner: Mutex<Inner>,
    resolver: OnceLock<Arc<dyn Resolver>>,
    others: OnceLock<Arc<dyn OtherTrackers>>,
    pub(crate) redirects: crate::redirect::Redirects,
}

impl Default for Tracker {
    fn default() -> Tracker {
        Tracker::new()
    }
}

/// The policy's clock: tokio's, so a paused test clock drives it.
fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl Tracker {
    /// A tracker that splits large blobs' fetches in shares of at least [`MIN_SHARE`].
    pub fn new() -> Tracker {
        Tracker::with_split_min(MIN_SHARE)
    }

    /// A tracker that splits fetches in shares of at least `split_min` bytes (0: never).
    pub fn with_split_min(split_min: u64) -> Tracker {
        Tracker::from_swarms(Swarms::new(split_min, DEFAULT_UPSTREAM_BUDGET))
    }

    /// A tracker that lets the upstream send a large blob up to `budget` times while it has
    /// headroom over the swarm (`--upstream-budget`).
    pub fn with_upstream_budget(self, budget: f64) -> Tracker {
        let mut inner = self.inner.into_inner().unwrap_or_else(|e| e.into_inner());
        inner.swarms = inner.swarms.with_upstream_budget(budget);
        Tracker {
            inner: Mutex::new(inner),
            ..Tracker::from_swarms(Swarms::default())
        }
    }

    fn from_swarms(swarms: Swarms) -> Tracker {
        Tracker {
            inner: Mutex::new(Inner {
                swarms,
                writers: HashMap::new(),
            }),
            resolver: OnceLock::new(),
            others: OnceLock::new(),
            redirects: crate::redirect::Redirects::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The node is shutting down: stop handing fetches on (its members' streams are about to
    /// close, which is not their fetchers dying; the next tracker decides).
    pub fn close(&self) {
        self.lock().swarms.close();
    }

    /// Lets this tracker resolve tags for the cluster (set once, when its node is built).
    pub fn set_resolver(&self, resolver: Arc<dyn Resolver>) {
        let _ = self.resolver.set(resolver);
    }

    pub(crate) fn resolver(&self) -> Option<Arc<dyn Resolver>> {
        self.resolver.get().cloned()
    }

    /// Lets this tracker send a blob's first member to another tracker that has the blob's
    /// swarm already (set once, when its node is built).
    pub fn set_others(&self, others: Arc<dyn OtherTrackers>) {
        let _ = self.others.set(others);
    }

    pub(crate) fn others(&self) -> Option<Arc<dyn OtherTrackers>> {
        self.others.get().cloned()
    }

    /// Registers an agent for `digest`; returns its member id, the `Assign` to send, and
    /// whether to call [`Tracker::claim_deferred`] after [`FETCH_DEFER`].
    pub(crate) fn join(
        &self,
        digest: Digest,
        member: Member,
        fetching: bool,
        rejoin: bool,
    ) -> (u64, TrackerReply, bool) {
        let Member {
            peer,
            seed,
            labels,
            pieces,
            busy,
            tx,
        } = member;
        let member = pollen_core::tracker::Member {
            peer,
            seed,
            labels,
            pieces,
            busy,
        };
        let mut inner = self.lock();
        let mut out = Vec::new();
        let joined = inner
            .swarms
            .join(now(), digest, member, fetching, rejoin, &mut out);
        inner.writers.insert(joined.id, tx);
        // Its rack-mates among the Assign's peers: pushed, so they follow the Assign.
        if !joined.near.is_empty() {
            out.push((joined.id, TrackerReply::Near { peers: joined.near }));
        }
        inner.deliver(out);
        (joined.id, joined.assign, joined.deferred)
    }

    /// A busy member's [`FETCH_DEFER`] is over: whether it must fetch after all.
    pub(crate) fn claim_deferred(&self, digest: &Digest, id: u64) -> bool {
        self.lock().swarms.claim_deferred(now(), digest, id)
    }

    /// A member's piece count.
    pub(crate) fn progress(&self, digest: &Digest, id: u64, pieces: u32) {
        let mut inner = self.lock();
        let mut out = Vec::new();
        inner.swarms.progress(now(), digest, id, pieces, &mut out);
        inner.deliver(out);
    }

    /// Whether the fetcher's `Sized` can be answered now (`Swarms::split_ready`), not after
    /// [`SPLIT_WAIT`].
    pub(crate) fn split_ready(&self, digest: &Digest, id: u64, blob: Sized) -> bool {
        self.lock().swarms.split_ready(digest, id, blob)
    }

    /// The fetcher reported the blob's size: the range it fetches (the fetch may be split).
    pub(crate) fn sized(
        &self,
        digest: &Digest,
        id: u64,
        size: u64,
        count: u32,
        ranges: bool,
    ) -> TrackerReply {
        let blob = Sized {
            size,
            count,
            ranges,
        };
        let mut inner = self.lock();
        let mut out = Vec::new();
        let reply = inner.swarms.sized(now(), digest, id, blob, &mut out);
        inner.deliver(out);
        reply
    }

    /// Removes a member; `true`: call [`Tracker::recheck`] after [`REJOIN_GRACE`].
    pub(crate) fn leave(&self, digest: &Digest, id: u64, complete: bool) -> bool {
        let mut inner = self.lock();
        inner.writers.remove(&id);
        let mut out = Vec::new();
        let orphaned = inner.swarms.leave(now(), digest, id, complete, &mut out);
        inner.deliver(out);
        orphaned
    }

    /// A fetcher's grace after its stream ended is over.
    pub(crate) fn recheck(&self, digest: &Digest) {
        let mut inner = self.lock();
        let mut out = Vec::new();
        inner.swarms.recheck(now(), digest, &mut out);
        inner.deliver(out);
    }

    /// How many members the blob has now, and how many holders are remembered.
    pub fn members_of(&self, digest: &Digest) -> (u32, u32) {
        self.lock().swarms.members_of(digest)
    }

    /// The blobs being coordinated now.
    pub fn summary(&self) -> Vec<BlobSummary> {
        self.lock().swarms.summary()
    }
}

#[cfg(test)]
#[path = "policy_tests.rs"]
mod tests;
