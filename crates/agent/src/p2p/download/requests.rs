//! Sends the requests the exchange decides on, and asks it whether peers can still help.

use super::PeerPhase;
use crate::p2p::peer_task::ToPeer;
use crate::sink::Sink;

impl PeerPhase<'_> {
    /// Keeps every unchoked peer's pipeline full, within the download's budget of pieces in
    /// flight (`pollen_core::download::Exchange::fill`).
    pub(super) fn fill_requests(&mut self, sink: &Sink) {
        let piece_len = u64::from(sink.geometry.piece_size());
        let mut done = sink.have.clone();
        // The pieces of the share this node fetches from the upstream are not asked of peers.
        for i in self.fetching_share.clone().into_iter().flatten() {
            let _ = done.set(i);
        }
        let timeout = self.p2p.cfg.request_timeout;
        for (slot, index) in self.x.fill(&done, piece_len, timeout, super::now()) {
            let sent = self
                .tasks
                .get(&slot)
                .is_some_and(|t| t.send(ToPeer::Request(index)));
            if !sent {
                self.x.forget_request(index, slot);
            }
        }
    }
}
