//! Which piece to ask a peer for next. Pure: the download loop passes its state in, so the
//! policy is tested without sessions, sockets or clocks.
//!
//! The order serves the client reading the blob front to back while keeping the swarm
//! healthy:
//! 1. **Streaming window**: the first [`WINDOW`] pieces from the first one still missing (where
//!    the client is waiting), in order — among those at least two peers hold, when this node
//!    talks to several. A piece only one peer holds is left to rarest-first then: when a whole
//!    cluster starts together every node's client waits at the same place, and if they all
//!    asked the one fetcher for the same next piece nobody would ever hold anything the others
//!    lack. With a single peer there is nobody to trade with, and the window is in order.
//! 2. **Rarest first** for everything else: the piece fewest known peers have (ties: this
//!    node's random order of the pieces), so rare pieces spread before their only holder leaves
//!    and nodes that start together ask for different pieces.
//! 3. **Duplicates** when nothing is left unrequested: a piece requested from another peer
//!    longer than the request timeout ago, or, in end-game (every missing piece requested and
//!    at most [`END_GAME_PIECES`] missing), the piece with the fewest copies requested, at most
//!    [`MAX_COPIES`]. The first copy to
//!    arrive wins; the download cancels the others.

use pollen_proto::Bitfield;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Copies of one piece requested at once in end-game.
pub const MAX_COPIES: usize = 2;

/// End-game starts when every missing piece is requested and no more than this many are
/// missing: with few pieces and deep pipelines "everything requested" is true from the start,
/// and duplicating every request then would double the bytes sent.
pub const END_GAME_PIECES: u32 = 4;

/// Pieces of the streaming window (see the module docs for why it yields to rarest-first when
/// a piece has a single holder: measured with `examples/swarm_bound.rs`, docs/tracker.md).
pub const WINDOW: u32 = 4;

/// What the download knows when it picks, borrowed from its state.
pub struct PickState<'a> {
    /// Pieces stored, or received and being written.
    pub done: &'a Bitfield,
    /// Pieces whose hash is known: a piece is only requested once it can be checked.
    pub known: &'a Bitfield,
    /// Outstanding requests by piece: which peer slot, since when.
    pub requests: &'a HashMap<u32, Vec<(usize, Instant)>>,
    /// The pieces with at least one outstanding request (the keys of `requests`), so a scan
    /// over the blob tests bits, not the map.
    pub requested: &'a Bitfield,
    /// The pieces this peer may be asked for, if not all: a far peer's under the rack rule
    /// (`crate::rack`).
    pub allowed: Option<&'a Bitfield>,
    /// How many connected peers have each piece.
    pub availability: &'a [u16],
    /// Peers whose pieces are known: with fewer than two there is nobody to trade with, and
    /// the window is taken in order whoever holds it.
    pub peers: usize,
    /// This node's random order of the pieces, to break ties: nodes that all lack the same
    /// pieces ask for different ones, and then have something to trade.
    pub tie_break: &'a [u64],
    pub request_timeout: Duration,
    pub now: Instant,
}

/// Pieces from `from` on that are missing, known, held by the peer, allowed and not requested
/// yet, in order: 64 at a time from the bitfields' bytes (a blob has up to 65,536 pieces, and the
/// picker runs for every request; the simulator runs it billions of times).
fn fresh<'a>(s: &'a PickState<'_>, peer_has: &'a Bitfield, from: u32) -> Fresh<'a> {
    Fresh {
        fields: [
            s.done.as_bytes(),
            s.known.as_bytes(),
            peer_has.as_bytes(),
            s.requested.as_bytes(),
        ],
        allowed: s.allowed.map(Bitfield::as_bytes),
        word: from / 64,
        bits: None,
        from,
        count: s.done.count(),
    }
}

/// The iterator [`fresh`] returns: one 64-bit word of candidates at a time, bits in piece order
/// (the first piece is the most significant bit of the first byte).
struct Fresh<'a> {
    /// Done, known, the peer's, requested.
    fields: [&'a [u8]; 4],
    allowed: Option<&'a [u8]>,
    /// The next word to load.
    word: u32,
    /// The loaded word's candidates not yet returned, and its first piece.
    bits: Option<(u64, u32)>,
    from: u32,
    count: u32,
}

impl Fresh<'_> {
    #[inline]
    fn load(v: &[u8], word: u32) -> u64 {
        let at = word as usize * 8;
        if let Some(b) = v.get(at..at.saturating_add(8)) {
            return b.try_into().map_or(0, u64::from_be_bytes);
        }
        // The last, short word.
        let tail = v.get(at..).unwrap_or_default();
        tail.iter()
            .chain(std::iter::repeat(&0))
            .take(8)
            .fold(0, |w, b| w << 8 | u64::from(*b))
    }
}

