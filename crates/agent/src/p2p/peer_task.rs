//! One session with one uploader, run as a task of its own so the download loop never waits
//! on a peer: it sends requests in, and gets the session's checked events out, tagged with the
//! peer's slot in the download.

use super::P2p;
use pollen_oci::Digest;
use pollen_peer::{Event, Have, Session, SessionError};
use pollen_proto::{HashedPiece, LEGACY_PROTOCOL};
use pollen_swarm::PeerId;
use std::sync::Arc;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};

/// Requests queued for one peer task: at most the pieces outstanding, their cancellations
/// and a few more.
const COMMAND_QUEUE: usize = 64;

pub(crate) enum ToPeer {
    Request(u32),
    Cancel(u32),
}

pub(crate) enum FromPeer {
    Opened(Have),
    /// A piece, hashed here (on the blocking pool, one task per peer), so pieces from several
    /// peers are hashed in parallel and the blob's writer only compares.
    Piece(HashedPiece),
    Event(Event),
    /// The request could not be sent (choked, not announced, too many): ask elsewhere.
    NotRequested(u32),
    Ended(SessionError),
    /// The stream could not be opened (unreachable, protocol not supported).
    Unreachable(String),
}

/// The download's handle on a peer task; dropping it ends the session.
pub(crate) struct PeerTask {
    pub peer: PeerId,
    tx: mpsc::Sender<ToPeer>,
    task: JoinHandle<()>,
}

impl PeerTask {
    pub fn spawn(
        p2p: Arc<P2p>,
        peer: PeerId,
        digest: Digest,
        slot: usize,
        events: mpsc::Sender<(usize, FromPeer)>,
    ) -> PeerTask {
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let task = tokio::spawn(run(p2p, peer, digest, slot, rx, events));
        PeerTask { peer, tx, task }
    }

    /// Queues a command; false when the task has ended (its `Ended` is on the way) or is that
    /// far behind.
    pub fn send(&self, cmd: ToPeer) -> bool {
        self.tx.try_send(cmd).is_ok()
    }
}

impl Drop for PeerTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A pieces stream to `peer`, and whether it speaks the current protocol: an agent of the
/// version before speaks only the legacy id (the same session without `Holding`).
pub(super) async fn open_stream(
    p2p: &P2p,
    peer: PeerId,
) -> Result<(Compat<pollen_swarm::Stream>, bool), String> {
    match p2p.node.open_stream(peer).await {
        Ok(s) => Ok((s.compat(), true)),
        Err(first) => match p2p.node.open_stream_on(peer, LEGACY_PROTOCOL).await {
            Ok(s) => Ok((s.compat(), false)),
            Err(_) => Err(first.to_string()),
        },
    }
}

async fn run(
    p2p: Arc<P2p>,
    peer: PeerId,
    digest: Digest,
    slot: usize,
    mut rx: mpsc::Receiver<ToPeer>,
    events: mpsc::Sender<(usize, FromPeer)>,
) {
    let send = |msg| events.send((slot, msg));
    let (stream, modern) = match open_stream(&p2p, peer).await {
        Ok(s) => s,
        Err(why) => {
            let _ = send(FromPeer::Unreachable(why)).await;
            return;
        }
    };
    let cfg = &p2p.cfg.session;
    let (mut session, have) = match Session::open(stream, digest, cfg).await {
        Ok(s) => s,
        Err(e) => {
            let _ = send(FromPeer::Ended(e)).await;
            return;
        }
    };
    let geometry = have.geometry;
    if send(FromPeer::Opened(have)).await.is_err() {
        return;
    }
    let _ = session.request_map();
    // The uploader knows how many slots this node holds, so a free slot goes to the node
    // holding fewest. Told to every session, not only those waiting: a holder that yields
    // its slot queues by the last count it told (told only while choked, that count was
    // stale: pollen-sim, 600 nodes of Kraken's set-up, p99 14.45 s against 14.07).
    let mut holding = p2p.holding.subscribe();
    if modern {
        let _ = session.holding(*holding.borrow_and_update());
    }
    loop {
        tokio::select! {
            Ok(()) = holding.changed(), if modern => {
                let _ = session.holding(*holding.borrow_and_update());
            }
            cmd = rx.recv() => match cmd {
                Some(ToPeer::Request(index)) => {
                    // The node's download limit is charged when a piece is asked for, so the
                    // bytes asked for never outrun it.
                    let len = geometry.len_of(index).unwrap_or(0);
                    p2p.downloads.acquire(u64::from(len)).await;
                    if session.request(index).is_err()
                        && send(FromPeer::NotRequested(index)).await.is_err()
                    {
                        return;
                    }
                }
                Some(ToPeer::Cancel(index)) => {
                    session.cancel(index);
                }
                None => {
                    session.close().await;
                    return;
                }
            },
            event = session.next_event() => {
                let msg = match event {
                    Ok(Event::Piece { index, bytes }) => {
                        match tokio::task::spawn_blocking(move || HashedPiece::new(index, bytes)).await {
                            Ok(piece) => FromPeer::Piece(piece),
                            Err(_) => return,
                        }
                    }
                    Ok(e) => FromPeer::Event(e),
                    Err(e) => FromPeer::Ended(e),
                };
                let ended = matches!(msg, FromPeer::Ended(_));
                if send(msg).await.is_err() || ended {
                    return;
                }
            }
        }
    }
}
