//! Where a download's time goes while it takes pieces from peers, so a policy change aims at
//! the cause: receiving (a request outstanding), choked (a connected peer offers a missing piece
//! whose hash is known, but only over sessions waiting for a slot), nothing offered (no
//! connected peer offers such a piece), or other (a peer offers one and is unchoked, yet
//! nothing is asked: the download's budget). Classified at every request round (`fill`);
//! a state holds until the next round, and the time of a node killed mid-download is dropped.

use crate::net::Nanos;
use pollen_core::download::Exchange;
use pollen_proto::Bitfield;
use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    Receiving,
    Choked,
    NothingOffered,
    Other,
}

impl Wait {
    /// The state of a download after a request round (`done`: stored or coming from the
    /// upstream).
    pub fn of(x: &Exchange, done: &Bitfield) -> Wait {
        if x.peers.values().any(|p| p.outstanding > 0) {
            return Wait::Receiving;
        }
        // Eight bytes at a time: classified at every request round, the simulator's busiest
        // path. What would help (hash known, not done) is worked out once, not once per peer.
        let wanted: Vec<u64> = (words(x.known.as_bytes()).zip(words(done.as_bytes())))
            .map(|(k, d)| k & !d)
            .collect();
        if wanted.iter().all(|w| *w == 0) {
            return Wait::NothingOffered;
        }
        let offers = |has: &Bitfield| (words(has.as_bytes()).zip(&wanted)).any(|(h, w)| h & w != 0);
        let mut choked = false;
        for p in x.peers.values() {
            if p.has.as_ref().is_some_and(offers) {
                if p.unchoked {
                    return Wait::Other;
                }
                choked = true;
            }
        }
        if choked {
            Wait::Choked
        } else {
            Wait::NothingOffered
        }
    }
}

/// A bitfield's bytes as words (the last one padded with zeros).
fn words(bytes: &[u8]) -> impl Iterator<Item = u64> + '_ {
    bytes.chunks(8).map(|chunk| {
        let mut word = [0u8; 8];
        for (w, b) in word.iter_mut().zip(chunk) {
            *w = *b;
        }
        u64::from_le_bytes(word)
    })
}

/// Seconds of download time in each state, over all nodes.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct WaitTotals {
    pub receiving: f64,
    pub choked: f64,
    pub nothing_offered: f64,
    pub other: f64,
}

impl WaitTotals {
    pub fn add(&mut self, state: Wait, nanos: Nanos) {
        let secs = nanos as f64 / 1e9;
        match state {
            Wait::Receiving => self.receiving += secs,
            Wait::Choked => self.choked += secs,
            Wait::NothingOffered => self.nothing_offered += secs,
            Wait::Other => self.other += secs,
        }
    }

    /// Each state's share of the time.
    pub fn shares(&self) -> WaitTotals {
        let all = self.receiving + self.choked + self.nothing_offered + self.other;
        if all <= 0.0 {
            return WaitTotals::default();
        }
        WaitTotals {
            receiving: self.receiving / all,
            choked: self.choked / all,
            nothing_offered: self.nothing_offered / all,
            other: self.other / all,
        }
    }
}
