//! The tracker role's question to its node: does another tracker coordinate this blob
//! already? ([`pollen_tracker::OtherTrackers`]).
//!
//! Every agent is a tracker by default, and the tracker of a blob is the one rendezvous
//! hashing ranks first among the trackers an agent knows. While a cluster starts (a DaemonSet
//! starts every agent in the same second), agents' lists differ for a moment: one that found
//! trackers the others have not heard of yet may rank one of them first, join it, and be made
//! a second fetcher beside the swarm's. A tracker asked about a blob it does not know asks the
//! trackers ranked after it in its own list (which holds the others' choice: lists only grow
//! while agents start) and sends the member to the one that has the blob's swarm.

use super::P2p;
use pollen_oci::Digest;
use pollen_proto::{TrackerReply, TrackerRequest};
use pollen_swarm::PeerId;
use std::cmp::Reverse;
use std::time::Duration;
use tokio::time::timeout;
use tracing::debug;

/// Trackers asked: a node that joined late may know several trackers the others do not, all
/// ranked above the others' choice.
const ASKED: usize = 8;
/// The bound on each answer: inside a cluster a round trip is a millisecond; a tracker that
/// does not answer in time is taken not to coordinate the blob.
const ANSWER_TIMEOUT: Duration = Duration::from_millis(800);
/// How often a lower-ranked tracker asking the same question is asked again, and until when
/// (counted from the first question; within the tracker's own 1 s bound on the whole probe).
const REASK_EVERY: Duration = Duration::from_millis(25);
const REASK_UNTIL: Duration = Duration::from_millis(900);
/// The bound on looking the trackers up again when this one knows no other (within the
/// tracker's 1 s bound on the whole probe, leaving time to ask them).
const FRESH_LOOKUP: Duration = Duration::from_millis(400);

/// What one tracker said: its members and remembered holders of the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Answer {
    pub tracker: PeerId,
    pub members: u32,
    pub holders: u32,
    pub probing: bool,
}

/// The other trackers as this node sees them (its tracker directory).
pub(crate) struct Others(pub std::sync::Weak<P2p>);

impl pollen_tracker::OtherTrackers for Others {
    fn coordinating<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Vec<u8>>> + Send + 'a>> {
        Box::pin(async move {
            let p2p = &self.0.upgrade()?;
            let me = p2p.node.peer_id();
            let started = tokio::time::Instant::now();
            let mut known = p2p.directory.trackers(p2p).await;
            if !known.iter().any(|t| *t != me) {
                // A member chose this tracker from its own list, so there are trackers; a list
                // of none (looked up, and kept a moment, before this node found its peers)
                // would make this one a fetcher beside the swarm's: look again, briefly.
                let _ = timeout(FRESH_LOOKUP, p2p.directory.refresh(p2p)).await;
                known = p2p.directory.trackers(p2p).await;
            }
            let order = super::tracker::rendezvous(digest, &known);
            let asked: Vec<PeerId> = order
                .iter()
                .filter(|t| **t != me)
                .take(ASKED)
                .copied()
                .collect();
            let mut answers = ask_all(p2p, *digest, &asked).await;
            // A lower-ranked tracker asking too either gives way (it saw this one asking) or
            // asked before this one knew the blob and keeps it (measured: two fetchers in 1 of
            // 20 start-ups): its outcome decides, so it is asked until it has one.
            loop {
                let pending = still_asking(me, &order, &answers);
                if pending.is_empty() || started.elapsed() + REASK_EVERY >= REASK_UNTIL {
                    break;
                }
                tokio::time::sleep(REASK_EVERY).await;
                answers.retain(|a| !pending.contains(&a.tracker));
                answers.extend(ask_all(p2p, *digest, &pending).await);
            }
            let chosen = choose(me, &order, answers.iter().copied());
            debug!(%digest, ?answers, ?chosen, "asked the other trackers about a new blob");
            chosen.map(|t| t.to_bytes())
        })
    }
}

/// The answers of `trackers`, asked at once (those that gave none left out).
async fn ask_all(p2p: &P2p, digest: Digest, trackers: &[PeerId]) -> Vec<Answer> {
    let asked = trackers.iter().map(|t| members(p2p, digest, *t));
    futures_util::future::join_all(asked)
        .await
        .into_iter()
        .flatten()
        .collect()
}

/// Where `t` stands in `order` (a tracker not in it last).
fn rank(order: &[PeerId], t: &PeerId) -> usize {
    order.iter().position(|o| o == t).unwrap_or(usize::MAX)
}

