//! A tracker's membership and the fetch lease, as a state machine: the tracker's streams feed
//! it joins, progress reports, sizes and leaves with the time they happened, and it answers
//! with the replies to send — the direct answer as a return value, messages to other members
//! as [`Push`]es — and with what to wait for (`deferred`, `orphaned`: the caller calls back
//! after [`FETCH_DEFER`] or [`REJOIN_GRACE`]).
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
pub use split::{Sized, MAX_FETCHERS, MIN_SHARE, SPLIT_WAIT};

use pollen_oci::Digest;
use pollen_proto::{TrackerReply, MAX_TRACKER_PEERS};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

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
/// How many of the members already there hear of a newcomer (`Peers`), the most recent
/// joiners first (they know the fewest peers); 0: all of them. Told to all, a swarm's joins
/// cost the tracker N² messages: at 300 nodes 35 messages per node per second against 5.5 with
/// 8, for the same completion times (pollen-sim), and the rate grew with N. 16 keeps every
/// member of a swarm up to 17 nodes told, as before.
pub const NEWCOMER_FANOUT: usize = 16;

/// One agent's membership in a blob's swarm.
pub struct Member {
    pub peer: Vec<u8>,
    pub seed: bool,
    pub labels: Vec<(String, String)>,
    pub pieces: u32,
    /// Fetching another blob from the upstream (see [`FETCH_DEFER`]).
    pub busy: bool,
}

/// A message for a member other than the one whose event produced it (a newcomer named to
/// the others, a fetch handed on): the caller writes it to that member's stream.
pub type Push = (u64, TrackerReply);

#[derive(Default)]
struct BlobSwarm {
    /// Ordered by id: the order reaches decisions (ties, the order of pushes).
    members: BTreeMap<u64, Member>,
    fetcher: Option<u64>,
    /// Agents that said they hold the whole blob, when, and their rack label (to mark them
    /// `Near` when named).
    holders: Vec<(Vec<u8>, Instant, Option<String>)>,
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
    fn expire_holders(&mut self, now: Instant) {
        self.holders
            .retain(|(_, at, _)| now.saturating_duration_since(*at) < HOLDER_TTL);
    }

    /// Makes the best member the fetcher (seeds first, then the most pieces) and tells it.
    fn hand_on(&mut self, out: &mut Vec<Push>) {
        self.orphaned = None;
        let next = self
            .members
            .iter()
            .max_by_key(|(mid, m)| (m.seed, m.pieces, std::cmp::Reverse(**mid)))
            .map(|(mid, _)| *mid);
        if let Some(next) = next {
            self.fetcher = Some(next);
            out.push((next, TrackerReply::Fetch));
        }
    }

