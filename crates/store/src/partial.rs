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
//!
//! A partial's geometry (its size) is written to `state.json` only once it is *confirmed*:
//! the size came from the upstream or from a manifest the node verified, never from a peer
//! alone ([`Store::partial_with`]). An unconfirmed partial is never resumed; one left at a
//! restart is deleted. The bytes a partial holds count toward the quota as they land (no
//! size is reserved up front, so a claimed size cannot evict anything), and a partial nobody
//! resumes is evicted like a blob (least recently used, or unused for `--cache-max-age`).

use crate::direct::{DataFile, DataWriter};
use crate::hash::HashSink;
use crate::index::{Key, Slot, PARTIAL_DIR};
pub(crate) use crate::partial_state::scan;
use crate::partial_state::{hash_file, load_state, read_state, reverify, State, STATE_VERSION};
use crate::piece_hash::PieceHashThread;
use crate::{Blob, Kind, Pin, Store, StoreError};
use bytes::Bytes;
use pollen_oci::Digest;
use pollen_proto::{Bitfield, HashedPiece, PartialPieceMap, PieceGeometry};
use std::fs::{self, File, OpenOptions};
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

/// A blob being assembled. One owner writes it (the blob's download task); readers use
/// [`Partial::file`] with positional reads of pieces they know are present.
pub struct Partial {
    store: Store,
    digest: Digest,
    dir: PathBuf,
    file: Arc<File>,
    /// Writes the blob's bytes (past the page cache where it can: `direct.rs`).
    writer: DataWriter,
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
    /// The size is the upstream's (or a verified manifest's): only then is the geometry
    /// recorded in `state.json` and the partial resumable.
    confirmed: bool,
    /// Keeps the partial's index entry (its quota share) from eviction while it is open.
    _pin: Pin,
}

impl Store {
    /// [`Store::partial_with`] for a size the caller confirmed (the upstream's, or a
    /// verified manifest's).
    pub fn partial(&self, digest: Digest, geometry: PieceGeometry) -> Result<Partial, StoreError> {
        self.partial_with(digest, geometry, true)
    }

    /// Opens the partial download of `digest`, resuming what an earlier run left if its
    /// geometry matches, or starts a new one. `confirmed`: the size is the upstream's or a
    /// verified manifest's; otherwise (a peer's claim) nothing is recorded on disk until
    /// [`Partial::confirm`], so a wrong size never outlives the download.
    pub fn partial_with(
        &self,
        digest: Digest,
        geometry: PieceGeometry,
        confirmed: bool,
    ) -> Result<Partial, StoreError> {
        let key = Key::new(Slot::Partial, digest);
        let pin = {
            let mut index = self.inner.lock();
            if index.touch_and_pin(&key).is_none() {
                index.set_size(key, 0);
                index.touch_and_pin(&key);
            }
            Pin {
                inner: self.inner.clone(),
                key,
            }
        };
        let dir = self.root().join(PARTIAL_DIR).join(digest.hex());
        fs::create_dir_all(&dir).map_err(|e| StoreError::io("creating", &dir, e))?;
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
            None => {
                // Starting afresh: no byte or record of another geometry survives.
                let _ = fs::remove_file(dir.join("state.json"));
                file.set_len(0)
                    .map_err(|e| StoreError::io("sizing", &data, e))?;
                (
                    PartialPieceMap::new(digest, geometry),
                    Bitfield::new(&geometry),
                    Bitfield::new(&geometry),
                )
            }
        };
        file.set_len(geometry.size())
            .map_err(|e| StoreError::io("sizing", &data, e))?;
        let present: u64 = have
            .iter_ones()
            .filter_map(|i| geometry.len_of(i))
            .map(u64::from)
            .sum();
        {
            let mut index = self.inner.lock();
            index.set_size(key, present);
            self.inner.evict_over_quota(&mut index, 0);
        }
        let (file_for_checkpoints, dir_for_checkpoints) = (file.clone(), dir.clone());
        let cursor = have
            .iter_missing()
            .next()
            .and_then(|i| geometry.offset_of(i))
            .unwrap_or(geometry.size());
        let writer = DataWriter::new(file.clone(), &data, true);
        let mut partial = Partial {
            store: self.clone(),
            digest,
            dir,
            file,
            writer,
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
            confirmed,
            _pin: pin,
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
            .filter(|s| s.confirmed)
            .map(|s| s.geometry)
    }

