//! The disk side of a blob download: one blocking thread owns the partial blob and applies
//! everything that changes it, in order (Kraken's single writer): bytes appended from the
//! upstream, pieces and piece hashes from peers. After each batch it tells the clients how far
//! they may read ([`Progress`]) and the peers which pieces it can serve ([`PieceState`]).
//! The network side never waits on the disk or a hash.

use crate::error::FetchError;
use crate::inflight::{Inflight, Progress, Recent};
use crate::p2p::PieceShare;
use crate::proofs::{Book, Signed};
use bytes::Bytes;
use pollen_peer::{PieceState, Spread};
use pollen_proto::{Bitfield, HashedPiece, PieceGeometry, PieceMap};
use pollen_store::{Blob, Partial, StoreError};
use pollen_swarm::Signer;
use std::ops::Range;
use std::sync::Arc;
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

/// Operations queued between the network and the disk writer (each at most a socket read or
/// one piece).
const WRITE_QUEUE: usize = 16;
/// Bytes queued for the writer at most (in KiB): bounds memory when pieces (up to 64 MiB each)
/// arrive faster than the disk takes them; the senders wait instead.
const WRITE_BUDGET_KIB: usize = 32 << 10;
/// Most bytes written before readers are told about them.
const PUBLISH_BATCH: usize = 1 << 20;
/// A change to the partial blob.
pub(crate) enum Op {
    /// The next bytes from the upstream, at the append cursor.
    Append(Bytes),
    /// Continue appending at piece `index` (a range of pieces no peer had).
    Seek(u32),
    /// The upstream confirmed the blob's size: record the partial from now on.
    Confirm,
    /// The upstream range is done: take in the hashes of its last pieces (still on the
    /// hashing thread) now, so they are announced without waiting for more bytes.
    Settle,
    /// Piece hashes a peer sent (`slot` names the peer in the download), with their
    /// producer's signatures if they came signed (checked here, off the network task).
    Hashes {
        first: u32,
        hashes: Vec<[u8; 32]>,
        slot: usize,
        signed: Option<Signed>,
    },
    /// A piece a peer sent, hashed already; checked against the map before it touches the
    /// disk.
    Piece { piece: HashedPiece, slot: usize },
}

/// What became of a piece from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PieceResult {
    Stored,
    /// Already present (another peer's copy was first).
    Duplicate,
    /// Does not match its hash: the sender's fault.
    Mismatch,
    /// The disk failed; the writer stops with the error.
    Failed,
}

/// What became of a peer's contribution.
pub(crate) enum Written {
    Piece {
        index: u32,
        slot: usize,
        result: PieceResult,
    },
    /// `Ok(known)`: the pieces whose hash is known now; `Err`: they contradict the map, or a
    /// signature is not their producer's (the sender's fault either way).
    Hashes {
        slot: usize,
        result: Result<Bitfield, String>,
    },
}

/// The queue to the writer thread, bounded in operations and in bytes.
#[derive(Clone)]
pub(crate) struct SinkTx {
    tx: mpsc::Sender<(Op, OwnedSemaphorePermit)>,
    budget: Arc<Semaphore>,
}

impl SinkTx {
    /// Queues an operation; `false` when the writer has stopped.
    pub async fn send(&self, op: Op) -> bool {
        let kib = match &op {
            Op::Append(b) => b.len(),
            Op::Piece { piece, .. } => piece.bytes().len(),
            // A hash, and its signature when it came signed.
            Op::Hashes { hashes, signed, .. } => {
                hashes.len() * if signed.is_some() { 96 } else { 32 }
            }
            Op::Seek(_) | Op::Settle | Op::Confirm => 0,
        }
        .div_ceil(1024)
        .clamp(1, WRITE_BUDGET_KIB) as u32;
        let Ok(permit) = self.budget.clone().acquire_many_owned(kib).await else {
            return false;
        };
        self.tx.send((op, permit)).await.is_ok()
    }
}

