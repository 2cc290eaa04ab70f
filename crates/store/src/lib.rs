//! Crash-safe, content-addressed storage of blobs and manifests on local disk.
//!
//! Bytes enter only through a [`Writer`], which hashes them as they are written to a temp file
//! and, on [`Writer::commit`], checks the digest, fsyncs and renames the file into place. An
//! interrupted download therefore never leaves a file that looks complete, and nothing in the
//! store was ever unverified. A size quota is kept by evicting the least recently used entries,
//! down to [`LOW_WATERMARK_PERCENT`] of it once it is hit, and entries unused for a given age can
//! be evicted too ([`Store::evict_unused_for`]; a read touches the file's mtime, so the age
//! survives a restart). Entries being read are pinned by the [`Blob`] handle and are never
//! evicted; only files named by a digest under the store's own directories are counted.

mod crash;
mod direct;
#[doc(hidden)]
pub mod fuzzing;
mod hash;
mod index;
mod partial;
mod partial_state;
mod piece_hash;
mod writer;

use index::{Index, Key, Slot};
use pollen_oci::Digest;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tracing::{info, warn};

pub use direct::DataFile;
pub use partial::Partial;
pub use writer::Writer;

/// When the quota is hit, eviction goes on down to this share of it (percent).
pub const LOW_WATERMARK_PERCENT: u64 = 90;

/// What a stored object is; manifests carry a media type, blobs do not.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    Blob,
    Manifest,
}

impl Kind {
    fn dir(self) -> &'static str {
        match self {
            Kind::Blob => "blobs/sha256",
            Kind::Manifest => "manifests/sha256",
        }
    }
}

/// Failures of the store, worded for the operator who has to act on them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("content does not match its digest: expected {expected}, got {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("content is larger than announced ({limit} bytes)")]
    TooLarge { limit: u64 },
    #[error("content ended after {got} of {expected} bytes")]
    Incomplete { expected: u64, got: u64 },
    #[error("piece {index} does not match its hash in the piece map")]
    PieceMismatch { index: u32 },
    #[error("piece map conflict: {0}")]
    MapConflict(String),
    #[error("disk full while writing under {0}: free space or lower --cache-size")]
    DiskFull(PathBuf),
    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl StoreError {
    fn io(context: &'static str, path: &Path, source: io::Error) -> StoreError {
        // ENOSPC and EDQUOT: the operator's fix is the same.
        if matches!(source.raw_os_error(), Some(28) | Some(122)) {
            return StoreError::DiskFull(path.to_path_buf());
        }
        StoreError::Io {
            context,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A cheap, cloneable handle to the store.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    quota: u64,
    index: Mutex<Index>,
    tmp_seq: AtomicU64,
    evictions: AtomicU64,
}

/// Sizes and counters for metrics and status (`bytes` and `entries` include partial
/// downloads: they take disk like the rest and count toward the quota).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub entries: u64,
    pub quota: u64,
    pub evictions: u64,
}

/// A committed object, open for reading and pinned against eviction while this handle lives.
pub struct Blob {
    file: Arc<File>,
    size: u64,
    media_type: Option<String>,
    _pin: Pin,
}

impl Blob {
    /// The open file; read it with positional reads so handles never share an offset.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn media_type(&self) -> Option<&str> {
        self.media_type.as_deref()
    }
}

/// Keeps one entry from eviction; released on drop.
struct Pin {
    inner: Arc<Inner>,
    key: Key,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let mut index = self.inner.lock();
        index.unpin(&self.key);
        self.inner.evict_over_quota(&mut index, 0);
    }
}