    /// Counts `bytes` more of a partial download toward the quota, evicting others if they
    /// no longer fit (never an entry in use, the partial itself included).
    fn partial_grew(&self, digest: &Digest, bytes: u64) {
        let mut index = self.inner.lock();
        index.grow(&Key::new(Slot::Partial, *digest), bytes);
        self.inner.evict_over_quota(&mut index, 0);
    }

    /// Removes a partial download's directory and its share of the quota.
    fn remove_partial(&self, digest: &Digest, dir: &Path) {
        let _ = fs::remove_dir_all(dir);
        self.inner.lock().remove(&Key::new(Slot::Partial, *digest));
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
    /// The data file for readers of the blob in flight (direct reads where it was written
    /// past the page cache).
    pub fn data(&self) -> DataFile {
        self.writer.reader()
    }
    /// Whether the size is confirmed (see [`Store::partial_with`]).
    pub fn confirmed(&self) -> bool {
        self.confirmed
    }

    /// The upstream (or a verified manifest) confirmed the size: from now on the geometry
    /// and progress are recorded, and the partial can be resumed.
    pub fn confirm(&mut self) {
        self.confirmed = true;
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
        self.writer
            .write_at(data, offset)
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
            self.writer
                .write_at(&now, self.cursor)
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
        if self.have.set(index).unwrap_or(false) {
            self.store.partial_grew(&self.digest, len);
        }
        self.unsynced += len;
        if self.confirmed
            && (self.unsynced >= CHECKPOINT_BYTES
                || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL)
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
            confirmed: self.confirmed,
        };
        serde_json::to_vec(&state).map_err(|e| StoreError::MapConflict(e.to_string()))
    }

    /// Makes the present pieces durable and records them, now, so a restart resumes from
    /// here.
    /// An unconfirmed partial records nothing (it is not resumable).
    pub fn checkpoint(&mut self) -> Result<(), StoreError> {
        self.settle()?;
        if !self.confirmed {
            return Ok(());
        }
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
            self.store.remove_partial(&self.digest, &self.dir);
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
                    "pieces.before_rename",
                );
            }
        }
        crate::crash::point("blob.before_rename");
        fs::rename(self.dir.join("data"), &dest)
            .map_err(|e| StoreError::io("renaming into", &dest, e))?;
        if let Some(parent) = dest.parent() {
            if let Ok(d) = File::open(parent) {
                let _ = d.sync_all();
            }
        }
        crate::crash::point("blob.after_rename");
        let _ = fs::remove_dir_all(&self.dir);
        Ok(self
            .store
            .insert_pinned(Kind::Blob, self.digest, size, None, self.file.clone()))
    }

    /// Gives up on this blob and removes what was downloaded.
    pub fn abandon(mut self) {
        self.checkpointer.stop();
        self.store.remove_partial(&self.digest, &self.dir);
    }
}

/// Syncs the data, then records the snapshot: a piece is in the state file only once its
/// bytes are durable.
fn record(file: &File, dir: &Path, snapshot: &[u8]) -> Result<(), StoreError> {
    file.sync_data()
        .map_err(|e| StoreError::io("syncing", dir, e))?;
    crate::writer::write_durably(
        &dir.join("state.tmp"),
        &dir.join("state.json"),
        snapshot,
        "state.before_rename",
    )
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

#[cfg(test)]
#[path = "partial_tests.rs"]
mod tests;