/// The upstream side of a download: the writer's append cursor and the pieces present. A
/// transfer from the upstream takes one from the sink ([`Sink::appender`]) and gives it back
/// ([`Sink::absorb`]); a share of a split fetch keeps its own while the peer download goes on
/// beside it (which never asks peers for the share's pieces, so the two records agree).
pub(crate) struct Appender {
    pub tx: SinkTx,
    /// Where the upstream bytes go next (the append cursor, as sent to the writer).
    pub sent: u64,
    pub geometry: PieceGeometry,
    pub have: Bitfield,
    pub confirmed: bool,
    share: Arc<PieceShare>,
}

pub(crate) struct Sink {
    tx: SinkTx,
    /// The append cursor as of the last upstream transfer ([`Appender::sent`]).
    sent: u64,
    pub geometry: PieceGeometry,
    /// Pieces present or on their way to the disk: resumed from disk, stored from peers (as
    /// the writer confirms), or appended from the upstream. Owned by the download task.
    pub have: Bitfield,
    /// Pieces whose hash is known, as of the start or the last peer phase.
    pub known: Bitfield,
    /// The size is the upstream's or a verified manifest's, not only a peer's claim
    /// ([`pollen_store::Store::partial_with`]).
    pub confirmed: bool,
    /// The writer's verdicts on pieces and hashes from peers (taken by the peer download).
    pub written: Option<mpsc::UnboundedReceiver<Written>>,
    progress: watch::Sender<Progress>,
    share: Arc<PieceShare>,
    writer: tokio::task::JoinHandle<Result<Partial, StoreError>>,
}

impl Sink {
    /// `signer`: this node's key, to sign the hashes it produces (none without a swarm).
    pub fn start(partial: Partial, inflight: &Inflight, signer: Option<Signer>) -> Sink {
        let sent = partial.append_offset();
        let geometry = *partial.geometry();
        let share = Arc::new(PieceShare {
            geometry,
            state: watch::channel(PieceState::empty(&geometry)).0,
            data: partial.data(),
            spread: Spread::new(geometry),
            fetching: std::sync::atomic::AtomicBool::new(false),
        });
        let progress = inflight.progress().clone();
        progress.send_replace(Progress::Streaming {
            size: geometry.size(),
            written: partial.readable(),
            data: partial.data(),
            recent: Recent::default(),
            verified: false,
        });
        let have = partial.have().clone();
        let known = partial.map().known().clone();
        let confirmed = partial.confirmed();
        let mut w = WriterThread {
            book: Book::new(partial.digest(), geometry, signer),
            partial,
            adopted: false,
            published: (u32::MAX, u32::MAX, u32::MAX, u32::MAX),
            progress: progress.clone(),
            share: share.clone(),
            stored: Vec::new(),
        };
        w.publish();
        inflight.set_share(share.clone());
        let (tx, mut rx) = mpsc::channel::<(Op, OwnedSemaphorePermit)>(WRITE_QUEUE);
        let budget = Arc::new(Semaphore::new(WRITE_BUDGET_KIB));
        let (done_tx, written) = mpsc::unbounded_channel();
        let writer = tokio::task::spawn_blocking(move || {
            // Each op's share of the budget is released once it is applied.
            while let Some((op, _permit)) = rx.blocking_recv() {
                let mut result = w.apply(op, &done_tx);
                // Drain what else has arrived before telling readers and peers: one wake-up
                // per batch instead of per chunk.
                let mut batched = 0;
                while let Ok(n) = &result {
                    batched += n;
                    if batched >= PUBLISH_BATCH {
                        break;
                    }
                    let Ok((more, _permit)) = rx.try_recv() else {
                        // Nothing more to write now: take in the hashes of pieces just
                        // completed, or they would be announced only with the next bytes
                        // (behind a thin uplink, a whole read later).
                        result = w.partial.settle().map(|()| 0);
                        break;
                    };
                    result = w.apply(more, &done_tx);
                }
                if let Err(e) = result {
                    // Disk full, or upstream bytes that contradict a known piece hash: start
                    // afresh next time rather than keep what cannot be completed.
                    w.partial.abandon();
                    return Err(e);
                }
                w.publish();
            }
            Ok(w.partial)
        });
        Sink {
            tx: SinkTx { tx, budget },
            sent,
            geometry,
            have,
            known,
            confirmed,
            written: Some(written),
            progress,
            share,
            writer,
        }
    }

