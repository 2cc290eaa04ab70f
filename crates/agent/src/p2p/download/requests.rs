//! Which pieces the download asks which peer for, and whether peers can still help.

use super::PeerPhase;
use crate::p2p::peer_task::ToPeer;
use crate::p2p::picker::{pick, PickState};
use crate::sink::Sink;
use std::ops::Range;
use tokio::time::Instant;

impl PeerPhase<'_> {
    /// Keeps every unchoked peer's pipeline full.
    pub(super) fn fill_requests(&mut self, sink: &Sink) {
        let mut done = sink.have.clone();
        // Pieces being written, and those of the share this node fetches from the upstream.
        for i in self
            .writing
            .iter()
            .copied()
            .chain(self.fetching_share.clone().into_iter().flatten())
        {
            let _ = done.set(i);
        }
        let now = Instant::now();
        let peers = self.slots.values().filter(|e| e.has.is_some()).count();
        let mut slots: Vec<usize> = self.slots.keys().copied().collect();
        slots.sort_unstable();
        for slot in slots {
            while let Some(entry) = self.slots.get(&slot) {
                let Some(has) = entry.has.as_ref().filter(|_| entry.unchoked) else {
                    break;
                };
                if entry.outstanding >= entry.pipeline(u64::from(sink.geometry.piece_size())) {
                    break;
                }
                let state = PickState {
                    done: &done,
                    known: &self.known,
                    requests: &self.requests,
                    availability: &self.availability,
                    tie_break: &self.tie_break,
                    peers,
                    request_timeout: self.p2p.cfg.request_timeout,
                    now,
                };
                let Some(index) = pick(&state, slot, has) else {
                    break;
                };
                if !entry.task.send(ToPeer::Request(index)) {
                    break;
                }
                self.requests.entry(index).or_default().push((slot, now));
                if let Some(entry) = self.slots.get_mut(&slot) {
                    entry.outstanding += 1;
                    entry.first_request.get_or_insert(now);
                }
            }
        }
    }

    /// Whether peers can still supply a missing piece (of `only`, if given): one is requested
    /// or being written, or a connected peer announced one whose hash is known.
    pub(super) fn peers_can_help(&self, sink: &Sink, only: Option<&Range<u32>>) -> bool {
        let within = |i: &u32| only.is_none_or(|r| r.contains(i));
        self.requests.keys().any(within)
            || self.writing.iter().any(within)
            || sink.have.iter_missing().filter(within).any(|i| {
                self.availability.get(i as usize).is_some_and(|a| *a > 0) && self.known.get(i)
            })
    }

    pub(super) fn forget_request(&mut self, index: u32, slot: usize) {
        if let Some(reqs) = self.requests.get_mut(&index) {
            let before = reqs.len();
            reqs.retain(|(s, _)| *s != slot);
            if reqs.len() < before {
                if let Some(entry) = self.slots.get_mut(&slot) {
                    entry.outstanding = entry.outstanding.saturating_sub(1);
                }
            }
            if reqs.is_empty() {
                self.requests.remove(&index);
            }
        }
    }
}
