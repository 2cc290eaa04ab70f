//! The downloader's side of a session: [`Session`].
//!
//! # Concurrency
//! [`Session::open`] splits the stream (`tokio::io::split`), sends `Interest` and reads `Have`
//! itself, then hands each half to a task of its own (see `io`): a reader that reads replies
//! and piece bodies ahead into a small bounded channel, and a writer that writes the requests
//! [`Session::request`], [`Session::cancel`] and [`Session::request_map`] queue. Those three
//! are therefore plain functions: they never wait, and a request goes out at once even while a
//! large piece is still being read. [`Session::next_event`] only takes from the channel, so it
//! is cancel-safe (it can sit in a `select!`). Dropping the session aborts both tasks, which
//! closes the stream; [`Session::close`] says `NotInterested` first.
//!
//! The read-ahead is bounded (a couple of pieces), so a caller that stops calling
//! `next_event` stops the reader, then the uploader's writes, and the uploader ends the
//! session after its stall deadline: keep polling a session while pieces are outstanding.
//!
//! # Deadlines
//! While something is owed (the map asked for, a piece outstanding), `next_event` fails with
//! [`SessionError::Timeout`] after `stall_timeout` without a byte from the peer; with nothing
//! owed, after `idle_timeout` without a message. Bytes count as they arrive, so a 64 MiB piece
//! on a slow link is fine as long as it keeps moving.
//!
//! # What is checked here, and what is not
//! Every message against the session's context: the geometry against this node's rule and the
//! digest, indices against the count, a `Piece` against the requests outstanding and its
//! length against the geometry (before its body is read), a `PieceMap` against the digest,
//! the geometry and the advertised map id, `PieceHashes` for contiguity. A violation is
//! [`SessionError::PeerFault`]. Piece *contents* are not checked here: the caller holds the
//! map, verifies each piece with [`crate::verify`] and decides whom to blame.

mod check;
mod io;

use crate::config::{after, SessionConfig};
use crate::error::SessionError;
use bytes::Bytes;
use check::{check_have, kind};
use io::{Inbox, Incoming, Progress, Shared};
use pollen_oci::Digest;
use pollen_proto::{
    read_reply, write_request, Bitfield, PieceGeometry, PieceMap, PieceMapId, Reply, Request,
    MAX_OUTSTANDING_REQUESTS,
};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::debug;

/// Items the reader may read ahead of the caller: each can be a whole piece, so this bounds the
/// session's memory to about this many pieces plus the one being read.
const READ_AHEAD: usize = 2;

/// Requests that may wait for the writer: every outstanding `GetPiece`, its `Cancel` and a
/// re-request, plus the few others. Full means the peer stopped reading.
const WRITE_QUEUE: usize = 3 * MAX_OUTSTANDING_REQUESTS + 4;

/// The uploader's state for the blob, as sent in `Have` (at the start, and again whenever it
/// replaces it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Have {
    /// How the blob is cut (checked against this node's geometry rule).
    pub geometry: PieceGeometry,
    /// The pieces the peer can serve now.
    pub bitfield: Bitfield,
    /// The peer is a seed: whole blob, verified.
    pub complete: bool,
    /// The id of the complete map the peer's pieces were verified against, if it has one.
    pub map_id: Option<PieceMapId>,
}

/// Something the uploader said, checked against the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A piece asked for: its length matches the geometry; its contents are unverified (see
    /// [`crate::verify`]).
    Piece { index: u32, bytes: Bytes },
    /// The complete map; its digest, geometry and id match this session and the `Have`.
    Map(PieceMap),
    /// The next hashes of a growing map (contiguous with those before; possibly none, from a
    /// peer that vouches for no map). Feed them to a `PartialPieceMap` with `extend`.
    Hashes { first: u32, hashes: Vec<[u8; 32]> },
    /// Hashes each signed by `producer` (the peer's own or passed on; `/pollen/pieces/3`):
    /// unverified. Check every signature against the producer's key
    /// (`pollen_proto::hash_claim`) before taking a hash.
    SignedHashes {
        producer: Vec<u8>,
        first: u32,
        hashes: Vec<[u8; 32]>,
        signatures: Vec<pollen_proto::Signature>,
    },
    /// Pieces the peer gained (only those not known before).
    HaveMore(Vec<u32>),
    /// The peer replaced its state (e.g. it completed the blob and now has a map id).
    Have(Have),
    /// The peer withdrew our upload slot: every request outstanding was dropped (listed);
    /// ask again after `Unchoked`, or elsewhere.
    Choked { dropped: Vec<u32> },
    /// The peer serves `GetPiece` now.
    Unchoked,
}

