//! Blobs assembled piece by piece, kept across restarts.
//!
//! A partial blob lives in `partial/<hex>/`: `data` (sparse, the blob's full size) and
//! `state.json` (geometry, the piece hashes known so far, which pieces are present). Pieces
//! arrive two ways: in order from the upstream, one range at a time ([`Partial::append`],
//! which hashes each piece as it completes and so fills the piece map) or one at a time from
//! peers
//! ([`Partial::write_piece`], verified against the map before a byte touches the disk). A
//! piece counts as present in the state file only after its bytes were synced, so a crash loses
//! at most the progress since the last checkpoint and never marks unwritten data as present.
//! Reopening re-verifies every present piece against the map (a corrupted disk is caught).
//! [`Partial::complete`] checks the whole-blob digest before the blob enters the store.

use crate::hash::HashSink;
use crate::piece_hash::PieceHashThread;
use crate::{Blob, Kind, Store, StoreError};
use bytes::Bytes;
use pollen_oci::{Digest, Hasher};
use pollen_proto::{Bitfield, HashedPiece, PartialPieceMap, PieceGeometry};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Bytes written between two checkpoints at most (what a crash can cost). Each checkpoint
/// syncs the data written since the last one, which competes with the transfer for the CPU
/// and the disk: measured on the 2-core VM, checkpoints every 256 MiB cost ~0.15 s per GiB of
/// a cold pull; every 1 GiB loses at most ~3% of a 30 GB pull to a crash.
const CHECKPOINT_BYTES: u64 = 1 << 30;
/// Longest time between two checkpoints while pieces arrive.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(10);
/// Largest state file read back: a full map of 65,536 hex hashes is about 4.3 MiB.
const MAX_STATE_BYTES: u64 = 8 << 20;
const STATE_VERSION: u32 = 1;

/// A blob being assembled. One owner writes it (the blob's download task); readers use
/// [`Partial::file`] with positional reads of pieces they know are present.
pub struct Partial {
    store: Store,
    digest: Digest,
    dir: PathBuf,
    file: Arc<File>,
    have: Bitfield,
    map: PartialPieceMap,
    /// Pieces whose hash this node computed from the upstream's bytes (this run): the only
    /// hashes it vouches for to peers before the blob verifies (trust model).
    produced: Bitfield,
    /// Where the next [`Partial::append`] byte goes, and the hash of the piece it is in.
    cursor: u64,
    /// Where the current run of appended bytes began (at open, or at the last
    /// [`Partial::seek`]): bytes `run_start..cursor` are written even before their piece is
    /// complete.
    run_start: u64,
    pieces: PieceHashThread,
    /// The whole-blob hash (on its own thread for large blobs), fed in order as the present
    /// prefix grows: appended bytes as they come, pieces from peers as they join the prefix
    /// (read back from the page cache when they arrived out of order). The digest is thus
    /// ready when the last piece lands, with no second pass over the blob.
    whole: Option<HashSink>,
    /// Bytes fed to `whole`.
    whole_pos: u64,
    /// Set by [`Partial::verify`].
    verified: bool,
    unsynced: u64,
    last_checkpoint: Instant,
    checkpointer: Checkpointer,
}

#[derive(Serialize, Deserialize)]
pub(crate) struct State {
    version: u32,
    pub(crate) digest: String,
    pub(crate) geometry: PieceGeometry,
    /// Hex hash per piece in order, `""` where unknown (a map filled out of order by several
    /// fetchers); older files hold only the known prefix.
    hashes: Vec<String>,
    have: Bitfield,
    /// Pieces whose hash this node computed itself (absent in older files: none).
    #[serde(default)]
    produced: Option<Bitfield>,
}