impl Store {
    /// Opens (creating if needed) a store under `root`, dropping leftovers of interrupted
    /// downloads and indexing what was committed before.
    pub fn open(root: impl Into<PathBuf>, quota: u64) -> Result<Store, StoreError> {
        let root = root.into();
        let tmp = root.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp).map_err(|e| StoreError::io("clearing", &tmp, e))?;
        }
        for dir in [
            tmp.clone(),
            root.join(Kind::Blob.dir()),
            root.join(Kind::Manifest.dir()),
        ] {
            fs::create_dir_all(&dir).map_err(|e| StoreError::io("creating", &dir, e))?;
        }
        let mut index = Index::default();
        for kind in [Kind::Blob, Kind::Manifest] {
            index::scan(&root.join(kind.dir()), kind, &mut index)?;
        }
        partial::scan(&root, &mut index);
        info!(
            root = %root.display(),
            entries = index.len(),
            bytes = index.total(),
            quota,
            "content store opened"
        );
        let inner = Arc::new(Inner {
            root,
            quota,
            index: Mutex::new(index),
            tmp_seq: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
        });
        {
            let mut index = inner.lock();
            inner.evict_over_quota(&mut index, 0);
        }
        Ok(Store { inner })
    }

    /// Evicts every object nobody has read or written for `max_age` (and nobody is reading
    /// now); returns how many. The agent calls it now and then (`--cache-max-age`).
    pub fn evict_unused_for(&self, max_age: std::time::Duration) -> usize {
        self.evict_unused_before(std::time::SystemTime::now() - max_age)
    }

    /// [`Store::evict_unused_for`] with the cutoff given (tests).
    pub fn evict_unused_before(&self, cutoff: std::time::SystemTime) -> usize {
        let cutoff = index::micros_since_epoch(cutoff);
        let mut index = self.inner.lock();
        let mut n = 0;
        while let Some((key, size)) = index.pop_unused_since(cutoff) {
            self.inner.remove_evicted(key, size, "unused for too long");
            n += 1;
        }
        n
    }

    /// Opens a committed object, or `None` when it is not (or no longer) stored.
    pub fn get(&self, kind: Kind, digest: &Digest) -> Option<Blob> {
        let key = Key::new(kind, *digest);
        let mut index = self.inner.lock();
        let (size, media_type) = index.touch_and_pin(&key)?;
        let path = self.path(kind, digest);
        // Opening under the lock keeps eviction from racing between the lookup and the open.
        match File::open(&path) {
            Ok(file) => {
                drop(index);
                let _ = file.set_modified(std::time::SystemTime::now());
                Some(Blob {
                    file: Arc::new(file),
                    size,
                    media_type,
                    _pin: Pin {
                        inner: self.inner.clone(),
                        key,
                    },
                })
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "indexed file vanished; forgetting it");
                index.unpin(&key);
                index.remove(&key);
                None
            }
        }
    }

    /// Whether an object is stored, without pinning it.
    pub fn contains(&self, kind: Kind, digest: &Digest) -> bool {
        self.inner.lock().contains(&Key::new(kind, *digest))
    }

    /// Every stored object (blobs and manifests), for announcing them to peers (and noticing
    /// evictions by their absence).
    pub fn digests(&self) -> Vec<Digest> {
        self.inner
            .lock()
            .keys()
            .filter(|k| k.kind != Slot::Partial)
            .map(|k| k.digest)
            .collect()
    }

    /// Starts writing an object that must hash to `digest`. When the size is known up front,
    /// room is made for it now so the quota holds while it downloads.
    pub fn writer(
        &self,
        kind: Kind,
        digest: Digest,
        expected_size: Option<u64>,
        media_type: Option<String>,
    ) -> Result<Writer, StoreError> {
        if let Some(size) = expected_size {
            let mut index = self.inner.lock();
            self.inner.evict_over_quota(&mut index, size);
        }
        let seq = self.inner.tmp_seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .inner
            .root
            .join("tmp")
            .join(format!("{}-{}.part", digest.hex(), seq));
        Writer::create(self.clone(), kind, digest, expected_size, media_type, tmp)
    }

    /// The piece map of a complete blob, if one was kept. Read back through the wire
    /// decoder, so a damaged file is refused like a peer's garbage would be.
    pub fn piece_map(&self, digest: &Digest) -> Option<pollen_proto::PieceMap> {
        use std::io::Read;
        let path = index::piece_map_path(&self.path(Kind::Blob, digest));
        let mut frame = Vec::new();
        File::open(path)
            .ok()?
            .take(pollen_proto::MAX_REPLY_FRAME as u64 + 4)
            .read_to_end(&mut frame)
            .ok()?;
        piece_map_from_frame(&frame, digest)
    }

    pub fn usage(&self) -> Usage {
        let index = self.inner.lock();
        Usage {
            bytes: index.total(),
            entries: index.len() as u64,
            quota: self.inner.quota,
            evictions: self.inner.evictions.load(Ordering::Relaxed),
        }
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn path(&self, kind: Kind, digest: &Digest) -> PathBuf {
        self.inner.root.join(kind.dir()).join(digest.hex())
    }

    /// Records a committed file, pinned for the caller, and enforces the quota. Pinning
    /// before evicting keeps an object larger than the quota alive while it is being served.
    fn insert_pinned(
        &self,
        kind: Kind,
        digest: Digest,
        size: u64,
        media_type: Option<String>,
        file: Arc<File>,
    ) -> Blob {
        let key = Key::new(kind, digest);
        let mut index = self.inner.lock();
        // The partial download it was assembled in is gone: its bytes are the blob's now.
        index.remove(&Key::new(Slot::Partial, digest));
        index.insert(key, size, media_type.clone());
        index.touch_and_pin(&key);
        self.inner.evict_over_quota(&mut index, 0);
        Blob {
            file,
            size,
            media_type,
            _pin: Pin {
                inner: self.inner.clone(),
                key,
            },
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When `reserve` more bytes do not fit the quota, evicts least recently used, unpinned
    /// entries until they fit under the low watermark ([`LOW_WATERMARK_PERCENT`] of the
    /// quota): one pass makes room for a while, instead of an eviction at every commit.
    fn evict_over_quota(&self, index: &mut Index, reserve: u64) {
        if index.total().saturating_add(reserve) <= self.quota {
            return;
        }
        let low = u64::try_from(u128::from(self.quota) * u128::from(LOW_WATERMARK_PERCENT) / 100)
            .unwrap_or(self.quota);
        while index.total().saturating_add(reserve) > low {
            let Some((key, size)) = index.pop_lru_unpinned() else {
                if index.total().saturating_add(reserve) > self.quota && reserve == 0 {
                    warn!(
                        bytes = index.total(),
                        quota = self.quota,
                        "cache over quota but every entry is in use"
                    );
                }
                return;
            };
            self.remove_evicted(key, size, "over the quota");
        }
    }

    /// Deletes an entry the index gave up (its files and sidecars).
    fn remove_evicted(&self, key: Key, size: u64, why: &str) {
        let path = key.kind.path(&self.root, &key.digest);
        let removed = match key.kind {
            Slot::Partial => fs::remove_dir_all(&path),
            Slot::Blob | Slot::Manifest => fs::remove_file(&path),
        };
        if let Err(e) = removed {
            warn!(path = %path.display(), error = %e, "evicting: could not remove file");
        }
        for ext in index::SIDECARS {
            let _ = fs::remove_file(path.with_extension(ext));
        }
        self.evictions.fetch_add(1, Ordering::Relaxed);
        info!(digest = %key.digest, size, why, "evicted from cache");
    }
}

/// A `.pieces` sidecar's bytes: the piece map of `digest`, or `None` (pure, for the fuzz targets).
fn piece_map_from_frame(frame: &[u8], digest: &Digest) -> Option<pollen_proto::PieceMap> {
    match pollen_proto::decode_reply(frame.get(4..)?).ok()? {
        pollen_proto::Reply::PieceMap(map) if map.digest() == digest => Some(map),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
