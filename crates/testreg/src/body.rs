//! Response bodies and the per-connection I/O wrapper that together
//! implement the blob-level faults (`Slow`, `Truncate`, `Corrupt`, `Hang`).
//!
//! Blob bodies are streamed as `Bytes` slices of the stored blob, so serving
//! a 256 MiB layer costs no copies; only the one chunk containing a
//! `Corrupt` offset is ever copied.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::Fault;

/// The registry's uplink: a rate shared by every blob body, like a busy registry's network
/// link. Each chunk reserves its time on the link in turn; the body sends it, then waits until
/// its reservation ends before the next one.
pub(crate) struct Uplink {
    bytes_per_sec: u64,
    free_at: std::sync::Mutex<Instant>,
}

impl Uplink {
    pub fn new(bytes_per_sec: u64) -> Uplink {
        Uplink {
            bytes_per_sec: bytes_per_sec.max(1),
            free_at: std::sync::Mutex::new(Instant::now()),
        }
    }

    /// Reserves `bytes` on the link: the instant their transmission ends.
    fn reserve(&self, bytes: usize) -> Instant {
        let mut free_at = self
            .free_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let start = (*free_at).max(Instant::now());
        *free_at = start + Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        *free_at
    }
}

/// Size of the frames blob bodies are cut into when no fault says otherwise.
pub(crate) const CHUNK: usize = 64 * 1024;

/// A response body: either a small in-memory payload or a streamed blob.
pub(crate) enum Body {
    Full(Option<Bytes>),
    Blob(BlobBody),
}

impl Body {
    pub fn empty() -> Body {
        Body::Full(None)
    }

    pub fn full(data: impl Into<Bytes>) -> Body {
        let data = data.into();
        Body::Full((!data.is_empty()).then_some(data))
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            Body::Full(data) => Poll::Ready(data.take().map(|d| Ok(Frame::data(d)))),
            Body::Blob(blob) => blob.poll_next(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Body::Full(data) => data.is_none(),
            Body::Blob(blob) => blob.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Body::Full(data) => SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64)),
            // A hung body sends nothing: the header's length stands (`Fault::ClaimSize`).
            Body::Blob(blob) if blob.hang => SizeHint::default(),
            Body::Blob(blob) => SizeHint::with_exact(blob.remaining() as u64),
        }
    }
}

/// A one-way flag shared by a connection's I/O wrapper and the bodies it
/// serves. Once triggered, the connection dies at its next flush.
#[derive(Clone, Default)]
pub(crate) struct KillSwitch(Arc<AtomicU8>);

/// [`KillSwitch`] states.
const ALIVE: u8 = 0;
const CLOSE: u8 = 1;
const RESET: u8 = 2;

impl KillSwitch {
    /// `reset`: end the connection with a TCP reset rather than a close.
    fn trigger(&self, reset: bool) {
        let how = if reset { RESET } else { CLOSE };
        self.0.store(how, Ordering::Release);
    }

    fn triggered(&self) -> bool {
        self.0.load(Ordering::Acquire) != ALIVE
    }

    fn reset(&self) -> bool {
        self.0.load(Ordering::Acquire) == RESET
    }
}

/// Streams `data` (a blob, or the requested range of one) with the armed
/// fault applied.
pub(crate) struct BlobBody {
    data: Bytes,
    pos: usize,
    /// Bytes to send before stopping; `< data.len()` only when truncating.
    limit: usize,
    /// Index into `data` of the byte to flip, if any.
    corrupt_at: Option<usize>,
    chunk: usize,
    delay: Option<Duration>,
    /// A truncation ends in a TCP reset.
    reset: bool,
    sleep: Option<Pin<Box<Sleep>>>,
    hang: bool,
    kill: KillSwitch,
    bytes_sent: Arc<AtomicU64>,
    uplink: Option<Arc<Uplink>>,
}