impl Iterator for Fresh<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        loop {
            if let Some((mask, base)) = self.bits.as_mut() {
                if *mask != 0 {
                    let bit = mask.leading_zeros();
                    *mask &= !(1u64 << (63 - bit));
                    let i = base.saturating_add(bit);
                    if i >= self.count {
                        return None;
                    }
                    if i >= self.from {
                        return Some(i);
                    }
                    continue;
                }
            }
            if u64::from(self.word) * 64 >= u64::from(self.count) {
                return None;
            }
            let [done, known, has, requested] = &self.fields;
            let w = self.word;
            let mask = !Self::load(done, w)
                & Self::load(known, w)
                & Self::load(has, w)
                & !Self::load(requested, w)
                & self.allowed.map_or(u64::MAX, |a| Self::load(a, w));
            self.bits = Some((mask, w.saturating_mul(64)));
            self.word += 1;
        }
    }
}

/// The next piece to ask peer `slot` (which has `peer_has`) for, if any.
pub fn pick(s: &PickState<'_>, slot: usize, peer_has: &Bitfield) -> Option<u32> {
    let count = s.done.count();
    let first_missing = s.done.iter_missing().next()?;
    let window_end = first_missing.saturating_add(WINDOW).min(count);
    let spread = |i: &u32| s.peers < 2 || s.availability.get(*i as usize).is_some_and(|a| *a >= 2);
    if let Some(i) = fresh(s, peer_has, first_missing)
        .take_while(|i| *i < window_end)
        .find(spread)
    {
        return Some(i);
    }
    let rarest = fresh(s, peer_has, first_missing).min_by_key(|i| {
        let at = *i as usize;
        (
            s.availability.get(at).copied().unwrap_or(0),
            s.tie_break.get(at).copied().unwrap_or(0),
            *i,
        )
    });
    if rarest.is_some() {
        return rarest;
    }
    // Nothing unrequested that this peer has: duplicate a stale or (end-game) scarce request.
    let missing = count - s.done.count_ones();
    let end_game = missing <= END_GAME_PIECES && s.done.iter_missing().all(|i| s.requested.get(i));
    s.requests
        .iter()
        .filter(|(i, reqs)| {
            !s.done.get(**i)
                && s.known.get(**i)
                && peer_has.get(**i)
                && s.allowed.is_none_or(|a| a.get(**i))
                && !reqs.iter().any(|(p, _)| *p == slot)
        })
        .filter_map(|(i, reqs)| {
            let oldest = reqs.iter().map(|(_, t)| *t).min()?;
            let stale = s.now.saturating_duration_since(oldest) >= s.request_timeout;
            (stale || (end_game && reqs.len() < MAX_COPIES)).then_some((reqs.len(), oldest, *i))
        })
        .min()
        .map(|(_, _, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollen_proto::PieceGeometry;

    fn field(count: u32, ones: &[u32]) -> Bitfield {
        let g = PieceGeometry::new(u64::from(count) * 65536, 65536).unwrap();
        let mut b = Bitfield::new(&g);
        for i in ones {
            b.set(*i).unwrap();
        }
        b
    }

    struct Fixture {
        done: Bitfield,
        requests: HashMap<u32, Vec<(usize, Instant)>>,
        availability: Vec<u16>,
        tie_break: Vec<u64>,
        peers: usize,
        known: Bitfield,
        now: Instant,
    }

    impl Fixture {
        fn new(count: u32) -> Fixture {
            Fixture {
                done: field(count, &[]),
                requests: HashMap::new(),
                availability: vec![1; count as usize],
                tie_break: vec![0; count as usize],
                peers: 3,
                known: field(count, &(0..count).collect::<Vec<_>>()),
                now: Instant::now(),
            }
        }
        fn pick(&self, slot: usize, has: &Bitfield) -> Option<u32> {
            let count = self.done.count();
            let requested = field(count, &self.requests.keys().copied().collect::<Vec<_>>());
            pick(
                &PickState {
                    done: &self.done,
                    known: &self.known,
                    requests: &self.requests,
                    requested: &requested,
                    allowed: None,
                    availability: &self.availability,
                    tie_break: &self.tie_break,
                    peers: self.peers,
                    request_timeout: Duration::from_secs(10),
                    now: self.now,
                },
                slot,
                has,
            )
        }
    }

    /// The word-at-a-time scan against the obvious bit-at-a-time one, on random fields of
    /// sizes around the word and byte edges and from every start.
    #[test]
    fn fresh_matches_a_bit_by_bit_scan() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut coin = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            !seed.is_multiple_of(3)
        };
        for count in [1, 7, 8, 9, 63, 64, 65, 130, 200] {
            let mut random = || field(count, &(0..count).filter(|_| coin()).collect::<Vec<_>>());
            let (done, known, has, requested) = (random(), random(), random(), random());
            let state = PickState {
                done: &done,
                known: &known,
                requests: &HashMap::new(),
                requested: &requested,
                allowed: None,
                availability: &[],
                peers: 2,
                tie_break: &[],
                request_timeout: Duration::from_secs(1),
                now: Instant::now(),
            };
            for from in 0..=count + 1 {
                let slow: Vec<u32> = (from..count)
                    .filter(|&i| !done.get(i) && known.get(i) && has.get(i) && !requested.get(i))
                    .collect();
                let fast: Vec<u32> = fresh(&state, &has, from).collect();
                assert_eq!(fast, slow, "count {count} from {from}");
            }
        }
    }

    #[test]
    fn window_first_in_order_then_rarest() {
        let mut f = Fixture::new(40);
        f.availability = vec![2; 40];
        f.tie_break = (0..40).rev().collect();
        let all = field(40, &(0..40).collect::<Vec<_>>());
        f.done = field(40, &[0, 1]);
        assert_eq!(f.pick(0, &all), Some(2), "the client's next piece");
        for i in 2..6 {
            f.requests.insert(i, vec![(1, f.now)]);
        }
        f.availability[30] = 1;
        f.availability[25] = 1;
        assert_eq!(
            f.pick(0, &all),
            Some(30),
            "beyond the window: rarest, own order"
        );
        let only_12 = field(40, &[12]);
        assert_eq!(f.pick(0, &only_12), Some(12), "only what the peer has");
    }

    #[test]
    fn a_window_piece_with_a_single_holder_yields_to_the_nodes_own_order() {
        let mut f = Fixture::new(10);
        let all = field(10, &(0..10).collect::<Vec<_>>());
        f.tie_break = vec![5, 6, 7, 8, 9, 1, 2, 0, 3, 4];
        assert_eq!(
            f.pick(0, &all),
            Some(7),
            "everyone at the start: spread out"
        );
        f.availability[0] = 2;
        assert_eq!(
            f.pick(0, &all),
            Some(0),
            "held twice: the client's next piece first"
        );
        f.availability[0] = 1;
        f.peers = 1;
        assert_eq!(f.pick(0, &all), Some(0), "a single peer: stream in order");
    }

    #[test]
    fn ties_beyond_the_window_follow_the_nodes_own_order() {
        let mut f = Fixture::new(10);
        f.availability = vec![2; 10];
        let all = field(10, &(0..10).collect::<Vec<_>>());
        f.done = field(10, &[0, 1]);
        for i in 2..6 {
            f.requests.insert(i, vec![(1, f.now)]);
        }
        f.tie_break = vec![9, 9, 9, 9, 9, 9, 3, 0, 2, 1];
        assert_eq!(f.pick(0, &all), Some(7));
        f.tie_break[9] = 0;
        f.tie_break[7] = 1;
        assert_eq!(f.pick(0, &all), Some(9));
    }

    #[test]
    fn only_pieces_whose_hash_is_known() {
        let mut f = Fixture::new(10);
        f.known = field(10, &[0, 1, 2, 7]);
        let all = field(10, &(0..10).collect::<Vec<_>>());
        f.done = field(10, &[0, 1, 2]);
        assert_eq!(
            f.pick(0, &all),
            Some(7),
            "out of order: a range fetched apart"
        );
        f.done = field(10, &[0, 1, 2, 7]);
        assert_eq!(f.pick(0, &all), None);
    }

    #[test]
    fn stale_and_end_game_duplicates() {
        let mut f = Fixture::new(4);
        let all = field(4, &[0, 1, 2, 3]);
        f.done = field(4, &[0, 1]);
        let old = f.now - Duration::from_secs(11);
        f.requests.insert(2, vec![(1, f.now)]);
        f.requests.insert(3, vec![(1, old)]);
        // Every missing piece is requested (end-game): the oldest single copy goes first.
        assert_eq!(f.pick(0, &all), Some(3));
        f.requests.get_mut(&3).unwrap().push((0, f.now));
        assert_eq!(f.pick(0, &all), Some(2), "never twice to the same peer");
        f.requests.get_mut(&2).unwrap().push((0, f.now));
        assert_eq!(f.pick(2, &all), Some(3), "stale piece may get a third copy");
        f.requests.get_mut(&3).unwrap()[0].1 = f.now;
        assert_eq!(f.pick(2, &all), None, "max copies and nothing stale");
        f.done = field(4, &[0, 1, 2, 3]);
        assert_eq!(f.pick(2, &all), None, "complete");
    }

    #[test]
    fn many_missing_pieces_all_requested_is_not_end_game() {
        let mut f = Fixture::new(10);
        let all = field(10, &(0..10).collect::<Vec<_>>());
        for i in 0..10 {
            f.requests.insert(i, vec![(1, f.now)]);
        }
        assert_eq!(f.pick(0, &all), None, "10 missing: no duplicates yet");
        f.done = field(10, &[0, 1, 2, 3, 4, 5]);
        assert!(f.pick(0, &all).is_some(), "4 missing: end-game");
    }

    #[test]
    fn no_duplicates_before_end_game() {
        let mut f = Fixture::new(4);
        let peer = field(4, &[0]);
        f.requests.insert(0, vec![(1, f.now)]);
        assert_eq!(
            f.pick(0, &peer),
            None,
            "piece 1..3 still unrequested elsewhere"
        );
    }
}
