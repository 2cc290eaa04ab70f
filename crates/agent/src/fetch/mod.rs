//! One blob fetch ([`BlobFetch`]) and the seams it works through: storage (`Store`), the
//! upstream ([`Origin`]), the swarm ([`Peers`], in `peers.rs`) and tokio's clock. The
//! single-flight table around it is `blobs.rs`; its upstream half is `transfer.rs`, its size
//! checks `size.rs`.
//!
//! Blobs, manifests and the upstream transfer ask peers for content, announce what they hold
//! and learn the swarm's piece rules through [`Peers`] only. An agent with peer-to-peer on
//! passes its swarm (`crate::p2p::P2p`); with it off, and for the second attempt of a blob
//! whose peers supplied a map that failed the digest, [`NoPeers`], which answers as a swarm
//! with nobody in it would. So the fetch path has one code path whether or not there is a
//! swarm, and no `Option` to check. What exists only with a swarm (its background tasks,
//! preheat, the doctor's and status' view of peers and trackers) reaches it through
//! [`Peers::swarm`].

mod peers;
mod size;

pub(crate) use peers::{Coordination, NoPeers, PeerPieces, Peers, UpstreamBusy};
pub(crate) use size::SizeSource;

use crate::error::FetchError;
use crate::inflight::Inflight;
use crate::metrics::Metrics;
use crate::origin::Origin;
use crate::private::Private;
use crate::sink::Sink;
use crate::sizes::KnownSizes;
use pollen_oci::Digest;
use pollen_proto::PieceGeometry;
use pollen_store::{Blob, Store};
use pollen_swarm::PeerId;
use pollen_upstream::Route;
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::{info, warn};

/// One blob fetch, and the seams it works through: nothing else of the agent reaches it.
pub(crate) struct BlobFetch<'a> {
    /// Storage: the partial blob and, once verified, the blob.
    pub store: &'a Store,
    /// The upstream, counted.
    pub origin: &'a Arc<Origin>,
    /// The swarm, or [`NoPeers`].
    pub peers: &'a dyn Peers,
    pub metrics: &'a Metrics,
    /// Blob sizes from verified manifests ([`crate::sizes`]), and the largest this node takes.
    pub sizes: &'a KnownSizes,
    pub max_blob_size: u64,
    /// Refuse a new blob the disk cannot hold (`disk.rs`); off only in tests.
    pub disk_room_check: bool,
    /// Content fetched with a client's own credentials: never announced.
    pub private: &'a Private,
    /// Set when the agent stops: the fetch checkpoints what it has and ends.
    pub stopping: &'a watch::Sender<bool>,
    pub route: &'a Route,
    pub digest: Digest,
    pub client_auth: Option<http::HeaderValue>,
    pub inflight: &'a Inflight,
    /// The upstream's answer to the size check, asked once per fetch (`sizes.rs`).
    pub upstream_size: Arc<tokio::sync::OnceCell<Option<u64>>>,
    /// Peers whose pieces lazy ranges kept in the partial (`lazy/`): blamed with the map's
    /// sources if the blob fails its digest.
    pub lazy_sources: Vec<PeerId>,
}

