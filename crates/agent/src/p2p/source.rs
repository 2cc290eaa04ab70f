//! What this node serves to peers: complete blobs from the store, blobs in flight piece by
//! piece as their pieces are verified, and the pieces of blobs it read lazily.

use crate::Ctx;
use pollen_oci::{Digest, MAX_MANIFEST_BYTES};
use pollen_peer::{BlobView, PieceFuture, PieceReader, PieceSource, PieceState, Spread};
use pollen_proto::{PieceBuf, PieceGeometry, PieceMap};
use pollen_store::{Blob, DataFile, Kind};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tokio::sync::watch;

/// A blob in flight as peers see it, published by its download once the geometry is known.
pub(crate) struct PieceShare {
    pub geometry: PieceGeometry,
    pub state: watch::Sender<PieceState>,
    pub data: DataFile,
    /// Super-seeding across this blob's upload sessions, on while this node fetches it from
    /// the upstream.
    pub spread: Arc<Spread>,
    /// This node has started fetching the blob (or a share of it) from the upstream: peers
    /// are served before its first piece arrives (`pollen_core::upload::serves_partial`).
    pub fetching: std::sync::atomic::AtomicBool,
}

/// The agent's [`PieceSource`]: blobs in flight first (their pieces are servable as soon as
/// verified), else complete blobs with their stored piece map.
pub(crate) struct StoreSource {
    ctx: Arc<Ctx>,
}

impl StoreSource {
    pub fn new(ctx: &Arc<Ctx>) -> StoreSource {
        StoreSource { ctx: ctx.clone() }
    }

    /// A stored manifest as a blob of its own: small, so its map is computed here.
    fn manifest(&self, digest: &Digest) -> Option<(Blob, PieceMap)> {
        let blob = self.ctx.store.get(Kind::Manifest, digest)?;
        let size = usize::try_from(blob.size())
            .ok()
            .filter(|s| *s <= MAX_MANIFEST_BYTES)?;
        let mut body = vec![0u8; size];
        blob.file().read_exact_at(&mut body, 0).ok()?;
        let piece_size = self.ctx.peers().piece_size();
        let geometry = PieceGeometry::choose(blob.size(), piece_size).ok()?;
        let map = PieceMap::of(*digest, geometry, &body).ok()?;
        Some((blob, map))
    }

    /// Pieces read lazily (`crate::lazy`), while the blob is neither fetched nor held whole
    /// and its partial is still on disk.
    fn lazy(&self, digest: &Digest) -> Option<BlobView> {
        let view = self.ctx.lazy.shares.view(digest)?;
        let store = &self.ctx.store;
        if store.contains(Kind::Blob, digest) || store.partial_geometry(digest).is_none() {
            if self.ctx.lazy.shares.remove(digest) {
                self.ctx.peers().offer_ranges(*digest, false);
            }
            return None;
        }
        let reader = FileReader {
            file: view.data,
            geometry: view.geometry,
            _pin: None,
        };
        Some(BlobView::new(view.geometry, view.state, Arc::new(reader)))
    }
}

impl PieceSource for StoreSource {
    fn blob(&self, digest: &Digest) -> Option<BlobView> {
        if self.ctx.private.contains(digest) {
            return None;
        }
        let inflight = self.ctx.blobs.get(digest).map(|e| e.value().clone());
        if let Some(share) = inflight.as_ref().and_then(|i| i.share()) {
            // Open from the start of the pull, but offered only once it holds a piece or
            // fetches from the upstream (`serves_partial`): until then `UnknownBlob`.
            let pieces = share.state.borrow().have.count_ones();
            let fetching = share.fetching.load(std::sync::atomic::Ordering::Relaxed);
            if !pollen_core::upload::serves_partial(pieces, fetching) {
                return None;
            }
            let reader = FileReader {
                file: share.data.clone(),
                geometry: share.geometry,
                _pin: None,
            };
            return Some(
                BlobView::new(share.geometry, share.state.subscribe(), Arc::new(reader))
                    .with_spread(share.spread.clone()),
            );
        }
        if let Some(view) = self.lazy(digest) {
            return Some(view);
        }
        let (blob, map) = match self.ctx.store.get(Kind::Blob, digest) {
            // Every blob committed through a partial download has its map beside it; one
            // without (a store from before pieces existed) is not shared rather than hashed
            // again here.
            Some(blob) => {
                let map = self.ctx.store.piece_map(digest)?;
                (blob, map)
            }
            None => self.manifest(digest)?,
        };
        let geometry = *map.geometry();
        if geometry.size() != blob.size() {
            return None;
        }
        let (tx, rx) = watch::channel(PieceState::complete(&geometry, map.hashes().into()));
        let reader = FileReader {
            file: DataFile::cached(blob.file().clone()),
            geometry,
            _pin: Some(Box::new((blob, tx))),
        };
        Some(BlobView::new(geometry, rx, Arc::new(reader)))
    }
}

struct FileReader {
    file: DataFile,
    geometry: PieceGeometry,
    /// For a complete blob, what the session keeps alive: the blob's pin against eviction and
    /// the state sender (so the session does not see its state channel close).
    _pin: Option<Box<(Blob, watch::Sender<PieceState>)>>,
}

impl PieceReader for FileReader {
    fn read_piece(&self, index: u32) -> PieceFuture<'_> {
        let file = self.file.clone();
        let range = self.geometry.range_of(index);
        Box::pin(async move {
            let range = range.ok_or_else(|| std::io::Error::other("piece index past the blob"))?;
            tokio::task::spawn_blocking(move || {
                // A recycled buffer: no fresh pages and no zeroing per piece served.
                let mut buf = PieceBuf::take((range.end - range.start) as usize);
                file.read_exact_at(buf.as_mut_slice(), range.start)?;
                Ok(buf.freeze())
            })
            .await
            .map_err(std::io::Error::other)?
        })
    }
}
