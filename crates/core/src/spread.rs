//! Super-seeding for the node that brings a blob into the swarm from the upstream.
//!
//! That node's upload is the swarm's entry point: every byte it sends twice is a byte of new
//! content it did not send. So while it fetches from the upstream (and after, until the swarm
//! has each piece), each new piece is announced to one downloading peer only: the first
//! session with room (fewer than [`QUOTA`] pieces it owns and has not sent yet). That peer
//! passes the piece on to the others, which hear of it from this node only when
//! - the owning session stalls: it sent nothing for [`REVEAL_AFTER`] while owning unsent
//!   pieces (a slow or vanished peer must not hold the swarm up);
//! - the piece was sent [`REVEAL_SENT_AFTER`] ago (its receiver had the time to pass it on);
//! - or the owning session ended (its unsent pieces are free for another session).
//!
//! Pieces no session has room for wait unannounced: this node's upload is then the
//! bottleneck, and they go to the first session that frees a place.
//!
//! [`Claims`] is the decision, fed the sessions' events; `pollen_peer::Spread` shares it
//! between a node's upload sessions and wakes them when it changes.

use pollen_proto::{Bitfield, PieceGeometry};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Pieces a session may own and not have sent yet: one being sent and one asked for next
/// keep a peer's pipeline busy, and each new piece goes to a session that can send it soon.
pub const QUOTA: usize = 2;
/// A session that owns unsent pieces and sent nothing for this long loses them to everyone.
pub const REVEAL_AFTER: Duration = Duration::from_secs(2);
/// A piece sent this long ago is announced to every session.
pub const REVEAL_SENT_AFTER: Duration = Duration::from_secs(6);
/// Blobs of fewer pieces are not super-seeded: the extra hop costs more than the duplicates.
pub const MIN_PIECES: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Claim {
    /// Not announced to anyone yet.
    Free,
    Owned {
        seat: u64,
        sent: Option<Instant>,
    },
    /// Announced to every session.
    Public,
}

/// One blob's announcements across its upload sessions ("seats").
#[derive(Debug)]
pub struct Claims {
    geometry: PieceGeometry,
    active: bool,
    pieces: Vec<Claim>,
    /// Each live seat's last progress: a piece sent, or its first claim after owning none.
    seats: BTreeMap<u64, Instant>,
    next_seat: u64,
}

impl Claims {
    /// Inactive until [`Claims::activate`]: a node downloading from peers passes every piece
    /// on to everyone at once.
    pub fn new(geometry: PieceGeometry) -> Claims {
        Claims {
            geometry,
            active: false,
            pieces: vec![Claim::Free; geometry.count() as usize],
            seats: BTreeMap::new(),
            next_seat: 0,
        }
    }

    /// On once this node appends the blob from the upstream. `present` are the pieces it has
    /// already (from peers, before it took over the fetch): announced before, so everyone's.
    /// Later calls do nothing.
    pub fn activate(&mut self, present: &Bitfield) {
        if self.active || self.geometry.count() < MIN_PIECES {
            return;
        }
        for index in present.iter_ones() {
            if let Some(claim) = self.pieces.get_mut(index as usize) {
                *claim = Claim::Public;
            }
        }
        self.active = true;
    }

    pub fn is_active(&self) -> bool {
        self.active
    }

    /// Pieces not announced yet, owned and unsent, owned and sent, and announced to all.
    pub fn counts(&self) -> [usize; 4] {
        let mut out = [0; 4];
        for claim in &self.pieces {
            let at = match claim {
                Claim::Free => 0,
                Claim::Owned { sent: None, .. } => 1,
                Claim::Owned { sent: Some(_), .. } => 2,
                Claim::Public => 3,
            };
            if let Some(n) = out.get_mut(at) {
                *n += 1;
            }
        }
        out
    }

    /// Piece `index` came from a peer, not from the upstream: the swarm has it already, so
    /// it is announced to everyone.
    pub fn received(&mut self, index: u32) {
        if let Some(claim) = self.pieces.get_mut(index as usize) {
            if *claim == Claim::Free {
                *claim = Claim::Public;
            }
        }
    }

    /// A new session: its seat.
    pub fn seat(&mut self, now: Instant) -> u64 {
        self.next_seat += 1;
        self.seats.insert(self.next_seat, now);
        self.next_seat
    }

    /// When a piece owned by another seat becomes everyone's.
    fn reveal_at(&self, seat: u64, sent: Option<Instant>, now: Instant) -> Instant {
        match sent {
            Some(at) => at + REVEAL_SENT_AFTER,
            None => self
                .seats
                .get(&seat)
                .map_or(now, |progress| *progress + REVEAL_AFTER),
        }
    }

