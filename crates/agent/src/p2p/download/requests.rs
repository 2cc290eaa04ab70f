//! Sends the requests the exchange decides on, within the node-wide limits.

use super::PeerPhase;
use crate::p2p::peer_task::ToPeer;
use crate::sink::Sink;
use pollen_core::download::{download_cap, BUSY_BUDGET, NODE_ACTIVE_PEERS};
use std::sync::atomic::Ordering;

impl PeerPhase<'_> {
    /// Keeps every unchoked peer's pipeline full, within the download's budget of pieces in
    /// flight (`pollen_core::download::Exchange::fill_within`): one piece while this node
    /// fetches from the upstream (`BUSY_BUDGET`), and requests to at most the peers the node's
    /// other downloads leave of `NODE_ACTIVE_PEERS`.
    pub(super) fn fill_requests(&mut self, sink: &Sink) {
        let piece_len = u64::from(sink.geometry.piece_size());
        let mut done = sink.have.clone();
        // The pieces of the share this node fetches from the upstream are not asked of peers.
        for i in self.fetching_share.clone().into_iter().flatten() {
            let _ = done.set(i);
        }
        let timeout = self.p2p.cfg.request_timeout;
        let budget = match self.p2p.upstream_fetches.load(Ordering::Relaxed) > 0 {
            true => BUSY_BUDGET.min(download_cap(piece_len)),
            false => download_cap(piece_len),
        };
        let others = self
            .p2p
            .active_peers
            .load(Ordering::Relaxed)
            .saturating_sub(self.active);
        let max_active = NODE_ACTIVE_PEERS.saturating_sub(others).max(1);
        let requests =
            self.x
                .fill_within(&done, piece_len, timeout, super::now(), budget, max_active);
        for (slot, index) in requests {
            let sent = self
                .tasks
                .get(&slot)
                .is_some_and(|t| t.send(ToPeer::Request(index)));
            if !sent {
                self.x.forget_request(index, slot);
            }
        }
        self.report_active();
        self.report_holding();
    }

    /// Brings this download's share of the node's active peers up to date.
    pub(super) fn report_active(&mut self) {
        let now = self.x.active_peers();
        let total = &self.p2p.active_peers;
        match now.cmp(&self.active) {
            std::cmp::Ordering::Greater => total.fetch_add(now - self.active, Ordering::Relaxed),
            std::cmp::Ordering::Less => total.fetch_sub(self.active - now, Ordering::Relaxed),
            std::cmp::Ordering::Equal => return,
        };
        self.active = now;
    }

    /// Brings this download's share of the slots the node holds up to date; every peer task
    /// tells its uploader the node's count (`P2p::holding`).
    pub(super) fn report_holding(&mut self) {
        let now = u32::try_from(self.x.unchoked_peers()).unwrap_or(u32::MAX);
        let before = std::mem::replace(&mut self.holding, now);
        if now != before {
            let total = &self.p2p.holding;
            total.send_modify(|n| *n = n.saturating_sub(before).saturating_add(now));
        }
    }
}
