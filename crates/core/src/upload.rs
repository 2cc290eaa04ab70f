//! The uploader's slots: how many sessions of a node may be unchoked, how many wait, what
//! share one peer gets, who is unchoked next, and when an idle holder gives its slot to a
//! waiting session. [`Slots`] keeps that state for one node; `pollen_peer::UploadLimits`
//! drives it for real sessions (waking the one granted a slot), the simulator for simulated
//! ones.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

/// A session holding a slot that has asked for nothing this long gives the slot up while
/// other sessions wait for one (it is sent `Choked` and queues again). A slot was kept until
/// its session ended, so downloaders of a layer holding every slot of a node, most of them idle
/// (they took their pieces elsewhere), starved a node that asked only later: it got nothing for
/// `peer_stall` and went to the registry (`pollen demo`: 2 runs in 14).
///
/// A quarter of a second, not half: at the start every uploader holds a few pieces, and a
/// holder that has taken them waits for more while nodes that need them wait for its slot. At
/// 2,600 nodes pulling 3 GB at 300 MB/s, half the swarm's uplinks stood unused from 0.4 s to
/// 0.8 s with 500 ms; p99 12.20 s at 500 ms, 11.77 s at 250 ms, 11.63 s at 150 ms, 11.60 s at
/// 100 ms (pollen-sim `--slot-yield-after`, part 9's eleventh session). 300 ms once measured
/// worse than 500 ms (p99 22-24 s at 600 nodes) in a simulator that kept a choked session's
/// requests outstanding until the request timeout, which the agent never did. Not 150 ms: on
/// the emulated cluster (12 agents on 2 cores, where a request can wait for a CPU) 150 ms made
/// peer-bound 4 % slower than 500 ms (medians of six runs, 9.03 s against 8.64 s), 250 ms 4 %
/// faster (three runs, 8.53 s against 8.89 s). A holder sending is not idle (the uploader
/// counts from the last frame written), so a slow uplink does not make holders yield.
pub const SLOT_YIELD_AFTER: Duration = Duration::from_millis(250);

/// A holder still asking gives its slot up after a piece when its node holds at least this
/// many more slots than the poorest waiting node ([`Slots::turn_over`]). Slots otherwise
/// change hands only when a holder idles, and while a whole cluster still needs everything
/// nobody does: the nodes that got slots first kept them, and at 2,600 nodes pulling 3 GB at
/// 300 MB/s the slowest twentieth held 5 slots to the fastest's 9–10 from 2 s to 5 s and
/// finished 1.4 s after the median (pollen-sim, Kraken's set-up: p99 13.8 s; with this rule and
/// spread redials, 12.2 s; with a gap of 1, 12.1 s, and of 3, 13.0 s).
pub const TURNOVER_GAP: u32 = 2;
/// A slot is turned over only once its holder has held it this long: half a second moved
/// slots faster than pieces crossed (p99 13.4 s), 1.5 s left the slowest behind longer (12.7 s).
pub const TURNOVER_TENURE: Duration = Duration::from_secs(1);
/// A node turns over at most one slot per this long, so slots never move faster than pieces.
pub const TURNOVER_EVERY: Duration = Duration::from_millis(500);

/// Sessions that may wait (choked) per upload slot. A waiting session costs a stream and no
/// piece bytes, and it receives `Have` and the piece hashes this node vouches for: with one
/// waiting place per slot, a fetcher whose slots were taken by a dozen downloaders (of this
/// and other blobs) turned the rest away, and those could not check the pieces other peers
/// held until some node completed the blob (benches/cluster.sh, peer-bound: nodes then went
/// to the upstream after `peer_stall`).
pub const WAITING_PER_SLOT: usize = 4;

/// A peer's fair share of the upload slots: at most this fraction of them (rounded up, at
/// least one) are held by sessions of one peer at once, so a peer that opens many sessions
/// leaves room for the others (with the default 8 slots: 4 per peer). Its further sessions wait
/// (choked) behind the other peers' sessions until one of its own ends.
pub const PEER_SHARE_DIVISOR: usize = 2;

/// Slots one peer may hold at once with `slots` in all.
pub fn per_peer(slots: usize) -> usize {
    slots.div_ceil(PEER_SHARE_DIVISOR).max(1)
}

