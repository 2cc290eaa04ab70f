//! Where a downloader learns the hashes it checks pieces against (`--hashes`). The agent
//! requests a piece only once it holds the piece's hash, and takes hashes only from a peer
//! that vouches for them: the node that fetched the piece from the registry, or one that
//! completed the blob (docs/trust-model.md, "Piece maps"). Such a peer sends them over every
//! session to it, also one waiting for a slot, never over one it turned away. `relayed` lets
//! any peer that announces a piece vouch for it, a what-if of hashes signed by their producer.

use crate::config::HashSource;
use crate::world::{Ev, World};

impl World {
    /// Whether hashes come from their producers only (the agent as built).
    pub(crate) fn producers_only(&self) -> bool {
        self.s.hashes == HashSource::Producers
    }

    /// Node `n` vouches for `piece` (fetched from the registry), or for every piece (`None`:
    /// it completed the blob); its sessions' downloaders are sent the new hashes.
    pub(crate) fn vouch(&mut self, n: usize, layer: usize, piece: Option<u32>) {
        if !self.producers_only() {
            return;
        }
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        match piece {
            Some(i) => {
                let _ = f.vouched.set(i);
            }
            None => f.vouched = f.have.clone(),
        }
        for sid in f.uploads.clone() {
            self.send_hashes(sid);
        }
    }

    /// Sends a session's downloader the hashes its uploader vouches for and has not sent it.
    pub(crate) fn send_hashes(&mut self, sid: usize) {
        if !self.producers_only() {
            return;
        }
        let Some((up, down, layer)) = self
            .sessions
            .get(sid)
            .filter(|s| s.open)
            .map(|s| (s.up, s.down, s.layer))
        else {
            return;
        };
        let Some(vouched) = self.fetch(up, layer).map(|f| &f.vouched) else {
            return;
        };
        let Some(s) = self.sessions.get(sid) else {
            return;
        };
        let fresh: Vec<u32> = vouched
            .iter_ones()
            .filter(|i| !s.hashes_sent.get(*i))
            .collect();
        if fresh.is_empty() {
            return;
        }
        if let Some(s) = self.sessions.get_mut(sid) {
            for &i in &fresh {
                let _ = s.hashes_sent.set(i);
            }
        }
        let delay = self.topo.latency(up, down);
        self.after(delay, Ev::Hashes(sid, fresh));
    }

    /// Hashes arrived over a session: the pieces can be asked for now.
    pub(crate) fn on_hashes(&mut self, sid: usize, pieces: Vec<u32>) {
        let Some((down, layer)) = self.open_download(sid) else {
            return;
        };
        let Some(f) = self.fetch_mut(down, layer) else {
            return;
        };
        if !f.sessions.values().any(|s| *s == sid) {
            return;
        }
        let mut new = false;
        for i in pieces {
            new |= f.x.known.set(i).unwrap_or(false) && !f.have.get(i);
        }
        if new {
            self.fill(down, layer);
        }
    }
}
