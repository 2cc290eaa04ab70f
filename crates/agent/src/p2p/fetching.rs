//! The swarm as the fetch path sees it: [`crate::fetch::Peers`] for [`P2p`].

use super::download::{PeerOutcome, PeerPhase};
use super::tracker::{self, TrackerLink};
use super::P2p;
use crate::error::FetchError;
use crate::fetch::BlobFetch;
use crate::fetch::{Coordination, NoPeers, PeerPieces, Peers};
use crate::metrics::Metrics;
use crate::sink::Sink;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use pollen_oci::Digest;
use pollen_proto::PieceGeometry;
use pollen_swarm::PeerId;
use pollen_upstream::Route;
use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::sync::atomic::Ordering;
use std::sync::Arc;

impl Peers for P2p {
    fn swarm(&self) -> Option<Arc<P2p>> {
        self.me.upgrade()
    }

    fn signer(&self) -> Option<pollen_swarm::Signer> {
        Some(self.node.signer())
    }

    fn provide(&self, digest: Digest) {
        P2p::provide(self, digest);
    }

    fn unprovide(&self, digest: Digest) {
        P2p::unprovide(self, digest);
    }

    fn ban(&self, digest: Digest, peer: PeerId, why: &str) {
        self.bans.ban(digest, peer, why);
    }

    fn piece_size(&self) -> Option<u32> {
        self.cfg.session.piece_size
    }

    fn split_min(&self) -> u64 {
        self.cfg.split_min
    }

    fn count_upstream(&self, started: bool) {
        match started {
            true => self.upstream_fetches.fetch_add(1, Ordering::Relaxed),
            false => self.upstream_fetches.fetch_sub(1, Ordering::Relaxed),
        };
    }

    fn enter<'a>(&'a self, fetch: &'a BlobFetch<'a>, pieces: u32) -> BoxFuture<'a, Coordination> {
        async move {
            // A download from peers needs the blob's trusted size before it opens its
            // partial: asked now, beside joining the swarm, the answer is there when the
            // first peer is (asked only then, its round trip held every downloader back, and
            // a share handed on found fewer of a dead fetcher's pieces taken).
            fetch.check_size_early();
            self.wait_for_swarm().await;
            if fetch.client_auth.is_some() {
                return None;
            }
            TrackerLink::join(&self.swarm()?, fetch.digest, pieces).await
        }
        .boxed()
    }

    fn download<'a>(
        &'a self,
        fetch: &'a BlobFetch<'a>,
        sink: &'a mut Option<Sink>,
        sources: &'a mut HashSet<PeerId>,
        coordination: &'a mut Coordination,
    ) -> BoxFuture<'a, Result<(), FetchError>> {
        async move {
            // Only while the swarm is being dropped is there no `Arc` to it left.
            let Some(me) = self.swarm() else {
                return NoPeers.download(fetch, sink, sources, coordination).await;
            };
            download(fetch, &me, sink, sources, coordination).await
        }
        .boxed()
    }

    fn manifest<'a>(
        &'a self,
        digest: &'a Digest,
        holder: Option<PeerId>,
    ) -> BoxFuture<'a, Option<(Bytes, String)>> {
        super::manifest::fetch(self, digest, holder).boxed()
    }

    fn tag_tracker<'a>(&'a self, route: &'a Route, tag: &'a str) -> BoxFuture<'a, Option<PeerId>> {
        tracker::tag_tracker(self, route, tag).boxed()
    }

    fn ask_resolve<'a>(
        &'a self,
        tracker: PeerId,
        route: &'a Route,
        tag: &'a str,
    ) -> BoxFuture<'a, Option<Digest>> {
        tracker::ask_resolve(self, tracker, route, tag).boxed()
    }

    fn range_pieces<'a>(
        &'a self,
        digest: Digest,
        geometry: PieceGeometry,
        pieces: RangeInclusive<u32>,
    ) -> BoxFuture<'a, Option<PeerPieces>> {
        async move {
            if !self.cfg.lazy_from_peers {
                return None;
            }
            super::lazy::fetch(self, digest, geometry, pieces).await
        }
        .boxed()
    }

    fn offer_ranges(&self, digest: Digest, offered: bool) {
        let key = super::lazy::lazy_key(&digest);
        match offered {
            true => self.announce(key),
            false => self.unprovide(key),
        }
    }

    fn stop(&self) {
        if let Some(tracker) = &self.tracker {
            tracker.close();
        }
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async {
            let _ = self.node.shutdown().await;
        }
        .boxed()
    }

    fn set_rates(&self, upload: u64, download: u64) {
        self.uploads.rate().set_rate(upload);
        self.downloads.set_rate(download);
    }

    fn refresh_metrics(&self, m: &Metrics) {
        let sent = self.uploads.bytes_sent();
        m.peer_bytes_sent
            .inc_by(sent.saturating_sub(m.peer_bytes_sent.get()));
        let displaced = self.uploads.sessions_displaced();
        m.peer_sessions_displaced
            .inc_by(displaced.saturating_sub(m.peer_sessions_displaced.get()));
        m.banned_peers.set(self.bans.active() as i64);
        m.connected_peers
            .set(self.node.stats().connected_peers as i64);
    }
}

/// Peers first, then the upstream for what they did not supply. A node given a share of a
/// split fetch (the tracker's choice) fetches it beside the peer download.
async fn download(
    fetch: &BlobFetch<'_>,
    p2p: &Arc<P2p>,
    sink: &mut Option<Sink>,
    sources: &mut HashSet<PeerId>,
    coordination: &mut Coordination,
) -> Result<(), FetchError> {
    let mut phase = PeerPhase::new(fetch, p2p);
    loop {
        let outcome = phase.run(sink, coordination).await;
        sources.extend(phase.map_sources.drain());
        phase.suspend(sink);
        match outcome? {
            PeerOutcome::Complete => return Ok(()),
            PeerOutcome::Fallback(why) => {
                match fetch.upstream(sink, coordination, &why).await? {
                    // The fetch was split: this node fetches its share beside the peer
                    // download; the other shares come from their fetchers.
                    Some(share) => {
                        if let Some((_, assignment)) = coordination.as_mut() {
                            assignment.fetch = false;
                        }
                        let size = sink.as_ref().map_or(0, |s| s.geometry.size());
                        phase.give_share(size, share);
                    }
                    None => return Ok(()),
                }
            }
        }
    }
}