/// Whether a node serves a blob it is still downloading: once it holds a piece of it, or
/// while it fetches it from the upstream (its pieces are on their way and it vouches for their
/// hashes). A node opens its blob at the start of a pull (the manifest gave the size), and
/// serving it empty let every node of a small cluster open sessions to every other at once:
/// the slots of a layer's only fetcher went to sessions for other layers, which nobody held
/// yet, and peers waited behind them (pollen-sim, the peer-bound benchmark scenario: 10.6 s
/// against 8.5 s; turned away until they hold a piece, 8.7 s). Refused sessions are dialled
/// again after `retry::NOT_YET_MIN` to `retry::RETRY_SOON`.
pub fn serves_partial(pieces: u32, fetching: bool) -> bool {
    pieces > 0 || fetching
}

/// Sessions that may wait with `slots` in all.
pub fn max_waiting(slots: usize) -> usize {
    slots.saturating_mul(WAITING_PER_SLOT)
}

/// Whether an idle holder gives its slot up now: someone waits. It queues again itself, and
/// the slot it frees takes a waiting session out of the queue, so a full queue is no reason to
/// keep the slot: with the queue full, idle holders kept every slot of a fetcher while the
/// sessions that needed its pieces waited behind them (pollen-sim, 300 nodes: the swarm stood
/// still until super-seeding revealed the pieces 6 s later). The queue may run over its
/// length by at most one place per slot (`yield_room`).
pub fn may_yield(waiting: usize) -> bool {
    waiting > 0
}

/// The most sessions that may wait counting holders that just yielded (see [`may_yield`]).
pub fn yield_room(slots: usize) -> usize {
    max_waiting(slots).saturating_add(slots)
}

/// How a new session is admitted ([`Slots::admit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It holds a slot now: unchoked.
    Unchoked,
    /// It waits (choked) in the queue.
    Waiting,
    /// Every slot is taken and the queue is full: turned away (`Busy`).
    Busy,
}

/// The waiting session a newcomer holding `slots` displaces from a full queue: the one whose
/// downloader holds the most slots elsewhere, if more than `slots`, the latest in the queue
/// among equals.
fn richer_than<K>(waiting: &VecDeque<Waiting<K>>, slots: u32) -> Option<usize> {
    waiting
        .iter()
        .enumerate()
        .filter(|(_, w)| w.holding > slots)
        .max_by_key(|(i, w)| (w.holding, *i))
        .map(|(i, _)| i)
}

/// One node's upload slots. Sessions are known by a ticket the caller chooses (unique among
/// the sessions holding or waiting) and by their peer, for the per-peer share (`None`: not
/// counted per peer). A free slot goes to the waiting session whose downloader holds the
/// fewest slots ([`Slots::holding`]), first come first served among equals,
/// skipping those whose peer holds its share already (they keep their place).
///
/// First come first served alone let the nodes that got slots first keep them for the whole
/// pull (a holder that asks gives nothing up) while the rest waited behind one another in
/// every uploader's queue: at 600 nodes pulling 3 GB at 300 MB/s, 21 nodes had no piece at
/// 2 s and the slowest got 180 MB/s to the fastest's 290 (pollen-sim: p99 14.6 s; 13.1 s with
/// the fewest-held first, 13.6 s with only "holds fewer than six" known).
#[derive(Debug, Clone)]
pub struct Slots<K> {
    slots: usize,
    per_peer: usize,
    max_waiting: usize,
    /// Whether a newcomer at a full queue may displace a waiting session ([`Slots::admit`]).
    displace: bool,
    /// Whether holders still asking give slots up to poorer waiting nodes ([`Slots::turn_over`]).
    turnover: bool,
    last_turnover: Option<Instant>,
    held: usize,
    by_peer: BTreeMap<K, usize>,
    waiting: VecDeque<Waiting<K>>,
}

/// A session in the queue.
#[derive(Debug, Clone)]
struct Waiting<K> {
    ticket: u64,
    peer: Option<K>,
    /// Slots its downloader said it holds (0 until it says; `Slots::holding`).
    holding: u32,
    /// Admitted into a full queue: its first `Holding` decides whether it stays.
    on_trial: bool,
}

impl<K: Ord + Clone> Slots<K> {
    /// `slots` unchoked at most (0: every session is turned away), with the default share
    /// per peer ([`per_peer`]) and queue ([`max_waiting`]).
    pub fn new(slots: usize) -> Slots<K> {
        Slots {
            slots,
            per_peer: per_peer(slots),
            max_waiting: max_waiting(slots),
            displace: true,
            turnover: true,
            last_turnover: None,
            held: 0,
            by_peer: BTreeMap::new(),
            waiting: VecDeque::new(),
        }
    }

