//! One blob's download from peers, as the decisions see it: which peers hold what, which
//! pieces are requested from whom, and what to ask next. The agent's `PeerPhase` feeds it the
//! sessions' events and sends the requests and cancels it returns; the simulator feeds it
//! simulated ones. Sessions, the blob's writer and the tracker stay with the caller.

use crate::picker::{pick, PickState};
use crate::rack::Rack;
use crate::stall::StallWatch;
use pollen_proto::Bitfield;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Range;
use std::time::{Duration, Instant};

/// Most piece requests kept outstanding per peer: enough to keep a fast link busy while each
/// piece is verified and written. A peer gets as many as it delivers in [`PIPELINE_SECONDS`]
/// (at least one), so a busy or slow peer — the fetcher everyone asks at first — does not
/// hold pieces hostage that other peers will soon have (docs/tracker.md).
pub const REQUESTS_PER_PEER: usize = 4;
/// Most piece bytes requested ahead per peer: the pieces in flight are buffered in memory, and
/// an overridden piece size can be up to 64 MiB, so the count alone could hold 256 MiB in
/// flight per peer.
pub const PIPELINE_BYTES: u64 = 16 << 20;
/// Most piece bytes a download holds in flight over all its peers: requested and not yet
/// received, or received and not yet written. Each is a buffer in memory, so without this a
/// node downloading from many peers at once would hold [`PIPELINE_BYTES`] for each. 48 MiB is
/// 3 peers at full pipeline, and covers a 4 ms round trip at 100 Gbit/s.
pub const DOWNLOAD_BYTES: u64 = 48 << 20;
/// How much of a peer's measured rate is kept requested ahead.
pub const PIPELINE_SECONDS: f64 = 1.0;
/// Pieces a node keeps in flight from peers (per download) while it fetches from the
/// upstream. The upstream response shares the node's download link with its peer sessions,
/// and with a full pipeline from eight peers it got a ninth of it: at 600 nodes pulling 3 GB
/// at 300 MB/s the registry sent at 30-50 % of its 10 Gbit/s for 7 s instead of 2.5 s, and
/// half the blob's pieces existed at one or two nodes until 6 s (pollen-sim). One piece keeps
/// the sessions warm (an idle holder loses its slot) without starving the upstream.
pub const BUSY_BUDGET: usize = 1;
/// Peers a node asks at once over all its downloads. Sessions beyond it get no requests, go
/// idle and yield their upload slots to waiting sessions: a node downloading two blobs could
/// hold 16 slots while the cluster has 8 per node, so early nodes took 280 MB/s and the rest
/// waited in queues at 180 MB/s for the whole pull (pollen-sim, 600 nodes: p99 16.9 s with the
/// two rules above, 15.6 s with this one at 6; 4 was too few, 8-12 barely helped).
pub const NODE_ACTIVE_PEERS: usize = 6;

/// Sessions a download keeps at most, per peer it may have serving it (`max_peers_per_blob`):
/// the rest wait choked in uploaders' queues. With twice as many, a download's sessions were
/// all taken (8 serving, 8 waiting) when a layer finished across the cluster half-way through
/// a pull: the nodes that had served that layer lost their sessions, and with no room left
/// nobody dialled them for the other layer. A quarter of the uploaders stood idle for the
/// second half of the pull while most downloads ran below 75 % of their link (pollen-sim,
/// Kraken's set-up, 2,600 nodes: p99 14.9 s; three times: 14.0 s, four: 14.0 s).
pub const SESSIONS_PER_SERVING: usize = 3;

/// One peer's session in the download.
#[derive(Debug, Default)]
pub struct Peer {
    /// Its pieces, once its session opened.
    pub has: Option<Bitfield>,
    pub unchoked: bool,
    /// Shares this node's rack ([`Rack`]).
    pub near: bool,
    pub outstanding: usize,
    /// Piece bytes this peer delivered, since its first request.
    pub delivered: u64,
    pub first_request: Option<Instant>,
}

impl Peer {
    /// Requests to keep outstanding: what the peer delivers in [`PIPELINE_SECONDS`].
    pub fn pipeline(&self, piece_len: u64, now: Instant) -> usize {
        let Some(since) = self.first_request else {
            return 1;
        };
        let secs = now.saturating_duration_since(since).as_secs_f64().max(0.05);
        let ahead = self.delivered as f64 / secs * PIPELINE_SECONDS / piece_len.max(1) as f64;
        (ahead.ceil() as usize).clamp(1, pipeline_cap(piece_len))
    }
}

