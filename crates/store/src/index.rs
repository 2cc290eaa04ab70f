//! The in-memory index of committed objects: sizes, LRU order, pins.

use crate::{Kind, StoreError};
use pollen_oci::Digest;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// What an index entry is: a committed object, or a partial download (counted in the quota
/// and aged out like the rest, but never served from the index).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Slot {
    Blob,
    Manifest,
    Partial,
}

impl From<Kind> for Slot {
    fn from(kind: Kind) -> Slot {
        match kind {
            Kind::Blob => Slot::Blob,
            Kind::Manifest => Slot::Manifest,
        }
    }
}

impl Slot {
    /// Where the entry lives under the store's root: a file, or a partial's directory.
    pub fn path(self, root: &Path, digest: &Digest) -> PathBuf {
        let dir = match self {
            Slot::Blob => Kind::Blob.dir(),
            Slot::Manifest => Kind::Manifest.dir(),
            Slot::Partial => PARTIAL_DIR,
        };
        root.join(dir).join(digest.hex())
    }
}

/// Partial downloads, one directory per digest.
pub(crate) const PARTIAL_DIR: &str = "partial";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct Key {
    pub kind: Slot,
    pub digest: Digest,
}

impl Key {
    pub fn new(kind: impl Into<Slot>, digest: Digest) -> Key {
        Key {
            kind: kind.into(),
            digest,
        }
    }
}

struct Entry {
    size: u64,
    /// When it was last read or written, in microseconds since the Unix epoch (the file's
    /// mtime after a restart: reads touch it), made strictly increasing for the LRU order.
    last_used: u64,
    pins: usize,
    media_type: Option<String>,
}

#[derive(Default)]
pub(crate) struct Index {
    entries: HashMap<Key, Entry>,
    total: u64,
    clock: u64,
}

/// Manifests keep their media type in a sidecar file written before the content is renamed
/// into place, so a committed manifest always has one.
pub(crate) fn media_type_path(content: &Path) -> PathBuf {
    content.with_extension("mediatype")
}

/// A blob's piece map, kept beside it (as the wire frame peers are sent) once the blob is
/// complete, so serving pieces never needs a second pass over the bytes.
pub(crate) fn piece_map_path(content: &Path) -> PathBuf {
    content.with_extension("pieces")
}

/// Sidecars that belong to a content file, removed with it.
pub(crate) const SIDECARS: [&str; 2] = ["mediatype", "pieces"];

impl Index {
    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn total(&self) -> u64 {
        self.total
    }
    pub fn contains(&self, key: &Key) -> bool {
        self.entries.contains_key(key)
    }
    pub fn keys(&self) -> impl Iterator<Item = &Key> {
        self.entries.keys()
    }

    fn tick(&mut self) -> u64 {
        self.clock = now_micros().max(self.clock + 1);
        self.clock
    }

    pub fn insert(&mut self, key: Key, size: u64, media_type: Option<String>) {
        let last_used = self.tick();
        if let Some(old) = self.entries.insert(
            key,
            Entry {
                size,
                last_used,
                pins: 0,
                media_type,
            },
        ) {
            self.total -= old.size;
        }
        self.total += size;
    }

    /// Inserts an entry found on disk at startup; `age` orders it among the others.
    fn insert_scanned(&mut self, key: Key, size: u64, age: u64, media_type: Option<String>) {
        self.entries.insert(
            key,
            Entry {
                size,
                last_used: age,
                pins: 0,
                media_type,
            },
        );
        self.total += size;
        self.clock = self.clock.max(age);
    }

    /// Indexes a partial download found on disk at startup.
    pub fn insert_partial(&mut self, digest: Digest, size: u64, age: u64) {
        self.insert_scanned(Key::new(Slot::Partial, digest), size, age, None);
    }

    /// Sets a partial download's size (the bytes it holds now); adds it when absent.
    pub fn set_size(&mut self, key: Key, size: u64) {
        match self.entries.get_mut(&key) {
            Some(e) => {
                self.total = self.total.saturating_sub(e.size).saturating_add(size);
                e.size = size;
            }
            None => self.insert(key, size, None),
        }
    }

    /// Grows a partial download's size by `bytes`, if it is indexed.
    pub fn grow(&mut self, key: &Key, bytes: u64) {
        if let Some(e) = self.entries.get_mut(key) {
            e.size = e.size.saturating_add(bytes);
            self.total = self.total.saturating_add(bytes);
        }
    }

    pub fn remove(&mut self, key: &Key) {
        if let Some(old) = self.entries.remove(key) {
            self.total -= old.size;
        }
    }

    pub fn touch_and_pin(&mut self, key: &Key) -> Option<(u64, Option<String>)> {
        let now = self.tick();
        let e = self.entries.get_mut(key)?;
        e.last_used = now;
        e.pins += 1;
        Some((e.size, e.media_type.clone()))
    }

    pub fn unpin(&mut self, key: &Key) {
        if let Some(e) = self.entries.get_mut(key) {
            e.pins = e.pins.saturating_sub(1);
        }
    }

    /// Removes and returns the least recently used entry nobody is reading, if it was last
    /// used before `cutoff` (microseconds since the Unix epoch).
    pub fn pop_unused_since(&mut self, cutoff: u64) -> Option<(Key, u64)> {
        let key = *self
            .entries
            .iter()
            .filter(|(_, e)| e.pins == 0 && e.last_used < cutoff)
            .min_by_key(|(_, e)| e.last_used)?
            .0;
        let e = self.entries.remove(&key)?;
        self.total -= e.size;
        Some((key, e.size))
    }

    /// Removes and returns the least recently used entry that nobody is reading.
    pub fn pop_lru_unpinned(&mut self) -> Option<(Key, u64)> {
        let key = *self
            .entries
            .iter()
            .filter(|(_, e)| e.pins == 0)
            .min_by_key(|(_, e)| e.last_used)?
            .0;
        let e = self.entries.remove(&key)?;
        self.total -= e.size;
        Some((key, e.size))
    }
}

pub(crate) fn now_micros() -> u64 {
    micros_since_epoch(std::time::SystemTime::now())
}

pub(crate) fn micros_since_epoch(t: std::time::SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// Indexes the committed files of one kind. Files that are not named by a valid digest are
/// not Pollen's and are left alone; sidecars whose content is gone are removed.
pub(crate) fn scan(dir: &Path, kind: Kind, index: &mut Index) -> Result<(), StoreError> {
    let entries = fs::read_dir(dir).map_err(|e| StoreError::io("reading", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io("reading", dir, e))?;
        let path = entry.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some((stem, ext)) = name.split_once('.') {
            if SIDECARS.contains(&ext) && !dir.join(stem).exists() {
                let _ = fs::remove_file(&path);
            }
            continue;
        }
        let Ok(digest) = Digest::from_hex(name) else {
            continue;
        };
        let Ok(meta) = entry.metadata() else { continue };
        if !meta.is_file() {
            continue;
        }
        let media_type = match kind {
            Kind::Blob => None,
            Kind::Manifest => match fs::read_to_string(media_type_path(&path)) {
                Ok(t) => Some(t.trim().to_string()),
                Err(_) => {
                    // Content without its sidecar cannot be served correctly; drop it.
                    let _ = fs::remove_file(&path);
                    continue;
                }
            },
        };
        let age = meta.modified().map_or(0, micros_since_epoch);
        index.insert_scanned(Key::new(kind, digest), meta.len(), age, media_type);
    }
    Ok(())
}