impl BlobFetch<'_> {
    /// Fetches the blob into the store: pieces from peers first, the rest from the upstream.
    /// A digest mismatch after peers supplied the piece map bans those peers and fetches the
    /// blob again from the upstream alone. On failure what was fetched is kept as a partial
    /// blob, so the next attempt continues from there.
    ///
    /// A blob that started from pieces already on disk (a resumed download, or ranges read
    /// lazily, `lazy/`) and then failed its digest is fetched again once the same way:
    /// those pieces came from an earlier answer of the upstream, which may have been wrong,
    /// and the failed partial is gone, so the client's pull still ends with the right blob.
    pub async fn run(&self) -> Result<Blob, FetchError> {
        let resumed = self.store.partial_geometry(&self.digest).is_some();
        match self.attempt(true).await {
            Err((FetchError::Corrupt(why), mut sources)) if !sources.is_empty() || resumed => {
                if resumed {
                    sources.extend(self.lazy_sources.iter().copied());
                }
                for peer in &sources {
                    self.metrics.peer_bans.inc();
                    let why = "its piece map failed the blob's digest";
                    self.peers.ban(self.digest, *peer, why);
                }
                warn!(digest = %self.digest, error = %why, from_peers = !sources.is_empty(), "blob failed its digest; fetching it again from the upstream");
                self.attempt(false).await.map_err(|(e, _)| e)
            }
            other => other.map_err(|(e, _)| e),
        }
    }

    async fn attempt(&self, use_peers: bool) -> Result<Blob, (FetchError, HashSet<PeerId>)> {
        let started = tokio::time::Instant::now();
        // A partial download left by an earlier run (or an earlier failed fetch) resumes
        // where it stopped: only the missing pieces are asked for. Without one, a size from
        // a verified manifest opens the blob before anyone is asked, so peers can open
        // sessions to this node from the start of a rollout (see `open_geometry`).
        let mut sink = match self.open_geometry().map_err(|e| (e, HashSet::new()))? {
            Some(geometry) => Some(
                self.start_sink(geometry)
                    .await
                    .map_err(|e| (e, HashSet::new()))?,
            ),
            None => None,
        };
        if let Some(s) = sink.as_ref().filter(|s| s.have.count_ones() > 0) {
            info!(digest = %self.digest, pieces = s.have.count_ones(), "resuming a partial download");
        }
        let mut sources = HashSet::new();
        // The blob's tracker, if there is one, says who fetches from the upstream.
        let peers = if use_peers { self.peers } else { &NoPeers };
        let pieces = sink.as_ref().map_or(0, |s| s.have.count_ones());
        let mut coordination = peers.enter(self, pieces).await;
        let mut stopping = self.stopping.subscribe();
        let result = tokio::select! {
            r = peers.download(self, &mut sink, &mut sources, &mut coordination) => r,
            _ = stopping.wait_for(|s| *s) => Err(FetchError::Upstream("the agent is shutting down".into())),
        };
        if let Err(e) = result {
            if let Some(s) = sink.take() {
                s.suspend().await;
            }
            return Err((e, sources));
        }
        let sink =
            sink.ok_or_else(|| (FetchError::Upstream("no transfer".into()), HashSet::new()))?;
        let blob = sink.finish().await.map_err(|e| (e, sources))?;
        if let Some((link, _)) = coordination {
            link.leave(true).await;
        }
        info!(
            digest = %self.digest,
            registry = %self.route.registry,
            bytes = blob.size(),
            from_peers = self.inflight.from_peers.load(Ordering::Relaxed),
            secs = started.elapsed().as_secs_f64(),
            "blob fetched and verified"
        );
        Ok(blob)
    }

    /// The geometry to open the blob with before anything is fetched: a partial's, else the
    /// one a verified manifest's size gives. A node that opened its blob only when a peer's
    /// session or the upstream's first response told the size turned every session to it
    /// away until then, so in a rollout pieces moved only between nodes already connected to
    /// the fetchers and the rest redialled after `RETRY_SOON` (pollen-sim, 2,600 nodes
    /// pulling 3 GB at 300 MB/s: nothing moved between peers for the first 0.7 s). A size
    /// the upstream contradicts later starts the blob afresh (`transfer.rs`).
    fn open_geometry(&self) -> Result<Option<PieceGeometry>, FetchError> {
        if let Some(geometry) = self.store.partial_geometry(&self.digest) {
            return Ok(Some(geometry));
        }
        match self.sizes.get(&self.digest) {
            Some(size) => self.geometry_of(size).map(Some),
            None => Ok(None),
        }
    }

    pub fn count_from_peers(&self, bytes: u64) {
        self.inflight.from_peers.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Opens (or resumes) the partial blob with a size the upstream confirmed and starts its
    /// writer.
    pub async fn start_sink(&self, geometry: PieceGeometry) -> Result<Sink, FetchError> {
        self.start_sink_with(geometry, true).await
    }

    /// Opens (or resumes) the partial blob and starts its writer; announced if it holds pieces
    /// already ([`BlobFetch::announce`]). `confirmed`: the size is trusted
    /// ([`crate::sizes`]); otherwise the partial is not recorded until the upstream confirms it.
    pub async fn start_sink_with(
        &self,
        geometry: PieceGeometry,
        confirmed: bool,
    ) -> Result<Sink, FetchError> {
        self.check_size(geometry.size())?;
        // A new blob the disk cannot hold is refused before its first byte (`disk.rs`); a
        // partial already on disk resumes.
        if self.disk_room_check && self.store.partial_geometry(&self.digest).is_none() {
            crate::disk::room_for(self.store, geometry.size()).map_err(FetchError::Store)?;
        }
        let store = self.store.clone();
        let digest = self.digest;
        // Reopening re-verifies pieces already on disk: blocking work.
        let partial =
            tokio::task::spawn_blocking(move || store.partial_with(digest, geometry, confirmed))
                .await
                .map_err(|e| FetchError::Store(format!("opening partial blob: {e}")))??;
        let sink = Sink::start(partial, self.inflight, self.peers.signer());
        if sink.have.count_ones() > 0 {
            self.announce();
        }
        Ok(sink)
    }

    /// Tells the swarm this node has the blob to offer: once it holds a piece of it, or
    /// from its first upstream request (`pollen_core::upload::serves_partial`), not when it
    /// opens it. Opened at the start of every pull and announced then, every node was a
    /// provider of every blob at once, so the tracker's fetcher found "holders" in Kademlia,
    /// fetched nothing, and waited for them: all 12 nodes of `benches/cluster.sh` went to the
    /// registry after `peer_stall` (11.9 x the image). Content fetched with a client's own
    /// credentials is never announced.
    pub fn announce(&self) {
        if !self.private.contains(&self.digest) {
            self.peers.provide(self.digest);
        }
    }
}
