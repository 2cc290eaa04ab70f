//! The agent's side of the tracker role: finding the live trackers, picking a blob's tracker
//! by rendezvous hashing, and the membership stream ([`TrackerLink`]) a download holds open.
//! A tracker role on this node is reached through the same code over an in-process pipe.

use super::P2p;
use pollen_oci::Digest;
use pollen_proto::{
    read_tracker_reply, write_tracker_request, TrackerReply, TrackerRequest,
    LEGACY_TRACKER_PROTOCOL, TRACKER_PROTOCOL,
};
use pollen_swarm::PeerId;
use sha2::{Digest as _, Sha256};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tracing::debug;

/// How long the list of live trackers is reused before it is looked up again.
const DIRECTORY_TTL: Duration = Duration::from_secs(10);
/// How long "no tracker" is believed: short, so a tracker that just started is found soon, but
/// a cluster without trackers does not pay a lookup for every blob it fetches.
const NO_TRACKER_TTL: Duration = Duration::from_secs(1);
/// The bound on joining: opening the stream, `Join`, `Assign`.
const JOIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Waits before each try to join one tracker, each stretched by a random 0-50 % so a cluster's
/// burst of joins spreads out. Giving up on a live tracker sends the node to the next one,
/// where it may become a second fetcher; but all of them together stay under the tracker's
/// `REJOIN_GRACE` (2 s), or a fetcher rejoining after a failover would lose its fetch.
pub(crate) const JOIN_BACKOFF: [Duration; 5] = [
    Duration::ZERO,
    Duration::from_millis(50),
    Duration::from_millis(150),
    Duration::from_millis(300),
    Duration::from_millis(600),
];

/// `delay` stretched by a random 0-50 %.
pub(crate) fn jittered(delay: Duration) -> Duration {
    use std::hash::{BuildHasher, RandomState};
    let r = RandomState::new().hash_one(0u8) % 500;
    delay + delay.mul_f64(r as f64 / 1000.0)
}

/// How often a member tells its tracker how far it is when nothing changed (its keepalive).
const PROGRESS_INTERVAL: Duration = Duration::from_secs(5);
/// How often a member checks whether it has new pieces to report: the tracker hands a dead
/// fetcher's job to the member holding the most, so the counts must be fresh.
const PROGRESS_CHECK: Duration = Duration::from_millis(250);
/// How long after `Sized` the fetcher waits at most for the tracker's answer (whether the
/// fetch is split) before it goes on fetching the whole blob itself. The tracker answers
/// after `pollen_tracker::SPLIT_WAIT`; the fetcher streams its first range meanwhile.
const SIZED_TIMEOUT: Duration = Duration::from_secs(1);
/// The bound on resolving a tag through its tracker; past it the agent asks the upstream.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);
/// After a lost stream, the bound on joining the same tracker again before the next one is
/// tried (a live tracker answers within a round trip; a dead one refuses or stays silent).
const LOST_RETRY_TIMEOUT: Duration = Duration::from_millis(500);

/// The provider key under which trackers announce themselves: named after the first
/// protocol version, so that agents of every version find the same trackers.
pub(crate) fn tracker_key() -> Digest {
    Digest::of(LEGACY_TRACKER_PROTOCOL.as_bytes())
}

/// A stream to `tracker` on the current protocol, or on the version before if it speaks only
/// that (an agent not upgraded yet, during a rolling upgrade: it sends no `Near`).
async fn open_tracker_stream(
    p2p: &P2p,
    tracker: PeerId,
) -> Result<pollen_swarm::Stream, pollen_swarm::Error> {
    match p2p.node.open_stream_on(tracker, TRACKER_PROTOCOL).await {
        Ok(stream) => Ok(stream),
        Err(_) => {
            p2p.node
                .open_stream_on(tracker, LEGACY_TRACKER_PROTOCOL)
                .await
        }
    }
}

/// The trackers known to be alive, refreshed from Kademlia now and then.
#[derive(Default)]
pub(crate) struct Directory {
    known: Mutex<Option<(Instant, Vec<PeerId>)>>,
}

impl Directory {
    pub(crate) async fn trackers(&self, p2p: &P2p) -> Vec<PeerId> {
        let cached = self
            .known
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .filter(|(at, list)| {
                at.elapsed()
                    < if list.is_empty() {
                        NO_TRACKER_TTL
                    } else {
                        DIRECTORY_TTL
                    }
            });
        let mut list = match cached {
            Some((_, list)) => list,
            None => {
                let list = self.lookup(p2p).await;
                self.store(list.clone());
                list
            }
        };
        if p2p.tracker.is_some() {
            list.push(p2p.node.peer_id());
        }
        list
    }

