//! The only way bytes enter the store: hashed on the way in, committed only when verified.

use crate::hash::HashSink;
use crate::{index::media_type_path, Blob, Kind, Store, StoreError};
use bytes::Bytes;
use pollen_oci::{Digest, Hasher};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// An object being written. Dropping it without [`Writer::commit`] removes the temp file.
pub struct Writer {
    store: Store,
    kind: Kind,
    digest: Digest,
    expected_size: Option<u64>,
    media_type: Option<String>,
    tmp: PathBuf,
    file: Arc<File>,
    hasher: HashSink,
    written: u64,
    verified: bool,
    committed: bool,
}

impl Writer {
    pub(crate) fn create(
        store: Store,
        kind: Kind,
        digest: Digest,
        expected_size: Option<u64>,
        media_type: Option<String>,
        tmp: PathBuf,
    ) -> Result<Writer, StoreError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .map_err(|e| StoreError::io("creating", &tmp, e))?;
        Ok(Writer {
            store,
            kind,
            digest,
            expected_size,
            media_type,
            tmp,
            file: Arc::new(file),
            hasher: HashSink::new(expected_size),
            written: 0,
            verified: false,
            committed: false,
        })
    }

    /// The temp file, so readers can follow a download while it is written (positional reads
    /// of the first [`Writer::written`] bytes; the inode stays valid across the rename).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub fn written(&self) -> u64 {
        self.written
    }

    pub fn digest(&self) -> Digest {
        self.digest
    }

    /// Appends bytes, hashing them once on the way (on a separate thread for large objects).
    pub fn write(&mut self, data: &Bytes) -> Result<(), StoreError> {
        let new_len = self.written + data.len() as u64;
        if let Some(limit) = self.expected_size {
            if new_len > limit {
                return Err(StoreError::TooLarge { limit });
            }
        }
        (&*self.file)
            .write_all(data)
            .map_err(|e| StoreError::io("writing", &self.tmp, e))?;
        self.hasher.update(data);
        self.written = new_len;
        Ok(())
    }

    /// Checks size and digest once everything is written. Callers that stream to clients
    /// call this first, release the last byte, and only then pay for [`Writer::commit`]'s
    /// fsync; `commit` verifies by itself when this was not called.
    pub fn verify(&mut self) -> Result<(), StoreError> {
        if self.verified {
            return Ok(());
        }
        if let Some(expected) = self.expected_size {
            if self.written != expected {
                return Err(StoreError::Incomplete {
                    expected,
                    got: self.written,
                });
            }
        }
        let hasher = std::mem::replace(&mut self.hasher, HashSink::Inline(Hasher::new()));
        let actual = hasher.finish().ok_or_else(|| StoreError::Io {
            context: "hashing",
            path: self.tmp.clone(),
            source: std::io::Error::other("the hashing thread failed"),
        })?;
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        self.verified = true;
        Ok(())
    }

    /// Verifies the digest, makes the bytes durable and moves them into place. On any
    /// failure nothing is stored.
    pub fn commit(mut self) -> Result<Blob, StoreError> {
        self.verify()?;
        self.file
            .sync_data()
            .map_err(|e| StoreError::io("syncing", &self.tmp, e))?;
        let dest = self.store.path(self.kind, &self.digest);
        if let Some(media_type) = &self.media_type {
            // The sidecar's temp name is this writer's own, so two writers committing the
            // same manifest at once (a tag and a digest request) cannot trip over each other.
            let tmp = self.tmp.with_extension("mediatype");
            write_durably(
                &tmp,
                &media_type_path(&dest),
                media_type.as_bytes(),
                "mediatype.before_rename",
            )?;
        }
        crate::crash::point("manifest.before_rename");
        fs::rename(&self.tmp, &dest).map_err(|e| StoreError::io("renaming into", &dest, e))?;
        self.committed = true;
        if let Some(dir) = dest.parent() {
            // The rename is durable only once the directory is.
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(self.store.insert_pinned(
            self.kind,
            self.digest,
            self.written,
            self.media_type.clone(),
            self.file.clone(),
        ))
    }
}

pub(crate) fn write_durably(
    tmp: &std::path::Path,
    path: &std::path::Path,
    data: &[u8],
    crash_point: &'static str,
) -> Result<(), StoreError> {
    let mut f = File::create(tmp).map_err(|e| StoreError::io("creating", tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_data())
        .map_err(|e| StoreError::io("writing", tmp, e))?;
    crate::crash::point(crash_point);
    fs::rename(tmp, path).map_err(|e| StoreError::io("renaming into", path, e))
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