/// Trackers ranked below `me` that are asking the same question and hold nothing yet: whether
/// they keep the blob or give way is still open.
fn still_asking(me: PeerId, order: &[PeerId], answers: &[Answer]) -> Vec<PeerId> {
    answers
        .iter()
        .filter(|a| a.probing && a.members == 0 && a.holders == 0)
        .filter(|a| rank(order, &a.tracker) > rank(order, &me))
        .map(|a| a.tracker)
        .collect()
}

/// The decision, apart from the asking: the tracker with the most members and holders (the
/// higher-ranked one of equals); with none anywhere, a tracker asking the same question at this
/// moment that rendezvous ranks above `me` (both trackers agree on which of the two ranks
/// higher, whatever else their lists hold, so exactly one of them gives way).
pub(crate) fn choose(
    me: PeerId,
    order: &[PeerId],
    answers: impl IntoIterator<Item = Answer>,
) -> Option<PeerId> {
    let rank = |t: &PeerId| rank(order, t);
    let answers: Vec<Answer> = answers.into_iter().collect();
    let held = answers
        .iter()
        .map(|a| (a.tracker, a.members.saturating_add(a.holders)))
        .filter(|(_, n)| *n > 0)
        .max_by_key(|(t, n)| (*n, Reverse(rank(t))))
        .map(|(t, _)| t);
    held.or_else(|| {
        answers
            .iter()
            .filter(|a| a.probing && rank(&a.tracker) < rank(&me))
            .min_by_key(|a| rank(&a.tracker))
            .map(|a| a.tracker)
    })
}

/// One tracker's answer, within [`ANSWER_TIMEOUT`] (`ask` retries a stream that
/// libp2p-stream dropped in a burst: every first member of a rollout asks at once).
async fn members(p2p: &P2p, digest: Digest, tracker: PeerId) -> Option<Answer> {
    let req = TrackerRequest::Members { digest };
    match timeout(ANSWER_TIMEOUT, super::tracker::ask(p2p, tracker, &req))
        .await
        .ok()??
    {
        TrackerReply::Members {
            members,
            holders,
            probing,
        } => Some(Answer {
            tracker,
            members,
            holders,
            probing,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(tracker: PeerId, members: u32, holders: u32, probing: bool) -> Answer {
        Answer {
            tracker,
            members,
            holders,
            probing,
        }
    }

    #[test]
    fn sends_a_first_member_to_the_tracker_that_has_the_swarm() {
        let order: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let me = order[0];
        let none = [answer(order[1], 0, 0, false), answer(order[2], 0, 0, false)];
        assert_eq!(choose(me, &order, none), None, "nobody else knows the blob");
        let swarm = [answer(order[1], 1, 0, false), answer(order[2], 5, 0, false)];
        assert_eq!(
            choose(me, &order, swarm),
            Some(order[2]),
            "the larger swarm"
        );
        let held = [answer(order[2], 0, 2, false)];
        assert_eq!(
            choose(me, &order, held),
            Some(order[2]),
            "holders count too"
        );
        let equal = [answer(order[2], 1, 0, false), answer(order[1], 1, 0, false)];
        assert_eq!(
            choose(me, &order, equal),
            Some(order[1]),
            "equals: the higher rank"
        );
    }

    #[test]
    fn of_two_trackers_asking_at_once_the_lower_ranked_gives_way() {
        let order: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let asking = |t: PeerId| [answer(t, 0, 0, true)];
        assert_eq!(choose(order[1], &order, asking(order[0])), Some(order[0]));
        assert_eq!(choose(order[0], &order, asking(order[1])), None);
        // A swarm anywhere beats a question.
        let both = [answer(order[0], 0, 0, true), answer(order[2], 2, 0, false)];
        assert_eq!(choose(order[1], &order, both), Some(order[2]));
    }

    #[test]
    fn the_higher_ranked_of_two_asking_waits_for_the_lower_ones_outcome() {
        // The lower-ranked tracker may have asked before the higher one knew the blob (and
        // so keep it): the higher one asks again until the lower one has members or gave way.
        let order: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let asking = [answer(order[1], 0, 0, true), answer(order[2], 0, 0, false)];
        assert_eq!(still_asking(order[0], &order, &asking), vec![order[1]]);
        assert_eq!(
            still_asking(order[2], &order, &asking),
            vec![],
            "ranked above: gives way"
        );
        let kept = [answer(order[1], 1, 0, true)];
        assert_eq!(
            still_asking(order[0], &order, &kept),
            vec![],
            "it has members"
        );
        assert_eq!(choose(order[0], &order, kept), Some(order[1]));
    }
}