impl Store {
    /// Opens the partial download of `digest`, resuming what an earlier run left if its
    /// geometry matches, or starts a new one.
    pub fn partial(&self, digest: Digest, geometry: PieceGeometry) -> Result<Partial, StoreError> {
        let dir = self.root().join("partial").join(digest.hex());
        fs::create_dir_all(&dir).map_err(|e| StoreError::io("creating", &dir, e))?;
        {
            let mut index = self.inner.lock();
            self.inner.evict_over_quota(&mut index, geometry.size());
        }
        let data = dir.join("data");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&data)
            .map_err(|e| StoreError::io("opening", &data, e))?;
        let file = Arc::new(file);
        let (map, have, produced) = match load_state(&dir, digest, geometry) {
            Some((map, claimed, produced)) => {
                let have = reverify(&file, &map, &claimed);
                (map, have, produced)
            }
            None => (
                PartialPieceMap::new(digest, geometry),
                Bitfield::new(&geometry),
                Bitfield::new(&geometry),
            ),
        };
        file.set_len(geometry.size())
            .map_err(|e| StoreError::io("sizing", &data, e))?;
        let (file_for_checkpoints, dir_for_checkpoints) = (file.clone(), dir.clone());
        let cursor = have
            .iter_missing()
            .next()
            .and_then(|i| geometry.offset_of(i))
            .unwrap_or(geometry.size());
        let mut partial = Partial {
            store: self.clone(),
            digest,
            dir,
            file,
            have,
            map,
            produced,
            cursor,
            run_start: cursor,
            pieces: PieceHashThread::start()?,
            whole: Some(HashSink::new(Some(geometry.size()))),
            whole_pos: 0,
            verified: false,
            unsynced: 0,
            last_checkpoint: Instant::now(),
            checkpointer: Checkpointer::new(file_for_checkpoints, dir_for_checkpoints),
        };
        partial.catch_up_whole(None);
        Ok(partial)
    }

    /// The geometry of a partial download left on disk, so a fetch can reopen it and ask the
    /// upstream only for what is missing.
    pub fn partial_geometry(&self, digest: &Digest) -> Option<PieceGeometry> {
        let dir = self.root().join("partial").join(digest.hex());
        read_state(&dir)
            .filter(|s| s.version == STATE_VERSION && s.digest == digest.to_string())
            .map(|s| s.geometry)
    }

    /// Digests with a partial download on disk, for resuming after a restart.
    pub fn partials(&self) -> Vec<Digest> {
        let Ok(entries) = fs::read_dir(self.root().join("partial")) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter_map(|e| Digest::from_hex(e.file_name().to_str()?).ok())
            .collect()
    }
}

impl Partial {
    pub fn digest(&self) -> Digest {
        self.digest
    }
    pub fn geometry(&self) -> &PieceGeometry {
        self.map.geometry()
    }
    pub fn have(&self) -> &Bitfield {
        &self.have
    }
    pub fn map(&self) -> &PartialPieceMap {
        &self.map
    }
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Bytes from the start that are present: what a client reading in order may have.
    pub fn contiguous(&self) -> u64 {
        let geometry = self.geometry();
        match self.have.iter_missing().next() {
            Some(i) => geometry.offset_of(i).unwrap_or(0),
            None => geometry.size(),
        }
    }

    /// Where [`Partial::append`] continues: a resumed upstream transfer asks for this offset.
    pub fn append_offset(&self) -> u64 {
        self.cursor
    }

    /// Bytes from the start that a client reading in order may have now: the complete pieces
    /// from the start, extended by appended bytes whose piece is not hashed yet when the
    /// current append run joins that prefix.
    pub fn readable(&self) -> u64 {
        let prefix = self.contiguous();
        if self.run_start <= prefix && self.cursor > prefix {
            self.cursor
        } else {
            prefix
        }
    }

    /// Continues appending at the first byte of piece `index` (the upstream range for pieces
    /// no peer supplied). The bytes of a piece left unfinished are hashed again when it is
    /// fetched again.
    pub fn seek(&mut self, index: u32) -> Result<(), StoreError> {
        let offset = self
            .geometry()
            .offset_of(index)
            .ok_or(StoreError::PieceMismatch { index })?;
        if offset != self.cursor {
            self.pieces.reset()?;
            self.cursor = offset;
        }
        self.run_start = offset;
        Ok(())
    }

    /// Takes piece hashes from a peer's map, for any range. Hashes that overlap what is known
    /// must agree; a conflict means one of the two maps is wrong and is the caller's to
    /// settle.
    pub fn adopt_hashes(&mut self, first: u32, hashes: &[[u8; 32]]) -> Result<(), StoreError> {
        self.map
            .insert(first, hashes)
            .map_err(|e| StoreError::MapConflict(e.to_string()))
    }

    /// Pieces whose hash this node computed from the upstream's bytes since it opened the
    /// blob: what it may pass on to peers before the whole blob verifies.
    pub fn produced(&self) -> &Bitfield {
        &self.produced
    }

