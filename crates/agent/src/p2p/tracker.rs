//! The agent's side of the tracker role: finding the live trackers, picking a blob's tracker
//! by rendezvous hashing, and the membership stream ([`TrackerLink`]) a download holds open.
//! A tracker role on this node is reached through the same code over an in-process pipe.

use super::P2p;
use crate::Ctx;
use pollen_oci::Digest;
use pollen_proto::{
    read_tracker_reply, write_tracker_request, TrackerReply, TrackerRequest, TRACKER_PROTOCOL,
};
use pollen_swarm::PeerId;
use sha2::{Digest as _, Sha256};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::debug;

/// How long the list of live trackers is reused before it is looked up again.
const DIRECTORY_TTL: Duration = Duration::from_secs(10);
/// The bound on joining: opening the stream, `Join`, `Assign`.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits before each try to join one tracker.
const JOIN_BACKOFF: [Duration; 4] = [
    Duration::ZERO,
    Duration::from_millis(50),
    Duration::from_millis(150),
    Duration::from_millis(400),
];
/// How often a member tells its tracker how far it is when nothing changed (its keepalive).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How often a member checks whether it has new pieces to report: the tracker hands a dead
/// fetcher's job to the member holding the most, so the counts must be fresh.
const PROGRESS_CHECK: Duration = Duration::from_millis(250);
/// How long a tracker waits for a silent member.
pub(crate) const MEMBER_IDLE: Duration = Duration::from_secs(30);

/// The provider key under which trackers announce themselves.
pub(crate) fn tracker_key() -> Digest {
    Digest::of(TRACKER_PROTOCOL.as_bytes())
}

/// The trackers known to be alive, refreshed from Kademlia now and then.
#[derive(Default)]
pub(crate) struct Directory {
    known: Mutex<Option<(Instant, Vec<PeerId>)>>,
}

impl Directory {
    async fn trackers(&self, p2p: &P2p) -> Vec<PeerId> {
        let cached = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|(at, _)| at.elapsed() < DIRECTORY_TTL);
        let mut list = match cached {
            Some((_, list)) => list,
            None => {
                let list = p2p
                    .node
                    .find_providers(&tracker_key())
                    .await
                    .unwrap_or_default();
                // An empty answer is not kept: a tracker that just started is found next time.
                if !list.is_empty() {
                    *self.known.lock().unwrap_or_else(|e| e.into_inner()) =
                        Some((Instant::now(), list.clone()));
                }
                list
            }
        };
        if p2p.tracker.is_some() {
            list.push(p2p.node.peer_id());
        }
        list
    }

    /// Forgets the cached list (a tracker in it did not answer).
    fn invalidate(&self) {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }
}

/// Trackers in the order a blob's coordination falls to them: the highest rendezvous score
/// first, so every agent with the same view picks the same tracker, and a dead tracker's
/// blobs spread over the others.
pub(crate) fn rendezvous(digest: &Digest, trackers: &[PeerId]) -> Vec<PeerId> {
    let score = |p: &PeerId| {
        let mut h = Sha256::new();
        h.update(digest.as_bytes());
        h.update(p.to_bytes());
        h.finalize()
    };
    let mut scored: Vec<_> = trackers.iter().map(|p| (score(p), *p)).collect();
    scored.sort_by_key(|s| std::cmp::Reverse(s.0));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, p)| p).collect()
}

/// What the tracker said at `Join`.
pub(crate) struct Assignment {
    pub fetch: bool,
    pub peers: Vec<PeerId>,
}

/// A download's membership in its blob's swarm at the tracker. Dropping it without
/// [`TrackerLink::leave`] ends its task, which closes the stream: the tracker reads that as
/// "failed" and hands the fetch on if this node had it.
pub(crate) struct TrackerLink {
    out: mpsc::UnboundedSender<TrackerRequest>,
    pushes: mpsc::UnboundedReceiver<TrackerReply>,
    pieces: Arc<AtomicU32>,
    task: JoinHandle<()>,
}

impl TrackerLink {
    /// Joins the blob's tracker (trying the next by rendezvous if one does not answer), or
    /// `None` when there is no tracker: the download then coordinates through Kademlia only.
    pub async fn join(
        ctx: &Arc<Ctx>,
        digest: Digest,
        pieces: u32,
        fetching: bool,
    ) -> Option<(TrackerLink, Assignment)> {
        let p2p = ctx.p2p.as_ref()?;
        let trackers = p2p.directory.trackers(p2p).await;
        let join = TrackerRequest::Join {
            digest,
            seed: p2p.cfg.seed,
            fetching,
            pieces,
            labels: p2p.cfg.labels.clone(),
        };
        // Each of the first trackers by rendezvous gets a few tries: libp2p-stream drops an
        // inbound stream that arrives while the acceptor is busy with the previous one, so a
        // burst of joins loses some (docs/decisions.md).
        let order = rendezvous(&digest, &trackers);
        let mut tries = Vec::new();
        for t in order.iter().take(3) {
            tries.extend(JOIN_BACKOFF.iter().map(|d| (*t, *d)));
        }
        for (tracker, delay) in tries {
            tokio::time::sleep(delay).await;
            match timeout(JOIN_TIMEOUT, Self::join_one(p2p, tracker, &join, pieces)).await {
                Ok(Ok(joined)) => return Some(joined),
                Ok(Err(e)) => debug!(%digest, %tracker, error = %e, "tracker unavailable"),
                Err(_) => debug!(%digest, %tracker, "tracker did not answer"),
            }
            p2p.directory.invalidate();
        }
        None
    }