    /// Looks the trackers up now, keeping what it finds. Called every few seconds in the
    /// background, so that a download joining its tracker (a rollout: every blob at once)
    /// does not wait for a Kademlia query first. Finding none changes nothing: right after
    /// start the node may not know its peers yet, and "none" is the download's to decide.
    pub(crate) async fn refresh(&self, p2p: &P2p) {
        let list = self.lookup(p2p).await;
        if !list.is_empty() {
            self.store(list);
        }
    }

    async fn lookup(&self, p2p: &P2p) -> Vec<PeerId> {
        p2p.node
            .find_providers(&tracker_key())
            .await
            .unwrap_or_default()
    }

    fn store(&self, list: Vec<PeerId>) {
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), list));
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

/// What the tracker said at `Join` (and the peers it named since, while no peer phase ran).
pub(crate) struct Assignment {
    pub fetch: bool,
    pub peers: Vec<PeerId>,
    /// Of `peers`, those the tracker marked as sharing this node's rack (`Near`).
    pub near: Vec<PeerId>,
}

impl Assignment {
    fn add_peers(&mut self, peers: &[Vec<u8>]) {
        add_new(&mut self.peers, peers);
    }

    fn add_near(&mut self, peers: &[Vec<u8>]) {
        add_new(&mut self.near, peers);
    }
}

fn add_new(to: &mut Vec<PeerId>, peers: &[Vec<u8>]) {
    for peer in peers.iter().filter_map(|p| PeerId::from_bytes(p).ok()) {
        if !to.contains(&peer) {
            to.push(peer);
        }
    }
}

/// A download's membership in its blob's swarm at the tracker. Dropping it without
/// [`TrackerLink::leave`] ends its task, which closes the stream: the tracker reads that as
/// "failed" and hands the fetch on if this node had it. When the tracker dies, the link joins
/// the blob's next tracker by itself (saying whether this node is fetching), so the new tracker
/// learns the swarm from its members.
pub(crate) struct TrackerLink {
    out: mpsc::UnboundedSender<TrackerRequest>,
    pushes: mpsc::UnboundedReceiver<TrackerReply>,
    state: Arc<MemberState>,
    task: JoinHandle<()>,
    /// When `Sized` was sent, until its answer is taken.
    sized_at: Option<(Instant, u32)>,
}

/// What a member tells its tracker, shared between the download and its link task.
#[derive(Default)]
struct MemberState {
    pieces: AtomicU32,
    fetching: AtomicBool,
}

type Conn = (Box<Read>, Box<Write>);

impl TrackerLink {
    /// Joins the blob's tracker (trying the next by rendezvous if one does not answer), or
    /// `None` when there is no tracker: the download then coordinates through Kademlia only.
    pub async fn join(
        p2p: &Arc<P2p>,
        digest: Digest,
        pieces: u32,
    ) -> Option<(TrackerLink, Assignment)> {
        let state = Arc::new(MemberState::default());
        state.pieces.store(pieces, Ordering::Relaxed);
        let (conn, assignment, tracker) = connect(p2p, digest, &state, None).await?;
        let (out, out_rx) = mpsc::unbounded_channel();
        let (push_tx, pushes) = mpsc::unbounded_channel();
        let task = tokio::spawn(run_link(
            p2p.clone(),
            digest,
            (conn, tracker),
            out_rx,
            push_tx,
            state.clone(),
        ));
        Some((
            TrackerLink {
                out,
                pushes,
                state,
                task,
                sized_at: None,
            },
            assignment,
        ))
    }

    /// The next push from the tracker; `None` once the link is gone (no tracker left).
    pub async fn recv(&mut self) -> Option<TrackerReply> {
        self.pushes.recv().await
    }

    /// Tells the tracker the blob's size: this node fetches it and just learnt it. The answer
    /// is taken by [`TrackerLink::share`].
    pub fn report_size(&mut self, size: u64, count: u32, ranges: bool) {
        let sized = TrackerRequest::Sized {
            size,
            count,
            ranges,
        };
        if self.out.send(sized).is_ok() {
            self.sized_at = Some((Instant::now(), count));
        }
    }