    /// Queues an operation; `false` when the writer has stopped (its error comes from
    /// [`Sink::finish`] or [`Sink::suspend`]).
    pub async fn send(&self, op: Op) -> bool {
        self.tx.send(op).await
    }

    /// The upstream side, for a transfer: give it back with [`Sink::absorb`].
    /// This node starts fetching the blob from the upstream: peers may open sessions to it
    /// before its first piece arrives (`pollen_core::upload::serves_partial`).
    pub fn fetching_upstream(&self) {
        self.share
            .fetching
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn appender(&self) -> Appender {
        Appender {
            tx: self.tx.clone(),
            sent: self.sent,
            geometry: self.geometry,
            have: self.have.clone(),
            confirmed: self.confirmed,
            share: self.share.clone(),
        }
    }

    /// Takes back what a transfer appended: its cursor, its pieces, its size confirmation.
    pub fn absorb(&mut self, app: Appender) {
        self.sent = app.sent;
        for i in app.have.iter_ones() {
            let _ = self.have.set(i);
        }
        self.confirmed |= app.confirmed;
    }

    async fn join(self) -> Result<(Partial, watch::Sender<Progress>, Arc<PieceShare>), FetchError> {
        drop(self.tx);
        let partial = self
            .writer
            .await
            .map_err(|e| FetchError::Store(format!("writer task: {e}")))??;
        Ok((partial, self.progress, self.share))
    }

    /// Keeps what was fetched for a later attempt: a checkpoint instead of a commit. A
    /// partial whose size only a peer claimed is not kept (it could never be trusted later).
    pub async fn suspend(self) {
        let confirmed = self.confirmed;
        if let Ok((mut partial, _, _)) = self.join().await {
            let _ = tokio::task::spawn_blocking(move || match confirmed {
                true => partial.checkpoint(),
                false => {
                    partial.abandon();
                    Ok(())
                }
            })
            .await;
        }
    }

    /// Deletes the partial blob: its size turned out wrong.
    pub async fn abandon(self) {
        if let Ok((partial, _, _)) = self.join().await {
            let _ = tokio::task::spawn_blocking(move || partial.abandon()).await;
        }
    }

    /// Verifies the whole blob, releases the last byte to clients, then commits it.
    pub async fn finish(self) -> Result<Blob, FetchError> {
        let (mut partial, progress, share) = self.join().await?;
        // Verify first and let readers have the last byte at once; the fsync and rename
        // that make the blob durable need not delay them.
        let partial = tokio::task::spawn_blocking(move || partial.verify().map(|()| partial))
            .await
            .map_err(|e| FetchError::Store(format!("verify task: {e}")))??;
        progress.send_modify(|p| {
            if let Progress::Streaming { verified, .. } = p {
                *verified = true;
            }
        });
        // Verified: the map is now trusted, and this node is a seed for the blob.
        let hashes: Arc<[[u8; 32]]> = partial.map().slots().into();
        share
            .state
            .send_replace(PieceState::complete(&share.geometry, hashes));
        tokio::task::spawn_blocking(move || partial.commit())
            .await
            .map_err(|e| FetchError::Store(format!("commit task: {e}")))?
            .map_err(FetchError::from)
    }
}

impl Appender {
    /// This node appends the blob from the upstream: its new pieces go to one peer each
    /// first (super-seeding, `pollen_peer::Spread`).
    pub fn spread_as_fetcher(&self) {
        self.share
            .fetching
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.share.spread.activate(&self.have);
    }

    /// The next upstream range: the first run of missing pieces (within `share`, when this
    /// node fetches only part of the blob), from the append cursor when it is inside that run
    /// (a transfer that broke there). `None` when nothing is missing.
    pub fn next_range(&self, share: Option<&Range<u32>>) -> Option<(u64, u64)> {
        let g = &self.geometry;
        let (from, to) = share.map_or((0, g.count()), |r| (r.start, r.end.min(g.count())));
        let first = self.have.iter_missing().find(|i| (from..to).contains(i))?;
        let end_piece = (first..to).find(|i| self.have.get(*i)).unwrap_or(to);
        let start = g.offset_of(first)?;
        let end = g.offset_of(end_piece).unwrap_or(g.size());
        Some(match self.sent > start && self.sent < end {
            true => (self.sent, end),
            false => (start, end),
        })
    }

