//! When a blob's download stops asking peers: the peer phase's next move, decided from the
//! [`Exchange`] and the few facts only its driver knows (a share fetched from the upstream
//! now, the tracker's hand-over, the shares not started). The agent's `PeerPhase` asks after
//! every event; the simulator asks at the same points. Neither decides on its own.

use crate::download::Exchange;
use pollen_proto::Bitfield;
use std::ops::Range;
use std::time::Instant;

/// The peer phase's next move.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Every piece is here: the blob needs only its digest check.
    Complete,
    /// The tracker handed this node the fetch and no peer has a missing piece to give: the
    /// upstream supplies the rest.
    HandOver,
    /// Start fetching this share (its index among the shares given) from the upstream, beside
    /// the peer download.
    StartShare(usize),
    /// No session, nothing being written, no tracker to wait for and nobody to dial again:
    /// the upstream supplies the rest.
    NobodyLeft,
    /// Nobody left but a peer that could not be reached, which is dialled again shortly:
    /// wait for that.
    RetrySoon,
    /// No piece arrived for the stall window: the upstream supplies the rest.
    Stalled,
    /// Keep exchanging pieces.
    Continue,
}

/// What the driver knows beside the exchange.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// The pieces this node holds; `None` before the blob is opened here (its size is not
    /// known yet, so nothing is held and no peer is known to help).
    pub mine: Option<&'a Bitfield>,
    /// A share is being fetched from the upstream now: its end is progress, so the phase is
    /// neither stalled nor alone meanwhile, and no other share starts.
    pub fetching_share: bool,
    /// The tracker made this node the fetcher (`TrackerReply::Fetch`).
    pub fetch_duty: bool,
    /// A tracker coordinates the blob and another node fetches it: an empty moment between
    /// sessions is waited out, not a reason to go to the upstream.
    pub coordinated: bool,
    /// A peer whose stream failed to open is dialled again shortly.
    pub retry_soon: bool,
}

