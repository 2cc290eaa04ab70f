//! The only way bytes enter the store: hashed on the way in, committed only when verified.

use crate::{index::media_type_path, Blob, Kind, Store, StoreError};
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
    hasher: Hasher,
    written: u64,
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
            hasher: Hasher::new(),
            written: 0,
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

    /// Appends bytes, hashing them once on the way.
    pub fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
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

    /// Verifies the digest, makes the bytes durable and moves them into place. On any
    /// failure nothing is stored.
    pub fn commit(mut self) -> Result<Blob, StoreError> {
        if let Some(expected) = self.expected_size {
            if self.written != expected {
                return Err(StoreError::Incomplete {
                    expected,
                    got: self.written,
                });
            }
        }
        let actual = std::mem::take(&mut self.hasher).finish();
        if actual != self.digest {
            return Err(StoreError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        self.file
            .sync_data()
            .map_err(|e| StoreError::io("syncing", &self.tmp, e))?;
        let dest = self.store.path(self.kind, &self.digest);
        if let Some(media_type) = &self.media_type {
            write_durably(&media_type_path(&dest), media_type.as_bytes())?;
        }
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

fn write_durably(path: &std::path::Path, data: &[u8]) -> Result<(), StoreError> {
    let tmp = path.with_extension("mediatype.tmp");
    let mut f = File::create(&tmp).map_err(|e| StoreError::io("creating", &tmp, e))?;
    f.write_all(data)
        .and_then(|_| f.sync_data())
        .map_err(|e| StoreError::io("writing", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| StoreError::io("renaming into", path, e))
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}
