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
/// cache). The tracker crate knows nothing of registries, so its node supplies this.
pub trait Resolver: Send + Sync + 'static {
    fn resolve<'a>(
        &'a self,
        registry: Option<&'a str>,
        name: &'a str,
        tag: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Digest, String>> + Send + 'a>>;
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
}

impl Tracker {
    pub fn new() -> Tracker {
        Tracker::default()
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
        let fetching_another = blobs.iter().any(|(d, s)| {
            *d != digest
                && s.fetcher
                    .and_then(|f| s.members.get(&f))
                    .is_some_and(|f| f.peer == member.peer)
        });
        let busy = member.busy || fetching_another;
        let swarm = blobs.entry(digest).or_default();
        swarm.expire_holders();
        if rejoin && swarm.fetcher.is_none() {
            swarm.orphaned.get_or_insert_with(Instant::now);
        }
        swarm.check_orphan();
        let fetch = if fetching {
            swarm.fetcher.get_or_insert(id);
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
    }

    /// Removes a member; a fetcher leaving unfinished hands the fetch on.
    pub(crate) fn leave(&self, digest: &Digest, id: u64, complete: bool) {
        let mut blobs = self.lock();
        let Some(swarm) = blobs.get_mut(digest) else {
            return;
        };
        let Some(member) = swarm.members.remove(&id) else {
            return;
        };
        if complete {
            swarm.holders.retain(|(p, _)| *p != member.peer);
            if swarm.holders.len() >= MAX_HOLDERS {
                swarm.holders.remove(0);
            }
            swarm.holders.push((member.peer, Instant::now()));
        }
        if swarm.fetcher == Some(id) {
            swarm.fetcher = None;
            if !complete && swarm.holders.is_empty() && !self.is_closing() {
                swarm.hand_on();
            }
        }
        swarm.expire_holders();
        if swarm.members.is_empty() && swarm.holders.is_empty() {
            blobs.remove(digest);
        }
        forget_idle(&mut blobs);
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
            let class = if swarm.fetcher == Some(*id) { 1 } else { 2 };
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
mod tests {
    use super::*;

    fn member(peer: u8, seed: bool, zone: &str) -> (Member, mpsc::UnboundedReceiver<TrackerReply>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (
            Member {
                peer: vec![peer],
                seed,
                labels: vec![("zone".into(), zone.into())],
                pieces: 0,
                busy: false,
                tx,
            },
            rx,
        )
    }

    #[test]
    fn a_busy_member_leaves_the_fetch_to_one_that_is_not_and_claims_it_when_none_comes() {
        let t = Tracker::new();
        let d = Digest::of(b"busy");
        let (mut a, _ra) = member(1, false, "z");
        a.busy = true;
        let (id_a, r, _) = t.join(d, a, false, false);
        assert!(!assign(r).0, "busy: not the fetcher at once");
        let (b, _rb) = member(2, false, "z");
        let (_, r, _) = t.join(d, b, false, false);
        assert!(assign(r).0, "the first member that is not busy fetches");
        // b fetches d: joining another blob, the tracker counts it busy itself.
        let (b2, _rb2) = member(2, false, "z");
        let (_, r, deferred) = t.join(Digest::of(b"other"), b2, false, false);
        assert!(
            !assign(r).0 && deferred,
            "fetching one blob here: not another at once"
        );
        assert!(!t.claim_deferred(&d, id_a), "the fetch is taken");

        let d2 = Digest::of(b"alone");
        let (mut c, _rc) = member(3, false, "z");
        c.busy = true;
        let (id_c, r, _) = t.join(d2, c, false, false);
        assert!(!assign(r).0);
        assert!(
            t.claim_deferred(&d2, id_c),
            "nobody else came: the busy one fetches"
        );
        assert!(!t.claim_deferred(&d2, id_c), "once");
    }

    /// Whether a `Fetch` was pushed (the `Peers` pushes about newcomers are skipped).
    fn told_to_fetch(rx: &mut mpsc::UnboundedReceiver<TrackerReply>) -> bool {
        std::iter::from_fn(|| rx.try_recv().ok()).any(|r| r == TrackerReply::Fetch)
    }

    #[test]
    fn a_closing_tracker_hands_no_fetch_on() {
        let t = Tracker::new();
        let d = Digest::of(b"closing");
        let (f, _rf) = member(1, false, "z");
        let (id_f, r, _) = t.join(d, f, false, false);
        assert!(assign(r).0);
        let (m, mut rm) = member(2, false, "z");
        t.join(d, m, false, false);
        t.close();
        // The node shuts down: the fetcher's stream closes first, but it did not die.
        t.leave(&d, id_f, false);
        assert!(
            !told_to_fetch(&mut rm),
            "the next tracker decides, not a closing one"
        );
    }

    fn assign(r: TrackerReply) -> (bool, Vec<Vec<u8>>) {
        match r {
            TrackerReply::Assign { fetch, peers } => (fetch, peers),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn first_joiner_fetches_and_later_ones_are_pointed_at_it() {
        let t = Tracker::new();
        let d = Digest::of(b"blob");
        let (a, _ra) = member(1, false, "x");
        let (id_a, r, _) = t.join(d, a, false, false);
        assert_eq!(assign(r), (true, vec![]));
        let (b, _rb) = member(2, false, "y");
        let (_, r, _) = t.join(d, b, false, false);
        assert_eq!(assign(r), (false, vec![vec![1]]));
        let (c, _rc) = member(3, false, "y");
        t.progress(&d, id_a, 5);
        let (_, r, _) = t.join(d, c, false, false);
        assert_eq!(
            assign(r).1,
            vec![vec![1], vec![2]],
            "fetcher first, then same zone"
        );
        assert_eq!(t.summary()[0].members, 3);
    }

    #[test]
    fn a_fetcher_that_dies_hands_the_fetch_to_a_seed_first() {
        let t = Tracker::new();
        let d = Digest::of(b"blob");
        let (a, _ra) = member(1, false, "x");
        let (id_a, _, _) = t.join(d, a, false, false);
        let (b, mut rb) = member(2, false, "x");
        let (id_b, _, _) = t.join(d, b, false, false);
        t.progress(&d, id_b, 50);
        let (s, mut rs) = member(3, true, "x");
        t.join(d, s, false, false);
        t.leave(&d, id_a, false);
        assert!(told_to_fetch(&mut rs), "the seed takes over");
        assert!(!told_to_fetch(&mut rb));
        assert!(t.summary()[0].fetching);
    }

    #[test]
    fn a_complete_fetcher_needs_no_successor_and_is_named_to_latecomers() {
        let t = Tracker::new();
        let d = Digest::of(b"blob");
        let (a, _ra) = member(1, false, "x");
        let (id_a, _, _) = t.join(d, a, false, false);
        let (b, mut rb) = member(2, false, "x");
        t.join(d, b, false, false);
        t.leave(&d, id_a, true);
        assert!(!told_to_fetch(&mut rb), "nobody is told to fetch");
        let (c, _rc) = member(3, false, "x");
        let (_, r, _) = t.join(d, c, false, false);
        assert_eq!(assign(r), (false, vec![vec![1], vec![2]]));
    }

    #[test]
    fn a_member_already_fetching_keeps_the_fetch_after_a_tracker_change() {
        let t = Tracker::new();
        let d = Digest::of(b"blob");
        let (b, _rb) = member(2, false, "x");
        let (_, r, _) = t.join(d, b, false, false);
        assert!(assign(r).0);
        let (a, _ra) = member(1, false, "x");
        let (_, r, _) = t.join(d, a, true, false);
        assert!(assign(r).0, "it is fetching already; it goes on");
    }

    #[test]
    fn state_is_dropped_when_the_last_member_leaves_without_it() {
        let t = Tracker::new();
        let d = Digest::of(b"blob");
        let (a, _ra) = member(1, false, "x");
        let (id, _, _) = t.join(d, a, false, false);
        t.leave(&d, id, false);
        assert!(t.summary().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn rejoining_members_wait_for_the_fetcher_then_one_takes_over() {
        let t = Tracker::new();
        let d = Digest::of(b"blob");
        let (a, mut ra) = member(1, false, "x");
        let (_, r, _) = t.join(d, a, false, true);
        assert!(!assign(r).0, "a rejoining member is not made the fetcher");
        let (b, _rb) = member(2, false, "x");
        let (_, r, _) = t.join(d, b, false, false);
        assert!(!assign(r).0, "nor a newcomer during the grace");
        let (f, _rf) = member(3, false, "x");
        let (_, r, _) = t.join(d, f, true, true);
        assert!(assign(r).0, "the fetcher is back and keeps its job");
        assert!(!told_to_fetch(&mut ra));

        // Another blob whose fetcher never comes back.
        let d2 = Digest::of(b"other");
        let (a, mut ra) = member(1, false, "x");
        let (id_a, _, _) = t.join(d2, a, false, true);
        t.progress(&d2, id_a, 3);
        assert!(!told_to_fetch(&mut ra), "still within the grace");
        tokio::time::advance(REJOIN_GRACE).await;
        t.progress(&d2, id_a, 3);
        assert!(told_to_fetch(&mut ra));
    }

    #[test]
    fn members_hear_of_newcomers_but_the_fetcher_does_not() {
        let t = Tracker::new();
        let d = Digest::of(b"blob");
        let (f, mut rf) = member(1, false, "x");
        t.join(d, f, false, false);
        let (a, mut ra) = member(2, false, "x");
        t.join(d, a, false, false);
        let (b, _rb) = member(3, false, "x");
        t.join(d, b, false, false);
        assert_eq!(
            ra.try_recv().ok(),
            Some(TrackerReply::Peers {
                peers: vec![vec![3]]
            })
        );
        assert!(rf.try_recv().is_err());
    }

    #[test]
    fn holders_are_remembered_after_everyone_left() {
        let t = Tracker::new();
        let d = Digest::of(b"blob");
        let (a, _ra) = member(1, false, "x");
        let (id, _, _) = t.join(d, a, false, false);
        t.leave(&d, id, true);
        let (b, _rb) = member(2, false, "x");
        let (_, r, _) = t.join(d, b, false, false);
        assert_eq!(
            assign(r),
            (false, vec![vec![1]]),
            "no second upstream fetch"
        );
    }
}
