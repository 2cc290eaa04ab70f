//! A node's life: start (or restart, resuming what it stored), SIGKILL, joining its blobs'
//! trackers, the periodic work of a download (progress to the tracker, redials, provider
//! lookups), and a download's state when a node (re)starts.

use crate::config::RackRule;
use crate::world::{nanos, Ev, Fetch, Phase, ToTracker, World};
use pollen_core::download::Exchange;
use pollen_core::phase::{HANDOVER_DIALS, HANDOVER_LOOKUP};
use pollen_core::spread::Claims;
use pollen_core::upload::serves_partial;
use pollen_proto::Bitfield;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// How often a member reports its pieces when they changed (the agent's PROGRESS_CHECK),
/// and the keepalive when they did not.
const TICK: Duration = Duration::from_millis(250);
const KEEPALIVE: Duration = Duration::from_secs(5);
/// How often a download with room for more peers looks for providers (the agent's
/// LOOKUP_INTERVAL), and how many a lookup finds (Kademlia's k).
const LOOKUP_INTERVAL: Duration = Duration::from_secs(5);
const LOOKUP_RESULTS: usize = 20;
/// A join nobody answered (no tracker alive yet) is sent again after this long.
const JOIN_RETRY: Duration = Duration::from_secs(1);

impl World {
    pub(crate) fn start(&mut self, n: usize, restart: bool) {
        let now = self.instant();
        let layers = self.s.layers as usize;
        let stall = self.s.peer_stall;
        let blobs: Vec<usize> = (0..layers).map(|l| self.blob_of(n, l)).collect();
        let geometries: Vec<_> = blobs.iter().map(|b| self.geometry(*b)).collect();
        let Some(node) = self.nodes.get_mut(n) else {
            return;
        };
        if node.alive || (restart && node.fetches.is_empty()) {
            return;
        }
        node.alive = true;
        node.epoch += 1;
        node.slots = self.s.slots();
        node.told_holding = 0;
        if node.fetches.is_empty() {
            node.fetches = blobs
                .iter()
                .zip(&geometries)
                .map(|(&blob, g)| Fetch::new(blob, Bitfield::new(g), Claims::new(*g), stall, now))
                .collect();
        }
        let seed = self.s.seed;
        // The agent turns the rule on when it has a rack label (given here when racks are
        // modelled).
        let racked = self.s.rack_rule == RackRule::Import && self.s.racks > 1;
        for (layer, (f, g)) in node.fetches.iter_mut().zip(&geometries).enumerate() {
            // Each node's own random order of the pieces, as the agent's RandomState gives.
            let order = mix(seed ^ ((n as u64) << 20) ^ layer as u64);
            f.reset(Claims::new(*g), stall, now, order);
            // Each download its own `NotYet` waits, as the agent seeds them by node and blob.
            f.retry = pollen_core::retry::PeerRetry::with_seed(mix(order ^ 0x7e7));
            if racked {
                f.x.rack.enable(rack_key(n));
            }
        }
        let epoch = node.epoch;
        for layer in 0..layers {
            if self.fetch(n, layer).is_some_and(|f| f.phase == Phase::Done) {
                continue;
            }
            self.send_join(n, layer);
            self.after(
                nanos(TICK),
                Ev::Tick {
                    node: n,
                    epoch,
                    layer,
                },
            );
        }
    }

    /// SIGKILL: every session and request of the node ends; its pieces stay on disk.
    pub(crate) fn kill(&mut self, n: usize) {
        if !self.nodes.get(n).is_some_and(|x| x.alive) {
            return;
        }
        self.stats.kills += 1;
        let involved: Vec<usize> = (0..self.sessions.len())
            .filter(|&sid| {
                self.sessions
                    .get(sid)
                    .is_some_and(|s| s.open && (s.up == n || s.down == n))
            })
            .collect();
        if let Some(node) = self.nodes.get_mut(n) {
            node.alive = false;
            node.epoch += 1;
        }
        for sid in involved {
            let Some((up, down)) = self.sessions.get(sid).map(|s| (s.up, s.down)) else {
                continue;
            };
            self.end_session(sid);
            if up == n {
                let delay = self.topo.latency(up, down);
                self.after(delay, Ev::Ended(sid));
            }
        }
        let layers = self.nodes.get(n).map_or(0, |x| x.fetches.len());
        for layer in 0..layers {
            if let Some(conn) = self.fetch_mut(n, layer).and_then(|f| f.upstream_conn) {
                self.net.close(self.now, conn);
            }
        }
        self.tracker_node_died(n);
    }

