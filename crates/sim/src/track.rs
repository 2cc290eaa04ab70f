//! The trackers: every node may host some blobs' trackers (the agent's default), each a
//! pollen-core `Swarms`; a blob's tracker is the live node rendezvous hashing ranks first
//! when someone first asks, and moves to the next when that node dies. Messages to and from
//! a tracker take the one-way latency between the two nodes and no bandwidth.

use crate::alloc::measure;
use crate::world::{nanos, Ev, Host, Phase, ToTracker, World};
use pollen_core::tracker::{Member, Push, Sized, Swarms, FETCH_DEFER, REJOIN_GRACE, SPLIT_WAIT};
use pollen_proto::TrackerReply;
use std::collections::BTreeMap;

impl World {
    /// The node hosting `blob`'s tracker, chosen now if none (or a dead one) has it.
    pub fn tracker_of(&mut self, blob: usize) -> Option<usize> {
        let current = self.blobs.get(blob).and_then(|b| b.tracker);
        if let Some(host) = current.filter(|h| self.nodes.get(*h).is_some_and(|n| n.alive)) {
            return Some(host);
        }
        let digest = self.blobs.get(blob)?.digest;
        let key = u64::from_be_bytes(digest.as_bytes().get(..8)?.try_into().ok()?);
        let hosts = self.s.trackers.unwrap_or(self.nodes.len());
        let host = (0..hosts)
            .filter(|n| self.nodes.get(*n).is_some_and(|x| x.alive))
            .max_by_key(|n| mix(key ^ (*n as u64)))?;
        if let Some(b) = self.blobs.get_mut(blob) {
            b.tracker = Some(host);
        }
        Some(host)
    }

    /// Sends `msg` from a node's download of `layer` to the blob's tracker.
    pub fn send_tracker(&mut self, node: usize, layer: usize, msg: ToTracker) {
        let blob = self.blob_of(node, layer);
        let host = match (&msg, self.fetch(node, layer).and_then(|f| f.member)) {
            (ToTracker::Join { .. }, _) | (_, None) => self.tracker_of(blob),
            (_, Some((host, _))) => Some(host),
        };
        let Some(host) = host else {
            return;
        };
        let delay = self.topo.latency(node, host);
        let ev = Ev::AtTracker {
            host,
            host_epoch: self.epoch(host),
            node,
            epoch: self.epoch(node),
            layer,
            msg: Box::new(msg),
        };
        self.after(delay, ev);
    }

    pub(crate) fn at_tracker(
        &mut self,
        host: usize,
        node: usize,
        epoch: u32,
        layer: usize,
        msg: ToTracker,
    ) {
        self.stats.tracker_msgs += 1;
        let blob = self.blob_of(node, layer);
        let Some(digest) = self.blobs.get(blob).map(|b| b.digest) else {
            return;
        };
        let member = self.fetch(node, layer).and_then(|f| f.member);
        let id = member.filter(|(h, _)| *h == host).map(|(_, id)| id);
        match msg {
            ToTracker::Join {
                fetching,
                rejoin,
                busy,
                pieces,
            } => {
                if self.live(node, epoch) {
                    let join = (fetching, rejoin, busy, pieces);
                    self.tracker_join(host, node, layer, blob, digest, join);
                }
            }
            ToTracker::Progress(pieces) => {
                let (Some(id), now) = (id, self.instant()) else {
                    return;
                };
                let out = self.in_host(host, |s| {
                    let mut out = Vec::new();
                    s.progress(now, &digest, id, pieces, &mut out);
                    out
                });
                self.push(host, out.unwrap_or_default());
            }
            ToTracker::Sized(sized) => {
                if let Some(id) = id {
                    let ready = self.in_host(host, |s| s.split_ready(&digest, id, sized));
                    let wait = match ready {
                        Some(true) => 0,
                        _ => nanos(SPLIT_WAIT),
                    };
                    self.after(
                        wait,
                        Ev::Split {
                            host,
                            blob,
                            id,
                            sized: Box::new(sized),
                        },
                    );
                }
            }
            ToTracker::Leave(complete) => {
                let Some(id) = id else {
                    return;
                };
                self.leave(host, blob, id, complete);
            }
        }
    }