/// Most requests outstanding per peer for pieces of `piece_len` bytes: [`REQUESTS_PER_PEER`],
/// fewer where that many would hold more than [`PIPELINE_BYTES`], never none.
pub fn pipeline_cap(piece_len: u64) -> usize {
    pieces_within(PIPELINE_BYTES, piece_len).clamp(1, REQUESTS_PER_PEER)
}

/// Most pieces of `piece_len` bytes a download keeps in flight over all its peers (see
/// [`DOWNLOAD_BYTES`]), never fewer than one peer's full pipeline.
pub fn download_cap(piece_len: u64) -> usize {
    pieces_within(DOWNLOAD_BYTES, piece_len).max(pipeline_cap(piece_len))
}

/// Whole pieces of `piece_len` bytes within `bytes`.
fn pieces_within(bytes: u64, piece_len: u64) -> usize {
    usize::try_from(bytes / piece_len.max(1)).unwrap_or(usize::MAX)
}

/// Whether `has` holds a piece this node lacks and no peer in sight held: the swarm moved on.
pub fn brings_new(availability: &[u16], has: &Bitfield, mine: &Bitfield) -> bool {
    has.iter_ones()
        .any(|i| !mine.get(i) && availability.get(i as usize) == Some(&0))
}

/// Adds (`delta` 1) or removes (-1) a peer's pieces from the availability counts.
pub fn count(availability: &mut [u16], has: &Bitfield, delta: i32) {
    for i in has.iter_ones() {
        if let Some(a) = availability.get_mut(i as usize) {
            *a = if delta > 0 {
                a.saturating_add(1)
            } else {
                a.saturating_sub(1)
            };
        }
    }
}

/// The peers of one blob's download and the requests made of them.
pub struct Exchange {
    /// By slot (the caller's handle for a session); ordered, so turns are deterministic.
    pub peers: BTreeMap<usize, Peer>,
    /// Outstanding requests by piece: which slot, since when.
    pub requests: HashMap<u32, Vec<(usize, Instant)>>,
    /// Pieces received and handed to the writer, not yet stored.
    pub writing: BTreeSet<u32>,
    /// Which peer is offered the download's budget of requests first, turn by turn, so that
    /// with the budget spent the first peers in order do not keep it.
    first_turn: usize,
    /// How many connected peers have each piece.
    pub availability: Vec<u16>,
    /// This node's random order of the pieces (the picker's tie-break).
    pub tie_break: Vec<u64>,
    /// Pieces whose hash is known: only those are requested (they can be checked).
    pub known: Bitfield,
    /// Whether the peers have stalled (the fall-back to the upstream).
    pub stall: StallWatch,
    /// Which pieces far peers may be asked for.
    pub rack: Rack,
    /// Peers with `unchoked` set: the count the node tells its uploaders after every request
    /// round, kept here rather than counted each time (the simulator's busiest path).
    unchoked: usize,
}

impl Exchange {
    pub fn new(peer_stall: Duration, now: Instant) -> Exchange {
        Exchange {
            peers: BTreeMap::new(),
            requests: HashMap::new(),
            writing: BTreeSet::new(),
            first_turn: 0,
            availability: Vec::new(),
            tie_break: Vec::new(),
            known: Bitfield::default(),
            stall: StallWatch::new(peer_stall, now),
            rack: Rack::default(),
            unchoked: 0,
        }
    }

    /// The blob's geometry is known: counts start (peers already open are counted).
    pub fn adopt(&mut self, count_pieces: u32, known: Bitfield, tie_break: Vec<u64>, now: Instant) {
        self.known = known;
        self.availability = vec![0; count_pieces as usize];
        self.tie_break = tie_break;
        self.rack.adopt(count_pieces);
        for peer in self.peers.values() {
            if let Some(has) = &peer.has {
                count(&mut self.availability, has, 1);
                self.rack.counted(peer.near, has.iter_ones(), now);
            }
        }
    }

    /// A session was started (not open yet).
    pub fn add(&mut self, slot: usize) {
        self.insert_peer(slot, Peer::default());
    }

    fn insert_peer(&mut self, slot: usize, peer: Peer) {
        if self
            .peers
            .insert(slot, peer)
            .is_some_and(|old| old.unchoked)
        {
            self.unchoked = self.unchoked.saturating_sub(1);
        }
    }

    /// A session was started with a peer that shares this node's rack.
    pub fn add_near(&mut self, slot: usize) {
        let near = Peer {
            near: true,
            ..Peer::default()
        };
        self.insert_peer(slot, near);
    }

