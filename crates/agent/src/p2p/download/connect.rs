//! Which peers a blob's download talks to: the peers its tracker names, dialled at once;
//! providers from Kademlia lookups that run in the background; and peers that turned a
//! session away, dialled again when their retry time comes, backing off while they keep
//! refusing.

use super::{now, PeerPhase};
use crate::p2p::peer_task::PeerTask;
use crate::sink::Sink;
use pollen_core::phase::HANDOVER_DIALS;
use pollen_core::retry::Again;
use pollen_core::stall::stagger;
use pollen_swarm::PeerId;
use std::collections::HashSet;
use std::time::Duration;
use tracing::debug;

/// The bound on the Kademlia lookup a fetcher makes before it goes to the upstream. With no
/// provider anywhere (the usual case: a new blob) the lookup ends after a few round trips
/// inside a cluster; this only caps a lookup held up by peers that do not answer.
const FETCHER_LOOKUP: Duration = Duration::from_millis(500);

impl PeerPhase<'_> {
    /// Whether Kademlia knows holders of the blob that the tracker, which made this node the
    /// fetcher, does not (they become this download's providers). A tracker knows holders
    /// only from its members: a node that has held the blob since before this tracker took
    /// it on (a seed of an earlier rollout whose tracker has gone, a node that fetched it
    /// while it knew no tracker) is known to Kademlia alone, and going to the upstream past
    /// it costs the registry the whole blob (or fails outright when the registry is down).
    pub(super) async fn holders_the_tracker_missed(&mut self) -> bool {
        let digest = self.fetch.digest;
        let found = tokio::time::timeout(FETCHER_LOOKUP, lookup(&self.p2p.node, digest))
            .await
            .unwrap_or_default();
        self.remember(&found);
        if !found.is_empty() {
            debug!(%digest, providers = found.len(), "made the fetcher, but Kademlia knows holders: fetching from them");
        }
        !found.is_empty()
    }

    /// Adds `providers` to the peers this download may ask (once each).
    fn remember(&mut self, providers: &[PeerId]) {
        for p in providers {
            if !self.providers.contains(p) {
                self.providers.push(*p);
            }
        }
    }

    /// Looks the blob's providers up and starts sessions with new ones; false if there are
    /// none at all.
    pub(super) async fn connect_providers(&mut self) -> bool {
        let providers = lookup(&self.p2p.node, self.fetch.digest).await;
        self.connect(&providers)
    }

    /// Starts a provider lookup in the background unless one is running.
    pub(super) fn start_lookup(&mut self) {
        if self.lookup.is_some() {
            return;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let node = self.p2p.node.clone();
        let digest = self.fetch.digest;
        tokio::spawn(async move {
            let _ = tx.send(lookup(&node, digest).await);
        });
        self.lookup = Some(rx);
    }

    /// Starts sessions with the named peers and `providers` not connected, retired or banned,
    /// while there is room; false if there is no peer at all.
    pub(super) fn connect(&mut self, providers: &[PeerId]) -> bool {
        self.retry.expire(now());
        self.remember(providers);
        let mut candidates = self.named.clone();
        candidates.extend(self.providers.iter().filter(|p| !self.named.contains(p)));
        // Under the rack rule at most `FAR_SESSIONS` peers outside the rack (the tracker
        // marks the others); the rest of the room goes to rack-mates in the tracker's order.
        let near = &self.near;
        let picked = self.x.to_dial(
            self.p2p.cfg.max_peers_per_blob,
            self.fresh(&candidates),
            |p| near.contains(p),
        );
        for peer in picked {
            self.dial(peer);
        }
        !candidates.is_empty() || !self.tasks.is_empty()
    }

    /// The tracker marked `peers` as sharing this node's rack (`TrackerReply::Near`): their
    /// sessions count as near, now or when dialled.
    pub(super) fn mark_near(&mut self, peers: &[PeerId]) {
        let at = now();
        for peer in peers {
            if !self.near.insert(*peer) {
                continue;
            }
            self.x
                .rack
                .know(pollen_core::rack::key_of(&peer.to_bytes()));
            for (slot, task) in &self.tasks {
                if task.peer == *peer {
                    self.x.mark_near(*slot, at);
                }
            }
        }
    }

    /// Dials up to `HANDOVER_DIALS` of the `found` providers not connected yet, room or not:
    /// a hand-over asks them what they hold before the upstream (`pollen_core::phase`).
    pub(super) fn dial_holders(&mut self, found: &[PeerId]) {
        for peer in self.fresh(found).into_iter().take(HANDOVER_DIALS) {
            debug!(digest = %self.fetch.digest, %peer, "handed the fetch: asking a provider the tracker did not name first");
            self.dial(peer);
        }
    }

    /// Of `candidates`, those not connected, not waiting to be dialled again and not banned.
    fn fresh(&self, candidates: &[PeerId]) -> Vec<PeerId> {
        let digest = self.fetch.digest;
        let connected: HashSet<PeerId> = self.tasks.values().map(|t| t.peer).collect();
        candidates
            .iter()
            .filter(|p| {
                !connected.contains(p)
                    && !self.retry.waits(p)
                    && !self.p2p.bans.is_banned(&digest, p)
            })
            .copied()
            .collect()
    }

    fn dial(&mut self, peer: PeerId) {
        let digest = self.fetch.digest;
        debug!(%digest, %peer, "dialling a peer for the blob");
        let slot = self.next_slot;
        self.next_slot += 1;
        let task = PeerTask::spawn(self.p2p.clone(), peer, digest, slot, self.events_tx.clone());
        self.tasks.insert(slot, task);
        match self.near.contains(&peer) {
            true => self.x.add_near(slot),
            false => self.x.add(slot),
        }
        self.restagger();
    }

    /// The stall watch's stagger among this node and its session peers
    /// ([`pollen_core::stall::stagger`]): nodes that lose the same source do not all go to the
    /// upstream for the same pieces at once.
    fn restagger(&mut self) {
        let me = self.p2p.node.peer_id().to_bytes();
        let peers: Vec<Vec<u8>> = self.tasks.values().map(|t| t.peer.to_bytes()).collect();
        let blob = self.fetch.digest.to_string();
        let defer = stagger(&me, peers.iter().map(Vec::as_slice), blob.as_bytes());
        self.x.stall.set_defer(defer);
    }

    /// Ends every session while this node fetches its share from the upstream (the sessions
    /// would only stall meanwhile) and gives the writer's verdicts back to the sink; the next
    /// [`PeerPhase::run`] dials the same peers again at once.
    pub fn suspend(&mut self, sink: &mut Option<Sink>) {
        let now = now();
        for (_, task) in self.tasks.drain() {
            self.retry.hold(task.peer, now);
        }
        self.x.clear();
        self.restagger();
        self.report_active();
        if let (Some(s), Some(w)) = (sink.as_mut(), self.written.take()) {
            s.written = Some(w);
        }
    }

    pub(super) fn drop_slot(&mut self, slot: usize, again: Again) {
        let Some(task) = self.tasks.remove(&slot) else {
            return;
        };
        self.x.remove(slot);
        self.retry.again(task.peer, again, now());
        self.restagger();
    }
}

/// The blob's providers by Kademlia (none if the lookup fails).
pub(super) async fn lookup(node: &pollen_swarm::Node, digest: pollen_oci::Digest) -> Vec<PeerId> {
    node.find_providers(&digest).await.unwrap_or_else(|e| {
        debug!(%digest, error = %e, "provider lookup failed");
        Vec::new()
    })
}
