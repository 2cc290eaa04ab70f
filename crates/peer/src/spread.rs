//! Super-seeding shared by a node's upload sessions of one blob: the decisions are
//! `pollen_core::spread::Claims` (see there for the rules); this shares them behind a lock and
//! wakes the other sessions when one's departure makes pieces visible.

use pollen_core::spread::Claims;
use pollen_proto::{Bitfield, PieceGeometry};
use std::sync::{Arc, Mutex};
use tokio::time::Instant;

/// One blob's announcements across its upload sessions.
pub struct Spread {
    claims: Mutex<Claims>,
    /// Bumped when pieces become visible to other sessions without a timer of theirs (a seat
    /// left): every session looks again.
    news: tokio::sync::watch::Sender<u64>,
}

impl Spread {
    /// Inactive until [`Spread::activate`]: a node downloading from peers passes every piece
    /// on to everyone at once.
    pub fn new(geometry: PieceGeometry) -> Arc<Spread> {
        Arc::new(Spread {
            claims: Mutex::new(Claims::new(geometry)),
            news: tokio::sync::watch::channel(0).0,
        })
    }

    /// On once this node appends the blob from the upstream (`Claims::activate`).
    pub fn activate(&self, present: &Bitfield) {
        self.lock().activate(present);
    }

    /// Piece `index` came from a peer, not from the upstream (`Claims::received`).
    pub fn received(&self, index: u32) {
        self.lock().received(index);
    }

    pub(crate) fn seat(self: &Arc<Self>) -> Seat {
        let id = self.lock().seat(Instant::now().into_std());
        Seat {
            news: self.news.subscribe(),
            spread: self.clone(),
            id,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Claims> {
        // The state is consistent after every step, so a panic elsewhere does not spoil it.
        self.claims.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One session's place in a [`Spread`].
pub(crate) struct Seat {
    spread: Arc<Spread>,
    id: u64,
    news: tokio::sync::watch::Receiver<u64>,
}

impl Seat {
    /// The pieces of `have` this session may announce at `now`, and when more become visible
    /// without anything else happening (`Claims::visible`).
    pub(crate) fn visible(
        &self,
        have: &Bitfield,
        now: Instant,
        may_claim: bool,
    ) -> (Bitfield, Option<Instant>) {
        let (shown, next) = self
            .spread
            .lock()
            .visible(self.id, have, now.into_std(), may_claim);
        (shown, next.map(Instant::from_std))
    }

    /// Resolves when another session's departure made pieces visible: look again.
    pub(crate) async fn changed(&mut self) {
        if self.news.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The session sent piece `index`: progress, and if it owned the piece, a free place.
    /// While super-seeding, the other sessions look again: once this node has nothing new to
    /// hand out, the pieces it sent are everyone's (`Claims::visible`).
    pub(crate) fn sent(&self, index: u32, now: Instant) {
        let active = {
            let mut claims = self.spread.lock();
            claims.sent(self.id, index, now.into_std());
            claims.is_active()
        };
        if active {
            self.spread.news.send_modify(|n| *n += 1);
        }
    }

    /// The session lost its slot while it asked: the pieces it owns unsent go to others
    /// (`Claims::choked`), who look again.
    pub(crate) fn choked(&self) {
        if self.spread.lock().choked(self.id) {
            self.spread.news.send_modify(|n| *n += 1);
        }
    }
}

impl Drop for Seat {
    fn drop(&mut self) {
        if self.spread.lock().leave(self.id) {
            self.spread.news.send_modify(|n| *n += 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollen_core::spread::{MIN_PIECES, REVEAL_AFTER};
    use pollen_proto::MIN_PIECE_SIZE;
    use std::time::Duration;

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
        spread.activate(&Bitfield::new(&g));
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
        spread.activate(&Bitfield::new(&g));
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

    #[tokio::test]
    async fn with_nothing_new_to_hand_out_pieces_sent_once_are_everyones() {
        let g = geometry(8);
        let spread = Spread::new(g);
        spread.activate(&Bitfield::new(&g));
        let mut have = Bitfield::new(&g);
        for i in 0..4 {
            have.set(i).unwrap();
        }
        let now = Instant::now();
        let (a, mut b) = (spread.seat(), spread.seat());
        assert_eq!(ones(&a.visible(&have, now, true).0), vec![0, 1]);
        assert_eq!(ones(&b.visible(&have, now, true).0), vec![2, 3]);
        a.sent(0, now);
        tokio::time::timeout(Duration::from_secs(5), b.changed())
            .await
            .expect("a piece sent while super-seeding wakes the other sessions");
        // Every piece here is claimed: b has nothing new to take, so what a sent is b's to
        // announce now, not after REVEAL_SENT_AFTER; what a has not sent yet stays a's.
        assert_eq!(ones(&b.visible(&have, now, true).0), vec![0, 2, 3]);
        // With a free piece left, the rule does not apply: b takes the free piece instead.
        have.set(4).unwrap();
        let c = spread.seat();
        assert_eq!(ones(&c.visible(&have, now, true).0), vec![0, 4]);
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
        let g = geometry(8);
        let spread = Spread::new(g);
        spread.activate(&Bitfield::new(&g));
        let seat = spread.seat();
        let other = Bitfield::full(&geometry(3));
        assert_eq!(seat.visible(&other, Instant::now(), true).0, other);
    }
}