    /// The tracker marked a session's peer as near (`TrackerReply::Near`), perhaps after it
    /// opened.
    pub fn mark_near(&mut self, slot: usize, now: Instant) {
        let Some(peer) = self.peers.get_mut(&slot).filter(|p| !p.near) else {
            return;
        };
        peer.near = true;
        if let Some(has) = &peer.has {
            self.rack.counted(true, has.iter_ones(), now);
        }
    }

    /// A session ended: its pieces and requests are forgotten.
    pub fn remove(&mut self, slot: usize) -> bool {
        let Some(peer) = self.peers.remove(&slot) else {
            return false;
        };
        if peer.unchoked {
            self.unchoked = self.unchoked.saturating_sub(1);
        }
        if let Some(has) = &peer.has {
            count(&mut self.availability, has, -1);
            self.rack.uncounted(peer.near, has);
        }
        self.requests.retain(|_, reqs| {
            reqs.retain(|(s, _)| *s != slot);
            !reqs.is_empty()
        });
        true
    }

    /// How many more peers to dial with at most `max` serving this download: sessions that
    /// wait choked for an upload slot do not count (they serve nothing until unchoked), up to
    /// [`SESSIONS_PER_SERVING`] times `max` sessions in all. Counted whole, a node whose
    /// sessions all waited in busy uploaders' queues dialled nobody else, while peers with
    /// free slots and the pieces it needed were never asked (pollen-sim, 600 nodes: p99 21.5 s
    /// against 20.0 s).
    pub fn dial_room(&self, max: usize) -> usize {
        let serving = self
            .peers
            .values()
            .filter(|p| p.unchoked || p.has.is_none())
            .count();
        let all = self.peers.len();
        max.saturating_sub(serving)
            .min(max.saturating_mul(SESSIONS_PER_SERVING).saturating_sub(all))
    }

    /// Which of `fresh` (peers not in session, best first) to dial with at most `max` serving:
    /// [`Exchange::dial_room`] of them, and of those outside the rack (`near` false) at most
    /// [`Exchange::far_room`].
    pub fn to_dial<P>(
        &self,
        max: usize,
        fresh: impl IntoIterator<Item = P>,
        near: impl Fn(&P) -> bool,
    ) -> Vec<P> {
        let mut far_room = self.far_room();
        fresh
            .into_iter()
            .filter(|p| match near(p) {
                true => true,
                false if far_room == 0 => false,
                false => {
                    far_room -= 1;
                    true
                }
            })
            .take(self.dial_room(max))
            .collect()
    }

    /// How many more far peers to dial: [`crate::rack::FAR_SESSIONS`] under the rack rule
    /// once a rack-mate is known, any number before or without it.
    pub fn far_room(&self) -> usize {
        if !self.rack.enabled() || !self.rack.knows_near() {
            return usize::MAX;
        }
        let far = self.peers.values().filter(|p| !p.near).count();
        crate::rack::FAR_SESSIONS.saturating_sub(far)
    }

    /// Every session ends at once (the download hands over to the upstream).
    pub fn clear(&mut self) {
        self.peers.clear();
        self.unchoked = 0;
        self.requests.clear();
        self.availability.iter_mut().for_each(|a| *a = 0);
        self.rack.clear();
    }

    /// A peer's session opened with its pieces (`mine`: this node's).
    pub fn opened(&mut self, slot: usize, has: Bitfield, mine: &Bitfield, now: Instant) {
        if brings_new(&self.availability, &has, mine) {
            self.stall.announced(now);
        }
        count(&mut self.availability, &has, 1);
        if let Some(peer) = self.peers.get_mut(&slot) {
            self.rack.counted(peer.near, has.iter_ones(), now);
            peer.has = Some(has);
        }
    }

    /// A peer announced more pieces. Returns whether a request round may now ask it for one:
    /// it gave this node a slot and announced a piece this node lacks. A driver that runs
    /// rounds only when something changed skips the round otherwise (the simulator: most news
    /// comes from peers that keep this node waiting, and a round cannot ask those).
    pub fn have_more(
        &mut self,
        slot: usize,
        pieces: &[u32],
        mine: &Bitfield,
        now: Instant,
    ) -> bool {
        let Some((near, unchoked, has)) = self
            .peers
            .get_mut(&slot)
            .and_then(|p| Some((p.near, p.unchoked, p.has.as_mut()?)))
        else {
            return false;
        };
        let mut fresh = false;
        let mut askable = false;
        for &i in pieces {
            askable |= unchoked && !mine.get(i);
            if has.set(i).unwrap_or(false) {
                self.rack.counted(near, std::iter::once(i), now);
                if let Some(a) = self.availability.get_mut(i as usize) {
                    fresh |= *a == 0 && !mine.get(i);
                    *a = a.saturating_add(1);
                }
            }
        }
        if fresh {
            self.stall.announced(now);
        }
        askable
    }