impl Exchange {
    /// The next move. `shares`: the shares of a split fetch given to this node and not
    /// started, in the order given, each with whether to fetch it even where peers hold its
    /// pieces (`FetchAlso`). A share starts when peers cannot help with it (a stripe just cut
    /// has nothing in the swarm yet; one handed on from a dead member may be partly held).
    pub fn next_step<'s>(
        &self,
        facts: Facts<'_>,
        shares: impl IntoIterator<Item = (&'s Range<u32>, bool)>,
        now: Instant,
    ) -> Step {
        if facts.mine.is_some_and(Bitfield::is_complete) {
            return Step::Complete;
        }
        if facts.fetching_share {
            return Step::Continue;
        }
        let helps = |only| facts.mine.is_some_and(|mine| self.can_help(mine, only));
        if facts.fetch_duty && !helps(None) {
            return Step::HandOver;
        }
        let ready = shares
            .into_iter()
            .position(|(pieces, also)| also || !helps(Some(pieces)));
        if let Some(i) = ready {
            return Step::StartShare(i);
        }
        if self.peers.is_empty() && self.writing.is_empty() && !facts.coordinated {
            return match facts.retry_soon {
                true => Step::RetrySoon,
                false => Step::NobodyLeft,
            };
        }
        match self.stall.stalled(now) {
            true => Step::Stalled,
            false => Step::Continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pollen_proto::PieceGeometry;
    use std::time::Duration;

    const MIB: u64 = 1 << 20;
    const STALL: Duration = Duration::from_secs(10);

    fn field(count: u32, ones: impl IntoIterator<Item = u32>) -> Bitfield {
        let g = PieceGeometry::new(u64::from(count) * MIB, MIB as u32).unwrap();
        let mut b = Bitfield::new(&g);
        for i in ones {
            b.set(i).unwrap();
        }
        b
    }

    /// An exchange over 8 pieces with every hash known, and one open peer holding `theirs`.
    fn exchange(theirs: &[u32], now: Instant) -> Exchange {
        let mut x = Exchange::new(STALL, now);
        x.adopt(8, field(8, 0..8), (0..8).collect());
        x.add(0);
        x.opened(0, field(8, theirs.iter().copied()), &field(8, []), now);
        x
    }

    fn facts(mine: &Bitfield) -> Facts<'_> {
        Facts {
            mine: Some(mine),
            fetching_share: false,
            fetch_duty: false,
            coordinated: false,
            retry_soon: false,
        }
    }

    const NO_SHARES: [(&Range<u32>, bool); 0] = [];

    #[test]
    fn a_complete_blob_is_complete_whatever_else_holds() {
        let t0 = Instant::now();
        let x = exchange(&[], t0);
        let mine = field(8, 0..8);
        let f = Facts {
            fetch_duty: true,
            ..facts(&mine)
        };
        assert_eq!(x.next_step(f, NO_SHARES, t0 + 2 * STALL), Step::Complete);
    }

    #[test]
    fn the_fetcher_takes_what_peers_have_before_it_hands_over() {
        let t0 = Instant::now();
        let mine = field(8, 0..4);
        let duty = Facts {
            fetch_duty: true,
            ..facts(&mine)
        };
        // The peer has piece 5, which this node lacks: keep taking it.
        let x = exchange(&[5], t0);
        assert_eq!(x.next_step(duty, NO_SHARES, t0), Step::Continue);
        // The peer has only what this node holds: the upstream supplies the rest.
        let x = exchange(&[0, 1], t0);
        assert_eq!(x.next_step(duty, NO_SHARES, t0), Step::HandOver);
    }

    #[test]
    fn a_share_starts_when_peers_cannot_help_with_it_or_it_is_fetched_anyway() {
        let t0 = Instant::now();
        let mine = field(8, []);
        let x = exchange(&[0, 1, 2, 3], t0);
        let (held, fresh) = (0..4, 4..8);
        assert_eq!(
            x.next_step(facts(&mine), [(&held, false), (&fresh, false)], t0),
            Step::StartShare(1),
            "the stripe nobody holds starts; the one peers hold waits for them"
        );
        assert_eq!(
            x.next_step(facts(&mine), [(&held, true)], t0),
            Step::StartShare(0),
            "FetchAlso: fetched even where peers hold it"
        );
        assert_eq!(
            x.next_step(facts(&mine), [(&held, false)], t0),
            Step::Continue
        );
        let busy = Facts {
            fetching_share: true,
            ..facts(&mine)
        };
        assert_eq!(
            x.next_step(busy, [(&fresh, false)], t0 + 2 * STALL),
            Step::Continue,
            "one share at a time, and a share in progress is not a stall"
        );
    }

    #[test]
    fn alone_it_goes_to_the_upstream_unless_a_tracker_or_a_retry_is_waited_for() {
        let t0 = Instant::now();
        let mine = field(8, []);
        let mut x = exchange(&[], t0);
        x.remove(0);
        assert_eq!(x.next_step(facts(&mine), NO_SHARES, t0), Step::NobodyLeft);
        let soon = Facts {
            retry_soon: true,
            ..facts(&mine)
        };
        assert_eq!(x.next_step(soon, NO_SHARES, t0), Step::RetrySoon);
        let coordinated = Facts {
            coordinated: true,
            ..facts(&mine)
        };
        assert_eq!(x.next_step(coordinated, NO_SHARES, t0), Step::Continue);
        assert_eq!(
            x.next_step(coordinated, NO_SHARES, t0 + STALL),
            Step::Stalled,
            "waiting for the tracker's peers ends at the stall window"
        );
    }

    #[test]
    fn before_the_blob_is_opened_nothing_is_complete_and_peers_cannot_help() {
        let t0 = Instant::now();
        let x = exchange(&[0, 1], t0);
        let unopened = Facts {
            mine: None,
            ..facts(&field(8, []))
        };
        assert_eq!(x.next_step(unopened, NO_SHARES, t0), Step::Continue);
        let duty = Facts {
            fetch_duty: true,
            ..unopened
        };
        assert_eq!(x.next_step(duty, NO_SHARES, t0), Step::HandOver);
        let held = 0..4;
        assert_eq!(
            x.next_step(unopened, [(&held, false)], t0),
            Step::StartShare(0)
        );
    }

    #[test]
    fn peers_that_send_nothing_for_the_stall_window_stall() {
        let t0 = Instant::now();
        let mine = field(8, []);
        let x = exchange(&[0, 1, 2], t0);
        assert_eq!(
            x.next_step(facts(&mine), NO_SHARES, t0 + STALL / 2),
            Step::Continue
        );
        assert_eq!(
            x.next_step(facts(&mine), NO_SHARES, t0 + STALL),
            Step::Stalled
        );
    }
}
