//! Membership and the fetch lease.
//!
//! - **Join**: an agent that is already fetching keeps the fetch; otherwise the first agent to
//!   join a blob nobody holds becomes its fetcher. Everyone else is told not to fetch and gets
//!   peers ranked: agents holding the whole blob, then the fetcher, then agents sharing its
//!   labels (zone, rack), then those holding the most pieces.
//! - **Busy fetchers wait**: an agent already fetching another blob from the upstream (its
//!   upload is busy carrying that one into the swarm) is not made the fetcher at once: the
//!   next member that is not busy gets the fetch, and if none joins within [`FETCH_DEFER`] the
//!   busy one is told to fetch after all. Each blob's new bytes then enter the swarm through
//!   a different node's upload when several blobs are pulled at once.
//! - **Rejoin**: after a tracker died, its members join the blob's next tracker. Until the
//!   fetcher is back (it rejoins saying it is fetching), nobody is made the fetcher; if it has
//!   not come back within [`REJOIN_GRACE`], the member holding the most pieces (seeds first)
//!   is told to fetch.
//! - **Leave**: an agent that leaves complete is remembered as a holder for later joiners. A
//!   fetcher that leaves without completing (failed, killed: its stream closed) hands the fetch
//!   to a remaining member, seeds first, then the one holding the most pieces, which then
//!   fetches only what is still missing.
//! - **Split**: once the fetcher knows a large blob's size, parts of it go to other members
//!   ([`split`]).

mod budget;
mod split;

pub use budget::{DEFAULT_UPSTREAM_BUDGET, HEADROOM};
use split::Share;
pub use split::{MAX_FETCHERS, MIN_SHARE, SPLIT_WAIT};

use pollen_oci::Digest;
use pollen_proto::{TrackerReply, MAX_TRACKER_PEERS};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
// tokio's clock, so tests drive time-based rules (holder expiry, failover grace) on a paused
// clock instead of sleeping.
use tokio::sync::mpsc;
use tokio::time::Instant;

/// Holders of a whole blob remembered for later joiners.
const MAX_HOLDERS: usize = MAX_TRACKER_PEERS;
/// How long a holder is named to joiners after it said it had the blob. Longer than a
/// rollout; short enough that a holder that evicted the blob long ago is forgotten.
const HOLDER_TTL: Duration = Duration::from_secs(600);
/// How long a blob whose members rejoined after a tracker failover waits for its fetcher
/// to rejoin before another member is told to fetch.
pub const REJOIN_GRACE: Duration = Duration::from_secs(2);
/// How long a busy agent (fetching another blob) waits for a member that is not busy to take
/// the fetch of a blob nobody fetches.
pub const FETCH_DEFER: Duration = Duration::from_millis(200);
/// Blobs remembered without members (only holders); the oldest are forgotten first.
const MAX_IDLE_BLOBS: usize = 65_536;
/// Peers named in one `Assign`.
const PEERS_PER_ASSIGN: usize = 16;

/// One agent's membership in a blob's swarm.
pub(crate) struct Member {
    pub peer: Vec<u8>,
    pub seed: bool,
    pub labels: Vec<(String, String)>,
    pub pieces: u32,
    /// Fetching another blob from the upstream (see [`FETCH_DEFER`]).
    pub busy: bool,
    /// Where pushes to this agent go (its stream's writer).
    pub tx: mpsc::UnboundedSender<TrackerReply>,
}

#[derive(Default)]
struct BlobSwarm {
    members: HashMap<u64, Member>,
    fetcher: Option<u64>,
    /// Agents that said they hold the whole blob, and when.
    holders: Vec<(Vec<u8>, Instant)>,
    /// Since when members rejoined without a fetcher (after a tracker failover).
    orphaned: Option<Instant>,
    /// The blob's size and pieces, once the fetcher reported them.
    size: Option<u64>,
    count: u32,
    /// When the fetch was split (rates for `--upstream-budget` count from there).
    split_at: Option<Instant>,
    boost: budget::Boost,
    /// The ranges of a split fetch (empty: the fetcher fetches it all).
    shares: Vec<Share>,
}

