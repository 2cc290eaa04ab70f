//! An in-memory [`PieceSource`] for tests (feature `testing`), for this crate and the agent's.
//!
//! A [`MemoryBlob`] holds a blob's whole bytes up front; what the source *shows* is driven by
//! the test: which pieces are present, how much of the map it vouches for, whether it is
//! complete. That mimics every kind of uploader: a seed ([`MemorySource::add_complete`]), the
//! node fetching from the upstream ([`MemoryBlob::fetch`]: hashes and pieces grow together),
//! and a node downloading from peers ([`MemoryBlob::add_piece`] with a map id, no hashes).

use crate::source::{BlobView, PieceFuture, PieceReader, PieceSource, PieceState};
use bytes::Bytes;
use pollen_oci::Digest;
use pollen_proto::{PieceGeometry, PieceMap, PieceMapId};
use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::watch;

/// Blobs by digest; see the module docs.
#[derive(Default)]
pub struct MemorySource {
    blobs: Mutex<HashMap<Digest, Arc<MemoryBlob>>>,
}

impl MemorySource {
    /// An empty source.
    pub fn new() -> Arc<MemorySource> {
        Arc::new(MemorySource::default())
    }

    /// Adds `data` as a seed: every piece present, the full map, complete.
    pub fn add_complete(&self, data: impl Into<Bytes>, geometry: PieceGeometry) -> Arc<MemoryBlob> {
        let blob = self.add_empty(data, geometry);
        blob.complete();
        blob
    }

    /// Adds `data` with nothing shown yet, as when a fetch from the upstream starts; the test
    /// then reveals it with [`MemoryBlob::fetch`] and friends.
    ///
    /// # Panics
    /// If `geometry` does not describe `data` (a test bug).
    pub fn add_empty(&self, data: impl Into<Bytes>, geometry: PieceGeometry) -> Arc<MemoryBlob> {
        let data = data.into();
        let digest = Digest::of(&data);
        let map = PieceMap::of(digest, geometry, &data).expect("geometry must describe the data");
        let (state, _) = watch::channel(PieceState::empty(&geometry));
        let blob = Arc::new(MemoryBlob {
            digest,
            geometry,
            data,
            map,
            state,
            fail_reads: AtomicBool::new(false),
            reads: AtomicU64::new(0),
        });
        lock(&self.blobs).insert(digest, blob.clone());
        blob
    }

    /// Forgets a blob: later sessions get `UnknownBlob` (running ones keep their view).
    pub fn remove(&self, digest: &Digest) {
        lock(&self.blobs).remove(digest);
    }
}

impl PieceSource for MemorySource {
    fn blob(&self, digest: &Digest) -> Option<BlobView> {
        let blob = lock(&self.blobs).get(digest)?.clone();
        Some(BlobView::new(blob.geometry, blob.state.subscribe(), blob))
    }
}

/// One blob of a [`MemorySource`].
pub struct MemoryBlob {
    digest: Digest,
    geometry: PieceGeometry,
    data: Bytes,
    map: PieceMap,
    state: watch::Sender<PieceState>,
    fail_reads: AtomicBool,
    reads: AtomicU64,
}

impl MemoryBlob {
    /// The blob's digest.
    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// The blob's geometry.
    pub fn geometry(&self) -> PieceGeometry {
        self.geometry
    }

    /// The blob's bytes.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The blob's complete, correct map.
    pub fn map(&self) -> &PieceMap {
        &self.map
    }

    /// Like the node fetching from the upstream: pieces `0..upto` present and their hashes
    /// known, in one state update.
    pub fn fetch(&self, upto: u32) {
        let upto = upto.min(self.geometry.count());
        self.state.send_modify(|s| {
            s.hashes = self.map.hashes().into();
            for i in 0..upto {
                let _ = s.have.set(i);
                let _ = s.vouched.set(i);
            }
        });
    }

    /// Piece `index` present, without its hash (a node downloading from peers).
    pub fn add_piece(&self, index: u32) {
        self.state.send_modify(|s| {
            let _ = s.have.set(index);
        });
    }

    /// The map id the node's pieces are verified against, while not complete.
    pub fn set_map_id(&self, id: Option<PieceMapId>) {
        self.state.send_modify(|s| s.map_id = id);
    }

    /// Everything present and verified: a seed.
    pub fn complete(&self) {
        let hashes = self.map.hashes().into();
        self.state
            .send_replace(PieceState::complete(&self.geometry, hashes));
    }

    /// Makes every later piece read fail (or succeed again).
    pub fn fail_reads(&self, fail: bool) {
        self.fail_reads.store(fail, Ordering::Relaxed);
    }

    /// How many pieces were read (served or about to be).
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// The bytes of piece `index`.
    pub fn piece(&self, index: u32) -> Option<Bytes> {
        let range = self.geometry.range_of(index)?;
        let start = usize::try_from(range.start).ok()?;
        let end = usize::try_from(range.end).ok()?;
        (end <= self.data.len()).then(|| self.data.slice(start..end))
    }
}

impl PieceReader for MemoryBlob {
    fn read_piece(&self, index: u32) -> PieceFuture<'_> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        let res = if self.fail_reads.load(Ordering::Relaxed) {
            Err(io::Error::other("injected read failure"))
        } else if !self.state.borrow().have.get(index) {
            Err(io::Error::other(format!("piece {index} is not present")))
        } else {
            self.piece(index)
                .ok_or_else(|| io::Error::other(format!("piece {index} is past the blob")))
        };
        Box::pin(std::future::ready(res))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
