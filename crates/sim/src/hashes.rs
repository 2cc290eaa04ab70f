//! Where a downloader learns the hashes it checks pieces against (`--hashes`). The agent
//! requests a piece only once it holds the piece's hash. As built since the eighth session of
//! part 9 (`held`), a session carries the hash of each piece it announces, signed by the
//! piece's producer, in the batch of the piece's `Have`. From the fourth session to then
//! (`relayed`), it carried every hash the uploader vouched for ahead of the pieces: the hashes
//! it produced (fetched from the registry) and every hash it took from a peer
//! (`Reply::SignedHashes`), sent when the session's writer was free, before the `Have`s of
//! their pieces. Before that (`producers`), an uploader sent its own only, and every hash once
//! it completed the blob (docs/trust-model.md, "Piece maps"). Sessions that were turned away
//! carry none.

use crate::config::HashSource;
use crate::world::{Ev, World};
use pollen_core::download::Exchange;
use pollen_proto::Bitfield;

/// With `--hashes held` every announcement (`Have` on opening, `HaveMore`) carries the hashes
/// of its pieces: the uploader holds each piece it announces, so it holds the piece's hash
/// signed by its producer, and sends it in the same batch, just before. Known on arrival.
pub(crate) fn with_announcement(
    hashes: HashSource,
    x: &mut Exchange,
    pieces: impl Iterator<Item = u32>,
) {
    if hashes != HashSource::Held {
        return;
    }
    for i in pieces {
        let _ = x.known.set(i);
    }
}

impl World {
    /// Node `n` vouches for more hashes: `pieces`, or every piece (`None`: it completed the
    /// blob). Each of its sessions hears of them now, or when its writer is next free.
    pub(crate) fn vouch(&mut self, n: usize, layer: usize, pieces: Option<&[u32]>) {
        if self.s.hashes == HashSource::Held {
            return; // the hashes go with the announcements (`with_announcement`)
        }
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        match pieces {
            Some(list) => {
                for &i in list {
                    f.vouched_n += u32::from(f.vouched.set(i).unwrap_or(false));
                }
            }
            None => {
                f.vouched = f.have.clone();
                f.vouched_n = f.vouched.count_ones();
            }
        }
        // By index: copying the list for every vouch showed in profiles.
        for k in 0.. {
            let Some(sid) = self.fetch(n, layer).and_then(|f| f.uploads.get(k).copied()) else {
                break;
            };
            let Some(s) = self.sessions.get_mut(sid).filter(|s| s.open) else {
                continue;
            };
            match s.queued {
                0 => self.send_hashes(sid),
                _ => s.dirty = true,
            }
        }
    }

    /// Sends a session's downloader the hashes its uploader vouches for and has not sent it.
    pub(crate) fn send_hashes(&mut self, sid: usize) {
        if self.s.hashes == HashSource::Held {
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
        let (Some(f), Some(s)) = (self.fetch(up, layer), self.sessions.get(sid)) else {
            return;
        };
        // Sent hashes are vouched ones: equal counts, nothing new (the usual case, checked
        // after every piece the session sends).
        if s.hashes_n == f.vouched_n {
            return;
        }
        // Allocated at the first hash sent: most sessions never need it.
        if s.hashes_sent.count() == 0 {
            let g = self.geometry(self.blob_of(up, layer));
            if let Some(s) = self.sessions.get_mut(sid) {
                s.hashes_sent = Bitfield::new(&g);
            }
        }
        let (Some(f), Some(s)) = (self.fetch(up, layer), self.sessions.get(sid)) else {
            return;
        };
        let mut fresh = Vec::new();
        let pairs = f.vouched.as_bytes().iter().zip(s.hashes_sent.as_bytes());
        for (at, (v, sent)) in (0u32..).zip(pairs) {
            let new = v & !sent;
            if new == 0 {
                continue;
            }
            fresh.extend(
                (0..8u32)
                    .filter(|b| new & (0x80 >> b) != 0)
                    .map(|b| at * 8 + b),
            );
        }
        if let Some(s) = self.sessions.get_mut(sid) {
            for &i in &fresh {
                s.hashes_n += u32::from(s.hashes_sent.set(i).unwrap_or(false));
            }
        }
        // Hashes the downloader already holds (it took them from another session first)
        // would change nothing when they arrive (`on_hashes`: what a download knows only
        // grows, and a session dropped meanwhile is ignored): no event for them.
        if let Some(known) = self.fetch(down, layer).map(|f| &f.x.known) {
            fresh.retain(|&i| !known.get(i));
        }
        if fresh.is_empty() {
            return;
        }
        let delay = self.topo.latency(up, down);
        self.after(delay, Ev::Hashes(sid, fresh));
    }

    /// Hashes arrived over a session: the pieces can be asked for now, and (signed, as the
    /// agent sends them) passed on.
    pub(crate) fn on_hashes(&mut self, sid: usize, pieces: Vec<u32>) {
        let Some((down, layer)) = self.open_download(sid) else {
            return;
        };
        let relayed = self.s.hashes == HashSource::Relayed;
        let up = self.sessions.get(sid).map(|s| s.up);
        let Some(f) = self.fetch_mut(down, layer) else {
            return;
        };
        if up.and_then(|up| f.sessions.get(&up)) != Some(&sid) {
            return;
        }
        let new: Vec<u32> = pieces
            .into_iter()
            .filter(|&i| f.x.known.set(i).unwrap_or(false))
            .collect();
        if new.is_empty() {
            return;
        }
        let wanted = new.iter().any(|&i| !f.have.get(i));
        if relayed {
            self.vouch(down, layer, Some(&new));
        }
        if wanted {
            self.fill(down, layer);
        }
    }
}
