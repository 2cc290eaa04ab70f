//! Which pieces the download asks which peer for, and whether peers can still help.

use super::PeerPhase;
use crate::p2p::peer_task::ToPeer;
use crate::p2p::picker::{pick, PickState};
use crate::p2p::slot::download_cap;
use crate::sink::Sink;
use std::ops::Range;
use tokio::time::Instant;

impl PeerPhase<'_> {
    /// Keeps every unchoked peer's pipeline full, within the download's budget of pieces in
    /// flight (requested, or received and being written).
    pub(super) fn fill_requests(&mut self, sink: &Sink) {
        let piece_len = u64::from(sink.geometry.piece_size());
        let budget = download_cap(piece_len);
        let mut in_flight = self
            .slots
            .values()
            .map(|e| e.outstanding)
            .sum::<usize>()
            .saturating_add(self.writing.len());
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
        if !slots.is_empty() {
            self.first_turn = self.first_turn.wrapping_add(1);
            let turn = self.first_turn % slots.len();
            slots.rotate_left(turn);
        }
        for slot in slots {
            while let Some(entry) = self.slots.get(&slot) {
                let Some(has) = entry.has.as_ref().filter(|_| entry.unchoked) else {
                    break;
                };
                if in_flight >= budget {
                    return;
                }
                if entry.outstanding >= entry.pipeline(piece_len) {
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
                in_flight = in_flight.saturating_add(1);
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