    /// The most slots one peer holds at once (at least one).
    pub fn with_per_peer(mut self, per_peer: usize) -> Slots<K> {
        self.per_peer = per_peer.max(1);
        self
    }

    /// The most sessions that wait before new ones are turned away.
    pub fn with_max_waiting(mut self, max_waiting: usize) -> Slots<K> {
        self.max_waiting = max_waiting;
        self
    }

    /// Whether a newcomer at a full queue may displace the waiting session holding most slots
    /// elsewhere if it holds fewer (the default; [`Slots::admit`]), or is turned away (the
    /// policy before part 9's ninth session; the simulator's `--full-queue refuse`, to compare).
    pub fn with_displacement(mut self, displace: bool) -> Slots<K> {
        self.displace = displace;
        self
    }

    /// Whether a holder still asking gives its slot up to a poorer waiting node (the default;
    /// [`Slots::turn_over`]), or keeps it until it idles (the policy before part 9's tenth
    /// session; the simulator's `--slot-turnover off`, to compare).
    pub fn with_turnover(mut self, turnover: bool) -> Slots<K> {
        self.turnover = turnover;
        self
    }

    /// Sessions waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Slots held now.
    pub fn held(&self) -> usize {
        self.held
    }

    fn under_share(&self, peer: Option<&K>) -> bool {
        peer.is_none_or(|p| self.by_peer.get(p).copied().unwrap_or(0) < self.per_peer)
    }

    fn take(&mut self, peer: Option<&K>) {
        self.held += 1;
        if let Some(p) = peer {
            *self.by_peer.entry(p.clone()).or_default() += 1;
        }
    }

    /// A new session: a slot if one is free and its peer is under its share, else a place in
    /// the queue if there is room. With the queue full, it waits on trial if some waiting
    /// session's downloader holds slots elsewhere (at most one trial per slot at once): its
    /// own `Holding` then decides which of the two is turned away ([`Slots::holding`]).
    ///
    /// A full queue turned newcomers away, first come first served: with 4 slots at 2,600 nodes
    /// (pollen-sim, Kraken's set-up), the holders of a layer had every waiting place taken by
    /// downloaders already served elsewhere while 92 nodes that held none of the layer were
    /// refused by all of them for `peer_stall`, then fetched it from the registry (egress 47 × F,
    /// the last node at 120.7 s).
    pub fn admit(&mut self, ticket: u64, peer: Option<&K>) -> Admission {
        if self.held < self.slots && self.under_share(peer) {
            self.take(peer);
            return Admission::Unchoked;
        }
        if self.waiting.len() < self.max_waiting {
            self.queue(ticket, peer);
            return Admission::Waiting;
        }
        let on_trial = self.waiting.iter().filter(|w| w.on_trial).count();
        if self.displace && on_trial < self.slots && self.waiting.iter().any(|w| w.holding > 0) {
            self.queue(ticket, peer);
            if let Some(w) = self.waiting.back_mut() {
                w.on_trial = true;
            }
            return Admission::Waiting;
        }
        Admission::Busy
    }

