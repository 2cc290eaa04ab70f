//! The whole-blob SHA-256, computed beside the disk writes.

use bytes::Bytes;
use pollen_oci::{Digest, Hasher};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::thread::JoinHandle;

/// Objects at least this large are hashed on a thread of their own, so hashing (about
/// 1.2 GB/s per core with SHA-NI) and the page-cache copy run side by side.
const PARALLEL_HASH_MIN: u64 = 4 << 20;
/// Chunks queued for the hashing thread.
const HASH_QUEUE: usize = 16;
/// Largest chunk queued for a hashing thread. Bytes arrive in chunks as large as a piece
/// (up to 64 MiB), and a queue counted in chunks would hold its length in pieces; sliced, it
/// holds about its length in MiB (slices of one piece share its buffer).
const QUEUED_CHUNK: usize = 1 << 20;

/// `data` in slices of at most [`QUEUED_CHUNK`] (no copy).
pub(crate) fn queued_slices(data: &Bytes) -> impl Iterator<Item = Bytes> + '_ {
    (0..data.len())
        .step_by(QUEUED_CHUNK)
        .map(|at| data.slice(at..(at + QUEUED_CHUNK).min(data.len())))
}

/// Where written bytes go to be hashed.
pub(crate) enum HashSink {
    Inline(Hasher),
    Thread {
        tx: SyncSender<Bytes>,
        handle: JoinHandle<Digest>,
    },
}

impl HashSink {
    pub(crate) fn new(expected_size: Option<u64>) -> HashSink {
        if expected_size.is_some_and(|s| s >= PARALLEL_HASH_MIN) {
            let (tx, rx) = sync_channel::<Bytes>(HASH_QUEUE);
            let spawned = std::thread::Builder::new()
                .name("pollen-hash".into())
                .spawn(move || {
                    let mut h = Hasher::new();
                    for chunk in rx {
                        h.update(&chunk);
                    }
                    h.finish()
                });
            if let Ok(handle) = spawned {
                return HashSink::Thread { tx, handle };
            }
        }
        HashSink::Inline(Hasher::new())
    }

    pub(crate) fn update(&mut self, data: &Bytes) {
        match self {
            HashSink::Inline(h) => h.update(data),
            HashSink::Thread { tx, .. } => {
                // The thread only ends when the sender is dropped, so a send cannot fail
                // unless it panicked; finish() then reports a mismatch.
                for slice in queued_slices(data) {
                    let _ = tx.send(slice);
                }
            }
        }
    }

    pub(crate) fn finish(self) -> Option<Digest> {
        match self {
            HashSink::Inline(h) => Some(h.finish()),
            HashSink::Thread { tx, handle } => {
                drop(tx);
                handle.join().ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_slices_cover_the_bytes_in_bounded_pieces() {
        let data = Bytes::from(
            (0..(2 * QUEUED_CHUNK + 5))
                .map(|i| i as u8)
                .collect::<Vec<_>>(),
        );
        let slices: Vec<Bytes> = queued_slices(&data).collect();
        assert_eq!(slices.len(), 3);
        assert!(slices.iter().all(|s| s.len() <= QUEUED_CHUNK));
        assert_eq!(slices.concat(), data.to_vec());
        assert_eq!(queued_slices(&Bytes::new()).count(), 0);
    }
}