    /// A failover's grace is over and the fetcher never came back: hand the fetch on.
    fn check_orphan(&mut self, now: Instant, out: &mut Vec<Push>) {
        if self.fetcher.is_none()
            && self.holders.is_empty()
            && self
                .orphaned
                .is_some_and(|t| now.saturating_duration_since(t) >= REJOIN_GRACE)
        {
            self.hand_on(out);
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

/// What a join answers.
#[derive(Clone, Debug, PartialEq)]
pub struct Joined {
    /// The member's id in this tracker, for its later events.
    pub id: u64,
    /// The `Assign` for the member itself.
    pub assign: TrackerReply,
    /// Of the `Assign`'s peers, those in the member's rack (`TrackerReply::Near`).
    pub near: Vec<Vec<u8>>,
    /// The member is busy and nobody fetches: call [`Swarms::claim_deferred`] after
    /// [`FETCH_DEFER`].
    pub deferred: bool,
}

/// Every blob a tracker coordinates.
#[derive(Default)]
pub struct Swarms {
    blobs: HashMap<Digest, BlobSwarm>,
    /// Set when the tracker's node shuts down: its members' streams are about to close, which
    /// is not their fetchers dying, so no fetch is handed on (the next tracker decides).
    closing: bool,
    next_id: u64,
    /// The smallest share of a split fetch; 0: never split.
    split_min: u64,
    /// The most the upstream may send of a blob, in copies of it (at most 1: only the split).
    upstream_budget: f64,
    /// See [`NEWCOMER_FANOUT`].
    newcomer_fanout: usize,
}

impl Swarms {
    /// A tracker that splits fetches in shares of at least `split_min` bytes (0: never;
    /// [`MIN_SHARE`] by default) and lets the upstream send a large blob up to
    /// `upstream_budget` times while it has headroom over the swarm (`budget::boost`).
    pub fn new(split_min: u64, upstream_budget: f64) -> Swarms {
        Swarms {
            split_min,
            upstream_budget,
            newcomer_fanout: NEWCOMER_FANOUT,
            ..Swarms::default()
        }
    }

    /// The same policy with another upstream budget.
    pub fn with_upstream_budget(self, upstream_budget: f64) -> Swarms {
        Swarms {
            upstream_budget,
            ..self
        }
    }

    /// The same policy naming a newcomer to at most `fanout` members (0: all).
    pub fn with_newcomer_fanout(self, newcomer_fanout: usize) -> Swarms {
        Swarms {
            newcomer_fanout,
            ..self
        }
    }

    /// The node is shutting down: stop handing fetches on (see the field).
    pub fn close(&mut self) {
        self.closing = true;
    }

    /// Registers an agent for `digest`: its id, its `Assign`, and whether to call back after
    /// [`FETCH_DEFER`]. Pushes for the other members go to `out`.
    pub fn join(
        &mut self,
        now: Instant,
        digest: Digest,
        member: Member,
        fetching: bool,
        rejoin: bool,
        out: &mut Vec<Push>,
    ) -> Joined {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        // Busy also when this tracker already has it fetching another blob (it knows that
        // before the agent's own transfer has started).
        let fetching_another = self
            .blobs
            .iter()
            .any(|(d, s)| *d != digest && s.fetching_members().any(|f| f.peer == member.peer));
        let busy = member.busy || fetching_another;
        let swarm = self.blobs.entry(digest).or_default();
        swarm.expire_holders(now);
        if rejoin && swarm.fetcher.is_none() {
            swarm.orphaned.get_or_insert(now);
        }
        swarm.check_orphan(now, out);
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
        let (peers, near) = rank(swarm, &member);
        tell_members(swarm, &member, self.newcomer_fanout, out);
        let deferred = busy && !fetch && swarm.fetcher.is_none() && swarm.holders.is_empty();
        swarm.count_rate(id, member.pieces, now);
        swarm.members.insert(id, member);
        Joined {
            id,
            assign: TrackerReply::Assign { fetch, peers },
            near,
            deferred,
        }
    }

    /// A busy member's [`FETCH_DEFER`] is over: whether it must fetch the blob after all (no
    /// one else took the fetch and nobody holds the blob). The caller tells it.
    pub fn claim_deferred(&mut self, now: Instant, digest: &Digest, id: u64) -> bool {
        let Some(swarm) = self.blobs.get_mut(digest) else {
            return false;
        };
        swarm.expire_holders(now);
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
    pub fn progress(
        &mut self,
        now: Instant,
        digest: &Digest,
        id: u64,
        pieces: u32,
        out: &mut Vec<Push>,
    ) {
        let Some(swarm) = self.blobs.get_mut(digest) else {
            return;
        };
        if let Some(m) = swarm.members.get_mut(&id) {
            m.pieces = pieces;
        }
        swarm.check_orphan(now, out);
        swarm.reported(id, pieces, now);
        swarm.boost(self.upstream_budget, now, out);
    }

    /// Removes a member. A fetcher leaving unfinished keeps the fetch for [`REJOIN_GRACE`]:
    /// its stream may have died with a replaced connection while it goes on fetching, and it
    /// joins again saying so; a member made the fetcher meanwhile would fetch the blob a second
    /// time (measured: 1.65 x egress in 1 of 100 start-ups). Returns `true` then: the caller
    /// calls [`Swarms::recheck`] after the grace, which hands the fetch on if it did not.
    pub fn leave(
        &mut self,
        now: Instant,
        digest: &Digest,
        id: u64,
        complete: bool,
        out: &mut Vec<Push>,
    ) -> bool {
        let closing = self.closing;
        let Some(swarm) = self.blobs.get_mut(digest) else {
            return false;
        };
        let Some(member) = swarm.members.remove(&id) else {
            return false;
        };
        swarm.forget_rate(id);
        if complete {
            swarm.holders.retain(|(p, _, _)| *p != member.peer);
            if swarm.holders.len() >= MAX_HOLDERS {
                swarm.holders.remove(0);
            }
            let rack = rack_label(&member).map(str::to_string);
            swarm.holders.push((member.peer, now, rack));
            swarm.shares.iter_mut().for_each(|s| s.owner = None);
        }
        let handed = !complete && !closing && swarm.hand_on_shares(id, out);
        let mut orphaned = false;
        if swarm.fetcher == Some(id) && !handed {
            swarm.fetcher = None;
            if !complete && swarm.holders.is_empty() && !closing {
                swarm.orphaned = Some(now);
                orphaned = true;
            }
        }
        swarm.expire_holders(now);
        if swarm.members.is_empty() && swarm.holders.is_empty() && !orphaned {
            self.blobs.remove(digest);
        }
        forget_idle(&mut self.blobs, now);
        orphaned
    }

    /// A fetcher's grace after its stream ended is over: if it has not joined again, the
    /// best member is told to fetch (see [`Swarms::leave`]).
    pub fn recheck(&mut self, now: Instant, digest: &Digest, out: &mut Vec<Push>) {
        if let Some(swarm) = self.blobs.get_mut(digest) {
            swarm.check_orphan(now, out);
            if swarm.members.is_empty() && swarm.holders.is_empty() && swarm.fetcher.is_none() {
                self.blobs.remove(digest);
            }
        }
    }

    /// How many members the blob has now, and how many holders are remembered.
    pub fn members_of(&self, digest: &Digest) -> (u32, u32) {
        self.blobs.get(digest).map_or((0, 0), |s| {
            let n = |len: usize| u32::try_from(len).unwrap_or(u32::MAX);
            (n(s.members.len()), n(s.holders.len()))
        })
    }

    /// The blobs being coordinated now.
    pub fn summary(&self) -> Vec<BlobSummary> {
        let mut out: Vec<_> = self
            .blobs
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

/// Names the newcomer to members already downloading, so nodes that start together trade
/// pieces with each other, not only with the fetcher: at most `fanout` of them (0: all), the
/// most recent joiners sharing a label with it (rack, zone) first, so a rack's nodes trade among
/// themselves and its uplink carries each piece about once; then the most recent others (they
/// know the fewest peers yet).
fn tell_members(swarm: &BlobSwarm, member: &Member, fanout: usize, out: &mut Vec<Push>) {
    let fanout = match fanout {
        0 => usize::MAX,
        n => n,
    };
    let shares_label = |m: &Member| m.labels.iter().any(|l| member.labels.contains(l));
    let candidates = || {
        swarm
            .members
            .iter()
            .rev()
            .filter(|(mid, _)| swarm.fetcher != Some(**mid))
    };
    let told: Vec<u64> = candidates()
        .filter(|(_, m)| shares_label(m))
        .chain(candidates().filter(|(_, m)| !shares_label(m)))
        .take(fanout)
        .map(|(mid, _)| *mid)
        .collect();
    for mid in told {
        let peers = vec![member.peer.clone()];
        let near = swarm
            .members
            .get(&mid)
            .is_some_and(|m| same_rack(m, member));
        if near {
            out.push((
                mid,
                TrackerReply::Peers {
                    peers: peers.clone(),
                },
            ));
            out.push((mid, TrackerReply::Near { peers }));
        } else {
            out.push((mid, TrackerReply::Peers { peers }));
        }
    }
}

/// Keeps the blobs remembered only for their holders under [`MAX_IDLE_BLOBS`], forgetting
/// those whose newest holder is oldest.
fn forget_idle(blobs: &mut HashMap<Digest, BlobSwarm>, now: Instant) {
    let idle = || blobs.values().filter(|s| s.members.is_empty()).count();
    if idle() <= MAX_IDLE_BLOBS {
        return;
    }
    let mut by_age: Vec<(Instant, Digest)> = blobs
        .iter()
        .filter(|(_, s)| s.members.is_empty())
        .map(|(d, s)| {
            (
                s.holders.iter().map(|(_, at, _)| *at).max().unwrap_or(now),
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

/// A member's place in a newcomer's list: fetchers first, then the most labels shared, the
/// most pieces, and a per-newcomer order among the rest (see the module docs).
type RankKey<'a> = (u8, usize, u32, u64, &'a Vec<u8>, bool);

/// Whether two members share a `rack` label: near for `pollen_core::rack`. Only the rack counts,
/// as only its uplink is what the rule saves; a zone is many racks.
pub fn same_rack(a: &Member, b: &Member) -> bool {
    rack_label(a).is_some_and(|r| rack_label(b) == Some(r))
}

fn rack_label(m: &Member) -> Option<&str> {
    m.labels
        .iter()
        .find(|(k, _)| k == "rack")
        .map(|(_, v)| v.as_str())
}

/// Peers for a newcomer, best first (see the module docs), never the newcomer itself, and
/// those of them in its rack.
fn rank(swarm: &BlobSwarm, newcomer: &Member) -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut members = rank_keys(swarm, newcomer);
    let mut out = listed_holders(swarm, newcomer);
    // Only the best few members are needed: sorting them all and checking each against the
    // list made a join cost O(N²) (pollen-sim, 10,000 nodes: 74 % of the run in `memcmp`).
    // The best `PEERS_PER_ASSIGN` plus one per listed holder (a holder may also be a member)
    // fill the list unless a peer is a member twice; then the rest are ranked too.
    let head = PEERS_PER_ASSIGN
        .saturating_add(out.len())
        .min(members.len());
    if head < members.len() {
        members.select_nth_unstable(head);
    }
    let (best, rest) = members.split_at_mut(head);
    best.sort_unstable();
    append_new(&mut out, best);
    if out.len() < PEERS_PER_ASSIGN {
        rest.sort_unstable();
        append_new(&mut out, rest);
    }
    let rack = rack_label(newcomer);
    let holders_in_rack = swarm
        .holders
        .iter()
        .filter(|h| rack.is_some() && h.2.as_deref() == rack)
        .map(|h| &h.0);
    let in_rack: Vec<&Vec<u8>> = members
        .iter()
        .filter(|k| k.5)
        .map(|k| k.4)
        .chain(holders_in_rack)
        .collect();
    let near = out
        .iter()
        .filter(|p| in_rack.contains(p))
        .cloned()
        .collect();
    (out, near)
}

/// The holders a newcomer is given before any member, the most recent first.
fn listed_holders(swarm: &BlobSwarm, newcomer: &Member) -> Vec<Vec<u8>> {
    swarm
        .holders
        .iter()
        .rev()
        .map(|(p, _, _)| p)
        .filter(|p| **p != newcomer.peer)
        .take(PEERS_PER_ASSIGN)
        .cloned()
        .collect()
}

fn rank_keys<'a>(swarm: &'a BlobSwarm, newcomer: &Member) -> Vec<RankKey<'a>> {
    let shared = |m: &Member| {
        m.labels
            .iter()
            .filter(|l| newcomer.labels.contains(l))
            .count()
    };
    swarm
        .members
        .iter()
        .filter(|(_, m)| m.peer != newcomer.peer)
        .map(|(id, m)| {
            let fetching =
                swarm.fetcher == Some(*id) || swarm.shares.iter().any(|s| s.owner == Some(*id));
            let class = if fetching { 1 } else { 2 };
            let order = pair_order(&newcomer.peer, &m.peer);
            (
                class,
                usize::MAX - shared(m),
                u32::MAX - m.pieces,
                order,
                &m.peer,
                same_rack(m, newcomer),
            )
        })
        .collect()
}

/// Appends ranked members' peers not listed yet, up to [`PEERS_PER_ASSIGN`].
fn append_new(out: &mut Vec<Vec<u8>>, ranked: &[RankKey<'_>]) {
    for (_, _, _, _, p, _) in ranked {
        if out.len() >= PEERS_PER_ASSIGN {
            return;
        }
        if !out.contains(p) {
            out.push((*p).clone());
        }
    }
}

/// A rank of `member` that differs from newcomer to newcomer but not from run to run: members
/// alike in everything else (a cluster starting together: no pieces anywhere) are named to
/// each newcomer in its own order. Ordered by peer id, every node was given the same 16 peers
/// and asked them first, and their upload slots and waiting queues were full while the rest
/// of the swarm sat idle (pollen-sim, 300 nodes).
fn pair_order(newcomer: &[u8], member: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    // SipHash with fixed keys: the same order on every tracker and in every run.
    let mut h = std::hash::DefaultHasher::new();
    newcomer.hash(&mut h);
    member.hash(&mut h);
    h.finish()
}

#[cfg(test)]
#[path = "tracker_tests.rs"]
mod tests;
