//! A node's downloads: the agent's `PeerPhase` loop, carried out over simulated sessions with
//! pollen-core's `Exchange` deciding which piece to ask whom for, and the same hand-over rules
//! (the tracker's fetch duty, shares of a split fetch, the stall watch) sending it to the
//! registry.

use crate::net::Nanos;
use crate::topo::End;
use crate::wait::Wait;
use crate::world::{Ev, Fetch, Owner, Phase, Session, ToTracker, Why, World};
use pollen_core::download::{download_cap, BUSY_BUDGET, NODE_ACTIVE_PEERS};
use pollen_core::phase::{Facts, Step};
use pollen_core::retry::{Again, RETRY_AFTER};
use pollen_core::stall::stagger;
use pollen_proto::{Bitfield, TrackerReply};

impl World {
    pub(crate) fn on_tracker_reply(&mut self, n: usize, layer: usize, reply: TrackerReply) {
        let count = self.fetch(n, layer).map_or(0, |f| f.have.count());
        match reply {
            TrackerReply::Assign { fetch, peers } => {
                self.name(n, layer, &peers);
                // Made the fetcher, the agent first asks Kademlia for holders the tracker
                // missed, and downloads from them instead if there are any.
                let holders = match fetch {
                    true => self.holders_for_fetcher(n, layer),
                    false => Vec::new(),
                };
                if fetch && holders.is_empty() {
                    self.become_fetcher(n, layer);
                } else if fetch {
                    if let Some(f) = self.fetch_mut(n, layer) {
                        for p in holders {
                            if !f.named.contains(&p) {
                                f.named.push(p);
                            }
                        }
                    }
                    self.enter_peers(n, layer);
                } else if self
                    .fetch(n, layer)
                    .is_some_and(|f| f.phase == Phase::Joining)
                {
                    self.enter_peers(n, layer);
                }
            }
            TrackerReply::Peers { peers } => {
                self.name(n, layer, &peers);
                self.connect(n, layer);
            }
            TrackerReply::Near { peers } => self.mark_near(n, layer, &peers),
            TrackerReply::Fetch => {
                if let Some(f) = self.fetch_mut(n, layer) {
                    f.fetch_duty = true;
                }
                self.seek_holders(n, layer);
                self.check(n, layer);
            }
            TrackerReply::FetchRange { first, end, .. }
            | TrackerReply::FetchAlso { first, end, .. } => {
                let also = matches!(reply, TrackerReply::FetchAlso { .. });
                let Some(f) = self.fetch_mut(n, layer) else {
                    return;
                };
                if f.awaiting_share && !also {
                    f.awaiting_share = false;
                    f.answer = Some(first..end.min(count));
                    if !f.probing {
                        self.after_probe(n, layer);
                    }
                } else {
                    f.shares.push_back((first..end.min(count), also));
                    self.check(n, layer);
                }
            }
            _ => {}
        }
    }

    fn name(&mut self, n: usize, layer: usize, peers: &[Vec<u8>]) {
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        for p in peers {
            if let Some(peer) = crate::world::node_of(p).filter(|p| *p != n) {
                if !f.named.contains(&peer) {
                    f.named.push(peer);
                }
            }
        }
    }

    /// The tracker marked `peers` as sharing this node's rack: dialled now if the cap on far
    /// sessions held them back when they were named a moment before.
    fn mark_near(&mut self, n: usize, layer: usize, peers: &[Vec<u8>]) {
        let now = self.instant();
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        for peer in peers.iter().filter_map(|p| crate::world::node_of(p)) {
            f.near.insert(peer);
            f.x.rack.know(crate::life::rack_key(peer));
            if let Some(sid) = f.sessions.get(&peer) {
                f.x.mark_near(*sid, now);
            }
        }
        self.connect(n, layer);
    }

    pub(crate) fn enter_peers(&mut self, n: usize, layer: usize) {
        let now = self.instant();
        if let Some(f) = self.fetch_mut(n, layer) {
            f.phase = Phase::Peers;
            f.x.stall.restart(now);
        }
        self.connect(n, layer);
        self.check(n, layer);
    }

