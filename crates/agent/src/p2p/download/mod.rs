//! One blob's download from peers: a single-writer event loop (no locks) over the events of
//! its peer tasks and the writer's verdicts, which keeps every peer busy with requests picked
//! by `pollen_core::download` ([`requests`]) and hands verified pieces to the blob's writer.
//!
//! It ends when every piece is present, or hands over to the upstream (the caller fetches the
//! pieces still missing with range requests) when no piece arrived for `peer_stall` or when
//! the blob's tracker hands this node the fetch. Without a tracker (or when it assigned the
//! fetch to this node) it also hands over at once when no peer has the blob or none is left.
//! A share of a split fetch the tracker gives this node is fetched from the upstream beside
//! the peer download, so the node takes the other shares from their fetchers meanwhile
//! instead of after its own.

mod connect;
mod requests;
mod share;

use super::peer_task::PeerTask;
use super::peer_task::{FromPeer, ToPeer};
use super::tracker::{Assignment, TrackerLink};
use super::P2p;
use crate::error::FetchError;
use crate::fetch::BlobFetch;
use crate::fetch::SizeSource;
use crate::proofs::Signed;
use crate::sink::{Op, PieceResult, Sink, Written};
use pollen_core::download::Exchange;
use pollen_core::phase::{Facts, Step, HANDOVER_LOOKUP};
use pollen_core::retry::{seed_of, Again, PeerRetry, RETRY_AFTER, RETRY_SOON};
use pollen_peer::{Event, Have, SessionError};
use pollen_proto::{ErrorCode, HashedPiece, TrackerReply};
use pollen_swarm::PeerId;
use std::collections::{HashMap, HashSet, VecDeque};
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, Instant};
use tracing::debug;

/// How often providers are looked up again while the download has room for more peers.
const LOOKUP_INTERVAL: Duration = Duration::from_secs(5);
/// A peer whose stream could not be opened is dialled again after this long (the other
/// waits are the core's: `pollen_core::retry`).
const RETRY_UNREACHABLE: Duration = Duration::from_millis(500);
/// Events waiting for the loop (each can hold a piece).
const EVENT_QUEUE: usize = 4;

/// How the peer phase ended.
pub(crate) enum PeerOutcome {
    /// Every piece is present; the blob only needs its digest check.
    Complete,
    /// The upstream must supply what is missing, because of this.
    Fallback(String),
}

/// The state of one blob's peer download.
pub(crate) struct PeerPhase<'a> {
    fetch: &'a BlobFetch<'a>,
    p2p: &'a Arc<P2p>,
    /// The decisions: who has what, what is requested of whom, whether the peers stalled.
    x: Exchange,
    /// Each peer's session, by the slot the exchange knows it by.
    tasks: HashMap<usize, PeerTask>,
    next_slot: usize,
    events_tx: mpsc::Sender<(usize, FromPeer)>,
    events: mpsc::Receiver<(usize, FromPeer)>,
    written: Option<mpsc::UnboundedReceiver<Written>>,
    /// Peers whose hashes were taken into the map: to blame if the blob fails its digest.
    pub map_sources: HashSet<PeerId>,
    /// Peers not to dial again yet.
    retry: PeerRetry<PeerId>,
    /// Peers the tracker named, tried before Kademlia's.
    named: Vec<PeerId>,
    /// Named peers the tracker marked as sharing this node's rack (`TrackerReply::Near`).
    near: HashSet<PeerId>,
    /// A tracker coordinates this blob and another node fetches it: wait for peers rather than
    /// going to the upstream when none is ready yet.
    coordinated: bool,
    /// The tracker made this node the fetcher: finish taking what peers have, then hand over.
    fetch_duty: bool,
    /// Until when a hand-over waits for holders the tracker did not know (`HANDOVER_LOOKUP`).
    handover_until: Option<Instant>,
    /// Stripes of a split fetch the tracker gave this node (the blob's size, the pieces, and
    /// whether to fetch them even where peers hold them: `FetchAlso`), not started yet, in the
    /// order given: like `fetch_duty`, for those pieces only.
    pub(super) shares: VecDeque<(u64, Range<u32>, bool)>,
    /// The share being fetched from the upstream now, and its pieces (never asked of peers).
    pub(super) share_task: Option<share::ShareTask<'a>>,
    pub(super) fetching_share: Option<Range<u32>>,
    /// A provider lookup running in the background (a Kademlia query can take seconds; the
    /// loop keeps moving pieces meanwhile).
    lookup: Option<tokio::sync::oneshot::Receiver<Vec<PeerId>>>,
    /// Providers found by lookups, dialled again when their retry time comes.
    providers: Vec<PeerId>,
    /// Peers this download has requests outstanding with, as last added to the node's count
    /// (`P2p::active_peers`).
    active: usize,
    /// Peers that gave this download an upload slot, as last added to the node's count
    /// (`P2p::holding`).
    holding: u32,
    /// Where the size the blob was opened with here came from (`None`: a peer's claim, or
    /// opened before this phase).
    size_source: Option<SizeSource>,
}

