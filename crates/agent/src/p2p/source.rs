//! What this node serves to peers: complete blobs from the store, and blobs in flight piece by
//! piece as their pieces are verified.

use crate::Ctx;
use bytes::BytesMut;
use pollen_oci::Digest;
use pollen_peer::{BlobView, PieceFuture, PieceReader, PieceSource, PieceState};
use pollen_proto::PieceGeometry;
use pollen_store::{Blob, Kind};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use tokio::sync::watch;

/// A blob in flight as peers see it, published by its download once the geometry is known.
pub(crate) struct PieceShare {
    pub geometry: PieceGeometry,
    pub state: watch::Sender<PieceState>,
    pub file: Arc<File>,
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
}

impl PieceSource for StoreSource {
    fn blob(&self, digest: &Digest) -> Option<BlobView> {
        let inflight = self.ctx.blobs.get(digest).map(|e| e.value().clone());
        if let Some(share) = inflight.as_ref().and_then(|i| i.share()) {
            let reader = FileReader {
                file: share.file.clone(),
                geometry: share.geometry,
                _pin: None,
            };
            return Some(BlobView::new(
                share.geometry,
                share.state.subscribe(),
                Arc::new(reader),
            ));
        }
        let blob = self.ctx.store.get(Kind::Blob, digest)?;
        // Every blob committed through a partial download has its map beside it; one without
        // (a store from before pieces existed) is not shared rather than hashed again here.
        let map = self.ctx.store.piece_map(digest)?;
        let geometry = *map.geometry();
        if geometry.size() != blob.size() {
            return None;
        }
        let (tx, rx) = watch::channel(PieceState::complete(&geometry, map.hashes().into()));
        let reader = FileReader {
            file: blob.file().clone(),
            geometry,
            _pin: Some(Box::new((blob, tx))),
        };
        Some(BlobView::new(geometry, rx, Arc::new(reader)))
    }
}

struct FileReader {
    file: Arc<File>,
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
                let mut buf = BytesMut::zeroed((range.end - range.start) as usize);
                file.read_exact_at(&mut buf, range.start)?;
                Ok(buf.freeze())
            })
            .await
            .map_err(std::io::Error::other)?
        })
    }
}
