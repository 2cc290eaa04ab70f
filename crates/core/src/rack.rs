//! Which pieces a node takes from peers outside its rack. Without a rule every node of a rack
//! asks its far peers for whatever is rarest, and in a registry-bound rollout that is the piece
//! that just appeared: every node that sees it asks for it at once, so a rack's uplink carried
//! the image 6–10 times (pollen-sim, racks of 40, docs/tracker.md).
//!
//! The rule: of the pieces no near peer holds, a node asks far peers only for those it
//! *imports*. Each piece ranks the nodes of the rack by a rendezvous score of their keys; the
//! first imports it at once, the second once a far peer has offered it for [`IMPORT_STEP`] and
//! no near peer holds it yet, the third after two steps, and so on. Nodes that know the same
//! rack agree without a message, so a piece is usually taken into the rack by one node and
//! spreads inside it; when its first importer is dead, slow or not connected to a holder, the
//! next one takes over, one at a time, not the whole rack at once. A node that knows only part
//! of its rack ranks itself too high, which costs crossings, never pieces.
//!
//! Near means sharing the node's rack label, as the tracker marks its peers; without marks (no
//! labels, or `Rack::enable` never called) every piece may be asked of every peer.

use pollen_proto::Bitfield;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

/// How long each importer of a piece waits for the one ranked before it, counted from a far
/// peer's first offer: a piece's transfer and the `Have` after it inside a rack take a few
/// milliseconds. 250 ms took a rack's crossings to 1.26 × the image at 10,000 nodes but the
/// last node to 1.34 × T_min; 100 ms gives 1.45 × at 1.21 × T_min (pollen-sim, racks of 40,
/// 4:1, registry-bound).
pub const IMPORT_STEP: Duration = Duration::from_millis(100);

/// Most sessions a download keeps with peers outside its rack under the rule. Every far
/// session is a path for pieces into the rack whoever imports them: with no cap the rule cut
/// a rack's crossings to 2.0 × the image, with 2 to 1.2 × and with 3 to 1.3 × (pollen-sim,
/// 1,000 nodes in racks of 40, 4:1, registry-bound, 250 ms turns), at 1.13–1.46 × T_min.
pub const FAR_SESSIONS: usize = 2;

/// One download's view of its rack (see the module docs).
#[derive(Debug, Default)]
pub struct Rack {
    /// This node's key; `None`: no rule.
    me: Option<u64>,
    /// The blob's pieces (the tables below are sized only under the rule).
    count: u32,
    /// The keys of the near peers this node knows of.
    near: BTreeSet<u64>,
    /// Per piece, how many known near peers rank before this node.
    rank: Vec<u16>,
    /// How many near peers in session hold each piece.
    near_has: Vec<u16>,
    /// When a far peer first offered each piece.
    offered: Vec<Option<Instant>>,
}