    /// Moves the append cursor to `offset` (the first byte of a piece) unless it is there.
    pub async fn seek_to(&mut self, offset: u64) -> Result<(), FetchError> {
        if offset == self.sent {
            return Ok(());
        }
        let index = self
            .geometry
            .index_at(offset)
            .filter(|i| self.geometry.offset_of(*i) == Some(offset))
            .ok_or_else(|| FetchError::Store(format!("seek to {offset}: not a piece start")))?;
        if !self.tx.send(Op::Seek(index)).await {
            return Err(FetchError::Store("the blob's writer stopped".into()));
        }
        self.sent = offset;
        Ok(())
    }

    /// Records that the upstream supplied every byte up to `limit`: the run of missing pieces
    /// that ends there (and does not start before piece `floor`, where this node's share of
    /// the blob starts) is now appended.
    pub fn appended_through(&mut self, limit: u64, floor: u32) {
        mark_appended(&mut self.have, &self.geometry, limit, floor);
    }

    /// Records that the upstream confirmed the size (see [`Sink::confirmed`]).
    pub async fn confirm(&mut self) -> bool {
        self.confirmed = true;
        self.tx.send(Op::Confirm).await
    }
}

/// The state of the writer thread.
struct WriterThread {
    partial: Partial,
    /// Some hashes came from peers: the map is not this node's to vouch for as a whole until
    /// the blob verifies (trust model), only the hashes it produced.
    adopted: bool,
    /// Pieces, known hashes, produced hashes and signed hashes last published to peers.
    published: (u32, u32, u32, u32),
    /// Signatures of hashes, this node's and peers' (checked), for its sessions to pass on.
    book: Book,
    progress: watch::Sender<Progress>,
    share: Arc<PieceShare>,
    /// Pieces from peers stored since the last publish, for clients at the live edge.
    stored: Vec<(u64, Bytes)>,
}

impl WriterThread {
    /// Applies one operation; returns the bytes it wrote, or the error that ends the download.
    fn apply(
        &mut self,
        op: Op,
        done: &mpsc::UnboundedSender<Written>,
    ) -> Result<usize, StoreError> {
        match op {
            Op::Append(chunk) => {
                self.partial.append(&chunk)?;
                Ok(chunk.len())
            }
            Op::Seek(index) => self.partial.seek(index).map(|()| 0),
            Op::Settle => self.partial.settle().map(|()| 0),
            Op::Confirm => {
                self.partial.confirm();
                Ok(0)
            }
            Op::Hashes {
                first,
                hashes,
                slot,
                signed,
            } => {
                self.adopted |= !hashes.is_empty();
                let known = self.partial.map().known().clone();
                let checked = match &signed {
                    Some(s) => self.book.check(first, &hashes, s, &known),
                    None => Ok(()),
                };
                let result = checked.and_then(|()| {
                    self.partial
                        .adopt_hashes(first, &hashes)
                        .map_err(|e| format!("piece hashes contradict the map: {e}"))
                });
                if let (Ok(()), Some(s)) = (&result, signed) {
                    let slots = self.partial.map().slots();
                    self.book.keep(first, &hashes, s, &known, slots);
                }
                let result = result.map(|()| self.partial.map().known().clone());
                let _ = done.send(Written::Hashes { slot, result });
                Ok(0)
            }
            Op::Piece { piece, slot } => {
                let index = piece.index();
                let (result, error) = match self.partial.write_piece(&piece) {
                    Ok(true) => (PieceResult::Stored, None),
                    Ok(false) => (PieceResult::Duplicate, None),
                    Err(StoreError::PieceMismatch { .. }) => (PieceResult::Mismatch, None),
                    Err(e) => (PieceResult::Failed, Some(e)),
                };
                let _ = done.send(Written::Piece {
                    index,
                    slot,
                    result,
                });
                if result == PieceResult::Stored {
                    self.share.spread.received(index);
                    if let Some(offset) = self.partial.geometry().offset_of(index) {
                        self.stored.push((offset, piece.bytes().clone()));
                    }
                }
                match error {
                    Some(e) => Err(e),
                    None => Ok(piece.bytes().len()),
                }
            }
        }
    }

