//! What this node offers peers of the blobs it read lazily: for each partial kept by lazy
//! ranges (and not fetched whole now, which publishes its own state), the pieces it hashed
//! from its own upstream's bytes, with those hashes. Pieces it took from peers are kept and
//! served to its own clients, but not passed on: a node vouches only for hashes it computed
//! (docs/trust-model.md).

use dashmap::DashMap;
use pollen_oci::Digest;
use pollen_peer::PieceState;
use pollen_proto::{Bitfield, PieceGeometry};
use pollen_store::{DataFile, Partial};
use std::sync::Arc;
use tokio::sync::watch;

/// Blobs offered at once: past this a lazily read blob is still served to this node's
/// clients, only not to peers.
const MAX_SHARES: usize = 1024;

/// The blobs this node offers from its lazy partials.
#[derive(Default)]
pub(crate) struct Shares(DashMap<Digest, Share>);

struct Share {
    geometry: PieceGeometry,
    data: DataFile,
    state: watch::Sender<PieceState>,
}

/// A lazily read blob as an uploader sees it.
pub(crate) struct View {
    pub geometry: PieceGeometry,
    pub data: DataFile,
    pub state: watch::Receiver<PieceState>,
}

impl Shares {
    /// Offers what `partial` holds that this node vouches for; true when the blob is offered
    /// for the first time (announce it), false when it was already or cannot be.
    pub fn publish(&self, partial: &Partial) -> bool {
        let geometry = *partial.geometry();
        let Some(state) = vouched(partial) else {
            return false;
        };
        if state.have.count_ones() == 0 {
            return false;
        }
        if let Some(share) = self.0.get(&partial.digest()) {
            // An uploader's state only grows while sessions may have announced it; a partial
            // started afresh (its digest failed, or its size was contradicted) is a new share.
            if share.geometry == geometry && grows(&share.state.borrow().have, &state.have) {
                share.state.send_replace(state);
                return false;
            }
        } else if self.0.len() >= MAX_SHARES {
            return false;
        }
        let share = Share {
            geometry,
            data: partial.data(),
            state: watch::Sender::new(state),
        };
        self.0.insert(partial.digest(), share).is_none()
    }

    /// The blob's pieces as offered now.
    pub fn view(&self, digest: &Digest) -> Option<View> {
        self.0.get(digest).map(|s| View {
            geometry: s.geometry,
            data: s.data.clone(),
            state: s.state.subscribe(),
        })
    }

    /// No longer offered (fetched whole, or gone from the store); true if it was.
    pub fn remove(&self, digest: &Digest) -> bool {
        self.0.remove(digest).is_some()
    }
}

/// The pieces of `partial` present and hashed here from the upstream's bytes, with the map's
/// hashes.
fn vouched(partial: &Partial) -> Option<PieceState> {
    let geometry = partial.geometry();
    let mut have = Bitfield::new(geometry);
    for i in partial.produced().iter_ones() {
        if partial.have().get(i) {
            have.set(i).ok()?;
        }
    }
    Some(PieceState {
        vouched: have.clone(),
        have,
        hashes: Arc::from(partial.map().slots()),
        proofs: None,
        proven: Bitfield::new(geometry),
        complete: false,
        map_id: None,
    })
}

/// Every piece of `old` is in `new`.
fn grows(old: &Bitfield, new: &Bitfield) -> bool {
    old.count() == new.count() && old.iter_ones().all(|i| new.get(i))
}