impl BlobSwarm {
    fn expire_holders(&mut self) {
        self.holders.retain(|(_, at)| at.elapsed() < HOLDER_TTL);
    }

    /// Makes the best member the fetcher (seeds first, then the most pieces) and tells it.
    fn hand_on(&mut self) {
        self.orphaned = None;
        let next = self
            .members
            .iter()
            .max_by_key(|(mid, m)| (m.seed, m.pieces, std::cmp::Reverse(**mid)))
            .map(|(mid, m)| (*mid, m.tx.clone()));
        if let Some((next, tx)) = next {
            self.fetcher = Some(next);
            let _ = tx.send(TrackerReply::Fetch);
        }
    }

    /// A failover's grace is over and the fetcher never came back: hand the fetch on.
    fn check_orphan(&mut self) {
        if self.fetcher.is_none()
            && self.holders.is_empty()
            && self.orphaned.is_some_and(|t| t.elapsed() >= REJOIN_GRACE)
        {
            self.hand_on();
        }
    }
}

/// What a tracker knows about one blob, for status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobSummary {
    pub digest: Digest,
    pub members: usize,
    pub holders: usize,
    pub fetching: bool,
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

/// The tracker's state, shared by every agent stream it serves.
#[derive(Default)]
pub struct Tracker {
    blobs: Mutex<HashMap<Digest, BlobSwarm>>,
    /// Set when the tracker's node shuts down: its members' streams are about to close, which
    /// is not their fetchers dying, so no fetch is handed on (the next tracker decides).
    closing: std::sync::atomic::AtomicBool,
    next_id: std::sync::atomic::AtomicU64,
    resolver: std::sync::OnceLock<std::sync::Arc<dyn Resolver>>,
    others: std::sync::OnceLock<std::sync::Arc<dyn OtherTrackers>>,
    pub(crate) redirects: crate::redirect::Redirects,
    /// The smallest share of a split fetch; 0: never split.
    split_min: u64,
    /// The most the upstream may send of a blob, in copies of it (at most 1: only the split).
    upstream_budget: f64,
}

impl Tracker {
    /// A tracker that splits large blobs' fetches in shares of at least [`MIN_SHARE`].
    pub fn new() -> Tracker {
        Tracker::with_split_min(MIN_SHARE)
    }

    /// A tracker that splits fetches in shares of at least `split_min` bytes (0: never).
    pub fn with_split_min(split_min: u64) -> Tracker {
        Tracker {
            split_min,
            ..Tracker::default()
        }
    }

    /// A tracker that lets the upstream send a large blob up to `budget` times while it has
    /// headroom over the swarm (`--upstream-budget`; `budget::boost`).
    pub fn with_upstream_budget(self, budget: f64) -> Tracker {
        Tracker {
            upstream_budget: budget,
            ..self
        }
    }