    /// A peer replaced its whole bitfield (`None`: of another geometry, not counted).
    pub fn have(&mut self, slot: usize, has: Option<Bitfield>, mine: &Bitfield, now: Instant) {
        // Checked before this peer's old pieces are taken out of the counts: only pieces
        // nobody held count as the swarm moving on.
        if has
            .as_ref()
            .is_some_and(|h| brings_new(&self.availability, h, mine))
        {
            self.stall.announced(now);
        }
        let near = self.peers.get(&slot).is_some_and(|p| p.near);
        if let Some(old) = self.peers.get_mut(&slot).and_then(|p| p.has.take()) {
            count(&mut self.availability, &old, -1);
            self.rack.uncounted(near, &old);
        }
        if let Some(has) = has {
            count(&mut self.availability, &has, 1);
            if let Some(peer) = self.peers.get_mut(&slot) {
                self.rack.counted(near, has.iter_ones(), now);
                peer.has = Some(has);
            }
        }
    }

    /// The peer choked this node (`dropped`: the requests it will not serve) or unchoked it.
    pub fn choked(&mut self, slot: usize, choked: bool, dropped: &[u32]) {
        for &index in dropped {
            self.forget_request(index, slot);
        }
        if let Some(peer) = self.peers.get_mut(&slot) {
            match (peer.unchoked, choked) {
                (false, false) => self.unchoked = self.unchoked.saturating_add(1),
                (true, true) => self.unchoked = self.unchoked.saturating_sub(1),
                _ => {}
            }
            peer.unchoked = !choked;
        }
    }

    /// The pieces requested from `slot` and not yet received (a `Choked` drops them all).
    pub fn requested_from(&self, slot: usize) -> Vec<u32> {
        self.requests
            .iter()
            .filter(|(_, asked)| asked.iter().any(|(s, _)| *s == slot))
            .map(|(index, _)| *index)
            .collect()
    }

    /// A piece arrived from `slot`: returns the other requests for it to cancel, and whether
    /// the piece is new (to hand to the writer; `mine`: pieces stored).
    pub fn received(
        &mut self,
        slot: usize,
        index: u32,
        len: u64,
        mine: &Bitfield,
    ) -> (Vec<usize>, bool) {
        if let Some(peer) = self.peers.get_mut(&slot) {
            peer.delivered = peer.delivered.saturating_add(len);
        }
        self.forget_request(index, slot);
        let mut cancels = Vec::new();
        for (other, _) in self.requests.remove(&index).unwrap_or_default() {
            if let Some(o) = self.peers.get_mut(&other) {
                o.outstanding = o.outstanding.saturating_sub(1);
                cancels.push(other);
            }
        }
        let fresh = !mine.get(index) && self.writing.insert(index);
        (cancels, fresh)
    }

    /// The writer stored (or refused) a piece handed to it.
    pub fn written(&mut self, index: u32, stored: bool, now: Instant) {
        self.writing.remove(&index);
        if stored {
            self.stall.stored(now);
        }
    }

    /// The requests to send now: every unchoked peer's pipeline filled, within the download's
    /// budget of pieces in flight. `done`: pieces stored, or not to ask peers for (a share
    /// this node fetches from the upstream). The caller sends each as `(slot, piece)`, and
    /// calls [`Exchange::forget_request`] for one it could not send.
    pub fn fill(
        &mut self,
        done: &Bitfield,
        piece_len: u64,
        request_timeout: Duration,
        now: Instant,
    ) -> Vec<(usize, u32)> {
        self.fill_within(
            done,
            piece_len,
            request_timeout,
            now,
            download_cap(piece_len),
            usize::MAX,
        )
    }

    /// Peers that gave this download an upload slot: summed over its downloads, what the
    /// node tells the uploaders of its sessions (`upload::Slots::holding`).
    pub fn unchoked_peers(&self) -> usize {
        debug_assert_eq!(
            self.unchoked,
            self.peers.values().filter(|p| p.unchoked).count()
        );
        self.unchoked
    }

    /// Peers with requests outstanding.
    pub fn active_peers(&self) -> usize {
        self.peers.values().filter(|p| p.outstanding > 0).count()
    }

