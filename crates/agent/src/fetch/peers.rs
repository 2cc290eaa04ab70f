//! The seam between a fetch and the swarm: [`Peers`], the swarm's side (`crate::p2p`) or
//! [`NoPeers`] (see the module above).

use super::BlobFetch;
use crate::error::FetchError;
use crate::metrics::Metrics;
use crate::p2p::tracker::{Assignment, TrackerLink};
use crate::p2p::P2p;
use crate::sink::Sink;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use pollen_oci::Digest;
use pollen_proto::{HashedPiece, PieceGeometry};
use pollen_swarm::PeerId;
use pollen_upstream::Route;
use std::collections::HashSet;
use std::ops::RangeInclusive;
use std::sync::Arc;

/// A download's membership in its blob's tracker, and what the tracker assigned it.
pub(crate) type Coordination = Option<(TrackerLink, Assignment)>;

/// The pieces covering a lazy range, from one peer (`crate::lazy`): each checked against the
/// hash that peer vouches for, in `hashes` (from piece `first` on, one per piece).
pub(crate) struct PeerPieces {
    pub peer: PeerId,
    pub first: u32,
    pub hashes: Vec<[u8; 32]>,
    pub pieces: Vec<HashedPiece>,
}

/// What the fetch path asks of the swarm. Every method of [`NoPeers`] is the answer of an
/// empty swarm.
pub(crate) trait Peers: Send + Sync {
    /// The swarm itself, for what only exists with one; `None` for [`NoPeers`].
    fn swarm(&self) -> Option<Arc<P2p>>;

    /// This node's key, to sign the piece hashes it produces; `None` for [`NoPeers`].
    fn signer(&self) -> Option<pollen_swarm::Signer>;
    /// Content this node can serve from now on (announced in the background).
    fn provide(&self, digest: Digest);
    /// Content this node no longer has.
    fn unprovide(&self, digest: Digest);
    /// A peer that supplied bad data for `digest` is not asked for it again for a while.
    fn ban(&self, digest: Digest, peer: PeerId, why: &str);

    /// The piece size every agent of the cluster uses instead of the automatic one.
    fn piece_size(&self) -> Option<u32>;
    /// The smallest share of a split upstream fetch; 0: fetches are never split.
    fn split_min(&self) -> u64;
    /// Counts an upstream transfer in (`true`) or out (`false`); see [`UpstreamBusy`].
    fn count_upstream(&self, started: bool);

    /// Before a blob's download: waits for the swarm if the node just started, and joins the
    /// blob's tracker (not for content fetched with a client's own credentials, which is
    /// never shared). `pieces`: what a resumed partial already holds.
    fn enter<'a>(&'a self, fetch: &'a BlobFetch<'a>, pieces: u32) -> BoxFuture<'a, Coordination>;
    /// Fetches the blob's pieces: from peers first, the rest from the upstream. `sources`
    /// collects the peers whose piece hashes were trusted, to blame if the digest fails.
    fn download<'a>(
        &'a self,
        fetch: &'a BlobFetch<'a>,
        sink: &'a mut Option<Sink>,
        sources: &'a mut HashSet<PeerId>,
        coordination: &'a mut Coordination,
    ) -> BoxFuture<'a, Result<(), FetchError>>;
    /// A manifest by digest from peers (`holder` asked first): its body and media type,
    /// checked against the digest.
    fn manifest<'a>(
        &'a self,
        digest: &'a Digest,
        holder: Option<PeerId>,
    ) -> BoxFuture<'a, Option<(Bytes, String)>>;
    /// The tracker that resolves this tag for the cluster, unless it is this node.
    fn tag_tracker<'a>(&'a self, route: &'a Route, tag: &'a str) -> BoxFuture<'a, Option<PeerId>>;
    /// Asks `tracker` to resolve a tag (a hint, never trusted as the tag's digest).
    fn ask_resolve<'a>(
        &'a self,
        tracker: PeerId,
        route: &'a Route,
        tag: &'a str,
    ) -> BoxFuture<'a, Option<Digest>>;

    /// The pieces `pieces` of a blob cut by `geometry`, for a lazy range: from a peer that
    /// holds them and vouches for their hashes, within a short deadline; `None`: ask the
    /// upstream.
    fn range_pieces<'a>(
        &'a self,
        digest: Digest,
        geometry: PieceGeometry,
        pieces: RangeInclusive<u32>,
    ) -> BoxFuture<'a, Option<PeerPieces>>;
    /// This node holds pieces of `digest` read lazily and offers them to peers' lazy ranges
    /// (`true`), or no longer (`false`).
    fn offer_ranges(&self, digest: Digest, offered: bool);

    /// The agent is stopping: members' streams close with it, not as dead fetchers.
    fn stop(&self);
    /// Leaves the swarm.
    fn shutdown(&self) -> BoxFuture<'_, ()>;
    /// New peer rate limits (SIGHUP); 0 is unlimited.
    fn set_rates(&self, upload: u64, download: u64);
    /// Brings the swarm's counters into the metrics before a scrape.
    fn refresh_metrics(&self, metrics: &Metrics);
}