    /// The pieces of `have` seat `seat` may announce at `now` (claiming free ones while it
    /// has room and `may_claim`: a choked session, which cannot send, takes nothing), and when
    /// more become visible without anything else happening. Inactive, or with another
    /// geometry: all of `have`.
    pub fn visible(
        &mut self,
        seat: u64,
        have: &Bitfield,
        now: Instant,
        may_claim: bool,
    ) -> (Bitfield, Option<Instant>) {
        if !self.active || have.count() != self.geometry.count() {
            return (have.clone(), None);
        }
        let mut load = self.release_if_stalled(seat, now);
        let mut out = Bitfield::new(&self.geometry);
        let mut next: Option<Instant> = None;
        // Nothing new left to hand out: pieces sent once are everyone's now, so this node's
        // upload serves copies instead of idling until [`REVEAL_SENT_AFTER`]. (At 600 nodes
        // pulling 3 GB at 300 MB/s, fetchers that had sent their whole share ran their uplinks
        // at a third while hundreds of pieces sat at two nodes for seconds; pollen-sim.)
        let hungry = may_claim
            && !have
                .iter_ones()
                .any(|i| self.pieces.get(i as usize) == Some(&Claim::Free));
        for index in have.iter_ones() {
            let Some(claim) = self.pieces.get(index as usize).copied() else {
                continue;
            };
            let show = match claim {
                Claim::Public => true,
                Claim::Owned { seat: s, .. } if s == seat => true,
                Claim::Owned { sent: Some(_), .. } if hungry => {
                    self.set(index, Claim::Public);
                    true
                }
                Claim::Owned { seat: s, sent } => {
                    let at = self.reveal_at(s, sent, now);
                    if now >= at {
                        self.set(index, Claim::Public);
                        true
                    } else {
                        next = Some(next.map_or(at, |n| n.min(at)));
                        false
                    }
                }
                Claim::Free if may_claim && load < QUOTA => {
                    if load == 0 {
                        // Owning nothing, it could not make progress until now.
                        self.seats.insert(seat, now);
                    }
                    self.set(index, Claim::Owned { seat, sent: None });
                    load += 1;
                    true
                }
                Claim::Free => false,
            };
            if show {
                let _ = out.set(index);
            }
        }
        // Pieces this session owns and does not send become everyone's when it stalls: look
        // again then, even if nothing else happens.
        if load > 0 {
            if let Some(progress) = self.seats.get(&seat) {
                let at = *progress + REVEAL_AFTER;
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        (out, next)
    }

    /// A seat that sent nothing for [`REVEAL_AFTER`] while owning unsent pieces (its peer
    /// does not ask for them: it is slow, or has them from elsewhere) gives them to everyone,
    /// which also frees its places. Returns the unsent pieces it still owns.
    fn release_if_stalled(&mut self, seat: u64, now: Instant) -> usize {
        let stalled = self
            .seats
            .get(&seat)
            .is_some_and(|progress| now >= *progress + REVEAL_AFTER);
        let mut load = 0;
        for claim in self.pieces.iter_mut() {
            if let Claim::Owned {
                seat: s,
                sent: None,
            } = *claim
            {
                if s == seat {
                    if stalled {
                        *claim = Claim::Public;
                    } else {
                        load += 1;
                    }
                }
            }
        }
        load
    }

    fn set(&mut self, index: u32, claim: Claim) {
        if let Some(c) = self.pieces.get_mut(index as usize) {
            *c = claim;
        }
    }

    /// The seat sent piece `index`: progress, and if it owned the piece, a free place.
    pub fn sent(&mut self, seat: u64, index: u32, now: Instant) {
        self.seats.insert(seat, now);
        if let Some(Claim::Owned { seat: s, sent }) = self.pieces.get_mut(index as usize) {
            if *s == seat && sent.is_none() {
                *sent = Some(now);
            }
        }
    }

    /// The seat's session lost its slot while it still asked (`upload::Slots::turn_over`):
    /// the pieces it owns and has not sent are free for another session, as when a session
    /// ends, since its requests were dropped. Left owned, the only copy of a piece waited
    /// [`REVEAL_AFTER`] for a session that could not ask for it (pollen-sim, 300 nodes: every
    /// node waited 1.4 s for the last piece). Returns whether any was freed.
    pub fn choked(&mut self, seat: u64) -> bool {
        let mut changed = false;
        for claim in self.pieces.iter_mut() {
            if *claim == (Claim::Owned { seat, sent: None }) {
                *claim = Claim::Free;
                changed = true;
            }
        }
        changed
    }

    /// The seat's session ended. Returns whether pieces became visible to the others (they
    /// should look again).
    pub fn leave(&mut self, seat: u64) -> bool {
        self.seats.remove(&seat);
        let mut changed = false;
        for claim in self.pieces.iter_mut() {
            if let Claim::Owned { seat: s, sent } = *claim {
                if s == seat {
                    // Unsent: another session may take it. Sent: its peer may pass it on or
                    // not; this node no longer knows, so everyone may ask.
                    *claim = if sent.is_none() {
                        Claim::Free
                    } else {
                        Claim::Public
                    };
                    changed = true;
                }
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollen_proto::MIN_PIECE_SIZE;

    #[test]
    fn a_seat_choked_gives_up_what_it_owns_unsent_and_keeps_what_it_sent() {
        let size = u64::from(MIN_PIECE_SIZE) * u64::from(MIN_PIECES);
        let g = PieceGeometry::new(size, MIN_PIECE_SIZE).unwrap();
        let mut c = Claims::new(g);
        c.activate(&Bitfield::new(&g));
        let mut have = Bitfield::new(&g);
        for i in 0..2 {
            let _ = have.set(i);
        }
        let t0 = Instant::now();
        let (a, b) = (c.seat(t0), c.seat(t0));
        let (shown, _) = c.visible(a, &have, t0, true);
        assert_eq!(shown.count_ones(), 2, "a owns both");
        c.sent(a, 0, t0);
        assert!(c.choked(a));
        let (shown, _) = c.visible(b, &have, t0, true);
        assert!(
            shown.get(1) && !shown.get(0),
            "b takes the unsent one; the sent one stays a's to pass on"
        );
        assert!(!c.choked(a), "nothing left unsent");
    }
}