/// Why a request was not sent. The session itself is unaffected unless `Closed`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The peer has us choked: it would drop the request.
    #[error("the peer has us choked")]
    Choked,
    /// The peer has not announced the piece (or it is past the blob): it would refuse.
    #[error("the peer has not announced that piece")]
    NotAnnounced,
    /// `MAX_OUTSTANDING_REQUESTS` are already outstanding.
    #[error("too many requests outstanding")]
    TooMany,
    /// The writer is that far behind: the peer is not reading.
    #[error("the request queue is full")]
    Backlog,
    /// The session has ended.
    #[error("the session has ended")]
    Closed,
}

/// A downloader's session with one uploader about one blob.
pub struct Session {
    digest: Digest,
    geometry: PieceGeometry,
    cfg: SessionConfig,
    have: Bitfield,
    complete: bool,
    map_id: Option<PieceMapId>,
    choked: bool,
    map_asked: bool,
    /// The map was asked for and nothing of it has arrived yet.
    map_pending: bool,
    /// When the session last went from owing nothing to owing something.
    owed_since: Instant,
    shared: Arc<Shared>,
    inbox: Inbox,
    outbox: Option<mpsc::Sender<Request>>,
    reader: JoinHandle<()>,
    writer: Option<JoinHandle<()>>,
    ended: bool,
}

impl Session {
    /// Opens a session about `digest` on `stream`: sends `Interest`, reads and checks `Have`
    /// (within `stall_timeout`). The uploader starts us choked: wait for
    /// [`Event::Unchoked`] before requesting pieces. A refusal is [`SessionError::Refused`].
    /// Spawns the session's reader and writer tasks, so it must run inside a tokio runtime.
    pub async fn open<S>(
        stream: S,
        digest: Digest,
        cfg: &SessionConfig,
    ) -> Result<(Session, Have), SessionError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (r, mut w) = tokio::io::split(stream);
        let shared = Shared::new();
        let mut r = Progress::new(r, shared.clone());
        let first = timeout(cfg.stall_timeout, async {
            write_request(&mut w, &Request::Interest { digest }).await?;
            read_reply(&mut r).await
        })
        .await
        .map_err(|_| SessionError::Timeout)??;
        let have = match first {
            Some(Reply::Have {
                geometry,
                bitfield,
                complete,
                map_id,
            }) => Have {
                geometry,
                bitfield,
                complete,
                map_id,
            },
            Some(Reply::Error { code, message }) => {
                debug!(%digest, ?code, %message, "peer refused the session");
                return Err(SessionError::Refused(code));
            }
            Some(other) => {
                return Err(SessionError::fault(format!("{} before Have", kind(&other))))
            }
            None => return Err(SessionError::Closed),
        };
        check_have(&digest, &have, cfg)?;