    /// Starts sessions with named peers not connected or retired, while there is room.
    pub(crate) fn connect(&mut self, n: usize, layer: usize) {
        let (now, max) = (self.instant(), self.s.max_peers);
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        if f.phase != Phase::Peers {
            return;
        }
        f.retry.expire(now);
        let candidates = f
            .named
            .iter()
            .filter(|p| !f.sessions.contains_key(p) && !f.retry.waits(p))
            .copied();
        let fresh = f.x.to_dial(max, candidates, |p| f.near.contains(p));
        for peer in fresh {
            self.open_session(n, layer, peer);
        }
        self.arm_redial(n, layer);
    }

    /// As the agent's download loop: with room for more peers, a peer that turned the
    /// download away is dialled again when its retry time comes, not at the next tick.
    fn arm_redial(&mut self, n: usize, layer: usize) {
        let (now, max, epoch) = (self.now, self.s.max_peers, self.epoch(n));
        let Some(next) = self.fetch(n, layer).and_then(|f| {
            (f.phase == Phase::Peers && f.x.dial_room(max) > 0)
                .then(|| f.retry.next())
                .flatten()
        }) else {
            return;
        };
        let at = self.to_nanos(next).max(now);
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        if f.redial_at.is_some_and(|r| r > now && r <= at) {
            return; // one is due before that
        }
        f.redial_at = Some(at);
        self.at(
            at,
            Ev::Redial {
                node: n,
                epoch,
                layer,
            },
        );
    }

    pub(crate) fn open_session(&mut self, n: usize, layer: usize, peer: usize) {
        let sid = self.sessions.len();
        let path = self.topo.path(End::Node(peer), n);
        let conn = self.open_conn(&path, Owner::Session(sid));
        let g = self.geometry(self.blob_of(n, layer));
        let near = self.fetch(n, layer).is_some_and(|f| f.near.contains(&peer));
        self.sessions.push(Session {
            up: peer,
            down: n,
            layer,
            conn,
            seat: 0,
            open: true,
            unchoked: false,
            waiting: false,
            announced: Bitfield::new(&g),
            hashes_sent: Bitfield::default(),
            hashes_n: 0,
            dirty: false,
            pending: Vec::new(),
            queued: 0,
            last_request: self.now,
            yield_check: None,
            granted_at: 0,
            holding: 0,
        });
        if let Some(f) = self.fetch_mut(n, layer) {
            f.sessions.insert(peer, sid);
            match near {
                true => f.x.add_near(sid),
                false => f.x.add(sid),
            }
            restagger(n, f);
        }
        let delay = self.topo.latency(n, peer);
        self.after(delay, Ev::Open(sid));
        // The agent's session says `Holding` right after `Interest`.
        let held = self.nodes.get(n).map_or(0, |x| x.told_holding);
        self.after(delay, Ev::Holding(sid, held));
    }

    /// The downloader's end of a session is gone: forget it, and dial the peer again later.
    fn drop_session(&mut self, sid: usize, again: Again) {
        let Some((up, down, layer)) = self.sessions.get(sid).map(|s| (s.up, s.down, s.layer))
        else {
            return;
        };
        let now = self.instant();
        let Some(f) = self.fetch_mut(down, layer) else {
            return;
        };
        if f.sessions.get(&up) != Some(&sid) {
            return;
        }
        f.sessions.remove(&up);
        f.x.remove(sid);
        f.retry.again(up, again, now);
        restagger(down, f);
        self.arm_redial(down, layer);
    }

    pub(crate) fn on_refused(&mut self, sid: usize, again: Again) {
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        s.open = false;
        self.drop_session(sid, again);
    }

    pub(crate) fn on_ended(&mut self, sid: usize) {
        let down = self.sessions.get(sid).map(|s| (s.down, s.layer));
        self.drop_session(sid, Again::After(RETRY_AFTER));
        if let Some((down, layer)) = down {
            self.check(down, layer);
        }
    }