    async fn join_one(
        p2p: &P2p,
        tracker: PeerId,
        join: &TrackerRequest,
        pieces: u32,
    ) -> Result<(TrackerLink, Assignment), String> {
        let me = p2p.node.peer_id();
        let (mut r, mut w): (Box<Read>, Box<Write>) = if tracker == me {
            let local = p2p.tracker.clone().ok_or("no local tracker")?;
            let (ours, theirs) = tokio::io::duplex(64 << 10);
            tokio::spawn(pollen_tracker::serve(
                local,
                me.to_bytes(),
                theirs,
                MEMBER_IDLE,
            ));
            let (r, w) = tokio::io::split(ours);
            (Box::new(r), Box::new(w))
        } else {
            let stream = p2p
                .node
                .open_stream_on(tracker, TRACKER_PROTOCOL)
                .await
                .map_err(|e| e.to_string())?;
            let (r, w) = tokio::io::split(stream.compat());
            (Box::new(r), Box::new(w))
        };
        write_tracker_request(&mut w, join)
            .await
            .map_err(|e| e.to_string())?;
        let assignment = match read_tracker_reply(&mut r)
            .await
            .map_err(|e| e.to_string())?
        {
            Some(TrackerReply::Assign { fetch, peers }) => Assignment {
                fetch,
                peers: peers
                    .iter()
                    .filter_map(|p| PeerId::from_bytes(p).ok())
                    .filter(|p| *p != me)
                    .collect(),
            },
            other => return Err(format!("tracker answered {other:?} to Join")),
        };
        let (out, out_rx) = mpsc::unbounded_channel();
        let (push_tx, pushes) = mpsc::unbounded_channel();
        let pieces = Arc::new(AtomicU32::new(pieces));
        let task = tokio::spawn(run_link(r, w, out_rx, push_tx, pieces.clone()));
        Ok((
            TrackerLink {
                out,
                pushes,
                pieces,
                task,
            },
            assignment,
        ))
    }

    /// The next push from the tracker; `None` once the link is gone (the tracker died).
    pub async fn recv(&mut self) -> Option<TrackerReply> {
        self.pushes.recv().await
    }

    pub fn set_pieces(&self, pieces: u32) {
        self.pieces.store(pieces, Ordering::Relaxed);
    }

    /// Leaves the blob's swarm: `complete` tells the tracker this node now holds all of it.
    pub async fn leave(self, complete: bool) {
        let _ = self.out.send(TrackerRequest::Leave { complete });
        drop(self.out);
        let _ = timeout(JOIN_TIMEOUT, self.task).await;
    }
}

type Read = dyn tokio::io::AsyncRead + Send + Unpin;
type Write = dyn tokio::io::AsyncWrite + Send + Unpin;

/// Writes queued requests and a `Progress` every [`PROGRESS_INTERVAL`]; a task of its own
/// reads the tracker's pushes (a read cut off by `select!` would lose part of a frame).
async fn run_link(
    mut r: Box<Read>,
    mut w: Box<Write>,
    mut out: mpsc::UnboundedReceiver<TrackerRequest>,
    pushes: mpsc::UnboundedSender<TrackerReply>,
    pieces: Arc<AtomicU32>,
) {
    let reader = tokio::spawn(async move {
        while let Ok(Some(reply)) = read_tracker_reply(&mut r).await {
            if pushes.send(reply).is_err() {
                return;
            }
        }
    });
    let mut tick = tokio::time::interval(PROGRESS_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut told, mut told_at) = (pieces.load(Ordering::Relaxed), Instant::now());
    loop {
        let req = tokio::select! {
            req = out.recv() => match req {
                Some(req) => req,
                None => break,
            },
            _ = tick.tick() => {
                let now = pieces.load(Ordering::Relaxed);
                if now == told && told_at.elapsed() < PROGRESS_INTERVAL {
                    continue;
                }
                (told, told_at) = (now, Instant::now());
                TrackerRequest::Progress { pieces: now }
            }
        };
        let leaving = matches!(req, TrackerRequest::Leave { .. });
        let sent = timeout(JOIN_TIMEOUT, write_tracker_request(&mut w, &req)).await;
        if leaving || !matches!(sent, Ok(Ok(()))) {
            use tokio::io::AsyncWriteExt;
            let _ = timeout(JOIN_TIMEOUT, w.shutdown()).await;
            break;
        }
    }
    reader.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_is_stable_and_spreads() {
        let trackers: Vec<PeerId> = (0..3).map(|_| PeerId::random()).collect();
        let mut first_choice = std::collections::HashMap::new();
        for i in 0..300u32 {
            let d = Digest::of(&i.to_le_bytes());
            let order = rendezvous(&d, &trackers);
            assert_eq!(order.len(), 3);
            let mut reversed = trackers.clone();
            reversed.reverse();
            assert_eq!(
                rendezvous(&d, &reversed),
                order,
                "independent of list order"
            );
            // Without the first choice, the others keep their relative order.
            let rest: Vec<_> = trackers
                .iter()
                .copied()
                .filter(|p| *p != order[0])
                .collect();
            assert_eq!(rendezvous(&d, &rest), order[1..].to_vec());
            *first_choice.entry(order[0]).or_insert(0) += 1;
        }
        assert!(first_choice.values().all(|n| *n > 50), "{first_choice:?}");
    }
}