impl BlobBody {
    /// `offset` is where `data` starts within the whole blob of length
    /// `blob_len`; `Corrupt` offsets are blob-relative so that a ranged
    /// request sees the same damaged byte as a full one.
    pub fn new(
        data: Bytes,
        offset: u64,
        blob_len: u64,
        fault: &Fault,
        kill: KillSwitch,
        bytes_sent: Arc<AtomicU64>,
    ) -> BlobBody {
        let len = data.len();
        let mut body = BlobBody {
            data,
            pos: 0,
            limit: len,
            corrupt_at: None,
            chunk: CHUNK,
            delay: None,
            reset: false,
            sleep: None,
            hang: false,
            kill,
            bytes_sent,
            uplink: None,
        };
        match *fault {
            Fault::Slow { chunk, delay } => {
                body.chunk = chunk.max(1);
                body.delay = Some(delay);
            }
            Fault::Truncate { after } | Fault::Reset { after } => {
                body.limit = usize::try_from(after).map_or(len, |a| a.min(len));
                body.reset = matches!(fault, Fault::Reset { .. });
            }
            Fault::Corrupt { offset: at } if blob_len > 0 => {
                // Clamp so the fault always damages a full-blob download,
                // whatever size of blob the test happens to use.
                let at = at.min(blob_len - 1);
                body.corrupt_at = at
                    .checked_sub(offset)
                    .and_then(|i| usize::try_from(i).ok())
                    .filter(|&i| i < len);
            }
            Fault::Hang | Fault::ClaimSize { .. } => body.hang = true,
            _ => {}
        }
        body
    }

    /// Sends through the registry's shared uplink.
    pub fn through(mut self, uplink: Option<Arc<Uplink>>) -> BlobBody {
        self.uplink = uplink;
        self
    }

    fn remaining(&self) -> usize {
        self.data.len() - self.pos
    }

    fn truncating(&self) -> bool {
        self.limit < self.data.len()
    }

    fn is_end_stream(&self) -> bool {
        !self.hang && !self.truncating() && self.pos >= self.data.len()
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        if self.hang {
            // Never ready and never woken: hyper has already queued the head
            // and flushes it while waiting on us, which is exactly a hung
            // upstream. Shutdown aborts the connection task.
            return Poll::Pending;
        }
        if let Some(sleep) = &mut self.sleep {
            ready!(sleep.as_mut().poll(cx));
            self.sleep = None;
        }
        if self.pos >= self.limit {
            if self.truncating() {
                // Returning an error here would make hyper drop the
                // connection *before* flushing what it has buffered, so the
                // client could see fewer bytes than `after` (even no head).
                // Instead, stall and let the connection's I/O wrapper fail
                // the first flush that finds hyper's buffer empty.
                self.kill.trigger(self.reset);
                return Poll::Pending;
            }
            return Poll::Ready(None);
        }
        let end = self.limit.min(self.pos + self.chunk);
        let mut frame = self.data.slice(self.pos..end);
        if let Some(at) = self.corrupt_at.filter(|at| (self.pos..end).contains(at)) {
            let mut copy = BytesMut::from(&frame[..]);
            copy[at - self.pos] ^= 0xff;
            frame = copy.freeze();
        }
        self.pos = end;
        self.bytes_sent
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        if let Some(delay) = self.delay.filter(|_| self.pos < self.limit) {
            self.sleep = Some(Box::pin(tokio::time::sleep(delay)));
        }
        if let Some(uplink) = &self.uplink {
            let until = uplink.reserve(frame.len());
            self.sleep = Some(Box::pin(tokio::time::sleep_until(until)));
        }
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }
}

/// The accepted TCP stream, plus the ability to abort the connection once
/// everything hyper buffered has reached the socket.
///
/// hyper only calls `poll_flush` on its I/O after writing out its whole
/// write buffer, so failing `poll_flush` after the [`KillSwitch`] fires
/// closes the socket right after the last permitted body byte: the client
/// sees the full `Content-Length` header, a short body, then EOF.
pub(crate) struct ConnStream {
    inner: TcpStream,
    kill: KillSwitch,
}

impl ConnStream {
    pub fn new(inner: TcpStream, kill: KillSwitch) -> ConnStream {
        ConnStream { inner, kill }
    }
}

impl AsyncRead for ConnStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for ConnStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        // Forwarded so hyper keeps its zero-copy vectored write strategy.
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(Pin::new(&mut self.inner).poll_flush(cx))?;
        if self.kill.triggered() {
            if self.kill.reset() {
                // SO_LINGER 0: closing the socket sends RST and drops unsent data.
                let _ = self.inner.set_zero_linger();
            }
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "testreg: injected truncation",
            )));
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