    /// [`Exchange::fill`] with at most `budget` pieces in flight ([`BUSY_BUDGET`] while the
    /// node fetches from the upstream) and requests to at most `max_active` peers at once
    /// (what [`NODE_ACTIVE_PEERS`] leaves after the node's other downloads).
    pub fn fill_within(
        &mut self,
        done: &Bitfield,
        piece_len: u64,
        request_timeout: Duration,
        now: Instant,
        budget: usize,
        max_active: usize,
    ) -> Vec<(usize, u32)> {
        let mut active = self.active_peers();
        let mut in_flight = self
            .peers
            .values()
            .map(|p| p.outstanding)
            .sum::<usize>()
            .saturating_add(self.writing.len());
        if !self.peers.is_empty() {
            self.first_turn = self.first_turn.wrapping_add(1);
        }
        // Most calls come from news of one peer's pieces while every peer is choked, at its
        // pipeline or the budget is spent: answer those before copying the bitfields (the
        // simulator calls this millions of times). `active` only grows below, so a peer left
        // out here would be left out there.
        let can_ask = |p: &Peer| {
            p.has.is_some()
                && p.unchoked
                && p.outstanding < p.pipeline(piece_len, now)
                && (p.outstanding > 0 || active < max_active)
        };
        if in_flight >= budget || !self.peers.values().any(can_ask) {
            return Vec::new();
        }
        let mut slots: Vec<usize> = self.peers.keys().copied().collect();
        if !slots.is_empty() {
            let turn = self.first_turn % slots.len();
            slots.rotate_left(turn);
        }
        let mut done = done.clone();
        for &i in &self.writing {
            let _ = done.set(i);
        }
        let open = self.peers.values().filter(|p| p.has.is_some()).count();
        let mut requested =
            Bitfield::from_bytes(done.count(), vec![0; done.as_bytes().len()]).unwrap_or_default();
        for &i in self.requests.keys() {
            let _ = requested.set(i);
        }
        // What far peers may be asked for, worked out the first time one can be asked.
        let mut far_allowed: Option<Option<Bitfield>> = None;
        let mut sent = Vec::new();
        for slot in slots {
            while let Some(peer) = self.peers.get(&slot) {
                let Some(has) = peer.has.as_ref().filter(|_| peer.unchoked) else {
                    break;
                };
                if in_flight >= budget || peer.outstanding >= peer.pipeline(piece_len, now) {
                    break;
                }
                if peer.outstanding == 0 && active >= max_active {
                    break;
                }
                let state = PickState {
                    done: &done,
                    known: &self.known,
                    requests: &self.requests,
                    requested: &requested,
                    allowed: match peer.near {
                        true => None,
                        false => far_allowed
                            .get_or_insert_with(|| self.rack.far_allowed(now))
                            .as_ref(),
                    },
                    availability: &self.availability,
                    tie_break: &self.tie_break,
                    peers: open,
                    request_timeout,
                    now,
                };
                let Some(index) = pick(&state, slot, has) else {
                    break;
                };
                self.requests.entry(index).or_default().push((slot, now));
                let _ = requested.set(index);
                in_flight = in_flight.saturating_add(1);
                if let Some(peer) = self.peers.get_mut(&slot) {
                    if peer.outstanding == 0 {
                        active += 1;
                    }
                    peer.outstanding += 1;
                    peer.first_request.get_or_insert(now);
                }
                sent.push((slot, index));
            }
            if in_flight >= budget {
                break;
            }
        }
        sent
    }

    /// Whether peers can still supply a missing piece (of `only`, if given; `mine`: pieces
    /// stored): one is requested or being written, or a connected peer announced one whose
    /// hash is known.
    pub fn can_help(&self, mine: &Bitfield, only: Option<&Range<u32>>) -> bool {
        let within = |i: &u32| only.is_none_or(|r| r.contains(i));
        self.requests.keys().any(within)
            || self.writing.iter().any(within)
            || mine.iter_missing().filter(within).any(|i| {
                self.availability.get(i as usize).is_some_and(|a| *a > 0) && self.known.get(i)
            })
    }

    /// A request is no longer outstanding (answered, refused, or never sent).
    pub fn forget_request(&mut self, index: u32, slot: usize) {
        if let Some(reqs) = self.requests.get_mut(&index) {
            let before = reqs.len();
            reqs.retain(|(s, _)| *s != slot);
            if reqs.len() < before {
                if let Some(peer) = self.peers.get_mut(&slot) {
                    peer.outstanding = peer.outstanding.saturating_sub(1);
                }
            }
            if reqs.is_empty() {
                self.requests.remove(&index);
            }
        }
    }
}

#[cfg(test)]
#[path = "download_tests.rs"]
mod tests;
