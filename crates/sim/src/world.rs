//! The simulated cluster: every node's state, the sessions between nodes, the event queue and
//! the loop that runs it. The decisions are pollen-core's; the modules beside this one carry
//! them out (`down`: a node downloading a blob, `up`: a node serving one, `track`: the
//! trackers, `fetch`: registry requests).

use crate::config::Scenario;
use crate::net::{ConnId, Nanos, Net};
use crate::queue::Queue;
use crate::rng::Rng;
use crate::topo::Topology;
use pollen_core::download::Exchange;
use pollen_core::spread::Claims;
use pollen_oci::Digest;
use pollen_proto::{Bitfield, PieceGeometry, TrackerReply};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::Range;
use std::time::{Duration, Instant};

/// A blob every node of an image pulls.
pub struct Blob {
    pub digest: Digest,
    pub geometry: PieceGeometry,
    /// The node hosting its tracker now.
    pub tracker: Option<usize>,
}

/// What a node is doing with one blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Not started, or waiting for the tracker's answer.
    Joining,
    /// Fetching from the upstream instead of peers (the tracker's fetcher, or a fall-back).
    Upstream,
    /// Downloading from peers (perhaps fetching a share from the upstream beside it).
    Peers,
    Done,
}

/// Why bytes came from the registry, for the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Why {
    /// The tracker's fetcher: the probe range, then the whole blob when not split.
    Fetcher,
    Share,
    Stalled,
    HandedOn,
    NoPeers,
}

/// One node's download (and upload) of one blob.
pub struct Fetch {
    pub blob: usize,
    pub phase: Phase,
    pub have: Bitfield,
    /// Pieces whose hash this node sends its sessions: those it fetched from the registry,
    /// those it took from peers (`--hashes relayed`), every piece once it completed the blob
    /// (`hashes.rs`).
    pub vouched: Bitfield,
    /// The pieces set in `vouched`: a session whose count of hashes sent equals it has
    /// nothing new to hear (checked after every piece it sends).
    pub vouched_n: u32,
    pub x: Exchange,
    /// This node has started fetching the blob (or a share) from the registry
    /// (`pollen_core::upload::serves_partial`).
    pub fetching: bool,
    pub claims: Claims,
    /// This node's membership: the tracker host and its member id there.
    pub member: Option<(usize, u64)>,
    pub named: Vec<usize>,
    /// Named peers the tracker marked as sharing this node's rack (`TrackerReply::Near`).
    pub near: BTreeSet<usize>,
    /// Download sessions by peer node.
    pub sessions: BTreeMap<usize, usize>,
    pub retry: pollen_core::retry::PeerRetry<usize>,
    /// Upload sessions of this blob (session ids).
    pub uploads: Vec<usize>,
    /// Stripes the tracker gave this node: pieces, and whether to fetch them even where peers
    /// hold them.
    pub shares: VecDeque<(Range<u32>, bool)>,
    /// The upstream request running: its pieces still to come, and why.
    pub upstream: Option<(Vec<u32>, Why)>,
    pub upstream_conn: Option<ConnId>,
    /// The fetcher's first request (a probe range) is running.
    pub probing: bool,
    /// The fetcher reported the size and waits for the tracker's answer (`Sized`), and the
    /// answer once it came: this node's share, or the whole blob.
    pub awaiting_share: bool,
    pub answer: Option<Range<u32>>,
    pub fetch_duty: bool,
    /// Until when a hand-over waits for holders the tracker did not know
    /// (`pollen_core::phase::HANDOVER_LOOKUP`).
    pub handover_until: Nanos,
    pub pieces_told: u32,
    /// When the last `Join` went out without an answer yet (joined again after a second,
    /// as the agent looks for a tracker again).
    pub join_sent: Option<Nanos>,
    /// When the next provider lookup is due (the agent's LOOKUP_INTERVAL).
    pub next_lookup: Nanos,
    /// When a `Redial` is due, if one is.
    pub redial_at: Option<Nanos>,
    pub told_at: Nanos,
    pub stall_check: Option<Nanos>,
    pub reveal_at: Option<Nanos>,
    pub done_at: Option<Nanos>,
    /// The download's state since the last request round, and since when (`wait.rs`).
    pub wait: Option<(crate::wait::Wait, Nanos)>,
}