    /// A `Join` reaches the tracker: the member is registered, answered and named to others.
    fn tracker_join(
        &mut self,
        host: usize,
        node: usize,
        layer: usize,
        blob: usize,
        digest: pollen_oci::Digest,
        (fetching, rejoin, busy, pieces): (bool, bool, bool, u32),
    ) {
        let m = Member {
            peer: self
                .nodes
                .get(node)
                .map(|n| n.peer_id.clone())
                .unwrap_or_default(),
            seed: self.nodes.get(node).is_some_and(|n| n.seed),
            // Agents in a racked cluster run with `--rack`; in a flat one with no labels.
            labels: match self.s.racks > 1 {
                true => vec![("rack".into(), format!("r{}", self.topo.rack_of(node)))],
                false => Vec::new(),
            },
            pieces,
            busy,
        };
        let now = self.instant();
        let Some((joined, out)) = self.in_host(host, |s| {
            let mut out = Vec::new();
            let j = s.join(now, digest, m, fetching, rejoin, &mut out);
            (j, out)
        }) else {
            return;
        };
        if let Some(h) = self.hosts.get_mut(host).and_then(Option::as_mut) {
            h.members.insert(joined.id, (node, layer));
        }
        if let Some(f) = self.fetch_mut(node, layer) {
            f.member = Some((host, joined.id));
        }
        self.reply(host, node, layer, joined.assign);
        if !joined.near.is_empty() {
            let near = TrackerReply::Near { peers: joined.near };
            self.reply(host, node, layer, near);
        }
        self.push(host, out);
        if joined.deferred {
            self.after(
                nanos(FETCH_DEFER),
                Ev::Deferred {
                    host,
                    blob,
                    id: joined.id,
                },
            );
        }
    }

    /// Removes member `id` (its stream ended: left, or its node died).
    pub fn leave(&mut self, host: usize, blob: usize, id: u64, complete: bool) {
        let Some(digest) = self.blobs.get(blob).map(|b| b.digest) else {
            return;
        };
        let now = self.instant();
        let Some((orphaned, out)) = self.in_host(host, |s| {
            let mut out = Vec::new();
            let o = s.leave(now, &digest, id, complete, &mut out);
            (o, out)
        }) else {
            return;
        };
        if let Some(h) = self.hosts.get_mut(host).and_then(Option::as_mut) {
            h.members.remove(&id);
        }
        self.push(host, out);
        if orphaned {
            self.after(nanos(REJOIN_GRACE), Ev::Recheck { host, blob });
        }
    }

    pub(crate) fn deferred(&mut self, host: usize, blob: usize, id: u64) {
        let Some(digest) = self.blobs.get(blob).map(|b| b.digest) else {
            return;
        };
        let now = self.instant();
        if self.in_host(host, |s| s.claim_deferred(now, &digest, id)) == Some(true) {
            self.push(host, vec![(id, TrackerReply::Fetch)]);
        }
    }

    pub(crate) fn split(&mut self, host: usize, blob: usize, id: u64, sized: Sized) {
        let Some(digest) = self.blobs.get(blob).map(|b| b.digest) else {
            return;
        };
        let now = self.instant();
        let Some((reply, mut out)) = self.in_host(host, |s| {
            let mut out = Vec::new();
            let r = s.sized(now, &digest, id, sized, &mut out);
            (r, out)
        }) else {
            return;
        };
        out.insert(0, (id, reply));
        self.push(host, out);
    }