    /// Stores one piece from a peer after checking it against the map. `Ok(false)` when the
    /// piece was already present.
    pub fn write_piece(&mut self, piece: &HashedPiece) -> Result<bool, StoreError> {
        let (index, data) = (piece.index(), piece.bytes());
        if self.have.get(index) {
            return Ok(false);
        }
        if !self.map.verify_hashed(piece) {
            return Err(StoreError::PieceMismatch { index });
        }
        let offset = self
            .geometry()
            .offset_of(index)
            .ok_or(StoreError::PieceMismatch { index })?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| StoreError::io("writing", &self.dir, e))?;
        self.mark(index, data.len() as u64)?;
        self.catch_up_whole(Some((offset, data)));
        Ok(true)
    }

    /// Appends bytes of the blob in order (the upstream transfer), from
    /// [`Partial::append_offset`]. Each piece is hashed as it completes: checked against the
    /// map where its hash is known, otherwise its hash extends the map.
    pub fn append(&mut self, chunk: &Bytes) -> Result<(), StoreError> {
        if self.whole_pos == self.cursor {
            if let Some(w) = &mut self.whole {
                w.update(chunk);
                self.whole_pos += chunk.len() as u64;
            }
        }
        let geometry = *self.geometry();
        let mut pos = 0;
        while pos < chunk.len() {
            let index = geometry.index_at(self.cursor).ok_or(StoreError::TooLarge {
                limit: geometry.size(),
            })?;
            let range = geometry.range_of(index).ok_or(StoreError::TooLarge {
                limit: geometry.size(),
            })?;
            let n = ((range.end - self.cursor) as usize).min(chunk.len() - pos);
            let now = chunk.slice(pos..pos + n);
            self.file
                .write_all_at(&now, self.cursor)
                .map_err(|e| StoreError::io("writing", &self.dir, e))?;
            self.pieces.data(now)?;
            self.cursor += n as u64;
            pos += n;
            if self.cursor == range.end {
                self.pieces.end(index)?;
            }
        }
        let ready = self.pieces.ready();
        self.apply_piece_hashes(ready)
    }

    /// Records pieces whose hash the hashing thread finished: checked against the map where
    /// the hash is known, otherwise filling it in.
    fn apply_piece_hashes(&mut self, done: Vec<(u32, [u8; 32])>) -> Result<(), StoreError> {
        for (index, hash) in done {
            match self.map.hash(index) {
                Some(known) if *known != hash => return Err(StoreError::PieceMismatch { index }),
                Some(_) => {}
                None => self
                    .map
                    .insert(index, &[hash])
                    .map_err(|e| StoreError::MapConflict(e.to_string()))?,
            }
            let _ = self.produced.set(index);
            if !self.have.get(index) {
                let len = self.geometry().len_of(index).unwrap_or(0);
                self.mark(index, u64::from(len))?;
            }
        }
        self.catch_up_whole(None);
        Ok(())
    }

    /// Feeds the whole-blob hash with every present byte it has not seen, in order: `fresh`
    /// (a piece just written at an offset) straight from memory, the rest from the file.
    fn catch_up_whole(&mut self, fresh: Option<(u64, &Bytes)>) {
        let geometry = *self.geometry();
        let Some(w) = self.whole.as_mut() else { return };
        while self.whole_pos < geometry.size() {
            let Some(index) = geometry.index_at(self.whole_pos) else {
                return;
            };
            let Some(range) = geometry.range_of(index) else {
                return;
            };
            if !self.have.get(index) {
                return;
            }
            let chunk = match fresh {
                Some((offset, data)) if offset == self.whole_pos => data.clone(),
                _ => {
                    let mut buf = vec![0u8; (range.end - self.whole_pos) as usize];
                    if self.file.read_exact_at(&mut buf, self.whole_pos).is_err() {
                        // verify() hashes the whole file instead.
                        self.whole = None;
                        return;
                    }
                    Bytes::from(buf)
                }
            };
            w.update(&chunk);
            self.whole_pos += chunk.len() as u64;
        }
    }

    /// Waits for the piece hashes still being computed: afterwards [`Partial::have`] and
    /// [`Partial::map`] account for every byte appended. (Appending does not wait for them.)
    pub fn settle(&mut self) -> Result<(), StoreError> {
        let done = self.pieces.all()?;
        self.apply_piece_hashes(done)
    }

    fn mark(&mut self, index: u32, len: u64) -> Result<(), StoreError> {
        let _ = self.have.set(index);
        self.unsynced += len;
        if self.unsynced >= CHECKPOINT_BYTES
            || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL
        {
            // In the background: the fsync must not stall the transfer. If the previous
            // checkpoint is still running, this one is skipped and the next piece retries.
            let snapshot = self.snapshot()?;
            if self.checkpointer.try_send(snapshot) {
                self.unsynced = 0;
                self.last_checkpoint = Instant::now();
            }
        }
        Ok(())
    }

    /// What a checkpoint records: the pieces present now and the map.
    fn snapshot(&self) -> Result<Vec<u8>, StoreError> {
        let state = State {
            version: STATE_VERSION,
            digest: self.digest.to_string(),
            geometry: *self.geometry(),
            hashes: (0..self.map.geometry().count())
                .map(|i| self.map.hash(i).map(hex::encode).unwrap_or_default())
                .collect(),
            have: self.have.clone(),
            produced: Some(self.produced.clone()),
        };
        serde_json::to_vec(&state).map_err(|e| StoreError::MapConflict(e.to_string()))
    }

    /// Makes the present pieces durable and records them, now, so a restart resumes from
    /// here.
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.settle()?;
        let snapshot = self.snapshot()?;
        // Let a queued background checkpoint land first, so it cannot overwrite this newer
        // one; then carry on with a fresh checkpointer.
        self.checkpointer.stop();
        self.checkpointer = Checkpointer::new(self.file.clone(), self.dir.clone());
        record(&self.file, &self.dir, &snapshot)?;
        self.unsynced = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Checks the whole-blob digest once every piece is present. Streaming callers call this,
    /// release the last byte to their clients, then pay for [`Partial::commit`]'s fsync. On a
    /// mismatch the partial download is removed: its pieces matched a map that was wrong.
    pub fn verify(&mut self) -> Result<(), StoreError> {
        if self.verified {
            return Ok(());
        }
        self.settle()?;
        let size = self.geometry().size();
        if !self.have.is_complete() {
            return Err(StoreError::Incomplete {
                expected: size,
                got: self.contiguous(),
            });
        }
        self.catch_up_whole(None);
        let streamed = self.whole.take().filter(|_| self.whole_pos == size);
        let actual = match streamed.and_then(HashSink::finish) {
            Some(d) => d,
            None => hash_file(&self.file, &self.dir)?,
        };
        if actual != self.digest {
            self.checkpointer.stop();
            let _ = fs::remove_dir_all(&self.dir);
            return Err(StoreError::DigestMismatch {
                expected: self.digest,
                actual,
            });
        }
        self.verified = true;
        Ok(())
    }

    /// Verifies (unless done), makes the blob durable and moves it into the store.
    pub fn commit(mut self) -> Result<Blob, StoreError> {
        self.verify()?;
        self.checkpointer.stop();
        let size = self.geometry().size();
        self.file
            .sync_data()
            .map_err(|e| StoreError::io("syncing", &self.dir, e))?;
        let dest = self.store.path(Kind::Blob, &self.digest);
        if let Ok(map) = self.map.clone().finish() {
            // Best effort: without it the map is computed again when a peer asks.
            if let Ok(frame) = pollen_proto::encode_reply(&pollen_proto::Reply::PieceMap(map)) {
                let tmp = self.dir.join("pieces.tmp");
                let _ = crate::writer::write_durably(
                    &tmp,
                    &crate::index::piece_map_path(&dest),
                    &frame,
                );
            }
        }
        fs::rename(self.dir.join("data"), &dest)
            .map_err(|e| StoreError::io("renaming into", &dest, e))?;
        if let Some(parent) = dest.parent() {
            if let Ok(d) = File::open(parent) {
                let _ = d.sync_all();
            }
        }
        let _ = fs::remove_dir_all(&self.dir);
        Ok(self
            .store
            .insert_pinned(Kind::Blob, self.digest, size, None, self.file.clone()))
    }

    /// Gives up on this blob and removes what was downloaded.
    pub fn abandon(mut self) {
        self.checkpointer.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Syncs the data, then records the snapshot: a piece is in the state file only once its
/// bytes are durable.
fn record(file: &File, dir: &Path, snapshot: &[u8]) -> Result<(), StoreError> {
    file.sync_data()
        .map_err(|e| StoreError::io("syncing", dir, e))?;
    crate::writer::write_durably(&dir.join("state.tmp"), &dir.join("state.json"), snapshot)
}

/// A thread that takes checkpoints off the writer's path.
struct Checkpointer {
    tx: Option<SyncSender<Vec<u8>>>,
    handle: Option<JoinHandle<()>>,
}

impl Checkpointer {
    fn new(file: Arc<File>, dir: PathBuf) -> Checkpointer {
        let (tx, rx) = sync_channel::<Vec<u8>>(1);
        let handle = std::thread::Builder::new()
            .name("pollen-checkpoint".into())
            .spawn(move || {
                for snapshot in rx {
                    if let Err(e) = record(&file, &dir, &snapshot) {
                        tracing::warn!(error = %e, "checkpoint of a partial blob failed");
                    }
                }
            })
            .ok();
        Checkpointer {
            tx: handle.is_some().then_some(tx),
            handle,
        }
    }

    /// Queues a snapshot; false when the thread is still busy with the previous one.
    fn try_send(&self, snapshot: Vec<u8>) -> bool {
        self.tx
            .as_ref()
            .is_some_and(|tx| tx.try_send(snapshot).is_ok())
    }

    /// Finishes the queued checkpoint, if any, and ends the thread.
    fn stop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn read_state(dir: &Path) -> Option<State> {
    let mut text = Vec::new();
    File::open(dir.join("state.json"))
        .ok()?
        .take(MAX_STATE_BYTES)
        .read_to_end(&mut text)
        .ok()?;
    parse_state(&text)
}

/// The bytes of a `state.json` (pure, so the fuzz targets reach it without files).
pub(crate) fn parse_state(text: &[u8]) -> Option<State> {
    serde_json::from_slice(text).ok()
}

fn load_state(
    dir: &Path,
    digest: Digest,
    geometry: PieceGeometry,
) -> Option<(PartialPieceMap, Bitfield, Bitfield)> {
    check_state(read_state(dir)?, digest, geometry)
}

/// A state read back, if it is for `digest` cut as `geometry`: the map it holds, the pieces
/// it claims, and those this node produced.
pub(crate) fn check_state(
    state: State,
    digest: Digest,
    geometry: PieceGeometry,
) -> Option<(PartialPieceMap, Bitfield, Bitfield)> {
    if state.version != STATE_VERSION
        || state.digest != digest.to_string()
        || state.geometry != geometry
        || state.have.count() != geometry.count()
    {
        return None;
    }
    let mut map = PartialPieceMap::new(digest, geometry);
    for (index, h) in (0u32..).zip(&state.hashes) {
        if h.is_empty() {
            continue;
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(h, &mut out).ok()?;
        map.insert(index, &[out]).ok()?;
    }
    let produced = state
        .produced
        .filter(|p| p.count() == geometry.count())
        .unwrap_or_else(|| Bitfield::new(&geometry));
    Some((map, state.have, produced))
}

/// Keeps only the pieces whose bytes on disk still match the map.
fn reverify(file: &File, map: &PartialPieceMap, claimed: &Bitfield) -> Bitfield {
    let geometry = map.geometry();
    let mut have = Bitfield::new(geometry);
    let mut buf = Vec::new();
    for index in claimed.iter_ones() {
        let (Some(offset), Some(len)) = (geometry.offset_of(index), geometry.len_of(index)) else {
            continue;
        };
        buf.resize(len as usize, 0);
        if file.read_exact_at(&mut buf, offset).is_ok() && map.verify_piece(index, &buf) {
            let _ = have.set(index);
        }
    }
    have
}

fn hash_file(file: &File, dir: &Path) -> Result<Digest, StoreError> {
    let mut h = Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = file
            .read_at(&mut buf, offset)
            .map_err(|e| StoreError::io("reading", dir, e))?;
        if n == 0 {
            return Ok(h.finish());
        }
        h.update(&buf[..n]);
        offset += n as u64;
    }
}

#[cfg(test)]
#[path = "partial_tests.rs"]
mod tests;