/// One piece-exchange session: `down` downloads a blob from `up`.
pub struct Session {
    pub up: usize,
    pub down: usize,
    pub layer: usize,
    pub conn: ConnId,
    pub seat: u64,
    pub open: bool,
    pub unchoked: bool,
    pub waiting: bool,
    /// What the downloader was told this uploader has.
    pub announced: Bitfield,
    /// The hashes the downloader was sent over this session, and how many.
    pub hashes_sent: Bitfield,
    pub hashes_n: u32,
    /// The uploader has news to send once its writer is free: pieces stored since (when its
    /// blob is not super-seeded), or a new look at what super-seeding shows.
    pub dirty: bool,
    pub pending: Vec<u32>,
    pub queued: usize,
    pub last_request: Nanos,
    pub yield_check: Option<Nanos>,
    /// The slots the downloader last said it holds (`Request::Holding`).
    pub holding: u32,
    /// When the session was last given a slot (`Slots::turn_over` counts its tenure).
    pub granted_at: Nanos,
}

/// A node's upload slots, by session id and downloading node (the agent's `UploadLimits`
/// keeps the same core state).
pub type Slots = pollen_core::upload::Slots<usize>;

/// One node's tracker role (`track.rs` drives it).
pub struct Host {
    pub swarms: pollen_core::tracker::Swarms,
    /// Member ids to (node, layer).
    pub members: BTreeMap<u64, (usize, usize)>,
    /// Heap the swarms hold now.
    pub bytes: i64,
}

pub struct Node {
    pub alive: bool,
    pub epoch: u32,
    pub seed: bool,
    pub image: usize,
    pub fetches: Vec<Fetch>,
    pub slots: Slots,
    pub done_at: Option<Nanos>,
    pub sent: u64,
    pub received: u64,
    /// Piece bytes from peers after the first piece, and when the first and the last arrived.
    pub from_peers: (u64, Option<(Nanos, Nanos)>),
    pub peer_id: Vec<u8>,
    /// The upload slots this node last told its uploaders it holds (`Request::Holding`).
    pub told_holding: u32,
}

/// Who a network connection carries bytes for.
#[derive(Clone, Copy)]
pub enum Owner {
    Session(usize),
    Upstream { node: usize, layer: usize },
}

/// A message to a tracker.
#[derive(Clone, Debug)]
pub enum ToTracker {
    Join {
        fetching: bool,
        rejoin: bool,
        busy: bool,
        pieces: u32,
    },
    Progress(u32),
    Sized(pollen_core::tracker::Sized),
    Leave(bool),
}

/// Something that happens at a moment of simulated time. Kept small: the queue holds hundreds
/// of thousands and moves them on every push and pop, so the rare large ones are boxed.
pub enum Ev {
    Start(usize),
    Kill(usize),
    Restart(usize),
    AtTracker {
        host: usize,
        host_epoch: u32,
        node: usize,
        epoch: u32,
        layer: usize,
        msg: Box<ToTracker>,
    },
    FromTracker {
        node: usize,
        epoch: u32,
        layer: usize,
        reply: Box<TrackerReply>,
    },
    Deferred {
        host: usize,
        blob: usize,
        id: u64,
    },
    Split {
        host: usize,
        blob: usize,
        id: u64,
        sized: Box<pollen_core::tracker::Sized>,
    },
    Recheck {
        host: usize,
        blob: usize,
    },
    Open(usize),
    Opened(usize, Box<Bitfield>),
    Refused(usize, pollen_core::retry::Again),
    Request(usize, u32),
    Cancel(usize, u32),
    HaveMore(usize, Vec<u32>),
    Hashes(usize, Vec<u32>),
    /// `Choked` (which drops every request outstanding on the session) or `Unchoked`.
    Choke {
        sid: usize,
        choked: bool,
    },
    Close(usize),
    Ended(usize),
    UpstreamData {
        node: usize,
        epoch: u32,
        layer: usize,
    },
    Tick {
        node: usize,
        epoch: u32,
        layer: usize,
    },
    YieldCheck(usize),
    /// A peer that turned a download away may be dialled again (the agent's redial at the
    /// peer's retry time, not at the next tick).
    Redial {
        node: usize,
        epoch: u32,
        layer: usize,
    },
    /// A downloader's `Holding` reaches the uploader of a session.
    Holding(usize, u32),
    Reveal {
        node: usize,
        layer: usize,
    },
    ShareTimeout {
        node: usize,
        epoch: u32,
        layer: usize,
    },
}

