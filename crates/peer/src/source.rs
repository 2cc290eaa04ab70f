//! What an uploader can serve: the seam between a session and the agent's store.
//!
//! The session never touches files or the store's index. The agent implements
//! [`PieceSource`] (by digest: is the blob here, complete or partial?) and [`PieceReader`]
//! (the bytes of one present piece), and publishes the blob's progress on a
//! `tokio::sync::watch` channel of [`PieceState`]. A watch (not a stream of events) because
//! an uploader that is busy writing a piece only needs the *latest* state when it is next free:
//! several new pieces become one `HaveMore`.

use crate::spread::Spread;
use bytes::Bytes;
use pollen_oci::Digest;
use pollen_proto::{Bitfield, PieceGeometry, PieceMapId};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::watch;

/// The future returned by [`PieceReader::read_piece`].
pub type PieceFuture<'a> = Pin<Box<dyn Future<Output = io::Result<Bytes>> + Send + 'a>>;

/// What this node can serve, by digest.
pub trait PieceSource: Send + Sync + 'static {
    /// The blob `digest` if this node holds any of it (or is fetching it from the upstream and
    /// may hold pieces soon), else `None` (the peer gets `Error UnknownBlob`). The returned
    /// view is kept for the whole session and dropped at its end, so it is the place to pin
    /// the blob against eviction: the protocol promises every announced piece stays servable.
    fn blob(&self, digest: &Digest) -> Option<BlobView>;
}

/// Reads the bytes of one piece the source said it has (its bit is set in [`PieceState`]).
pub trait PieceReader: Send + Sync + 'static {
    /// The whole piece `index`: exactly `geometry.len_of(index)` bytes. Reads from disk belong
    /// in `spawn_blocking` (or positional reads on a blocking pool); the session bounds the
    /// wait with its stall deadline and answers `Error Internal` on failure.
    fn read_piece(&self, index: u32) -> PieceFuture<'_>;
}

/// One blob as a session sees it: its geometry, its progress and its bytes.
pub struct BlobView {
    pub(crate) geometry: PieceGeometry,
    pub(crate) state: watch::Receiver<PieceState>,
    pub(crate) reader: Arc<dyn PieceReader>,
    pub(crate) spread: Option<Arc<Spread>>,
}

impl BlobView {
    /// A view of a blob cut by `geometry`; `state` must describe the same geometry (a
    /// mismatch is a source bug, answered `Error Internal`).
    pub fn new(
        geometry: PieceGeometry,
        state: watch::Receiver<PieceState>,
        reader: Arc<dyn PieceReader>,
    ) -> BlobView {
        BlobView {
            geometry,
            state,
            reader,
            spread: None,
        }
    }

    /// Shares `spread` with the blob's other sessions: while it is active, each new piece is
    /// announced to one peer first (super-seeding, see [`Spread`]).
    pub fn with_spread(mut self, spread: Arc<Spread>) -> BlobView {
        self.spread = Some(spread);
        self
    }
}

/// What the node holds of one blob right now. Grows only: pieces and hashes are added, never
/// taken away while a session may have announced them.
#[derive(Clone, Debug)]
pub struct PieceState {
    /// The pieces present and verified, servable now.
    pub have: Bitfield,
    /// The piece map's slots, one per piece (or none yet): meaningful where `vouched` is set.
    pub hashes: Arc<[[u8; 32]]>,
    /// The pieces whose hash this node vouches for: all once `complete`; before that, those
    /// it hashed from the upstream's bytes itself (it fetches some range of the blob), never
    /// hashes it took from peers, because a map is passed on only by its producer or once it
    /// proved right (trust model).
    pub vouched: Bitfield,
    /// Producers' signatures of hashes (`pollen_proto::hash_claim`), shared by the blob's
    /// writer and its sessions: this node's own, and those it took from peers and checked.
    /// Sessions speaking `/pollen/pieces/3` are sent every hash that has one, so hashes
    /// travel beyond their producer's sessions. `None`: the node signs nothing.
    pub proofs: Option<Arc<Proofs>>,
    /// The pieces with a signature in `proofs` (grows as they are added).
    pub proven: Bitfield,
    /// The whole blob is present and passed its digest check: this node is a seed.
    pub complete: bool,
    /// While not `complete`: the id of the complete map this node's pieces were verified
    /// against, if it has one (it downloads from peers). Ignored once `complete`: the id is
    /// then computed from `hashes`.
    pub map_id: Option<PieceMapId>,
}

impl PieceState {
    /// Nothing yet (e.g. the upstream fetch just started).
    pub fn empty(geometry: &PieceGeometry) -> PieceState {
        PieceState {
            have: Bitfield::new(geometry),
            hashes: Arc::from(Vec::new()),
            vouched: Bitfield::new(geometry),
            proofs: None,
            proven: Bitfield::new(geometry),
            complete: false,
            map_id: None,
        }
    }

    /// A seed: every piece, the full map.
    pub fn complete(geometry: &PieceGeometry, hashes: Arc<[[u8; 32]]>) -> PieceState {
        PieceState {
            have: Bitfield::full(geometry),
            hashes,
            vouched: Bitfield::full(geometry),
            proofs: None,
            proven: Bitfield::new(geometry),
            complete: true,
            map_id: None,
        }
    }

    /// Checks the contract against the blob's geometry; a violation is a source bug.
    pub(crate) fn check(&self, geometry: &PieceGeometry) -> Result<(), String> {
        let count = geometry.count();
        if self.have.count() != count {
            return Err(format!(
                "state has a bitfield of {} pieces for a geometry of {count}",
                self.have.count()
            ));
        }
        let slots = self.hashes.len();
        if self.vouched.count() != count
            || (slots != count as usize && (slots != 0 || self.vouched.count_ones() > 0))
        {
            return Err(format!(
                "state has {slots} hash slots and {} vouched bits for {count} pieces",
                self.vouched.count()
            ));
        }
        if self.proven.count() != count || (self.proven.count_ones() > 0 && slots != count as usize)
        {
            return Err(format!(
                "state has {} proven bits and {slots} hash slots for {count} pieces",
                self.proven.count()
            ));
        }
        if self.complete && (!self.have.is_complete() || !self.vouched.is_complete()) {
            return Err("state is complete without every piece and hash".into());
        }
        Ok(())
    }
}

/// A producer's signature of one piece's hash.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// The producer's node id (`PeerId` bytes).
    pub producer: Arc<[u8]>,
    pub signature: pollen_proto::Signature,
}

/// One blob's signatures, by piece. Written by the blob's writer (one thread), read by its
/// sessions; a lock rather than a copy per change, since the table is up to 65,536 entries.
#[derive(Debug)]
pub struct Proofs {
    by_piece: std::sync::Mutex<Vec<Option<Proof>>>,
}

impl Proofs {
    /// An empty table for `count` pieces.
    pub fn new(count: u32) -> Proofs {
        Proofs {
            by_piece: std::sync::Mutex::new(vec![None; count as usize]),
        }
    }

    /// Records `proof` for piece `index` unless it has one; `true` if recorded.
    pub fn add(&self, index: u32, proof: Proof) -> bool {
        let mut table = self.by_piece.lock().unwrap_or_else(|e| e.into_inner());
        match table.get_mut(index as usize) {
            Some(slot @ None) => {
                *slot = Some(proof);
                true
            }
            _ => false,
        }
    }

    /// The signature of piece `index`, if any.
    pub fn get(&self, index: u32) -> Option<Proof> {
        let table = self.by_piece.lock().unwrap_or_else(|e| e.into_inner());
        table.get(index as usize).cloned().flatten()
    }
}