    /// Asks the blob's tracker to join again (no tracker answered), and notes when.
    fn join(&mut self, n: usize, layer: usize) {
        let now = self.now;
        if let Some(f) = self.fetch_mut(n, layer) {
            f.join_sent = Some(now);
        }
        self.send_join(n, layer);
    }

    fn send_join(&mut self, n: usize, layer: usize) {
        let pieces = self.fetch(n, layer).map_or(0, |f| f.have.count_ones());
        let busy = self.busy(n);
        let msg = ToTracker::Join {
            fetching: false,
            rejoin: false,
            busy,
            pieces,
        };
        self.send_tracker(n, layer, msg);
    }

    /// Whether the node fetches a blob from the upstream now (the tracker's `busy`).
    pub fn busy(&self, n: usize) -> bool {
        self.nodes
            .get(n)
            .is_some_and(|x| x.fetches.iter().any(|f| f.upstream.is_some()))
    }

    /// Progress to the tracker, redials, the stall watch: every [`TICK`].
    pub(crate) fn tick(&mut self, n: usize, layer: usize) {
        let now = self.now;
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        if f.phase == Phase::Done {
            return;
        }
        let unanswered = f.member.is_none()
            && f.phase == Phase::Joining
            && f.join_sent.is_none_or(|at| now >= at + nanos(JOIN_RETRY));
        if unanswered {
            self.join(n, layer);
        }
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        let pieces = f.have.count_ones();
        if f.member.is_some() && (pieces != f.pieces_told || now >= f.told_at + nanos(KEEPALIVE)) {
            f.pieces_told = pieces;
            f.told_at = now;
            self.send_tracker(n, layer, ToTracker::Progress(pieces));
        }
        self.lookup(n, layer);
        self.connect(n, layer);
        self.check(n, layer);
        let epoch = self.epoch(n);
        self.after(
            nanos(TICK),
            Ev::Tick {
                node: n,
                epoch,
                layer,
            },
        );
    }

    /// The agent's look for holders the tracker missed, made by a node the tracker makes the
    /// fetcher (`holders_the_tracker_missed`): the first [`LOOKUP_RESULTS`] other nodes that
    /// serve the blob. In a pull that starts together nobody serves a blob before its fetcher
    /// does, so this finds no one; it matters after restarts.
    pub(crate) fn holders_for_fetcher(&self, n: usize, layer: usize) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&p| self.provides(p, n, layer))
            .take(LOOKUP_RESULTS)
            .collect()
    }

    /// Whether node `n` serves its blob of `layer` (`serves_partial`; complete ones always).
    pub(crate) fn serves(&self, n: usize, layer: usize) -> bool {
        self.fetch(n, layer)
            .is_some_and(|f| serves_partial(f.have.count_ones(), f.fetching))
    }

    /// Whether `peer`, alive, announces the blob node `n` pulls as `layer`: what a provider
    /// lookup of `n`'s finds.
    fn provides(&self, peer: usize, n: usize, layer: usize) -> bool {
        peer != n
            && self.nodes.get(peer).is_some_and(|p| p.alive)
            && self.blob_of(peer, layer) == self.blob_of(n, layer)
            && self.serves(peer, layer)
    }

    /// Kademlia's answer to a provider lookup, modelled: up to [`LOOKUP_RESULTS`] random
    /// nodes that serve the blob (they announce it once they hold a piece of it or fetch it,
    /// `serves_partial`).
    fn lookup(&mut self, n: usize, layer: usize) {
        let (now, max) = (self.now, self.s.max_peers);
        let due = self.fetch(n, layer).is_some_and(|f| {
            f.phase == Phase::Peers && now >= f.next_lookup && f.x.dial_room(max) > 0
        });
        if !due {
            return;
        }
        let found = self.providers_found(n, layer);
        if let Some(f) = self.fetch_mut(n, layer) {
            f.next_lookup = now + nanos(LOOKUP_INTERVAL);
            for peer in found {
                if !f.named.contains(&peer) {
                    f.named.push(peer);
                }
            }
        }
    }

    fn providers_found(&mut self, n: usize, layer: usize) -> Vec<usize> {
        let mut found = Vec::new();
        for _ in 0..LOOKUP_RESULTS * 3 {
            if found.len() >= LOOKUP_RESULTS {
                break;
            }
            let peer = self.rng.below(self.nodes.len());
            if self.provides(peer, n, layer) && !found.contains(&peer) {
                found.push(peer);
            }
        }
        found
    }

    /// The tracker handed node `n` the fetch: as the agent, it looks the blob's providers up
    /// at once and dials up to `HANDOVER_DIALS` of those it has no session with, room or not;
    /// the hand-over waits for their answers within `HANDOVER_LOOKUP` (`pollen_core::phase`).
    pub(crate) fn seek_holders(&mut self, n: usize, layer: usize) {
        let found = self.providers_found(n, layer);
        let now = self.now;
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        f.handover_until = now + nanos(HANDOVER_LOOKUP);
        let fresh: Vec<usize> = found
            .into_iter()
            .filter(|p| !f.sessions.contains_key(p))
            .take(HANDOVER_DIALS)
            .collect();
        for &peer in &fresh {
            if !f.named.contains(&peer) {
                f.named.push(peer);
            }
        }
        for peer in fresh {
            self.open_session(n, layer, peer);
        }
    }
}

