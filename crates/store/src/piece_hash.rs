//! Piece hashes of an in-order stream, computed on a thread of their own, so the thread that
//! writes the partial blob never waits on them.

use crate::StoreError;
use bytes::Bytes;
use pollen_proto::PieceHasher;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

/// Chunks queued for the hashing thread.
const QUEUE: usize = 32;

enum Job {
    Data(Bytes),
    End(u32),
    Reset,
}

pub(crate) struct PieceHashThread {
    tx: Option<SyncSender<Job>>,
    done: Receiver<(u32, [u8; 32])>,
    handle: Option<JoinHandle<()>>,
    /// Pieces ended whose hash has not been collected yet.
    pending: usize,
}

impl PieceHashThread {
    pub fn start() -> Result<PieceHashThread, StoreError> {
        let (tx, rx) = sync_channel::<Job>(QUEUE);
        let (done_tx, done) = std::sync::mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("pollen-pieces".into())
            .spawn(move || {
                let mut h = PieceHasher::new();
                for job in rx {
                    match job {
                        Job::Data(b) => h.update(&b),
                        Job::Reset => h = PieceHasher::new(),
                        Job::End(index) => {
                            let hash = std::mem::take(&mut h).finish();
                            if done_tx.send((index, hash)).is_err() {
                                return;
                            }
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Io {
                context: "starting the piece hashing thread for",
                path: "a partial blob".into(),
                source: e,
            })?;
        Ok(PieceHashThread {
            tx: Some(tx),
            done,
            handle: Some(handle),
            pending: 0,
        })
    }

    fn send(&self, job: Job) -> Result<(), StoreError> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(|| StoreError::MapConflict("the piece hashing thread stopped".into()))
    }

    /// Bytes of the current piece.
    pub fn data(&self, bytes: Bytes) -> Result<(), StoreError> {
        for slice in crate::hash::queued_slices(&bytes) {
            self.send(Job::Data(slice))?;
        }
        Ok(())
    }

    /// The current piece, `index`, is complete.
    pub fn end(&mut self, index: u32) -> Result<(), StoreError> {
        self.send(Job::End(index))?;
        self.pending += 1;
        Ok(())
    }

    /// Forgets the bytes of the current (unfinished) piece: the stream continues elsewhere.
    pub fn reset(&self) -> Result<(), StoreError> {
        self.send(Job::Reset)
    }

    /// Hashes finished so far, in piece order, without waiting.
    pub fn ready(&mut self) -> Vec<(u32, [u8; 32])> {
        let out: Vec<_> = self.done.try_iter().collect();
        self.pending -= out.len();
        out
    }

    /// Every hash still owed, waiting for them.
    pub fn all(&mut self) -> Result<Vec<(u32, [u8; 32])>, StoreError> {
        let mut out = Vec::with_capacity(self.pending);
        while self.pending > 0 {
            let r = self
                .done
                .recv()
                .map_err(|_| StoreError::MapConflict("the piece hashing thread stopped".into()))?;
            out.push(r);
            self.pending -= 1;
        }
        Ok(out)
    }
}

impl Drop for PieceHashThread {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}
