//! When a blob's download stops asking peers: the peer phase's next move, decided from the
//! [`Exchange`] and the few facts only its driver knows (a share fetched from the upstream
//! now, the tracker's hand-over, the shares not started). The agent's `PeerPhase` asks after
//! every event; the simulator asks at the same points. Neither decides on its own.

use crate::download::Exchange;
use pollen_proto::Bitfield;
use std::ops::Range;
use std::time::{Duration, Instant};

/// How long a node the tracker handed the fetch looks for holders the tracker does not know
/// before it asks the upstream: a tracker that took over after another died knows only the
/// members that rejoined it, not the nodes that held the blob whole before (known to Kademlia
/// alone). In the soak, fetches handed on after a tracker's death cost the registry 1.16 GiB
/// beyond one copy of what the cluster pulled. A lookup that finds nobody ends in a few round
/// trips inside a cluster; this bounds one held up by peers that do not answer.
pub const HANDOVER_LOOKUP: Duration = Duration::from_secs(1);
/// Holders found then that are dialled even with the download's sessions full.
pub const HANDOVER_DIALS: usize = 4;

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
    /// Within [`HANDOVER_LOOKUP`] of the tracker's hand-over.
    pub handover_window: bool,
    /// A provider lookup is running.
    pub looking_up: bool,
}

impl Exchange {
    /// A session has not said what it holds, or holds pieces this node lacks whose hashes have
    /// not come yet (a holder's piece map follows its `Have`).
    fn unanswered(&self, mine: Option<&Bitfield>) -> bool {
        self.peers.values().any(|p| match (&p.has, mine) {
            (None, _) => true,
            (Some(has), Some(mine)) => mine
                .iter_missing()
                .any(|i| has.get(i) && !self.known.get(i)),
            (Some(_), None) => false,
        })
    }

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
            // Holders the tracker did not know are looked for first, and those found are asked
            // what they hold (their `Have`, then the hashes of those pieces) before the
            // upstream is: only sessions that answered and have nothing checkable to give let
            // the hand-over go ahead. Waiting for the lookup alone was tried: Kademlia names
            // partial holders too, and a node that waited for them as holders stalled its
            // swarm (the registry sent the blob 3 times).
            if facts.handover_window && (facts.looking_up || self.unanswered(facts.mine)) {
                return Step::Continue;
            }
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
        x.adopt(8, field(8, 0..8), (0..8).collect(), now);
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
            handover_window: false,
            looking_up: false,
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
    fn a_hand_over_waits_for_holders_being_looked_for_and_their_answers_within_its_window() {
        let t0 = Instant::now();
        let mine = field(8, 0..4);
        let duty = Facts {
            fetch_duty: true,
            handover_window: true,
            ..facts(&mine)
        };
        let mut x = exchange(&[0, 1], t0);
        // Only the hashes of the pieces this node holds are known so far.
        x.known = field(8, 0..4);
        let looking = Facts {
            looking_up: true,
            ..duty
        };
        assert_eq!(x.next_step(looking, NO_SHARES, t0), Step::Continue);
        // A holder found: its session is waited for until it says what it holds...
        x.add(1);
        assert_eq!(x.next_step(duty, NO_SHARES, t0), Step::Continue);
        // ...and until the hashes of what it holds have come.
        x.opened(1, field(8, 0..8), &mine, t0);
        assert_eq!(x.next_step(duty, NO_SHARES, t0), Step::Continue);
        x.known = field(8, 0..8);
        assert_eq!(
            x.next_step(duty, NO_SHARES, t0),
            Step::Continue,
            "it holds what this node lacks: taken from it"
        );
        x.remove(1);
        assert_eq!(
            x.next_step(duty, NO_SHARES, t0),
            Step::HandOver,
            "every session answered and none can help"
        );
        // Past the window, nothing is waited for.
        x.add(2);
        let late = Facts {
            handover_window: false,
            ..looking
        };
        assert_eq!(x.next_step(late, NO_SHARES, t0), Step::HandOver);
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