impl Fetch {
    pub fn new(
        blob: usize,
        have: Bitfield,
        claims: Claims,
        stall: Duration,
        now: std::time::Instant,
    ) -> Fetch {
        Fetch {
            blob,
            phase: Phase::Joining,
            vouched: Bitfield::from_bytes(have.count(), vec![0; have.as_bytes().len()])
                .unwrap_or_default(),
            vouched_n: 0,
            have,
            x: Exchange::new(stall, now),
            fetching: false,
            claims,
            member: None,
            named: Vec::new(),
            near: BTreeSet::new(),
            sessions: BTreeMap::new(),
            retry: Default::default(),
            uploads: Vec::new(),
            shares: VecDeque::new(),
            upstream: None,
            upstream_conn: None,
            probing: false,
            awaiting_share: false,
            answer: None,
            fetch_duty: false,
            handover_until: 0,
            pieces_told: 0,
            join_sent: None,
            next_lookup: 0,
            redial_at: None,
            told_at: 0,
            stall_check: None,
            reveal_at: None,
            done_at: None,
            wait: None,
        }
    }

    /// After a restart: what was stored stays, everything in flight is gone.
    fn reset(&mut self, claims: Claims, stall: Duration, now: std::time::Instant, order: u64) {
        let count = self.have.count();
        let known = self.have.clone();
        let tie_break = (0..u64::from(count)).map(|i| mix(i ^ order)).collect();
        self.x = Exchange::new(stall, now);
        self.x.adopt(count, known, tie_break, now);
        // The blob is open from here (the pull's manifest gave its size, as in the agent);
        // it is served once `serves_partial` says so.
        self.fetching = false;
        self.claims = claims;
        self.member = None;
        self.sessions.clear();
        self.retry.clear();
        self.redial_at = None;
        self.uploads.clear();
        self.shares.clear();
        self.upstream = None;
        self.upstream_conn = None;
        self.probing = false;
        self.awaiting_share = false;
        self.answer = None;
        self.fetch_duty = false;
        self.handover_until = 0;
        self.join_sent = None;
        self.wait = None;
        if self.phase != Phase::Done {
            self.phase = Phase::Joining;
        }
    }
}

/// A 64-bit mix for each node's tie-break order of the pieces.
/// A node's key in `pollen_core::rack`, from its peer id as the agent's.
pub(crate) fn rack_key(n: usize) -> u64 {
    pollen_core::rack::key_of(&crate::world::peer_id(n))
}

fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