const _: () = assert!(
    std::mem::size_of::<Ev>() <= 48,
    "keep events small (see Ev)"
);

/// Counters for the report.
#[derive(Default)]
pub struct Stats {
    pub events: u64,
    pub tracker_msgs: u64,
    pub tracker_bytes: Vec<i64>,
    pub tracker_peak: i64,
    pub upstream_requests: BTreeMap<Why, u64>,
    pub kills: u64,
    pub waits: crate::wait::WaitTotals,
}

pub struct World {
    pub s: Scenario,
    pub net: Net,
    pub topo: Topology,
    pub rng: Rng,
    pub now: Nanos,
    /// The cores' clock: a fixed origin plus simulated time. Only differences reach output.
    pub origin: Instant,
    queue: Queue<Ev>,
    pub blobs: Vec<Blob>,
    pub nodes: Vec<Node>,
    pub sessions: Vec<Session>,
    pub conns: Vec<Owner>,
    pub hosts: Vec<Option<Host>>,
    pub stats: Stats,
    /// Nodes done.
    pub done: usize,
    /// Lines printed under each progress line (`--progress-bands`: `bands::lines`, set by
    /// `simulate`, which sees both modules).
    pub progress_more: Option<fn(&World) -> String>,
}

pub fn nanos(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl World {
    pub fn new(s: Scenario) -> World {
        let mut rng = Rng::new(s.seed);
        let mut net = Net::new(nanos(s.quantum));
        let topo = Topology::build(&s, &mut net, &mut rng);
        let mut blobs = Vec::new();
        for image in 0..s.images {
            for layer in 0..s.layers {
                let size = s.layer_size(layer);
                let geometry = PieceGeometry::choose(size, s.piece_size)
                    .unwrap_or_else(|_| PieceGeometry::choose(1 << 20, None).expect("1 MiB"));
                blobs.push(Blob {
                    digest: Digest::of(format!("image {image} layer {layer}").as_bytes()),
                    geometry,
                    tracker: None,
                });
            }
        }
        let nodes = (0..s.nodes)
            .map(|i| Node {
                alive: false,
                epoch: 0,
                seed: false,
                image: i % s.images,
                fetches: Vec::new(),
                slots: s.slots(),
                done_at: None,
                sent: 0,
                received: 0,
                from_peers: (0, None),
                told_holding: 0,
                // As long as a libp2p ed25519 PeerId's bytes, so the tracker's memory is real.
                peer_id: peer_id(i),
            })
            .collect();
        let hosts = (0..s.nodes).map(|_| None).collect();
        let mut w = World {
            s,
            net,
            topo,
            rng,
            now: 0,
            origin: Instant::now(),
            queue: Queue::default(),
            blobs,
            nodes,
            sessions: Vec::new(),
            conns: Vec::new(),
            hosts,
            stats: Stats::default(),
            done: 0,
            progress_more: None,
        };
        w.plan();
        w
    }

    /// Start times (stagger, preheat) and churn.
    fn plan(&mut self) {
        let mut order: Vec<usize> = (0..self.s.nodes).collect();
        self.rng.shuffle(&mut order);
        let stagger = nanos(self.s.stagger);
        let lead = nanos(self.s.preheat_lead).saturating_add(nanos(self.s.pull_overhead));
        let overhead = nanos(self.s.pull_overhead);
        for (rank, &n) in order.iter().enumerate() {
            let seed = rank < self.s.preheat;
            let jitter = (self.rng.unit() * stagger as f64) as Nanos;
            let at = if seed || self.s.preheat == 0 {
                overhead + jitter
            } else {
                lead + jitter
            };
            if let Some(node) = self.nodes.get_mut(n) {
                node.seed = seed;
            }
            self.at(at, Ev::Start(n));
        }
        let killed = (self.s.churn * self.s.nodes as f64).round() as usize;
        // Nodes hosting trackers are spared when only some do (as benches/cluster.sh kills
        // plain members).
        let first = self.s.trackers.filter(|t| *t < self.s.nodes).unwrap_or(0);
        let mut victims: Vec<usize> = (first..self.s.nodes).collect();
        self.rng.shuffle(&mut victims);
        let (from, window) = (nanos(self.s.churn_from), nanos(self.s.churn_window));
        for &n in victims.iter().take(killed) {
            let at = from + (self.rng.unit() * window as f64) as Nanos;
            self.at(at, Ev::Kill(n));
            self.at(at + nanos(self.s.churn_down), Ev::Restart(n));
        }
    }

    pub fn at(&mut self, at: Nanos, ev: Ev) {
        self.queue.push(at.max(self.now), ev);
    }

    pub fn after(&mut self, delay: Nanos, ev: Ev) {
        self.queue.push_after(self.now, delay, ev);
    }

    /// The cores' instant for now.
    pub fn instant(&self) -> Instant {
        self.origin + Duration::from_nanos(self.now)
    }

    pub fn to_nanos(&self, at: Instant) -> Nanos {
        nanos(at.saturating_duration_since(self.origin))
    }

    /// Runs until every node is done or `--until`.
    pub fn run(&mut self) {
        let until = nanos(self.s.until);
        let mut delivered = Vec::new();
        let every = self.s.progress.map(nanos).filter(|e| *e > 0);
        let mut next_progress = 0;
        loop {
            if let Some(every) = every.filter(|_| self.now >= next_progress) {
                self.progress();
                next_progress = self.now.saturating_add(every);
            }
            if self.done >= self.nodes.len() {
                break;
            }
            let next_ev = self.queue.next_at();
            let next_net = self.net.next_event();
            let at = match (next_ev, next_net) {
                (None, None) => break,
                (Some(a), None) | (None, Some(a)) => a,
                (Some(a), Some(b)) => a.min(b),
            };
            if at > until {
                break;
            }
            self.now = at;
            if next_net == Some(at) {
                self.net.advance(at, &mut delivered);
                for (conn, tag) in delivered.drain(..) {
                    self.delivered(conn, tag);
                }
                continue;
            }
            if let Some(ev) = self.queue.pop() {
                self.stats.events += 1;
                self.dispatch(ev);
            }
        }
    }

    /// One line of progress on stderr (`--progress`): nodes done, pieces held, flows (and
    /// with `--progress-bands`, three more: `bands`).
    fn progress(&self) {
        let mut totals: Vec<u32> = self
            .nodes
            .iter()
            .map(|n| n.fetches.iter().map(|f| f.have.count_ones()).sum())
            .collect();
        totals.sort_unstable();
        let q = |p: usize| {
            totals
                .get(totals.len().saturating_sub(1) * p / 100)
                .copied()
                .unwrap_or(0)
        };
        let done = self.nodes.iter().filter(|n| n.done_at.is_some()).count();
        let rate: f64 = (0..self.conns.len())
            .map(|c| self.net.rate(ConnId(u32::try_from(c).unwrap_or(u32::MAX))))
            .sum();
        eprintln!(
            "{:8.2} s  done {done}/{}  pieces per node min {} p50 {} max {}  flows {} moving {:.2} GB/s",
            self.now as f64 / 1e9,
            self.nodes.len(),
            q(0),
            q(50),
            q(100),
            self.net.active_flows(),
            rate / 1e9
        );
        if let Some(more) = self.progress_more {
            eprintln!("{}", more(self));
        }
    }

    fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Start(n) => self.start(n, false),
            Ev::Kill(n) => self.kill(n),
            Ev::Restart(n) => self.start(n, true),
            Ev::AtTracker {
                host,
                host_epoch,
                node,
                epoch,
                layer,
                msg,
            } => {
                if self.live(host, host_epoch) {
                    self.at_tracker(host, node, epoch, layer, *msg);
                }
            }
            Ev::FromTracker {
                node,
                epoch,
                layer,
                reply,
            } => {
                if self.live(node, epoch) {
                    self.on_tracker_reply(node, layer, *reply);
                }
            }
            Ev::Deferred { host, blob, id } => self.deferred(host, blob, id),
            Ev::Split {
                host,
                blob,
                id,
                sized,
            } => self.split(host, blob, id, *sized),
            Ev::Recheck { host, blob } => self.recheck(host, blob),
            Ev::Open(sid) => self.on_open(sid),
            Ev::Opened(sid, has) => self.on_opened(sid, *has),
            Ev::Refused(sid, again) => self.on_refused(sid, again),
            Ev::Request(sid, piece) => self.on_request(sid, piece),
            Ev::Cancel(sid, piece) => self.on_cancel(sid, piece),
            Ev::HaveMore(sid, pieces) => self.on_have_more(sid, pieces),
            Ev::Hashes(sid, pieces) => self.on_hashes(sid, pieces),
            Ev::Choke { sid, choked } => self.on_choke(sid, choked),
            Ev::Close(sid) => self.on_close(sid),
            Ev::Ended(sid) => self.on_ended(sid),
            Ev::UpstreamData { node, epoch, layer } => {
                if self.live(node, epoch) {
                    self.upstream_data(node, layer);
                }
            }
            Ev::Tick { node, epoch, layer } => {
                if self.live(node, epoch) {
                    self.tick(node, layer);
                }
            }
            Ev::YieldCheck(sid) => self.yield_check(sid),
            Ev::Redial { node, epoch, layer } => {
                if self.live(node, epoch) {
                    if let Some(f) = self.fetch_mut(node, layer) {
                        f.redial_at = None;
                    }
                    self.connect(node, layer);
                }
            }
            Ev::Holding(sid, slots) => self.on_holding(sid, slots),
            Ev::Reveal { node, layer } => self.reveal(node, layer),
            Ev::ShareTimeout { node, epoch, layer } => {
                if self.live(node, epoch) {
                    self.share_timeout(node, layer);
                }
            }
        }
    }

    /// Whether an event for `node` from its life `epoch` still applies.
    pub fn live(&self, node: usize, epoch: u32) -> bool {
        self.nodes
            .get(node)
            .is_some_and(|n| n.alive && n.epoch == epoch)
    }

    pub fn epoch(&self, node: usize) -> u32 {
        self.nodes.get(node).map_or(0, |n| n.epoch)
    }

    pub fn fetch(&self, node: usize, layer: usize) -> Option<&Fetch> {
        self.nodes.get(node)?.fetches.get(layer)
    }

    pub fn fetch_mut(&mut self, node: usize, layer: usize) -> Option<&mut Fetch> {
        self.nodes.get_mut(node)?.fetches.get_mut(layer)
    }

    /// The blob index of a node's layer.
    pub fn blob_of(&self, node: usize, layer: usize) -> usize {
        let image = self.nodes.get(node).map_or(0, |n| n.image);
        image * self.s.layers as usize + layer
    }

    pub fn geometry(&self, blob: usize) -> PieceGeometry {
        self.blobs
            .get(blob)
            .map(|b| b.geometry)
            .unwrap_or_else(|| PieceGeometry::new(1, 1 << 18).expect("one piece"))
    }

    pub fn open_conn(&mut self, path: &[crate::net::LinkId], owner: Owner) -> ConnId {
        let conn = self.net.open(path);
        let at = conn.0 as usize;
        if self.conns.len() <= at {
            self.conns.resize(at + 1, owner);
        }
        if let Some(o) = self.conns.get_mut(at) {
            *o = owner;
        }
        conn
    }

    fn delivered(&mut self, conn: ConnId, tag: u64) {
        let Ok(piece) = u32::try_from(tag) else {
            return;
        };
        match self.conns.get(conn.0 as usize).copied() {
            Some(Owner::Session(sid)) => self.piece_from_peer(sid, piece),
            Some(Owner::Upstream { node, layer }) => self.piece_from_upstream(node, layer, piece),
            None => {}
        }
    }
}

/// A 38-byte id (the size of an ed25519 libp2p PeerId) for node `i`.
pub fn peer_id(i: usize) -> Vec<u8> {
    let mut id = vec![0u8; 38];
    id[..8].copy_from_slice(&(i as u64).to_be_bytes());
    id
}

/// The node a [`peer_id`] names.
pub fn node_of(id: &[u8]) -> Option<usize> {
    let bytes: [u8; 8] = id.get(..8)?.try_into().ok()?;
    usize::try_from(u64::from_be_bytes(bytes)).ok()
}