/// Counts an upstream transfer while it lives: a node fetching from the upstream is given the
/// next fetch last, and asks peers for less ([`Peers::count_upstream`]).
pub(crate) struct UpstreamBusy<'a>(&'a dyn Peers);

impl<'a> UpstreamBusy<'a> {
    pub fn start(peers: &'a dyn Peers) -> UpstreamBusy<'a> {
        peers.count_upstream(true);
        UpstreamBusy(peers)
    }
}

impl Drop for UpstreamBusy<'_> {
    fn drop(&mut self) {
        self.0.count_upstream(false);
    }
}

/// No swarm: nothing to announce, nobody to ask, every piece from the upstream.
pub(crate) struct NoPeers;

impl Peers for NoPeers {
    fn swarm(&self) -> Option<Arc<P2p>> {
        None
    }
    fn signer(&self) -> Option<pollen_swarm::Signer> {
        None
    }
    fn provide(&self, _: Digest) {}
    fn unprovide(&self, _: Digest) {}
    fn ban(&self, _: Digest, _: PeerId, _: &str) {}
    fn piece_size(&self) -> Option<u32> {
        None
    }
    fn split_min(&self) -> u64 {
        0
    }
    fn count_upstream(&self, _: bool) {}
    fn enter<'a>(&'a self, _: &'a BlobFetch<'a>, _: u32) -> BoxFuture<'a, Coordination> {
        async { None }.boxed()
    }
    fn download<'a>(
        &'a self,
        fetch: &'a BlobFetch<'a>,
        sink: &'a mut Option<Sink>,
        _: &'a mut HashSet<PeerId>,
        coordination: &'a mut Coordination,
    ) -> BoxFuture<'a, Result<(), FetchError>> {
        let why = "no peers to ask";
        fetch
            .upstream(sink, coordination, why)
            .map(|r| r.map(drop))
            .boxed()
    }
    fn manifest<'a>(
        &'a self,
        _: &'a Digest,
        _: Option<PeerId>,
    ) -> BoxFuture<'a, Option<(Bytes, String)>> {
        async { None }.boxed()
    }
    fn tag_tracker<'a>(&'a self, _: &'a Route, _: &'a str) -> BoxFuture<'a, Option<PeerId>> {
        async { None }.boxed()
    }
    fn ask_resolve<'a>(
        &'a self,
        _: PeerId,
        _: &'a Route,
        _: &'a str,
    ) -> BoxFuture<'a, Option<Digest>> {
        async { None }.boxed()
    }
    fn range_pieces<'a>(
        &'a self,
        _: Digest,
        _: PieceGeometry,
        _: RangeInclusive<u32>,
    ) -> BoxFuture<'a, Option<PeerPieces>> {
        async { None }.boxed()
    }
    fn offer_ranges(&self, _: Digest, _: bool) {}
    fn stop(&self) {}
    fn shutdown(&self) -> BoxFuture<'_, ()> {
        async {}.boxed()
    }
    fn set_rates(&self, _: u64, _: u64) {}
    fn refresh_metrics(&self, _: &Metrics) {}
}