    /// A holder's slot is free (its session ended). The caller then [`Slots::grant`]s it.
    pub fn release(&mut self, peer: Option<&K>) {
        self.held = self.held.saturating_sub(1);
        let Some(p) = peer else { return };
        if let Some(n) = self.by_peer.get_mut(p) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.by_peer.remove(p);
            }
        }
    }

    fn queue(&mut self, ticket: u64, peer: Option<&K>) {
        self.waiting.push_back(Waiting {
            ticket,
            peer: peer.cloned(),
            holding: 0,
            on_trial: false,
        });
    }

    /// A waiting session left the queue (it ended, or gave up). False if it was not waiting
    /// (it was granted a slot meanwhile: the caller releases that slot).
    pub fn leave(&mut self, ticket: u64) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|w| w.ticket != ticket);
        self.waiting.len() < before
    }

    /// A session's downloader holds `slots` upload slots now (at any uploader, over all its
    /// downloads; `Request::Holding`): while it waits, that is its place among the waiting.
    /// Ignored for a session not waiting. Not checked, and no check is possible: a peer that
    /// says 0 to be served first still gets at most its share of this node's slots.
    ///
    /// For a session waiting on trial ([`Slots::admit`]) with the queue still over its length,
    /// this decides who leaves it: the waiting session whose downloader holds the most, if it
    /// holds more than this one's (the latest of equals), else this one. The ticket returned is
    /// turned away (`Busy`; its downloader dials again later). Only a node holding fewer takes a
    /// place, so a displaced session that dials elsewhere displaces only nodes holding more
    /// still, and the chain ends.
    #[must_use = "the ticket returned is turned away"]
    pub fn holding(&mut self, ticket: u64, slots: u32) -> Option<u64> {
        let at = self.waiting.iter().position(|w| w.ticket == ticket)?;
        let w = self.waiting.get_mut(at)?;
        w.holding = slots;
        if !std::mem::take(&mut w.on_trial) || self.waiting.len() <= self.max_waiting {
            return None;
        }
        let out = richer_than(&self.waiting, slots).unwrap_or(at);
        self.waiting.remove(out).map(|w| w.ticket)
    }

    /// Free slots to waiting sessions, the fewest held first and in queue order
    /// among equals, within each peer's share: the sessions unchoked now (ticket and peer).
    pub fn grant(&mut self) -> Vec<(u64, Option<K>)> {
        let mut granted = Vec::new();
        while self.held < self.slots {
            let next = self
                .waiting
                .iter()
                .enumerate()
                .filter(|(_, w)| self.under_share(w.peer.as_ref()))
                .min_by_key(|(i, w)| (w.holding, *i))
                .map(|(i, _)| i);
            let Some(w) = next.and_then(|i| self.waiting.remove(i)) else {
                break;
            };
            self.take(w.peer.as_ref());
            granted.push((w.ticket, w.peer));
        }
        granted
    }

    /// After a piece crossed, a holder that still asks gives its slot up if it has held it for
    /// [`TURNOVER_TENURE`], this node turned none over in the last [`TURNOVER_EVERY`], and its
    /// downloader holds (`holding`) at least [`TURNOVER_GAP`] more slots than the poorest
    /// waiting one (sessions on trial not counted). It queues again as an idle holder does
    /// ([`Slots::yield_slot`]); true if it did: the caller sends `Choked` (dropping its
    /// requests, which it asks elsewhere) and [`Slots::grant`]s the slot.
    pub fn turn_over(
        &mut self,
        ticket: u64,
        peer: Option<&K>,
        holding: u32,
        held_for: Duration,
        now: Instant,
    ) -> bool {
        let poorest = self
            .waiting
            .iter()
            .filter(|w| !w.on_trial)
            .map(|w| w.holding)
            .min();
        let due = self.turnover
            && held_for >= TURNOVER_TENURE
            && self
                .last_turnover
                .is_none_or(|t| now.saturating_duration_since(t) >= TURNOVER_EVERY)
            && poorest.is_some_and(|p| holding >= p.saturating_add(TURNOVER_GAP));
        if !due || !self.yield_slot(ticket, peer, holding) {
            return false;
        }
        self.last_turnover = Some(now);
        true
    }

    /// An idle holder gives its slot up if someone waits ([`may_yield`]) and the queue has
    /// not run over by a place per slot ([`yield_room`]): it queues again at the back, placed
    /// by the slots its downloader last said it holds (`holding`: counting this one, which it
    /// has not heard it lost). True if it did; the caller then [`Slots::grant`]s the slot.
    pub fn yield_slot(&mut self, ticket: u64, peer: Option<&K>, holding: u32) -> bool {
        let waiting = self.waiting.len();
        if !may_yield(waiting) || waiting >= yield_room(self.slots) {
            return false;
        }
        self.release(peer);
        self.queue(ticket, peer);
        // Not on trial: placed by its word, nobody is turned away.
        let _ = self.holding(ticket, holding);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_queues_follow_the_slots() {
        assert_eq!(per_peer(8), 4);
        assert_eq!(per_peer(1), 1);
        assert_eq!(per_peer(0), 1);
        assert_eq!(max_waiting(8), 32);
        assert_eq!(yield_room(8), 40);
        assert!(
            may_yield(32),
            "a full queue does not keep an idle holder's slot"
        );
        assert!(!may_yield(0));
    }

    #[test]
    fn slots_go_first_come_first_served_within_each_peers_share() {
        let mut s: Slots<&str> = Slots::new(4).with_max_waiting(3);
        let (a, b) = (Some(&"a"), Some(&"b"));
        assert_eq!(s.admit(1, a), Admission::Unchoked);
        assert_eq!(s.admit(2, a), Admission::Unchoked);
        assert_eq!(
            s.admit(3, a),
            Admission::Waiting,
            "a holds its share (2 of 4)"
        );
        assert_eq!(s.admit(4, b), Admission::Unchoked);
        assert_eq!(s.admit(5, None), Admission::Unchoked);
        assert_eq!(s.admit(6, b), Admission::Waiting);
        assert_eq!(s.admit(7, None), Admission::Waiting);
        assert_eq!(s.admit(8, None), Admission::Busy, "the queue is full");
        assert_eq!(s.held(), 4);
        // b's slot frees: a's waiting session is first but a holds its share, so b's goes.
        s.release(b);
        assert_eq!(s.grant(), vec![(6, Some("b"))]);
        assert_eq!(s.waiting(), 2);
        // a's slot frees: a's own waiting session takes it, the skipped one kept its place.
        s.release(a);
        assert_eq!(s.grant(), vec![(3, Some("a"))]);
        assert!(s.leave(7));
        assert!(!s.leave(7), "gone already");
        assert_eq!(s.waiting(), 0);
    }

    #[test]
    fn an_idle_holder_yields_only_to_someone_waiting_and_within_the_overrun() {
        let mut s: Slots<u32> = Slots::new(1).with_max_waiting(1);
        assert_eq!(s.admit(1, Some(&1)), Admission::Unchoked);
        assert!(!s.yield_slot(1, Some(&1), 0), "nobody waits");
        assert_eq!(s.admit(2, Some(&2)), Admission::Waiting);
        assert!(s.yield_slot(1, Some(&1), 0));
        assert_eq!(s.grant(), vec![(2, Some(2))]);
        assert_eq!(s.waiting(), 1, "the holder queued again");
    }

    #[test]
    fn a_free_slot_goes_to_the_waiting_downloader_holding_fewest_elsewhere() {
        let mut s: Slots<u32> = Slots::new(2).with_per_peer(1);
        assert_eq!(s.admit(1, Some(&1)), Admission::Unchoked);
        assert_eq!(s.admit(2, Some(&2)), Admission::Unchoked);
        for (ticket, peer) in [(3, 3), (4, 4), (5, 5), (6, 1)] {
            assert_eq!(s.admit(ticket, Some(&peer)), Admission::Waiting);
        }
        for (ticket, slots) in [(3, 5), (4, 2), (5, 2), (6, 0), (99, 0)] {
            assert_eq!(s.holding(ticket, slots), None); // 99 is not waiting: ignored
        }
        s.release(Some(&2));
        // Ticket 6 holds nothing elsewhere, but its peer (1) holds its share of one here.
        assert_eq!(s.grant(), vec![(4, Some(4))], "fewest held, first in line");
        s.release(Some(&1));
        assert_eq!(s.grant(), vec![(6, Some(1))], "its peer's share freed");
        s.release(Some(&4));
        assert_eq!(s.grant(), vec![(5, Some(5))]);
        // A holder that yields queues by what its downloader last said.
        assert!(s.yield_slot(5, Some(&5), 7));
        assert_eq!(s.grant(), vec![(3, Some(3))], "5 holds more than 3 now");
    }

    #[test]
    fn a_newcomer_holding_fewer_displaces_the_waiting_session_holding_most() {
        let mut s: Slots<u32> = Slots::new(1).with_max_waiting(3);
        assert_eq!(s.admit(1, Some(&1)), Admission::Unchoked);
        for t in [2u32, 3, 4] {
            assert_eq!(s.admit(u64::from(t), Some(&t)), Admission::Waiting);
        }
        assert_eq!(
            s.admit(5, Some(&5)),
            Admission::Busy,
            "none of the waiting said it holds a slot: nobody to displace"
        );
        assert_eq!(s.holding(2, 3), None);
        assert_eq!(s.holding(3, 5), None);
        assert_eq!(s.holding(4, 5), None);
        // On trial: its word decides.
        assert_eq!(s.admit(6, Some(&6)), Admission::Waiting);
        assert_eq!(s.waiting(), 4);
        assert_eq!(s.holding(6, 0), Some(4), "most held, latest of equals");
        assert_eq!(s.waiting(), 3);
        assert!(!s.leave(4), "the displaced session left the queue");
        assert_eq!(s.admit(7, Some(&7)), Admission::Waiting);
        assert_eq!(
            s.holding(7, 5),
            Some(7),
            "holding as much as any waiting: it is the one turned away"
        );
        assert_eq!(s.admit(8, Some(&8)), Admission::Waiting);
        assert_eq!(s.holding(8, 4), Some(3), "3 holds 5, more than 4");
        assert_eq!(s.holding(8, 9), None, "decided once: later words only rank");
        // At most one trial per slot at once.
        assert_eq!(s.admit(9, Some(&9)), Admission::Waiting);
        assert_eq!(s.admit(10, Some(&10)), Admission::Busy);
        s.release(Some(&1));
        assert_eq!(s.grant(), vec![(6, Some(6))], "fewest held first");
        // The queue is back to its length: the trial's word does not turn anyone away.
        assert_eq!(s.holding(9, 9), None);
        assert_eq!(s.waiting(), 3);
        let mut first_come: Slots<u32> = Slots::new(0).with_max_waiting(1);
        first_come = first_come.with_displacement(false);
        assert_eq!(first_come.admit(1, None), Admission::Waiting);
        assert_eq!(first_come.holding(1, 9), None);
        assert_eq!(first_come.admit(2, None), Admission::Busy);
    }

    #[test]
    fn a_partial_blob_is_served_once_it_holds_a_piece_or_while_fetched() {
        assert!(!serves_partial(0, false));
        assert!(serves_partial(0, true));
        assert!(serves_partial(1, false));
    }

    #[test]
    fn no_slots_turns_every_session_away() {
        let mut s: Slots<u32> = Slots::new(0);
        assert_eq!(s.admit(1, None), Admission::Busy);
    }

    #[test]
    fn a_holder_still_asking_gives_its_slot_to_a_node_holding_far_fewer() {
        let t0 = Instant::now();
        let held = TURNOVER_TENURE;
        let mut s: Slots<u32> = Slots::new(1);
        assert_eq!(s.admit(1, Some(&1)), Admission::Unchoked);
        assert_eq!(s.admit(2, Some(&2)), Admission::Waiting);
        assert_eq!(s.holding(2, 3), None);
        assert!(
            !s.turn_over(1, Some(&1), 4, held, t0),
            "a gap of 1 keeps it"
        );
        assert!(
            !s.turn_over(1, Some(&1), 5, held - Duration::from_millis(1), t0),
            "held too briefly"
        );
        assert!(s.turn_over(1, Some(&1), 5, held, t0));
        assert_eq!(s.grant(), vec![(2, Some(2))], "the poorer node takes it");
        // The turned-over session waits again; the node turns the next over only later.
        assert_eq!(s.waiting(), 1);
        assert_eq!(s.holding(1, 0), None);
        let soon = t0 + TURNOVER_EVERY - Duration::from_millis(1);
        assert!(
            !s.turn_over(2, Some(&2), 9, held, soon),
            "one per TURNOVER_EVERY"
        );
        assert!(s.turn_over(2, Some(&2), 9, held, t0 + TURNOVER_EVERY));
        let off: &mut Slots<u32> = &mut Slots::new(1).with_turnover(false);
        assert_eq!(off.admit(1, None), Admission::Unchoked);
        assert_eq!(off.admit(2, None), Admission::Waiting);
        assert!(!off.turn_over(1, None, 9, held, t0), "turned off");
    }

    #[test]
    fn nobody_waiting_or_only_on_trial_keeps_the_slot() {
        let t0 = Instant::now();
        let mut s: Slots<u32> = Slots::new(1).with_max_waiting(1);
        assert_eq!(s.admit(1, None), Admission::Unchoked);
        assert!(
            !s.turn_over(1, None, 9, TURNOVER_TENURE, t0),
            "nobody waits"
        );
        assert_eq!(s.admit(2, None), Admission::Waiting);
        assert_eq!(s.holding(2, 8), None);
        assert_eq!(s.admit(3, None), Admission::Waiting, "on trial");
        assert!(
            !s.turn_over(1, None, 9, TURNOVER_TENURE, t0),
            "the newcomer on trial has not said what it holds; the other holds 8"
        );
    }
}