    pub(crate) fn on_opened(&mut self, sid: usize, has: Bitfield) {
        let hashes = self.s.hashes;
        let Some((down, layer)) = self.open_download(sid) else {
            return;
        };
        let now = self.instant();
        let up = self.sessions.get(sid).map(|s| s.up);
        let Some(f) = self.fetch_mut(down, layer) else {
            return;
        };
        if !f.sessions.values().any(|s| *s == sid) {
            return;
        }
        if let Some(up) = up {
            f.retry.opened(&up);
        }
        crate::hashes::with_announcement(hashes, &mut f.x, has.iter_ones());
        let have = f.have.clone();
        f.x.opened(sid, has, &have, now);
        self.check(down, layer);
    }

    /// The downloading node and layer of a session still open.
    pub(crate) fn open_download(&self, sid: usize) -> Option<(usize, usize)> {
        self.sessions
            .get(sid)
            .filter(|s| s.open)
            .map(|s| (s.down, s.layer))
    }

    pub(crate) fn on_have_more(&mut self, sid: usize, pieces: Vec<u32>) {
        let hashes = self.s.hashes;
        let Some((down, layer)) = self.open_download(sid) else {
            return;
        };
        let now = self.instant();
        let Some(f) = self.fetch_mut(down, layer) else {
            return;
        };
        crate::hashes::with_announcement(hashes, &mut f.x, pieces.iter().copied());
        let new = pieces.iter().any(|&i| !f.have.get(i));
        let askable = f.x.have_more(sid, &pieces, &f.have, now);
        // News from a peer that keeps this node waiting asks nothing; it only moves where the
        // download's time goes when nothing was offered until now (`wait.rs`).
        let offered = new && f.wait.is_some_and(|(w, _)| w == Wait::NothingOffered);
        if askable || offered {
            self.fill(down, layer);
        }
    }

    /// News of pieces the downloader already holds changes no decision: a request round asks
    /// only for missing pieces, and the stall watch, the rack rule and the wait classification
    /// look only at those. So it is counted into the download's view of the peer when sent,
    /// not as an event one latency later (a quarter of a big run's events, and the output is
    /// the same byte for byte). Returns the pieces still to deliver.
    pub(crate) fn heard_at_once(
        &mut self,
        sid: usize,
        down: usize,
        layer: usize,
        pieces: Vec<u32>,
    ) -> Vec<u32> {
        let now = self.instant();
        let Some(f) = self
            .fetch_mut(down, layer)
            .filter(|f| pieces.iter().any(|&i| f.have.get(i)))
        else {
            return pieces; // nothing held: no lists to split
        };
        let (held, rest): (Vec<u32>, Vec<u32>) = pieces.into_iter().partition(|&i| f.have.get(i));
        if !held.is_empty() {
            let askable = f.x.have_more(sid, &held, &f.have, now);
            debug_assert!(!askable, "news of held pieces asks nothing");
        }
        rest
    }

    pub(crate) fn on_choke(&mut self, sid: usize, choked: bool) {
        let Some((down, layer, open)) = self.sessions.get(sid).map(|s| (s.down, s.layer, s.open))
        else {
            return;
        };
        if let Some(f) = self.fetch_mut(down, layer).filter(|_| open) {
            // `Choked` drops every request outstanding on the session, also those sent after
            // the uploader chose to choke (the agent's session hands them all back).
            let dropped = match choked {
                true => f.x.requested_from(sid),
                false => Vec::new(),
            };
            f.x.choked(sid, choked, &dropped);
        }
        self.fill(down, layer);
    }

    /// A piece arrived over a session.
    pub(crate) fn piece_from_peer(&mut self, sid: usize, piece: u32) {
        let Some((up, down, layer)) = self.sessions.get(sid).map(|s| (s.up, s.down, s.layer))
        else {
            return;
        };
        let len = u64::from(
            self.geometry(self.blob_of(down, layer))
                .len_of(piece)
                .unwrap_or(0),
        );
        self.uploaded(sid, piece, len);
        let now = self.now;
        if let Some(node) = self.nodes.get_mut(down) {
            node.received += len;
            // Bytes after the first piece: what crossed the link between the first and the last.
            let (bytes, span) = &mut node.from_peers;
            match span {
                Some((_, last)) => {
                    *bytes += len;
                    *last = now;
                }
                None => *span = Some((now, now)),
            }
        }
        let Some(f) = self.fetch_mut(down, layer) else {
            return;
        };
        let have = f.have.clone();
        let (cancels, fresh) = f.x.received(sid, piece, len, &have);
        for other in cancels {
            if let Some(o) = self.sessions.get(other).map(|s| s.up) {
                let delay = self.topo.latency(down, o);
                self.after(delay, Ev::Cancel(other, piece));
            }
        }
        let _ = up;
        if fresh {
            self.store(down, layer, piece, true);
        } else {
            self.fill(down, layer);
        }
    }