    pub(crate) fn recheck(&mut self, host: usize, blob: usize) {
        let Some(digest) = self.blobs.get(blob).map(|b| b.digest) else {
            return;
        };
        let now = self.instant();
        let out = self.in_host(host, |s| {
            let mut out = Vec::new();
            s.recheck(now, &digest, &mut out);
            out
        });
        self.push(host, out.unwrap_or_default());
    }

    /// Runs `f` on a live host's swarms (created on first use), counting the heap they keep:
    /// what `f` returns is cloned out and the original freed inside the count.
    fn in_host<R: Clone>(&mut self, host: usize, f: impl FnOnce(&mut Swarms) -> R) -> Option<R> {
        if !self.nodes.get(host).is_some_and(|n| n.alive) {
            return None;
        }
        let (split_min, fanout) = (self.s.split_min, self.s.newcomer_fanout);
        let slot = self.hosts.get_mut(host)?;
        let h = slot.get_or_insert_with(|| Host {
            swarms: Swarms::new(split_min, pollen_core::tracker::DEFAULT_UPSTREAM_BUDGET)
                .with_newcomer_fanout(fanout),
            members: BTreeMap::new(),
            bytes: 0,
        });
        let (r, kept) = measure(|| f(&mut h.swarms));
        let copy = r.clone();
        let ((), freed) = measure(|| drop(r));
        h.bytes = h.bytes.saturating_add(kept).saturating_add(freed);
        self.stats.tracker_peak = self.stats.tracker_peak.max(h.bytes);
        Some(copy)
    }

    fn reply(&mut self, host: usize, node: usize, layer: usize, reply: TrackerReply) {
        self.stats.tracker_msgs += 1;
        let delay = self.topo.latency(host, node);
        let epoch = self.epoch(node);
        self.after(
            delay,
            Ev::FromTracker {
                node,
                epoch,
                layer,
                reply: Box::new(reply),
            },
        );
    }

    fn push(&mut self, host: usize, out: Vec<Push>) {
        for (id, reply) in out {
            let to = self
                .hosts
                .get(host)
                .and_then(Option::as_ref)
                .and_then(|h| h.members.get(&id).copied());
            if let Some((node, layer)) = to {
                self.reply(host, node, layer, reply);
            }
        }
    }

    /// A node died: the trackers it hosted are gone (their members join the next tracker),
    /// and its memberships end as streams that broke.
    pub fn tracker_node_died(&mut self, dead: usize) {
        if let Some(h) = self.hosts.get_mut(dead).and_then(Option::take) {
            for (node, layer) in h.members.into_values() {
                let blob = self.blob_of(node, layer);
                if let Some(b) = self.blobs.get_mut(blob) {
                    if b.tracker == Some(dead) {
                        b.tracker = None;
                    }
                }
                self.rejoin(node, layer);
            }
        }
        let layers = self.nodes.get(dead).map_or(0, |n| n.fetches.len());
        for layer in 0..layers {
            let member = self.fetch_mut(dead, layer).and_then(|f| f.member.take());
            if let Some((host, id)) = member {
                let blob = self.blob_of(dead, layer);
                self.leave(host, blob, id, false);
            }
        }
    }

    /// A member whose tracker died joins the blob's next tracker, saying whether it fetches.
    fn rejoin(&mut self, node: usize, layer: usize) {
        let Some(f) = self.fetch_mut(node, layer) else {
            return;
        };
        f.member = None;
        if f.phase == Phase::Done || !self.nodes.get(node).is_some_and(|n| n.alive) {
            return;
        }
        let fetching = self
            .fetch(node, layer)
            .is_some_and(|f| f.upstream.is_some());
        let pieces = self.fetch(node, layer).map_or(0, |f| f.have.count_ones());
        let msg = ToTracker::Join {
            fetching,
            rejoin: true,
            busy: false,
            pieces,
        };
        self.send_tracker(node, layer, msg);
    }
}

/// A 64-bit mix (SplitMix64's finaliser) for rendezvous ranks.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