/// A peer's rendezvous score for a piece: a 64-bit mix of its key and the index, cheap
/// enough to compute for every piece whenever a near peer becomes known.
pub fn score(key: u64, piece: u32) -> u64 {
    let mut z = key ^ u64::from(piece).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A node's key from its peer id's bytes (FNV-1a; [`score`] mixes it): every node computes
/// the same key for a peer.
pub fn key_of(peer: &[u8]) -> u64 {
    peer.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Rack {
    /// Turns the rule on for a node with key `me`, before any session opens.
    pub fn enable(&mut self, me: u64) {
        self.me = Some(me);
        self.adopt(self.count);
    }

    pub fn enabled(&self) -> bool {
        self.me.is_some()
    }

    /// Whether any rack-mate is known: until one is, this node is its rack's only importer,
    /// and a cap on far sessions would only starve it (no tracker, or one of the version
    /// before, which marks nobody).
    pub fn knows_near(&self) -> bool {
        !self.near.is_empty()
    }

    /// The blob has `count` pieces.
    pub fn adopt(&mut self, count: u32) {
        self.count = count;
        if self.me.is_none() {
            return;
        }
        self.near_has = vec![0; count as usize];
        self.offered = vec![None; count as usize];
        self.rank = vec![0; count as usize];
        self.recompute();
    }

    /// A peer with `key` shares this node's rack.
    pub fn know(&mut self, key: u64) {
        if Some(key) == self.me || !self.near.insert(key) {
            return;
        }
        if let Some(me) = self.me {
            rank_against(&mut self.rank, me, key);
        }
    }

    fn recompute(&mut self) {
        let Some(me) = self.me else {
            return;
        };
        self.rank.iter_mut().for_each(|r| *r = 0);
        for key in &self.near {
            rank_against(&mut self.rank, me, *key);
        }
    }

    /// A peer (`near` or far) holds `pieces` it did not before.
    pub fn counted(&mut self, near: bool, pieces: impl Iterator<Item = u32>, now: Instant) {
        if self.me.is_none() {
            return;
        }
        for at in pieces.map(|i| i as usize) {
            match near {
                true => {
                    if let Some(n) = self.near_has.get_mut(at) {
                        *n = n.saturating_add(1);
                    }
                }
                false => {
                    if let Some(o) = self.offered.get_mut(at) {
                        o.get_or_insert(now);
                    }
                }
            }
        }
    }

    /// A peer's pieces are no longer counted (its session ended or it replaced them).
    pub fn uncounted(&mut self, near: bool, has: &Bitfield) {
        if self.me.is_none() || !near {
            return;
        }
        for at in has.iter_ones().map(|i| i as usize) {
            if let Some(n) = self.near_has.get_mut(at) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Every session ended.
    pub fn clear(&mut self) {
        self.near_has.iter_mut().for_each(|n| *n = 0);
    }

    /// The pieces far peers may be asked for now; `None`: any.
    pub fn far_allowed(&self, now: Instant) -> Option<Bitfield> {
        self.me?;
        let count = u32::try_from(self.rank.len()).ok()?;
        let mut allowed = empty(count);
        for (i, rank) in (0..count).zip(&self.rank) {
            let at = i as usize;
            if self.near_has.get(at).is_some_and(|n| *n > 0) {
                continue;
            }
            let turn = IMPORT_STEP.saturating_mul(u32::from(*rank));
            let due = match self.offered.get(at).copied().flatten() {
                Some(t) => now.saturating_duration_since(t) >= turn,
                None => *rank == 0,
            };
            if due {
                let _ = allowed.set(i);
            }
        }
        Some(allowed)
    }

    /// The pieces this node is the first to import.
    pub fn imports(&self) -> Bitfield {
        let count = u32::try_from(self.rank.len()).unwrap_or(0);
        let mut first = empty(count);
        for (i, rank) in (0..count).zip(&self.rank) {
            if *rank == 0 {
                let _ = first.set(i);
            }
        }
        first
    }
}

/// Counts `key` in the ranks of `me` where it scores higher.
fn rank_against(rank: &mut [u16], me: u64, key: u64) {
    for (i, r) in (0u32..).zip(rank.iter_mut()) {
        if score(key, i) > score(me, i) {
            *r = r.saturating_add(1);
        }
    }
}

fn empty(count: u32) -> Bitfield {
    Bitfield::from_bytes(count, vec![0; (count as usize).div_ceil(8)]).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(count: u32, ones: impl IntoIterator<Item = u32>) -> Bitfield {
        let mut b = empty(count);
        for i in ones {
            b.set(i).unwrap();
        }
        b
    }

    fn rack(me: u64, near: &[u64], count: u32) -> Rack {
        let mut r = Rack::default();
        r.enable(me);
        r.adopt(count);
        for k in near {
            r.know(*k);
        }
        r
    }

    #[test]
    fn without_the_rule_every_piece_may_come_from_anywhere() {
        let mut r = Rack::default();
        r.adopt(8);
        assert!(r.far_allowed(Instant::now()).is_none());
    }

    /// A rack whose nodes all know each other agrees on every piece's order of importers,
    /// whichever order they learnt of each other in: one first, one second, and so on.
    #[test]
    fn a_rack_that_knows_itself_agrees_on_each_pieces_importers() {
        let keys: Vec<u64> = (0..12).map(|k| k * 7919 + 3).collect();
        let count = 500;
        let mut ranks = vec![Vec::new(); count as usize];
        for (at, me) in keys.iter().enumerate() {
            let mut others: Vec<u64> = keys.iter().copied().filter(|k| k != me).collect();
            others.rotate_left(at);
            let r = rack(*me, &others, count);
            for (i, rank) in r.rank.iter().enumerate() {
                ranks[i].push(*rank);
            }
            assert_eq!(
                r.imports().count_ones(),
                r.rank.iter().filter(|r| **r == 0).count() as u32
            );
        }
        for piece in &mut ranks {
            piece.sort_unstable();
            assert_eq!(*piece, (0..12).collect::<Vec<u16>>());
        }
        // Learnt before the blob's size: the same ranks.
        let mut early = Rack::default();
        early.enable(keys[0]);
        for k in &keys[1..] {
            early.know(*k);
        }
        early.adopt(count);
        assert_eq!(early.rank, rack(keys[0], &keys[1..], count).rank);
    }

    #[test]
    fn far_peers_are_asked_for_what_nobody_near_holds_in_each_importers_turn() {
        let t0 = Instant::now();
        let count = 64;
        let mut r = rack(1, &[2, 3, 4], count);
        let mine: Vec<u32> = r.imports().iter_ones().collect();
        let other = (0..count).find(|i| !r.imports().get(*i)).unwrap();
        assert!(!mine.is_empty() && mine.len() < count as usize);
        let first = mine[0];
        // A near peer holds one of this node's imports: that one comes from inside.
        r.counted(true, [first].into_iter(), t0);
        let allowed = r.far_allowed(t0).unwrap();
        assert!(!allowed.get(first) && mine[1..].iter().all(|i| allowed.get(*i)));
        assert!(!allowed.get(other));
        // A far peer offers a piece another node imports first: this node takes it when its
        // turn comes, a step for each node ranked before it.
        r.counted(false, [other].into_iter(), t0);
        let turn = IMPORT_STEP * u32::from(r.rank[other as usize]);
        assert!(turn >= IMPORT_STEP);
        assert!(!r
            .far_allowed(t0 + turn - Duration::from_millis(1))
            .unwrap()
            .get(other));
        assert!(r.far_allowed(t0 + turn).unwrap().get(other));
        // The near holder left: the import is this node's again.
        r.uncounted(true, &field(count, [first]));
        assert!(r.far_allowed(t0).unwrap().get(first));
    }
}