        let (in_tx, inbox) = mpsc::channel(READ_AHEAD);
        let (out_tx, out_rx) = mpsc::channel(WRITE_QUEUE);
        let reader = tokio::spawn(io::read_loop(
            r,
            have.geometry,
            shared.clone(),
            in_tx.clone(),
        ));
        let writer = tokio::spawn(io::write_loop(w, out_rx, cfg.stall_timeout, in_tx));
        let session = Session {
            digest,
            geometry: have.geometry,
            cfg: cfg.clone(),
            have: have.bitfield.clone(),
            complete: have.complete,
            map_id: have.map_id,
            choked: true,
            map_asked: false,
            map_pending: false,
            owed_since: Instant::now(),
            shared,
            inbox,
            outbox: Some(out_tx),
            reader,
            writer: Some(writer),
            ended: false,
        };
        Ok((session, have))
    }

    /// The blob this session is about.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The blob's geometry, from the first `Have`.
    pub fn geometry(&self) -> &PieceGeometry {
        &self.geometry
    }

    /// The pieces the peer has announced so far (`Have` and `HaveMore` processed).
    pub fn peer_has(&self) -> &Bitfield {
        &self.have
    }

    /// Whether the peer's latest `Have` said it is a seed.
    pub fn peer_complete(&self) -> bool {
        self.complete
    }

    /// The map id from the peer's latest `Have`.
    pub fn peer_map_id(&self) -> Option<PieceMapId> {
        self.map_id
    }

    /// Whether the peer has us choked (true until the first `Unchoked`).
    pub fn is_choked(&self) -> bool {
        self.choked
    }

    /// How many `GetPiece`s are outstanding.
    pub fn outstanding(&self) -> usize {
        self.shared.pending().requested.len()
    }

    /// Asks for piece `index` (pipelined: up to `MAX_OUTSTANDING_REQUESTS` at once). Never
    /// waits: the request is queued for the writer task. Asking again for a piece already
    /// outstanding does nothing.
    pub fn request(&mut self, index: u32) -> Result<(), RequestError> {
        if self.ended {
            return Err(RequestError::Closed);
        }
        if self.choked {
            return Err(RequestError::Choked);
        }
        if !self.have.get(index) {
            return Err(RequestError::NotAnnounced);
        }
        let mut pending = self.shared.pending();
        if pending.requested.contains(&index) {
            return Ok(());
        }
        if pending.requested.len() >= MAX_OUTSTANDING_REQUESTS {
            return Err(RequestError::TooMany);
        }
        let was_owed = self.map_pending || !pending.requested.is_empty();
        // Recorded before it is sent, so the reader knows it when the answer comes.
        pending.requested.insert(index);
        if let Err(e) = send(&self.outbox, Request::GetPiece { index }) {
            pending.requested.remove(&index);
            return Err(e);
        }
        if !was_owed {
            self.owed_since = Instant::now();
        }
        Ok(())
    }

    /// Withdraws the request for piece `index`; true if it was outstanding. The piece may still
    /// arrive (it may be on the wire already): it is then read and dropped, never delivered.
    pub fn cancel(&mut self, index: u32) -> bool {
        let mut pending = self.shared.pending();
        if !pending.requested.remove(&index) {
            return false;
        }
        pending.stale.insert(index);
        // If it cannot be sent, the piece may come anyway and is dropped as stale.
        let _ = send(&self.outbox, Request::Cancel { index });
        true
    }

    /// Tells the uploader how many upload slots this node holds now (`Request::Holding`), so
    /// it hands a free slot to whoever holds fewest (and places a holder that yields by it).
    /// Only on `pollen_proto::PROTOCOL` streams: an uploader speaking `LEGACY_PROTOCOL` does
    /// not know the message.
    pub fn holding(&mut self, slots: u32) -> Result<(), RequestError> {
        if self.ended {
            return Err(RequestError::Closed);
        }
        send(&self.outbox, Request::Holding { slots })
    }

    /// Asks for the piece map, once per session (later calls do nothing). The answer is
    /// [`Event::Map`] from a seed, else [`Event::Hashes`] (possibly empty), followed by more
    /// `Hashes` as a fetching peer's map grows.
    pub fn request_map(&mut self) -> Result<(), RequestError> {
        if self.ended {
            return Err(RequestError::Closed);
        }
        if self.map_asked {
            return Ok(());
        }
        let was_owed = !self.shared.pending().requested.is_empty();
        send(&self.outbox, Request::GetPieceMap)?;
        self.map_asked = true;
        self.map_pending = true;
        if !was_owed {
            self.owed_since = Instant::now();
        }
        Ok(())
    }

    /// The next thing the peer said. Cancel-safe. Any error ends the session; later calls
    /// return [`SessionError::Closed`].
    pub async fn next_event(&mut self) -> Result<Event, SessionError> {
        if self.ended {
            return Err(SessionError::Closed);
        }
        let res = self.next_event_inner().await;
        if res.is_err() {
            self.ended = true;
            self.outbox = None;
            self.reader.abort();
        }
        res
    }

    async fn next_event_inner(&mut self) -> Result<Event, SessionError> {
        loop {
            let deadline = self.deadline();
            let item = tokio::select! {
                item = self.inbox.recv() => item,
                () = sleep_until(deadline) => {
                    if self.deadline() <= Instant::now() {
                        return Err(SessionError::Timeout);
                    }
                    continue;
                }
            };
            // Both tasks gone without a word: cannot happen (the reader always reports why).
            let item = item.ok_or(SessionError::Closed)??;
            let event = match item {
                Incoming::Piece { index, bytes } => Some(Event::Piece { index, bytes }),
                Incoming::Reply(reply) => self.on_reply(reply)?,
            };
            if let Some(event) = event {
                return Ok(event);
            }
        }
    }

    /// Ends the session politely: `NotInterested`, then the writer shuts our side of the
    /// stream down (waiting at most `stall_timeout` for it).
    pub async fn close(mut self) {
        if let Some(tx) = self.outbox.take() {
            let _ = tx.try_send(Request::NotInterested);
        }
        if let Some(mut writer) = self.writer.take() {
            if timeout(self.cfg.stall_timeout, &mut writer).await.is_err() {
                writer.abort();
            }
        }
    }

    /// When waiting for the next message stops being reasonable.
    fn deadline(&self) -> Instant {
        let owed = self.map_pending || !self.shared.pending().requested.is_empty();
        let since = self.shared.last_activity().max(self.owed_since);
        let wait = if owed {
            self.cfg.stall_timeout
        } else {
            self.cfg.idle_timeout
        };
        after(since, wait)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(writer) = &self.writer {
            writer.abort();
        }
    }
}

/// Queues a request for the writer task.
fn send(outbox: &Option<mpsc::Sender<Request>>, req: Request) -> Result<(), RequestError> {
    let tx = outbox.as_ref().ok_or(RequestError::Closed)?;
    tx.try_send(req).map_err(|e| match e {
        TrySendError::Full(_) => RequestError::Backlog,
        TrySendError::Closed(_) => RequestError::Closed,
    })
}
