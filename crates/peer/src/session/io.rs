//! The downloader's two stream tasks and the state they share with the session.
//!
//! The **reader task** owns the read half. It reads replies, checks each `Piece` header
//! against the geometry and the requests outstanding *before* reading its body (so a peer can
//! make us allocate only a piece we asked for), drops the bodies of cancelled pieces, and
//! hands everything else to the session over a small bounded channel. It keeps reading while
//! the caller is busy with the previous piece (verifying, storing), and the channel's bound
//! caps how far ahead it gets, so memory stays at a few pieces.
//!
//! The **writer task** owns the write half and writes the requests the session queues. It
//! never waits on the reader, so a `GetPiece` or `Cancel` goes out while a 64 MiB body is
//! still arriving.
//!
//! Every byte read is recorded as activity; the session's deadlines count from it.

use crate::error::SessionError;
use bytes::Bytes;
use pollen_proto::{read_piece_body, read_reply, write_request, PieceGeometry, Reply, Request};
use std::collections::BTreeSet;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::{Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

/// What the reader task hands to the session.
pub(super) enum Incoming {
    /// Any reply but a `Piece` header.
    Reply(Reply),
    /// A piece that was asked for and not cancelled, with its body (length already checked).
    Piece { index: u32, bytes: Bytes },
}

pub(super) type Inbox = mpsc::Receiver<Result<Incoming, SessionError>>;
type InboxSender = mpsc::Sender<Result<Incoming, SessionError>>;

/// Requests the reader must know about to judge a `Piece` header.
#[derive(Default)]
pub(super) struct Pending {
    /// `GetPiece`s sent and not yet answered.
    pub(super) requested: BTreeSet<u32>,
    /// Pieces that may still arrive although nobody wants them any more (cancelled, or
    /// dropped by `Choked`): read and discarded, not blamed.
    pub(super) stale: BTreeSet<u32>,
}

/// State shared by the session and its tasks.
pub(super) struct Shared {
    pending: Mutex<Pending>,
    base: Instant,
    /// Nanoseconds after `base` of the last sign of life on the read side.
    last_activity: AtomicU64,
}

impl Shared {
    pub(super) fn new() -> Arc<Shared> {
        Arc::new(Shared {
            pending: Mutex::new(Pending::default()),
            base: Instant::now(),
            last_activity: AtomicU64::new(0),
        })
    }

    pub(super) fn pending(&self) -> MutexGuard<'_, Pending> {
        // Never held across an await, and every update leaves the sets consistent.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn touch(&self) {
        let nanos = u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_activity.fetch_max(nanos, Ordering::Relaxed);
    }

    pub(super) fn last_activity(&self) -> Instant {
        self.base + Duration::from_nanos(self.last_activity.load(Ordering::Relaxed))
    }
}

/// A reader that records every successful read as activity.
pub(super) struct Progress<R> {
    inner: R,
    shared: Arc<Shared>,
}

impl<R> Progress<R> {
    pub(super) fn new(inner: R, shared: Arc<Shared>) -> Progress<R> {
        Progress { inner, shared }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Progress<R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(res, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.shared.touch();
        }
        res
    }
}

/// The reader task: runs until the stream ends or fails (reported as the last item) or the
/// session goes away.
pub(super) async fn read_loop<R>(
    mut r: Progress<R>,
    geometry: PieceGeometry,
    shared: Arc<Shared>,
    tx: InboxSender,
) where
    R: AsyncRead + Unpin,
{
    loop {
        let item = match read_one(&mut r, &geometry, &shared).await {
            Ok(Some(item)) => Ok(item),
            Ok(None) => continue,
            Err(e) => Err(e),
        };
        let last = item.is_err();
        if tx.send(item).await.is_err() || last {
            return;
        }
        // Time spent waiting for the session to take the item was ours, not the peer's.
        shared.touch();
    }
}

/// The next reply; `None` for a piece nobody wants any more (read and dropped).
async fn read_one<R>(
    r: &mut Progress<R>,
    geometry: &PieceGeometry,
    shared: &Shared,
) -> Result<Option<Incoming>, SessionError>
where
    R: AsyncRead + Unpin,
{
    let reply = read_reply(r).await?.ok_or(SessionError::Closed)?;
    let Reply::Piece { index, len } = reply else {
        return Ok(Some(Incoming::Reply(reply)));
    };
    let Some(expected) = geometry.len_of(index) else {
        return Err(SessionError::fault(format!(
            "piece {index} is past the blob's {} pieces",
            geometry.count()
        )));
    };
    {
        let pending = shared.pending();
        if !pending.requested.contains(&index) && !pending.stale.contains(&index) {
            return Err(SessionError::fault(format!(
                "piece {index} was never requested"
            )));
        }
    }
    let bytes = read_piece_body(r, len, expected).await?;
    // Still outstanding (so the stall deadline applies) until the body is in; a cancel or
    // `Choked` that came meanwhile makes it unwanted.
    let wanted = shared.pending().requested.remove(&index);
    Ok(wanted.then_some(Incoming::Piece { index, bytes }))
}

/// The writer task: writes queued requests until the session drops the queue, then shuts its
/// side of the stream down. A failed or stalled write is reported to the session.
pub(super) async fn write_loop<W>(
    mut w: W,
    mut rx: mpsc::Receiver<Request>,
    stall: Duration,
    errors: InboxSender,
) where
    W: AsyncWrite + Unpin,
{
    while let Some(req) = rx.recv().await {
        let res = match timeout(stall, write_request(&mut w, &req)).await {
            Err(_) => Err(SessionError::Timeout),
            Ok(res) => res.map_err(SessionError::from),
        };
        if let Err(e) = res {
            let _ = errors.send(Err(e)).await;
            return;
        }
    }
    let _ = timeout(stall, w.shutdown()).await;
}