    /// After [`TrackerLink::report_size`]: this node's share of a split fetch, or `None`: the
    /// whole blob is this node's to fetch (not split, nothing reported, or no answer in
    /// time). Peers named meanwhile go into `assignment`.
    pub async fn share(&mut self, assignment: &mut Assignment) -> Option<std::ops::Range<u32>> {
        let (sent, count) = self.sized_at.take()?;
        let deadline = sent + SIZED_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.pushes.recv()).await {
                Ok(Some(TrackerReply::FetchRange { first, end, .. })) => {
                    return (first > 0 || end < count).then_some(first..end);
                }
                Ok(Some(TrackerReply::Peers { peers })) => assignment.add_peers(&peers),
                Ok(Some(TrackerReply::Near { peers })) => assignment.add_near(&peers),
                // `Fetch`: this node is fetching already.
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    pub fn set_pieces(&self, pieces: u32) {
        self.state.pieces.store(pieces, Ordering::Relaxed);
    }

    /// This node now fetches from the upstream (said again to a new tracker after a failover).
    pub fn set_fetching(&self) {
        self.state.fetching.store(true, Ordering::Relaxed);
    }

    /// Leaves the blob's swarm: `complete` tells the tracker this node now holds all of it.
    pub async fn leave(self, complete: bool) {
        let _ = self.out.send(TrackerRequest::Leave { complete });
        drop(self.out);
        let _ = timeout(JOIN_TIMEOUT, self.task).await;
    }
}

/// Opens a membership at the blob's tracker: the first of the live trackers by rendezvous that
/// answers. After losing the stream to `lost`, that tracker is asked once more first, briefly:
/// a replaced connection ends streams while the tracker lives, and it keeps a fetcher's fetch
/// for it through its grace, where the next tracker would make a second fetcher. A tracker
/// whose stream cannot be opened is skipped at once; one whose stream breaks gets a few more
/// tries, because libp2p-stream drops an inbound stream that arrives while the acceptor is
/// busy with the previous one, so a burst of joins loses some (docs/decisions.md).
async fn connect(
    p2p: &P2p,
    digest: Digest,
    state: &MemberState,
    lost: Option<PeerId>,
) -> Option<(Conn, Assignment, PeerId)> {
    let trackers = p2p.directory.trackers(p2p).await;
    let join = TrackerRequest::Join {
        digest,
        seed: p2p.cfg.seed,
        fetching: state.fetching.load(Ordering::Relaxed),
        pieces: state.pieces.load(Ordering::Relaxed),
        labels: p2p.cfg.labels.clone(),
        rejoin: lost.is_some(),
        busy: p2p.upstream_fetches.load(Ordering::Relaxed) > 0,
    };
    let order = rendezvous(&digest, &trackers);
    let again = lost.map(|t| (t, &JOIN_BACKOFF[..1], LOST_RETRY_TIMEOUT));
    let next = order
        .into_iter()
        .filter(|t| Some(*t) != lost)
        .take(3)
        .map(|t| (t, &JOIN_BACKOFF[..], JOIN_TIMEOUT));
    for (tracker, backoff, limit) in again.into_iter().chain(next) {
        let mut fresh = false;
        for delay in backoff {
            tokio::time::sleep(jittered(*delay)).await;
            match timeout(limit, join_one(p2p, tracker, &join)).await {
                Ok(Ok((conn, assignment))) => {
                    debug!(%digest, %tracker, fetch = assignment.fetch, "joined the blob's tracker");
                    return Some((conn, assignment, tracker));
                }
                Ok(Err(JoinError::Redirect(to))) => {
                    // Another tracker has the blob's swarm already (agents' lists of
                    // trackers differ for a moment while a cluster starts). It will not
                    // redirect again: it has members.
                    debug!(%digest, %tracker, %to, "redirected to the blob's swarm");
                    if let Ok(Ok((conn, assignment))) =
                        timeout(JOIN_TIMEOUT, join_one(p2p, to, &join)).await
                    {
                        return Some((conn, assignment, to));
                    }
                    break;
                }
                Ok(Err(JoinError::Unreachable(e))) => {
                    debug!(%digest, %tracker, error = %e, "tracker unreachable");
                    p2p.directory.invalidate();
                    break;
                }
                Ok(Err(JoinError::Dropped(e))) => {
                    debug!(%digest, %tracker, error = %e, "tracker stream dropped");
                }
                Err(_) if !fresh => {
                    // Silence on a connection that looks open is what a link that went down
                    // and came back leaves: once more over a new connection.
                    debug!(%digest, %tracker, "tracker did not answer; once more over a new connection");
                    p2p.node.drop_connections(tracker);
                    fresh = true;
                }
                Err(_) => {
                    debug!(%digest, %tracker, "tracker did not answer");
                    break;
                }
            }
        }
    }
    None
}

enum JoinError {
    /// No stream could be opened: the tracker is gone (or never was).
    Unreachable(String),
    /// The stream opened and then broke.
    Dropped(String),
    /// The tracker named another that has the blob's swarm.
    Redirect(PeerId),
}

async fn join_one(
    p2p: &P2p,
    tracker: PeerId,
    join: &TrackerRequest,
) -> Result<(Conn, Assignment), JoinError> {
    let me = p2p.node.peer_id();
    let (mut r, mut w): Conn = if tracker == me {
        let local = p2p
            .tracker
            .clone()
            .ok_or_else(|| JoinError::Unreachable("no local tracker".into()))?;
        let (ours, theirs) = tokio::io::duplex(64 << 10);
        tokio::spawn(pollen_tracker::serve(
            local,
            me.to_bytes(),
            theirs,
            pollen_tracker::DEFAULT_MEMBER_IDLE,
            true,
        ));
        let (r, w) = tokio::io::split(ours);
        (Box::new(r), Box::new(w))
    } else {
        let stream = open_tracker_stream(p2p, tracker)
            .await
            .map_err(|e| JoinError::Unreachable(e.to_string()))?;
        let (r, w) = tokio::io::split(stream.compat());
        (Box::new(r), Box::new(w))
    };
    let dropped = |e: pollen_proto::ProtoError| JoinError::Dropped(e.to_string());
    write_tracker_request(&mut w, join).await.map_err(dropped)?;
    let assignment = match read_tracker_reply(&mut r).await.map_err(dropped)? {
        Some(TrackerReply::Assign { fetch, peers }) => Assignment {
            fetch,
            peers: peers
                .iter()
                .filter_map(|p| PeerId::from_bytes(p).ok())
                .filter(|p| *p != me)
                .collect(),
            // Its `Near`, if any, follows as a push.
            near: Vec::new(),
        },
        Some(TrackerReply::Redirect { tracker: to }) => {
            return match PeerId::from_bytes(&to) {
                Ok(to) if to != tracker => Err(JoinError::Redirect(to)),
                _ => Err(JoinError::Dropped("a redirect to nowhere".into())),
            }
        }
        other => {
            return Err(JoinError::Dropped(format!(
                "tracker answered {other:?} to Join"
            )))
        }
    };
    Ok(((r, w), assignment))
}

type Read = dyn tokio::io::AsyncRead + Send + Unpin;
type Write = dyn tokio::io::AsyncWrite + Send + Unpin;

/// How one connection to a tracker ended.
enum Ended {
    /// `Leave` was sent or the download dropped the link: the membership is over.
    Left,
    /// The tracker went away.
    Lost,
}

/// Runs the membership: over one tracker connection at a time, joining the next tracker when
/// one is lost, until the download leaves or no tracker is left.
async fn run_link(
    p2p: Arc<P2p>,
    digest: Digest,
    (mut conn, mut tracker): (Conn, PeerId),
    mut out: mpsc::UnboundedReceiver<TrackerRequest>,
    pushes: mpsc::UnboundedSender<TrackerReply>,
    state: Arc<MemberState>,
) {
    loop {
        if let Ended::Left = serve_conn(conn, &mut out, &pushes, &state).await {
            return;
        }
        p2p.directory.invalidate();
        let fetching = state.fetching.load(Ordering::Relaxed);
        let Some((next, assignment, next_tracker)) =
            connect(&p2p, digest, &state, Some(tracker)).await
        else {
            return; // no tracker left: the download carries on with Kademlia alone
        };
        debug!(%digest, fetching, "joined the blob's next tracker");
        if assignment.fetch && !fetching && pushes.send(TrackerReply::Fetch).is_err() {
            return;
        }
        if !assignment.peers.is_empty() {
            let peers = assignment.peers.iter().map(|p| p.to_bytes()).collect();
            let _ = pushes.send(TrackerReply::Peers { peers });
        }
        (conn, tracker) = (next, next_tracker);
    }
}

/// One tracker connection: writes queued requests and progress; a task of its own reads the
/// tracker's pushes (a read cut off by `select!` would lose part of a frame).
async fn serve_conn(
    (mut r, mut w): Conn,
    out: &mut mpsc::UnboundedReceiver<TrackerRequest>,
    pushes: &mpsc::UnboundedSender<TrackerReply>,
    state: &MemberState,
) -> Ended {
    let forward = pushes.clone();
    let mut reader = tokio::spawn(async move {
        while let Ok(Some(reply)) = read_tracker_reply(&mut r).await {
            if forward.send(reply).is_err() {
                return;
            }
        }
    });
    let mut tick = tokio::time::interval(PROGRESS_CHECK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut told, mut told_at) = (state.pieces.load(Ordering::Relaxed), Instant::now());
    let ended = loop {
        let req = tokio::select! {
            req = out.recv() => match req {
                Some(req) => req,
                None => break Ended::Left,
            },
            _ = &mut reader => break Ended::Lost,
            _ = tick.tick() => {
                let now = state.pieces.load(Ordering::Relaxed);
                if now == told && told_at.elapsed() < PROGRESS_INTERVAL {
                    continue;
                }
                (told, told_at) = (now, Instant::now());
                TrackerRequest::Progress { pieces: now }
            }
        };
        let leaving = matches!(req, TrackerRequest::Leave { .. });
        let sent = timeout(JOIN_TIMEOUT, write_tracker_request(&mut w, &req)).await;
        if leaving {
            break Ended::Left;
        }
        if !matches!(sent, Ok(Ok(()))) {
            break Ended::Lost;
        }
    };
    use tokio::io::AsyncWriteExt;
    let _ = timeout(JOIN_TIMEOUT, w.shutdown()).await;
    reader.abort();
    ended
}

/// One request on a stream of its own, one reply (`Resolve`, `Time`, `Members`). A stream
/// that breaks is tried again (libp2p-stream drops inbound streams in a burst, and every node
/// asks at the same moment during a rollout); the whole is bounded by [`RESOLVE_TIMEOUT`].
pub(crate) async fn ask(p2p: &P2p, tracker: PeerId, req: &TrackerRequest) -> Option<TrackerReply> {
    timeout(RESOLVE_TIMEOUT, async {
        for delay in JOIN_BACKOFF {
            tokio::time::sleep(jittered(delay)).await;
            let Ok(stream) = open_tracker_stream(p2p, tracker).await else {
                return None;
            };
            let (mut r, mut w) = tokio::io::split(stream.compat());
            if write_tracker_request(&mut w, req).await.is_err() {
                continue;
            }
            if let Ok(Some(reply)) = read_tracker_reply(&mut r).await {
                return Some(reply);
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// The tag's tracker (rendezvous over the tag's name), or `None` when there is no tracker or
/// this node is the tag's tracker (it resolves the tag itself).
pub(crate) async fn tag_tracker(
    p2p: &P2p,
    route: &pollen_upstream::Route,
    tag: &str,
) -> Option<PeerId> {
    let key = Digest::of(format!("tag {}/{}:{tag}", route.registry, route.name).as_bytes());
    let trackers = p2p.directory.trackers(p2p).await;
    let tracker = *rendezvous(&key, &trackers).first()?;
    (tracker != p2p.node.peer_id()).then_some(tracker)
}

/// Asks the tag's tracker to resolve it, which makes the tracker's node fetch the manifest
/// once for the cluster (and announce it). The digest it answers is a hint, never used as
/// the tag's digest (anyone may announce the tracker key): `None` when it could not answer.
pub(crate) async fn ask_resolve(
    p2p: &P2p,
    tracker: PeerId,
    route: &pollen_upstream::Route,
    tag: &str,
) -> Option<Digest> {
    let req = TrackerRequest::Resolve {
        registry: (route.registry != pollen_oci::DOCKER_HUB).then(|| route.registry.clone()),
        name: route.name.as_str().to_string(),
        tag: tag.to_string(),
    };
    match ask(p2p, tracker, &req).await {
        Some(TrackerReply::Resolved {
            digest: Some(d), ..
        }) => Some(d),
        Some(TrackerReply::Resolved { error, .. }) => {
            debug!(%tracker, tag, error = %error, "the tag's tracker could not resolve it");
            None
        }
        _ => None,
    }
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