    /// A verified piece lands: peers hear of it, the download goes on or completes.
    pub(crate) fn store(&mut self, n: usize, layer: usize, piece: u32, from_peer: bool) {
        let now = self.instant();
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        if !f.have.set(piece).unwrap_or(false) {
            return;
        }
        let _ = f.x.known.set(piece);
        if from_peer {
            f.claims.received(piece);
        }
        f.x.written(piece, true, now);
        let complete = f.have.is_complete();
        if !from_peer {
            self.vouch(n, layer, Some(&[piece]));
        }
        self.announce(n, layer, piece);
        if complete {
            self.finish(n, layer);
        } else {
            self.check(n, layer);
        }
    }

    fn finish(&mut self, n: usize, layer: usize) {
        let at = self.now;
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        if f.phase == Phase::Done {
            return;
        }
        let ended = f.wait.take();
        self.count_wait(ended, at);
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        f.phase = Phase::Done;
        let sessions: Vec<usize> = f.sessions.values().copied().collect();
        f.sessions.clear();
        f.x.clear();
        self.vouch(n, layer, None);
        self.tell_holding(n);
        self.send_tracker(n, layer, ToTracker::Leave(true));
        if let Some(f) = self.fetch_mut(n, layer) {
            f.member = None;
        }
        for sid in sessions {
            if let Some(up) = self.sessions.get(sid).map(|s| s.up) {
                let delay = self.topo.latency(n, up);
                self.after(delay, Ev::Close(sid));
            }
        }
        let now = self.now;
        if let Some(node) = self.nodes.get_mut(n) {
            if node.done_at.is_none() && node.fetches.iter().all(|f| f.phase == Phase::Done) {
                node.done_at = Some(now);
                self.done += 1;
            }
        }
    }

    /// The peer phase's rules, after anything that may change them (`PeerPhase::run`).
    pub(crate) fn check(&mut self, n: usize, layer: usize) {
        let (now, now_ns) = (self.instant(), self.now);
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        if f.phase != Phase::Peers {
            return;
        }
        // Every simulated download has a tracker, and a session that fails to open is not
        // modelled: never alone, nothing to retry.
        // A modelled lookup answers at once: only the sessions it opened are waited for.
        let facts = Facts {
            mine: Some(&f.have),
            fetching_share: f.upstream.is_some(),
            fetch_duty: f.fetch_duty,
            coordinated: true,
            retry_soon: false,
            handover_window: now_ns < f.handover_until,
            looking_up: false,
        };
        let shares = f.shares.iter().map(|(r, also)| (r, *also));
        match f.x.next_step(facts, shares, now) {
            Step::HandOver => {
                f.fetch_duty = false;
                return self.fall_back(n, layer, Why::HandedOn);
            }
            Step::StartShare(i) => {
                if let Some((range, _)) = f.shares.remove(i) {
                    let missing: Vec<u32> = range.filter(|i| !f.have.get(*i)).collect();
                    if !missing.is_empty() {
                        self.start_upstream(n, layer, Why::Share, missing);
                    }
                }
            }
            Step::Stalled | Step::NobodyLeft => return self.fall_back(n, layer, Why::Stalled),
            Step::Complete | Step::RetrySoon | Step::Continue => {}
        }
        self.fill(n, layer);
    }

    /// Hands the rest of the blob to the upstream (the peer phase's `Fallback`).
    fn fall_back(&mut self, n: usize, layer: usize, why: Why) {
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        let sessions: Vec<usize> = f.sessions.values().copied().collect();
        f.sessions.clear();
        f.x.clear();
        f.phase = Phase::Upstream;
        let missing: Vec<u32> = f.have.iter_missing().collect();
        for sid in sessions {
            if let Some(up) = self.sessions.get(sid).map(|s| s.up) {
                let delay = self.topo.latency(n, up);
                self.after(delay, Ev::Close(sid));
            }
        }
        self.tell_holding(n);
        self.start_upstream(n, layer, why, missing);
    }