impl<'a> PeerPhase<'a> {
    pub fn new(fetch: &'a BlobFetch<'a>, p2p: &'a Arc<P2p>) -> PeerPhase<'a> {
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let mut x = Exchange::new(p2p.cfg.peer_stall, now());
        // With a rack label, far peers are asked only for what the rack lacks
        // (`pollen_core::rack`); the tracker marks the peers that share the label.
        if p2p.cfg.labels.iter().any(|(k, _)| k == "rack") {
            x.rack
                .enable(pollen_core::rack::key_of(&p2p.node.peer_id().to_bytes()));
        }
        PeerPhase {
            fetch,
            p2p,
            x,
            tasks: HashMap::new(),
            next_slot: 0,
            events_tx,
            events,
            written: None,
            map_sources: HashSet::new(),
            retry: PeerRetry::with_seed(seed_of(
                &p2p.node.peer_id().to_bytes(),
                fetch.digest.to_string().as_bytes(),
            )),
            named: Vec::new(),
            near: HashSet::new(),
            coordinated: false,
            fetch_duty: false,
            handover_until: None,
            shares: VecDeque::new(),
            share_task: None,
            fetching_share: None,
            lookup: None,
            providers: Vec::new(),
            size_source: None,
            active: 0,
            holding: 0,
        }
    }

    /// Downloads from peers into `sink` (opening it at the first peer's geometry).
    pub async fn run(
        &mut self,
        sink: &mut Option<Sink>,
        coordination: &mut Option<(TrackerLink, Assignment)>,
    ) -> Result<PeerOutcome, FetchError> {
        if let Some((_, assignment)) = coordination.as_ref() {
            debug!(digest = %self.fetch.digest, fetch = assignment.fetch, peers = assignment.peers.len(), "the tracker's assignment");
            if assignment.fetch && !self.holders_the_tracker_missed().await {
                // Nobody holds the blob (the tracker would have named the holders instead):
                // the members it names have at most what this node will fetch.
                return Ok(PeerOutcome::Fallback(
                    "the tracker made this node the fetcher".into(),
                ));
            }
            for peer in &assignment.peers {
                if !self.named.contains(peer) {
                    self.named.push(*peer);
                }
            }
            let near: Vec<PeerId> = assignment.near.clone();
            self.mark_near(&near);
            self.coordinated = true;
        }
        self.x.stall.restart(now());
        if let Some(s) = sink.as_mut() {
            self.adopt_sink(s);
        }
        if self.coordinated {
            // The tracker named the peers to ask: dial them now, look for more meanwhile.
            self.connect(&[]);
            self.start_lookup();
        } else if !self.connect_providers().await {
            return Ok(PeerOutcome::Fallback("no peer has announced it".into()));
        } else {
            // The lookup can take seconds (a query waits out peers that do not answer): the
            // peers' pace counts from when they were found, not from before the lookup.
            self.x.stall.restart(now());
        }
        let mut next_lookup = Instant::now() + LOOKUP_INTERVAL;
        loop {
            // A peer whose stream just failed to open is tried again shortly (libp2p-stream
            // drops streams in a burst): only with none of those either is nobody left.
            let soon = self.retry.next_by(now() + RETRY_UNREACHABLE);
            match self.next_step(sink.as_ref(), soon.is_some()) {
                Step::Complete => return Ok(PeerOutcome::Complete),
                Step::HandOver => {
                    // Taken once: if the fetch is then split, this node comes back for the
                    // rest of the blob as a downloader, not as the one fetching all of it.
                    self.fetch_duty = false;
                    self.handover_until = None;
                    return Ok(PeerOutcome::Fallback(
                        "the tracker handed this node the fetch".into(),
                    ));
                }
                Step::StartShare(i) => {
                    if let Some((size, pieces, _)) = self.shares.remove(i) {
                        self.start_share(size, pieces, sink, coordination).await?;
                    }
                }
                Step::NobodyLeft => {
                    return Ok(PeerOutcome::Fallback("no peer left to ask".into()));
                }
                Step::RetrySoon => {
                    if let Some(at) = soon {
                        next_lookup = next_lookup.min(Instant::from_std(at));
                    }
                }
                Step::Stalled => {
                    self.log_stall(sink.as_ref());
                    return Ok(PeerOutcome::Fallback(self.x.stall.describe(now())));
                }
                Step::Continue => {}
            }
            let idle = self.share_task.is_none();
            if self.tasks.is_empty() && self.coordinated {
                next_lookup = next_lookup.min(Instant::now() + RETRY_SOON);
            }
            // The hand-over's wait for holders ends by itself: look again then.
            if let Some(t) = self.handover_until.filter(|t| *t > Instant::now()) {
                next_lookup = next_lookup.min(t);
            }
            // A peer that turned us away (not started on the blob yet, a dropped stream) is
            // dialled again when its retry time comes, not at the next lookup.
            let redial = self
                .retry
                .next()
                .map(Instant::from_std)
                .filter(|_| self.x.dial_room(self.p2p.cfg.max_peers_per_blob) > 0);
            let written = async {
                match self.written.as_mut() {
                    Some(w) => w.recv().await,
                    None => std::future::pending().await,
                }
            };
            let pushed = async {
                match coordination.as_mut() {
                    Some((link, _)) => link.recv().await,
                    None => std::future::pending().await,
                }
            };
            let share_done = async {
                match self.share_task.as_mut() {
                    Some(task) => task.await,
                    None => std::future::pending().await,
                }
            };
            let stall_at = idle.then(|| Instant::from_std(self.x.stall.deadline()));
            let looked_up = async {
                match self.lookup.as_mut() {
                    Some(rx) => rx.await.unwrap_or_default(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                Some((slot, msg)) = self.events.recv() => self.on_peer(slot, msg, sink).await?,
                Some(w) = written => self.on_written(w, sink, coordination)?,
                (app, result) = share_done => self.on_share_done(app, result, sink, coordination)?,
                push = pushed => match push {
                    Some(TrackerReply::Fetch) => {
                        // Take what peers still have first: the upstream is asked only for
                        // the pieces nobody holds (checked at the top of the loop), after a
                        // look for holders this tracker may not know.
                        self.fetch_duty = true;
                        self.coordinated = false;
                        self.handover_until = Some(Instant::now() + HANDOVER_LOOKUP);
                        self.start_lookup();
                    }
                    Some(TrackerReply::Peers { peers }) => {
                        debug!(digest = %self.fetch.digest, count = peers.len(), "the tracker named more peers");
                        self.named
                            .extend(peers.iter().filter_map(|p| PeerId::from_bytes(p).ok()));
                        self.connect(&[]);
                    }
                    Some(TrackerReply::Near { peers }) => {
                        let near: Vec<PeerId> =
                            peers.iter().filter_map(|p| PeerId::from_bytes(p).ok()).collect();
                        debug!(digest = %self.fetch.digest, count = near.len(), "the tracker marked peers in this node's rack");
                        self.mark_near(&near);
                        // A rack-mate held back by the cap on far sessions can be dialled now.
                        self.connect(&[]);
                    }
                    Some(TrackerReply::FetchRange { size, first, end }) => {
                        self.shares.push_back((size, first..end, false));
                    }
                    Some(TrackerReply::FetchAlso { size, first, end }) => {
                        debug!(digest = %self.fetch.digest, first, end, "the upstream has headroom: fetching a stripe from it too");
                        self.shares.push_back((size, first..end, true));
                    }
                    Some(
                        TrackerReply::Assign { .. }
                        | TrackerReply::Resolved { .. }
                        | TrackerReply::Time { .. }
                        | TrackerReply::Members { .. }
                        | TrackerReply::Redirect { .. },
                    ) => {}
                    None => {
                        // No tracker left (none found after this one died): carry on with
                        // Kademlia alone. The fetcher it chose is still fetching, so a peer
                        // that is not ready is waited for as before: only peer_stall sends
                        // this node to the upstream, not an empty moment between sessions.
                        *coordination = None;
                    }
                },
                () = sleep_opt(redial) => {
                    self.connect(&[]);
                }
                found = looked_up => {
                    self.lookup = None;
                    self.connect(&found);
                    if self.seeking_holders() {
                        self.dial_holders(&found);
                    }
                }
                () = sleep_until(next_lookup) => {
                    next_lookup = Instant::now() + LOOKUP_INTERVAL;
                    // Peers whose retry time came are dialled again at once; new ones are
                    // looked up while there is room.
                    self.connect(&[]);
                    if self.x.dial_room(self.p2p.cfg.max_peers_per_blob) > 0 {
                        self.start_lookup();
                    }
                }
                () = sleep_opt(stall_at) => {}
            }
            if let Some(s) = sink.as_ref() {
                self.fill_requests(s);
            }
        }
    }

    /// The core's decision ([`Exchange::next_step`]) from this phase's state.
    fn next_step(&self, sink: Option<&Sink>, retry_soon: bool) -> Step {
        let facts = Facts {
            mine: sink.map(|s| &s.have),
            fetching_share: self.share_task.is_some(),
            fetch_duty: self.fetch_duty,
            coordinated: self.coordinated,
            retry_soon,
            handover_window: self.seeking_holders(),
            looking_up: self.lookup.is_some(),
        };
        let shares = self.shares.iter().map(|(_, pieces, also)| (pieces, *also));
        self.x.next_step(facts, shares, now())
    }

    /// Within the hand-over's wait for holders the tracker did not know.
    fn seeking_holders(&self) -> bool {
        self.handover_until.is_some_and(|t| Instant::now() < t)
    }

    fn log_stall(&self, sink: Option<&Sink>) {
        let Some(s) = sink else { return };
        let missing: Vec<(u32, bool, u16)> = s
            .have
            .iter_missing()
            .map(|i| {
                let seen = self.x.availability.get(i as usize).copied().unwrap_or(0);
                (i, self.x.known.get(i), seen)
            })
            .collect();
        debug!(digest = %self.fetch.digest, ?missing, peers = self.tasks.len(), "stalled: missing pieces (index, hash known, peers with it)");
    }

    fn adopt_sink(&mut self, sink: &mut Sink) {
        self.written = sink.written.take();
        let count = sink.geometry.count();
        self.x
            .adopt(count, sink.known.clone(), random_order(count), now());
    }

    async fn on_peer(
        &mut self,
        slot: usize,
        msg: FromPeer,
        sink: &mut Option<Sink>,
    ) -> Result<(), FetchError> {
        match msg {
            FromPeer::Opened(have) => self.on_opened(slot, have, sink).await?,
            FromPeer::Piece(piece) => self.on_piece(slot, piece, sink).await?,
            FromPeer::Event(event) => self.on_event(slot, event, sink).await?,
            FromPeer::NotRequested(index) => self.x.forget_request(index, slot),
            FromPeer::Ended(e) => {
                let opened = self.x.peers.get(&slot).is_some_and(|s| s.has.is_some());
                let again = if e.is_peer_fault() {
                    self.ban(slot, &format!("broke the protocol: {e}"));
                    Again::After(RETRY_AFTER)
                } else if matches!(e, SessionError::Refused(ErrorCode::UnknownBlob)) {
                    // Not there yet (it holds none of the blob yet, `serves_partial`): a peer
                    // named by the tracker has pieces soon.
                    Again::NotYet
                } else if matches!(e, SessionError::Refused(_)) {
                    // Busy (its slots and queue are full; one frees soon) or failed on its side.
                    Again::After(RETRY_SOON)
                } else if !opened {
                    // The stream died before the session began: libp2p-stream drops inbound
                    // streams that arrive in a burst (docs/decisions.md). Try again soon.
                    Again::After(RETRY_UNREACHABLE)
                } else {
                    debug!(slot, error = %e, "peer session ended");
                    Again::After(RETRY_AFTER)
                };
                self.drop_slot(slot, again);
            }
            FromPeer::Unreachable(why) => {
                // Often a connection being replaced (both sides dialled at once): soon again.
                debug!(slot, error = %why, "peer unreachable");
                self.drop_slot(slot, Again::After(RETRY_UNREACHABLE));
            }
        }
        Ok(())
    }

    async fn on_opened(
        &mut self,
        slot: usize,
        have: Have,
        sink: &mut Option<Sink>,
    ) -> Result<(), FetchError> {
        let s = match sink {
            Some(s) => s,
            None => {
                // The peer's size is a claim: open the blob with the size this node can
                // vouch for, and with the claim only when it can vouch for none.
                let trusted = self.fetch.trusted_size().await;
                let (geometry, confirmed) = match trusted {
                    Some((size, _)) => (self.fetch.geometry_of(size)?, true),
                    None => (have.geometry, false),
                };
                self.size_source = trusted.map(|(_, source)| source);
                let s = sink.insert(self.fetch.start_sink_with(geometry, confirmed).await?);
                self.adopt_sink(s);
                s
            }
        };
        if have.geometry != s.geometry {
            match s.confirmed {
                true => {
                    // A size resumed from disk was confirmed once, but by what is not known:
                    // not grounds for a ban.
                    let source = self.size_source.unwrap_or(SizeSource::Descriptor);
                    self.wrong_size(slot, s.geometry.size(), have.geometry.size(), source);
                }
                false => {
                    debug!(
                        slot,
                        "peer claims another size than the first; not using it"
                    );
                    self.drop_slot(slot, Again::After(RETRY_AFTER));
                }
            }
            return Ok(());
        }
        if let Some(task) = self.tasks.get(&slot) {
            debug!(slot, peer = %task.peer, pieces = have.bitfield.count_ones(), "peer session open");
            self.retry.opened(&task.peer);
        }
        self.x.opened(slot, have.bitfield, &s.have, now());
        Ok(())
    }

    /// A peer claimed another size than the one this node trusts: not used, and banned when
    /// the node's own upstream gave the size (a verified manifest could be a crafted one).
    fn wrong_size(&mut self, slot: usize, trusted: u64, claimed: u64, source: SizeSource) {
        let why = format!("claims {claimed} bytes for a blob of {trusted}");
        match source {
            SizeSource::Upstream => self.ban(slot, &why),
            SizeSource::Descriptor => debug!(slot, %why, "not using the peer"),
        }
        self.drop_slot(slot, Again::After(RETRY_AFTER));
    }

    async fn on_event(
        &mut self,
        slot: usize,
        event: Event,
        sink: &mut Option<Sink>,
    ) -> Result<(), FetchError> {
        let Some(s) = sink.as_mut() else {
            return Ok(());
        };
        match event {
            Event::Piece { .. } => {} // arrives hashed, as FromPeer::Piece
            Event::Map(map) => {
                self.add_hashes(s, slot, 0, map.hashes().to_vec(), None)
                    .await?;
            }
            Event::Hashes { first, hashes } => {
                self.add_hashes(s, slot, first, hashes, None).await?;
            }
            Event::SignedHashes {
                producer,
                first,
                hashes,
                signatures,
            } => {
                let signed = Signed {
                    producer: producer.into(),
                    signatures,
                };
                self.add_hashes(s, slot, first, hashes, Some(signed))
                    .await?;
            }
            Event::HaveMore(pieces) => {
                // The loop runs a request round after every event, whatever this says.
                self.x.have_more(slot, &pieces, &s.have, now());
            }
            Event::Have(have) => {
                let same = have.geometry == s.geometry;
                self.x
                    .have(slot, same.then_some(have.bitfield), &s.have, now());
            }
            Event::Choked { dropped } => self.x.choked(slot, true, &dropped),
            Event::Unchoked => self.x.choked(slot, false, &[]),
        }
        Ok(())
    }

    async fn on_piece(
        &mut self,
        slot: usize,
        piece: HashedPiece,
        sink: &mut Option<Sink>,
    ) -> Result<(), FetchError> {
        let Some(s) = sink.as_mut() else {
            return Ok(());
        };
        let index = piece.index();
        let len = piece.bytes().len() as u64;
        if let Some(task) = self.tasks.get(&slot) {
            debug!(slot, peer = %task.peer, index, "piece received");
        }
        let (cancels, fresh) = self.x.received(slot, index, len, &s.have);
        for other in cancels {
            if let Some(task) = self.tasks.get(&other) {
                task.send(ToPeer::Cancel(index));
            }
        }
        if !fresh {
            return Ok(());
        }
        if s.have.count_ones() == 0 {
            // The first piece: from now on this node serves the blob.
            self.fetch.announce();
        }
        self.fetch.metrics.peer_bytes_received.inc_by(len);
        self.fetch.count_from_peers(len);
        if !s.send(Op::Piece { piece, slot }).await {
            return Err(FetchError::Store("the blob's writer stopped".into()));
        }
        Ok(())
    }

    async fn add_hashes(
        &mut self,
        sink: &Sink,
        slot: usize,
        first: u32,
        hashes: Vec<[u8; 32]>,
        signed: Option<Signed>,
    ) -> Result<(), FetchError> {
        if (first..).take(hashes.len()).all(|i| self.x.known.get(i)) {
            return Ok(());
        }
        if let Some(task) = self.tasks.get(&slot) {
            self.map_sources.insert(task.peer);
        }
        // The producer answers for its hashes as well as the peer that passed them on.
        let producer = signed.as_ref().map(|s| PeerId::from_bytes(&s.producer));
        if let Some(Ok(producer)) = producer {
            self.map_sources.insert(producer);
        }
        if !sink
            .send(Op::Hashes {
                first,
                hashes,
                slot,
                signed,
            })
            .await
        {
            return Err(FetchError::Store("the blob's writer stopped".into()));
        }
        Ok(())
    }

    fn on_written(
        &mut self,
        w: Written,
        sink: &mut Option<Sink>,
        coordination: &Option<(TrackerLink, Assignment)>,
    ) -> Result<(), FetchError> {
        let Some(s) = sink.as_mut() else {
            return Ok(());
        };
        match w {
            Written::Piece {
                index,
                slot,
                result,
            } => {
                let stored = matches!(result, PieceResult::Stored | PieceResult::Duplicate);
                self.x.written(index, stored, now());
                match result {
                    PieceResult::Stored | PieceResult::Duplicate => {
                        let _ = s.have.set(index);
                        if let Some((link, _)) = coordination {
                            link.set_pieces(s.have.count_ones());
                        }
                    }
                    PieceResult::Mismatch => {
                        self.fetch.metrics.piece_verification_failures.inc();
                        self.ban(slot, &format!("piece {index} does not match its hash"));
                        self.drop_slot(slot, Again::After(RETRY_AFTER));
                    }
                    PieceResult::Failed => {
                        return Err(FetchError::Store("writing a piece failed".into()));
                    }
                }
            }
            Written::Hashes { slot, result } => match result {
                Ok(known) => {
                    s.known = known.clone();
                    self.x.known = known;
                }
                Err(e) => {
                    self.ban(slot, &e);
                    self.drop_slot(slot, Again::After(RETRY_AFTER));
                }
            },
        }
        Ok(())
    }

    fn ban(&mut self, slot: usize, why: &str) {
        if let Some(task) = self.tasks.get(&slot) {
            self.fetch.metrics.peer_bans.inc();
            self.p2p.bans.ban(self.fetch.digest, task.peer, why);
        }
    }
}

async fn sleep_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The decisions' clock: tokio's (paused in tests), as the core's `std` instant.
impl Drop for PeerPhase<'_> {
    fn drop(&mut self) {
        let total = &self.p2p.active_peers;
        total.fetch_sub(self.active, std::sync::atomic::Ordering::Relaxed);
        let held = self.holding;
        if held > 0 {
            self.p2p
                .holding
                .send_modify(|n| *n = n.saturating_sub(held));
        }
    }
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// A random rank per piece (std's randomly keyed hasher: no extra dependency for a shuffle).
fn random_order(count: u32) -> Vec<u64> {
    use std::hash::{BuildHasher, RandomState};
    let keyed = RandomState::new();
    (0..count).map(|i| keyed.hash_one(i)).collect()
}
