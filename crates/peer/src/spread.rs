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

use pollen_proto::{Bitfield, PieceGeometry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Pieces a session may own and not have sent yet: one being sent and one asked for next
/// keep a peer's pipeline busy, and each new piece goes to a session that can send it soon.
pub const QUOTA: usize = 2;
/// A session that owns unsent pieces and sent nothing for this long loses them to everyone.
pub const REVEAL_AFTER: Duration = Duration::from_secs(2);
/// A piece sent this long ago is announced to every session.
pub const REVEAL_SENT_AFTER: Duration = Duration::from_secs(6);
/// Blobs of fewer pieces are not super-seeded: the extra hop costs more than the duplicates.
pub const MIN_PIECES: u32 = 8;

/// One blob's announcements across its upload sessions (see the module docs).
pub struct Spread {
    geometry: PieceGeometry,
    active: AtomicBool,
    inner: Mutex<Inner>,
    /// Bumped when pieces become visible to other sessions without a timer of theirs (a seat
    /// left): every session looks again.
    news: tokio::sync::watch::Sender<u64>,
}

struct Inner {
    pieces: Vec<Claim>,
    /// Each live seat's last progress: a piece sent, or its first claim after owning none.
    seats: HashMap<u64, Instant>,
    next_seat: u64,
}

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

impl Spread {
    /// Inactive until [`Spread::activate`]: a node downloading from peers passes every piece
    /// on to everyone at once.
    pub fn new(geometry: PieceGeometry) -> Arc<Spread> {
        Arc::new(Spread {
            geometry,
            active: AtomicBool::new(false),
            inner: Mutex::new(Inner {
                pieces: vec![Claim::Free; geometry.count() as usize],
                seats: HashMap::new(),
                next_seat: 0,
            }),
            news: tokio::sync::watch::channel(0).0,
        })
    }

    /// On once this node appends the blob from the upstream. `present` are the pieces it has
    /// already (from peers, before it took over the fetch): announced before, so everyone's.
    /// Later calls do nothing.
    pub fn activate(&self, present: &Bitfield) {
        let mut inner = self.lock();
        if self.active.load(Ordering::Relaxed) || self.geometry.count() < MIN_PIECES {
            return;
        }
        for index in present.iter_ones() {
            if let Some(claim) = inner.pieces.get_mut(index as usize) {
                *claim = Claim::Public;
            }
        }
        self.active.store(true, Ordering::Relaxed);
    }

    /// Piece `index` came from a peer, not from the upstream: the swarm has it already, so
    /// it is announced to everyone (a node fetching one share of a blob takes the others from
    /// peers).
    pub fn received(&self, index: u32) {
        if let Some(claim) = self.lock().pieces.get_mut(index as usize) {
            if *claim == Claim::Free {
                *claim = Claim::Public;
            }
        }
    }

    pub(crate) fn seat(self: &Arc<Self>) -> Seat {
        let id = {
            let mut inner = self.lock();
            inner.next_seat += 1;
            let id = inner.next_seat;
            inner.seats.insert(id, Instant::now());
            id
        };
        Seat {
            news: self.news.subscribe(),
            spread: self.clone(),
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The state is consistent after every step, so a panic elsewhere does not spoil it.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Inner {
    /// When a piece owned by another seat becomes everyone's (`None`: its seat is gone, which
    /// already made it free or public).
    fn reveal_at(&self, seat: u64, sent: Option<Instant>) -> Instant {
        match sent {
            Some(at) => at + REVEAL_SENT_AFTER,
            None => self
                .seats
                .get(&seat)
                .map_or_else(Instant::now, |progress| *progress + REVEAL_AFTER),
        }
    }
}

/// One session's place in a [`Spread`].
pub(crate) struct Seat {
    spread: Arc<Spread>,
    id: u64,
    news: tokio::sync::watch::Receiver<u64>,
}

impl Seat {
    /// The pieces of `have` this session may announce at `now` (claiming free ones while it has
    /// room and `may_claim`: a choked session, which cannot send, takes nothing), and when more
    /// become visible without anything else happening. Inactive, or with another geometry: all
    /// of `have`.
    pub(crate) fn visible(
        &self,
        have: &Bitfield,
        now: Instant,
        may_claim: bool,
    ) -> (Bitfield, Option<Instant>) {
        let spread = &self.spread;
        if !spread.active.load(Ordering::Relaxed) || have.count() != spread.geometry.count() {
            return (have.clone(), None);
        }
        let mut inner = spread.lock();
        // A session that sent nothing for REVEAL_AFTER while owning unsent pieces (its peer
        // does not ask for them: it is slow, or has them from elsewhere) gives them to everyone,
        // which also frees its places.
        let stalled = inner
            .seats
            .get(&self.id)
            .is_some_and(|progress| now >= *progress + REVEAL_AFTER);
        let mut load = 0;
        for claim in inner.pieces.iter_mut() {
            if let Claim::Owned { seat, sent: None } = *claim {
                if seat == self.id {
                    if stalled {
                        *claim = Claim::Public;
                    } else {
                        load += 1;
                    }
                }
            }
        }
        let mut out = Bitfield::new(&spread.geometry);
        let mut next: Option<Instant> = None;
        for index in have.iter_ones() {
            let Some(claim) = inner.pieces.get(index as usize).copied() else {
                continue;
            };
            let show = match claim {
                Claim::Public => true,
                Claim::Owned { seat, .. } if seat == self.id => true,
                Claim::Owned { seat, sent } => {
                    let at = inner.reveal_at(seat, sent);
                    if now >= at {
                        inner.pieces[index as usize] = Claim::Public;
                        true
                    } else {
                        next = Some(next.map_or(at, |n| n.min(at)));
                        false
                    }
                }
                Claim::Free if may_claim && load < QUOTA => {
                    if load == 0 {
                        // Owning nothing, it could not make progress until now.
                        inner.seats.insert(self.id, now);
                    }
                    inner.pieces[index as usize] = Claim::Owned {
                        seat: self.id,
                        sent: None,
                    };
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
            if let Some(progress) = inner.seats.get(&self.id) {
                let at = *progress + REVEAL_AFTER;
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        }
        (out, next)
    }

    /// Resolves when another session's departure made pieces visible: look again.
    pub(crate) async fn changed(&mut self) {
        if self.news.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The session sent piece `index`: progress, and if it owned the piece, a free place.
    pub(crate) fn sent(&self, index: u32, now: Instant) {
        let mut inner = self.spread.lock();
        inner.seats.insert(self.id, now);
        if let Some(Claim::Owned { seat, sent }) = inner.pieces.get_mut(index as usize) {
            if *seat == self.id && sent.is_none() {
                *sent = Some(now);
            }
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        let mut inner = self.spread.lock();
        inner.seats.remove(&self.id);
        let mut changed = false;
        for claim in inner.pieces.iter_mut() {
            if let Claim::Owned { seat, sent } = *claim {
                if seat == self.id {
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
        if changed {
            self.spread.news.send_modify(|n| *n += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollen_proto::MIN_PIECE_SIZE;

    fn geometry(pieces: u32) -> PieceGeometry {
        PieceGeometry::new(
            u64::from(pieces) * u64::from(MIN_PIECE_SIZE),
            MIN_PIECE_SIZE,
        )
        .unwrap()
    }

    fn ones(b: &Bitfield) -> Vec<u32> {
        b.iter_ones().collect()
    }

    #[test]
    fn inactive_shows_everything() {
        let g = geometry(10);
        let spread = Spread::new(g);
        let seat = spread.seat();
        let full = Bitfield::full(&g);
        let (shown, next) = seat.visible(&full, Instant::now(), true);
        assert_eq!(shown, full);
        assert_eq!(next, None);
    }

    #[tokio::test(start_paused = true)]
    async fn each_new_piece_goes_to_one_session_until_its_owner_stalls() {
        let g = geometry(12);
        let spread = Spread::new(g);
        spread.activate(&Bitfield::new(&spread.geometry));
        let (a, b) = (spread.seat(), spread.seat());
        let mut have = Bitfield::new(&g);
        for i in 0..6 {
            have.set(i).unwrap();
        }
        let now = Instant::now();
        let (shown_a, next_a) = a.visible(&have, now, true);
        assert_eq!(ones(&shown_a), vec![0, 1], "a takes its quota");
        assert_eq!(
            next_a,
            Some(now + REVEAL_AFTER),
            "a looks again when its own unsent pieces would go to everyone"
        );
        let (shown_b, next_b) = b.visible(&have, now, true);
        assert_eq!(ones(&shown_b), vec![2, 3], "b the next two");
        assert_eq!(
            next_b,
            Some(now + REVEAL_AFTER),
            "a's pieces open up if a stalls"
        );
        // Pieces 4 and 5 wait for a free place: nobody sees them.
        assert!(!a.visible(&have, now, true).0.get(4));

        // a sends one of its pieces: a place frees, a takes the next free piece; what a sent
        // stays its own until its peer had the time to pass it on.
        tokio::time::advance(Duration::from_secs(1)).await;
        a.sent(0, Instant::now());
        assert_eq!(
            ones(&a.visible(&have, Instant::now(), true).0),
            vec![0, 1, 4]
        );
        assert_eq!(ones(&b.visible(&have, Instant::now(), true).0), vec![2, 3]);

        // b sends nothing for REVEAL_AFTER: a sees b's pieces. b's view of a's: a made
        // progress at 1 s, so its unsent piece 1 opens at 3 s, its sent piece 0 at 7 s.
        tokio::time::advance(Duration::from_secs(1)).await;
        let (shown_a, _) = a.visible(&have, Instant::now(), true);
        assert_eq!(ones(&shown_a), vec![0, 1, 2, 3, 4]);
        let (shown_b, next_b) = b.visible(&have, Instant::now(), true);
        assert_eq!(
            ones(&shown_b),
            vec![2, 3, 5],
            "its stalled pieces are everyone's now, so b has room for 5"
        );
        assert_eq!(next_b, Some(now + Duration::from_secs(3)));
        tokio::time::advance(Duration::from_secs(5)).await;
        let (shown_b, _) = b.visible(&have, Instant::now(), true);
        assert_eq!(ones(&shown_b), vec![0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_leaving_session_frees_what_it_never_sent() {
        let g = geometry(8);
        let spread = Spread::new(g);
        spread.activate(&Bitfield::new(&spread.geometry));
        let have = Bitfield::full(&g);
        let now = Instant::now();
        let a = spread.seat();
        assert_eq!(ones(&a.visible(&have, now, true).0), vec![0, 1]);
        a.sent(1, now);
        drop(a);
        let b = spread.seat();
        // 0 is free again and b claims it (and 2); 1 was sent by a departed session: public.
        assert_eq!(ones(&b.visible(&have, now, true).0), vec![0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_takeover_fetcher_shares_what_it_had_and_stalled_places_free_up() {
        let g = geometry(8);
        let spread = Spread::new(g);
        let a = spread.seat();
        let mut have = Bitfield::new(&g);
        for i in 0..4 {
            have.set(i).unwrap();
        }
        // Downloaded from peers before taking over: announced to everyone already.
        spread.activate(&have);
        let full = Bitfield::full(&g);
        let now = Instant::now();
        assert_eq!(ones(&a.visible(&full, now, true).0), vec![0, 1, 2, 3, 4, 5]);
        // a's peer never asks for 4 and 5 (it has them from elsewhere): after REVEAL_AFTER they
        // are everyone's and a has room for the next ones.
        tokio::time::advance(REVEAL_AFTER).await;
        assert_eq!(
            ones(&a.visible(&full, Instant::now(), true).0),
            (0..8).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_choked_session_claims_nothing() {
        let g = geometry(8);
        let spread = Spread::new(g);
        spread.activate(&Bitfield::new(&g));
        let (choked, open) = (spread.seat(), spread.seat());
        let full = Bitfield::full(&g);
        let now = Instant::now();
        assert!(ones(&choked.visible(&full, now, false).0).is_empty());
        assert_eq!(ones(&open.visible(&full, now, true).0), vec![0, 1]);
    }

    #[test]
    fn small_blobs_are_not_spread() {
        let g = geometry(MIN_PIECES - 1);
        let spread = Spread::new(g);
        spread.activate(&Bitfield::new(&g));
        let full = Bitfield::full(&g);
        assert_eq!(spread.seat().visible(&full, Instant::now(), true).0, full);
    }

    #[tokio::test]
    async fn a_departing_session_wakes_the_others() {
        let g = geometry(8);
        let spread = Spread::new(g);
        spread.activate(&Bitfield::new(&g));
        let full = Bitfield::full(&g);
        let (a, mut b) = (spread.seat(), spread.seat());
        let now = Instant::now();
        a.visible(&full, now, true);
        a.sent(0, now);
        drop(a);
        tokio::time::timeout(Duration::from_secs(5), b.changed())
            .await
            .expect("b is told to look again");
        assert!(
            b.visible(&full, now, true).0.get(0),
            "a's sent piece is everyone's"
        );
    }

    #[test]
    fn another_geometry_is_not_filtered() {
        let spread = Spread::new(geometry(8));
        spread.activate(&Bitfield::new(&spread.geometry));
        let seat = spread.seat();
        let other = Bitfield::full(&geometry(3));
        assert_eq!(seat.visible(&other, Instant::now(), true).0, other);
    }
}