    /// Tells clients how far they may read, and peers what this node can serve.
    fn publish(&mut self) {
        let readable = self.partial.readable();
        let stored = std::mem::take(&mut self.stored);
        self.progress.send_modify(|p| {
            if let Progress::Streaming {
                written, recent, ..
            } = p
            {
                *written = readable;
                if !stored.is_empty() {
                    *recent = recent.with(stored);
                }
            }
        });
        let map = self.partial.map();
        self.book
            .sign_produced(self.partial.produced(), map.slots());
        let now = (
            self.partial.have().count_ones(),
            map.known().count_ones(),
            self.partial.produced().count_ones(),
            self.book.proven(),
        );
        if now == self.published {
            return;
        }
        self.published = now;
        let complete_map = map
            .known()
            .is_complete()
            .then(|| PieceMap::new(*map.digest(), *map.geometry(), map.slots().to_vec()).ok())
            .flatten();
        let (proofs, proven) = self.book.shared();
        let state = PieceState {
            have: self.partial.have().clone(),
            // Our own hashes (from the upstream's bytes) we vouch for; a peer's only once the
            // blob verified.
            hashes: map.slots().into(),
            vouched: self.partial.produced().clone(),
            proofs: Some(proofs),
            proven,
            complete: false,
            map_id: complete_map.filter(|_| self.adopted).map(|m| m.id()),
        };
        self.share.state.send_replace(state);
    }
}

/// [`Appender::appended_through`] on a bitfield.
fn mark_appended(have: &mut Bitfield, geometry: &PieceGeometry, limit: u64, floor: u32) {
    // A range that ends inside a piece (a probe range shorter than a piece) leaves that
    // piece unfinished: it is not present, and the next range resumes it at the cursor.
    let last = match geometry.index_at(limit) {
        Some(i) if geometry.offset_of(i) != Some(limit) => i.checked_sub(1),
        _ => limit.checked_sub(1).and_then(|b| geometry.index_at(b)),
    };
    let Some(mut i) = last else {
        return;
    };
    while !have.get(i) && i >= floor {
        let _ = have.set(i);
        match i.checked_sub(1) {
            Some(prev) => i = prev,
            None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn marked(geometry: &PieceGeometry, have: &[u32], limit: u64, floor: u32) -> Vec<u32> {
        let mut bits = Bitfield::new(geometry);
        for i in have {
            bits.set(*i).unwrap();
        }
        mark_appended(&mut bits, geometry, limit, floor);
        bits.iter_ones().collect()
    }

    #[test]
    fn a_range_marks_only_the_pieces_it_completed() {
        // 8 MiB pieces, a 4 MiB probe range: piece 0 is half there, not present (it was
        // marked, and never fetched again, before part 7).
        let g = PieceGeometry::new(40 * MIB, (8 * MIB) as u32).unwrap();
        assert_eq!(marked(&g, &[], 4 * MIB, 0), Vec::<u32>::new());
        assert_eq!(marked(&g, &[], 8 * MIB, 0), vec![0]);
        assert_eq!(marked(&g, &[], 20 * MIB, 0), vec![0, 1]);
        // The run ends at a piece present already, and at the share's first piece.
        assert_eq!(marked(&g, &[1], 32 * MIB, 0), vec![1, 2, 3]);
        assert_eq!(marked(&g, &[], 32 * MIB, 2), vec![2, 3]);
        // The blob's end completes its last (short) piece.
        let g = PieceGeometry::new(20 * MIB + 5, (8 * MIB) as u32).unwrap();
        assert_eq!(marked(&g, &[0, 1], 20 * MIB + 5, 0), vec![0, 1, 2]);
    }
}