    /// The node is shutting down: stop handing fetches on (see the field).
    pub fn close(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Lets this tracker resolve tags for the cluster (set once, when its node is built).
    pub fn set_resolver(&self, resolver: std::sync::Arc<dyn Resolver>) {
        let _ = self.resolver.set(resolver);
    }

    pub(crate) fn resolver(&self) -> Option<std::sync::Arc<dyn Resolver>> {
        self.resolver.get().cloned()
    }

    /// Lets this tracker send a blob's first member to another tracker that has the blob's
    /// swarm already (set once, when its node is built).
    pub fn set_others(&self, others: std::sync::Arc<dyn OtherTrackers>) {
        let _ = self.others.set(others);
    }

    pub(crate) fn others(&self) -> Option<std::sync::Arc<dyn OtherTrackers>> {
        self.others.get().cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, BlobSwarm>> {
        self.blobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers an agent for `digest`; returns its member id and the `Assign` to send.
    pub(crate) fn join(
        &self,
        digest: Digest,
        member: Member,
        fetching: bool,
        rejoin: bool,
    ) -> (u64, TrackerReply, bool) {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut blobs = self.lock();
        // Busy also when this tracker already has it fetching another blob (it knows that
        // before the agent's own transfer has started).
        let fetching_another = blobs
            .iter()
            .any(|(d, s)| *d != digest && s.fetching_members().any(|f| f.peer == member.peer));
        let busy = member.busy || fetching_another;
        let swarm = blobs.entry(digest).or_default();
        swarm.expire_holders();
        if rejoin && swarm.fetcher.is_none() {
            swarm.orphaned.get_or_insert_with(Instant::now);
        }
        swarm.check_orphan();
        let fetch = if fetching {
            // The fetcher itself on a new stream (its old one may not have ended here yet)
            // takes its place back; another member fetching goes on beside it.
            let same = swarm.fetcher.and_then(|f| swarm.members.get(&f));
            if swarm.fetcher.is_none() || same.is_some_and(|m| m.peer == member.peer) {
                swarm.fetcher = Some(id);
            }
            swarm.orphaned = None;
            true
        } else if swarm.fetcher.is_none()
            && swarm.holders.is_empty()
            && swarm.orphaned.is_none()
            && !busy
        {
            swarm.fetcher = Some(id);
            true
        } else {
            false
        };
        let peers = rank(swarm, &member);
        // Tell the members already downloading about the newcomer: nodes that start together
        // trade pieces with each other, not only with the fetcher (docs/tracker.md).
        for (mid, m) in &swarm.members {
            if swarm.fetcher != Some(*mid) {
                let _ = m.tx.send(TrackerReply::Peers {
                    peers: vec![member.peer.clone()],
                });
            }
        }
        let deferred = busy && !fetch && swarm.fetcher.is_none() && swarm.holders.is_empty();
        swarm.count_rate(id, member.pieces, Instant::now());
        swarm.members.insert(id, member);
        (id, TrackerReply::Assign { fetch, peers }, deferred)
    }

    /// A busy member's [`FETCH_DEFER`] is over: whether it must fetch the blob after all (no
    /// one else took the fetch and nobody holds the blob). The caller tells it.
    pub(crate) fn claim_deferred(&self, digest: &Digest, id: u64) -> bool {
        let mut blobs = self.lock();
        let Some(swarm) = blobs.get_mut(digest) else {
            return false;
        };
        swarm.expire_holders();
        if swarm.fetcher.is_none()
            && swarm.holders.is_empty()
            && swarm.orphaned.is_none()
            && swarm.members.contains_key(&id)
        {
            swarm.fetcher = Some(id);
            return true;
        }
        false
    }

    /// A member's piece count (sent at least every few seconds: also the tracker's clock for
    /// a failover's grace).
    pub(crate) fn progress(&self, digest: &Digest, id: u64, pieces: u32) {
        let mut blobs = self.lock();
        let Some(swarm) = blobs.get_mut(digest) else {
            return;
        };
        if let Some(m) = swarm.members.get_mut(&id) {
            m.pieces = pieces;
        }
        swarm.check_orphan();
        let now = Instant::now();
        swarm.reported(id, pieces, now);
        swarm.boost(self.upstream_budget, now);
    }

    /// Removes a member. A fetcher leaving unfinished keeps the fetch for [`REJOIN_GRACE`]:
    /// its stream may have died with a replaced connection while it goes on fetching, and it
    /// joins again saying so; a member made the fetcher meanwhile would fetch the blob a second
    /// time (measured: 1.65 x egress in 1 of 100 start-ups). Returns `true` then: the caller
    /// calls [`Tracker::recheck`] after the grace, which hands the fetch on if it did not.
    pub(crate) fn leave(&self, digest: &Digest, id: u64, complete: bool) -> bool {
        let mut blobs = self.lock();
        let Some(swarm) = blobs.get_mut(digest) else {
            return false;
        };
        let Some(member) = swarm.members.remove(&id) else {
            return false;
        };
        swarm.forget_rate(id);
        if complete {
            swarm.holders.retain(|(p, _)| *p != member.peer);
            if swarm.holders.len() >= MAX_HOLDERS {
                swarm.holders.remove(0);
            }
            swarm.holders.push((member.peer, Instant::now()));
        }
        if complete {
            swarm.shares.iter_mut().for_each(|s| s.owner = None);
        }
        let handed = !complete && !self.is_closing() && swarm.hand_on_shares(id);
        let mut orphaned = false;
        if swarm.fetcher == Some(id) && !handed {
            swarm.fetcher = None;
            if !complete && swarm.holders.is_empty() && !self.is_closing() {
                swarm.orphaned = Some(Instant::now());
                orphaned = true;
            }
        }
        swarm.expire_holders();
        if swarm.members.is_empty() && swarm.holders.is_empty() && !orphaned {
            blobs.remove(digest);
        }
        forget_idle(&mut blobs);
        orphaned
    }

    /// A fetcher's grace after its stream ended is over: if it has not joined again, the
    /// best member is told to fetch (see [`Tracker::leave`]).
    pub(crate) fn recheck(&self, digest: &Digest) {
        let mut blobs = self.lock();
        if let Some(swarm) = blobs.get_mut(digest) {
            swarm.check_orphan();
            if swarm.members.is_empty() && swarm.holders.is_empty() && swarm.fetcher.is_none() {
                blobs.remove(digest);
            }
        }
    }

    /// How many members the blob has now, and how many holders are remembered.
    pub fn members_of(&self, digest: &Digest) -> (u32, u32) {
        self.lock().get(digest).map_or((0, 0), |s| {
            let n = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
            (n(s.members.len()), n(s.holders.len()))
        })
    }

    /// The blobs being coordinated now.
    pub fn summary(&self) -> Vec<BlobSummary> {
        let mut out: Vec<_> = self
            .lock()
            .iter()
            .map(|(d, s)| BlobSummary {
                digest: *d,
                members: s.members.len(),
                holders: s.holders.len(),
                fetching: s.fetcher.is_some(),
            })
            .collect();
        out.sort_by_key(|s| s.digest);
        out
    }
}

/// Keeps the blobs remembered only for their holders under [`MAX_IDLE_BLOBS`], forgetting
/// those whose newest holder is oldest.
fn forget_idle(blobs: &mut HashMap<Digest, BlobSwarm>) {
    let idle = || blobs.values().filter(|s| s.members.is_empty()).count();
    if idle() <= MAX_IDLE_BLOBS {
        return;
    }
    let mut by_age: Vec<(Instant, Digest)> = blobs
        .iter()
        .filter(|(_, s)| s.members.is_empty())
        .map(|(d, s)| {
            (
                s.holders
                    .iter()
                    .map(|(_, at)| *at)
                    .max()
                    .unwrap_or_else(Instant::now),
                *d,
            )
        })
        .collect();
    by_age.sort();
    let excess = by_age.len() - MAX_IDLE_BLOBS;
    for (_, d) in by_age.into_iter().take(excess) {
        blobs.remove(&d);
    }
}

/// Peers for a newcomer, best first (see the module docs), never the newcomer itself.
fn rank(swarm: &BlobSwarm, newcomer: &Member) -> Vec<Vec<u8>> {
    let shared = |m: &Member| {
        m.labels
            .iter()
            .filter(|l| newcomer.labels.contains(l))
            .count()
    };
    let mut members: Vec<(u8, usize, u32, &Vec<u8>)> = swarm
        .members
        .iter()
        .filter(|(_, m)| m.peer != newcomer.peer)
        .map(|(id, m)| {
            let fetching =
                swarm.fetcher == Some(*id) || swarm.shares.iter().any(|s| s.owner == Some(*id));
            let class = if fetching { 1 } else { 2 };
            (class, usize::MAX - shared(m), u32::MAX - m.pieces, &m.peer)
        })
        .collect();
    members.sort();
    let mut out: Vec<Vec<u8>> = swarm
        .holders
        .iter()
        .rev()
        .map(|(p, _)| p)
        .filter(|p| **p != newcomer.peer)
        .cloned()
        .collect();
    for (_, _, _, p) in members {
        if !out.contains(p) {
            out.push(p.clone());
        }
    }
    out.truncate(PEERS_PER_ASSIGN);
    out
}

#[cfg(test)]
mod tests;