    /// The slots node `n` holds (over its downloads), told to the uploaders of all its sessions
    /// when it changed, as the agent's peer tasks do (a holder's uploader places it by that
    /// count when it yields its slot).
    pub(crate) fn tell_holding(&mut self, n: usize) {
        let Some(node) = self.nodes.get(n) else {
            return;
        };
        let held: usize = node.fetches.iter().map(|f| f.x.unchoked_peers()).sum();
        let held = u32::try_from(held).unwrap_or(u32::MAX);
        if held == node.told_holding {
            return;
        }
        let sids: Vec<usize> = node
            .fetches
            .iter()
            .flat_map(|f| f.sessions.values().copied())
            .collect();
        if let Some(node) = self.nodes.get_mut(n) {
            node.told_holding = held;
        }
        for sid in sids {
            if let Some(up) = self.sessions.get(sid).map(|s| s.up) {
                let delay = self.topo.latency(n, up);
                self.after(delay, Ev::Holding(sid, held));
            }
        }
    }

    /// Sends the requests the exchange decides on.
    pub(crate) fn fill(&mut self, n: usize, layer: usize) {
        self.tell_holding(n);
        let (now, timeout) = (self.instant(), self.s.request_timeout);
        let piece_len = u64::from(self.geometry(self.blob_of(n, layer)).piece_size());
        let at = self.now;
        // The agent's downloads share these limits (node-wide): fewer pieces in flight while
        // the node fetches from the upstream, and at most NODE_ACTIVE_PEERS peers asked.
        let busy = self.busy(n);
        let others: usize = self.nodes.get(n).map_or(0, |nd| {
            nd.fetches
                .iter()
                .enumerate()
                .filter(|(l, _)| *l != layer)
                .map(|(_, f)| f.x.active_peers())
                .sum()
        });
        let max_active = NODE_ACTIVE_PEERS.saturating_sub(others).max(1);
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        if f.phase != Phase::Peers {
            let ended = f.wait.take();
            self.count_wait(ended, at);
            return;
        }
        // Pieces coming from the upstream count as done (a copy only while there are some).
        let upstream_done = f
            .upstream
            .as_ref()
            .filter(|(p, _)| !p.is_empty())
            .map(|(p, _)| {
                let mut done = f.have.clone();
                for &i in p {
                    let _ = done.set(i);
                }
                done
            });
        let done = upstream_done.as_ref().unwrap_or(&f.have);
        let budget = match busy {
            true => BUSY_BUDGET.min(download_cap(piece_len)),
            false => download_cap(piece_len),
        };
        let requests =
            f.x.fill_within(done, piece_len, timeout, now, budget, max_active);
        let ended = f.wait.replace((Wait::of(&f.x, done), at));
        self.count_wait(ended, at);
        for (sid, piece) in requests {
            if let Some(up) = self.sessions.get(sid).map(|s| s.up) {
                let delay = self.topo.latency(n, up);
                self.after(delay, Ev::Request(sid, piece));
            }
        }
    }
}

impl World {
    /// Adds the time a download spent in the state that just ended.
    fn count_wait(&mut self, ended: Option<(Wait, Nanos)>, at: Nanos) {
        if let Some((state, since)) = ended {
            self.stats.waits.add(state, at.saturating_sub(since));
        }
    }
}

/// The stall watch's stagger among node `n` and its session peers, as the agent's
/// (`pollen_core::stall::stagger`, node indices for peer ids).
fn restagger(n: usize, f: &mut Fetch) {
    let id = |i: usize| (i as u64).to_le_bytes();
    let peers: Vec<[u8; 8]> = f.sessions.keys().map(|&p| id(p)).collect();
    let blob = id(f.blob);
    let defer = stagger(&id(n), peers.iter().map(|p| p.as_slice()), &blob);
    f.x.stall.set_defer(defer);
}
