//! yamux, configured for bulk transfer.
//!
//! libp2p-yamux exposes only the stream limit; its yamux sends data in frames of at most
//! 16 KiB, and the yamux connection flushes after every frame. Each frame then costs a trip
//! through the security layer, a syscall and usually a cross-thread wake-up on each side: on
//! a 2-core machine that capped one stream at 0.5–0.7 GB/s, whichever the cipher
//! (`docs/transport.md`). This is the same adapter as libp2p-yamux's (a few dozen lines over
//! the `yamux` crate, which does the real work) with the send split raised to 112 KiB. It
//! speaks plain `/yamux/1.0.0`: frame sizes are the sender's choice, and any yamux peer
//! accepts frames up to 1 MiB.
//!
//! Adapted from rust-libp2p's `libp2p-yamux` (MIT licence).

use std::collections::VecDeque;
use std::io;
use std::iter;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use libp2p::core::muxing::{StreamMuxer, StreamMuxerEvent};
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};
use libp2p::futures::future;
use libp2p::futures::{AsyncRead, AsyncWrite};

/// The largest data frame we send. Larger frames mean fewer flushes and wake-ups per byte, up
/// to the 1 MiB a yamux receiver accepts; but yamux allocates every frame afresh, and the
/// agent keeps glibc's mmap threshold at 128 KiB (`crates/cli/src/malloc.rs`), so a frame
/// above it is a fresh mapping, page faults and an unmap each time. Just under it, frames come
/// from the heap: `benches/p2p-1gib.sh` moved 0.55-0.64 GB/s at 0.93-1.00 sender CPU-s per GiB
/// against 0.45 GB/s and 1.26-1.28 with 1 MiB frames (benches/README.md, part 11).
pub const SPLIT_SEND_SIZE: usize = 112 * 1024;

/// The most a peer can make one connection buffer for streams we read slowly. yamux starts
/// each stream at a 256 KiB window and doubles it (up to this budget, shared by the
/// connection's streams) only while the reader keeps up, so a fast stream needs a few MiB
/// (bandwidth × round trip); libp2p's default budget of 1 GiB per connection is far more than
/// a transfer needs and a lot to hold for each of many peers.
pub const MAX_CONNECTION_RECEIVE_WINDOW: usize = 256 * 1024 * 1024;

/// Streams one connection may carry at once. A downloader uses one stream per blob and peer
/// (the pieces protocol pipelines requests inside it), plus Kademlia and identify streams, so
/// this is generous.
pub const MAX_STREAMS_PER_CONNECTION: usize = 256;

// yamux guarantees every stream its initial 256 KiB window out of the connection budget.
const _: () = assert!(MAX_CONNECTION_RECEIVE_WINDOW >= MAX_STREAMS_PER_CONNECTION * 256 * 1024);

/// Inbound streams buffered while nobody polls for them; more are dropped (as libp2p-yamux).
const MAX_BUFFERED_INBOUND_STREAMS: usize = 256;

/// The upgrade: `/yamux/1.0.0` with [`SPLIT_SEND_SIZE`] and the limits above.
#[derive(Debug, Clone)]
pub struct Config(yamux::Config);

impl Config {
    pub fn new() -> Config {
        let mut config = yamux::Config::default();
        // Window first: yamux asserts the budget covers 256 KiB per allowed stream.
        config.set_max_connection_receive_window(Some(MAX_CONNECTION_RECEIVE_WINDOW));
        config.set_max_num_streams(MAX_STREAMS_PER_CONNECTION);
        config.set_split_send_size(SPLIT_SEND_SIZE);
        Config(config)
    }
}

impl UpgradeInfo for Config {
    type Info = &'static str;
    type InfoIter = iter::Once<Self::Info>;

    fn protocol_info(&self) -> Self::InfoIter {
        iter::once("/yamux/1.0.0")
    }
}

impl<C> InboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Muxer<C>, io::Error>>;

    fn upgrade_inbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(io, self.0, yamux::Mode::Server)))
    }
}

impl<C> OutboundConnectionUpgrade<C> for Config
where
    C: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    type Output = Muxer<C>;
    type Error = io::Error;
    type Future = future::Ready<Result<Muxer<C>, io::Error>>;

    fn upgrade_outbound(self, io: C, _: Self::Info) -> Self::Future {
        future::ready(Ok(Muxer::new(io, self.0, yamux::Mode::Client)))
    }
}

/// One yamux connection as a libp2p `StreamMuxer`.
pub struct Muxer<C> {
    connection: yamux::Connection<C>,
    /// Inbound streams that arrived while libp2p polled the connection for progress
    /// ([`StreamMuxer::poll`]) rather than for a new stream: yamux has one poll for both.
    inbound: VecDeque<yamux::Stream>,
    inbound_waker: Option<Waker>,
}

impl<C> Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    fn new(io: C, config: yamux::Config, mode: yamux::Mode) -> Muxer<C> {
        Muxer {
            connection: yamux::Connection::new(io, config, mode),
            inbound: VecDeque::new(),
            inbound_waker: None,
        }
    }

    fn poll_inner(&mut self, cx: &mut Context<'_>) -> Poll<Result<yamux::Stream, io::Error>> {
        match self.connection.poll_next_inbound(cx) {
            Poll::Ready(Some(Ok(stream))) => Poll::Ready(Ok(stream)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(into_io(e))),
            Poll::Ready(None) => Poll::Ready(Err(into_io(yamux::ConnectionError::Closed))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<C> StreamMuxer for Muxer<C>
where
    C: AsyncRead + AsyncWrite + Unpin + 'static,
{
    type Substream = yamux::Stream;
    type Error = io::Error;

    fn poll_inbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<yamux::Stream, io::Error>> {
        if let Some(stream) = self.inbound.pop_front() {
            return Poll::Ready(Ok(stream));
        }
        if let Poll::Ready(result) = self.poll_inner(cx) {
            return Poll::Ready(result);
        }
        self.inbound_waker = Some(cx.waker().clone());
        Poll::Pending
    }

    fn poll_outbound(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<yamux::Stream, io::Error>> {
        self.connection.poll_new_outbound(cx).map_err(into_io)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), io::Error>> {
        self.connection.poll_close(cx).map_err(into_io)
    }

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<StreamMuxerEvent, io::Error>> {
        let this = self.get_mut();
        let stream = match this.poll_inner(cx) {
            Poll::Ready(Ok(stream)) => stream,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Pending => return Poll::Pending,
        };
        if this.inbound.len() >= MAX_BUFFERED_INBOUND_STREAMS {
            tracing::warn!(stream = %stream, "dropping inbound stream: too many waiting");
            drop(stream);
        } else {
            this.inbound.push_back(stream);
            if let Some(waker) = this.inbound_waker.take() {
                waker.wake();
            }
        }
        // Come back at once: yamux only makes progress while polled.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

fn into_io(e: yamux::ConnectionError) -> io::Error {
    match e {
        yamux::ConnectionError::Io(e) => e,
        e => io::Error::other(e),
    }
}
