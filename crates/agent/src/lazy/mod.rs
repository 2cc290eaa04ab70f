//! Lazy pulling: a short range of a blob that is neither cached nor being fetched is answered
//! from the pieces that cover it alone, kept in the blob's partial, so later ranges and a
//! whole pull reuse them. Snapshotters that start a container before its layers are here
//! (eStargz, SOCI) read a layer this way: its footer, its table of contents, the files the
//! container opens first; without this, the first range started the whole layer's fetch and
//! waited for its digest.
//!
//! Where the pieces come from: a peer that holds them first (`p2p/lazy.rs`: nodes holding the
//! blob, fetching it, or holding pieces they read lazily), else this node's own upstream with
//! one range request. Pieces this node hashed from its upstream's bytes are offered to peers'
//! lazy ranges in turn ([`shares`]); pieces from peers are not passed on.
//!
//! Verified how (docs/trust-model.md, "Ranges"): a range has no digest of its own. Pieces from
//! the upstream are its own answer, as the client's own range request to the registry would
//! be; pieces from a peer match hashes that peer vouches for (it verified the whole blob, or
//! hashed those pieces from its own upstream). A whole pull later checks every piece, these
//! included, against the blob's digest, and a mismatch deletes the partial.
//!
//! Taken only when the blob's size is known from a verified manifest (a snapshotter fetches
//! the manifest first), the content is not private, and the range is at most
//! [`MAX_LAZY_RANGE`] and not the whole blob; otherwise the range follows the whole blob's
//! fetch (and a range short of the last byte waits for its digest, `follow.rs`).

mod shares;

use crate::fetch::PeerPieces;
use crate::range::{self, RangeOutcome};
use crate::transfer::range_start;
use crate::Ctx;
use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use pollen_oci::Digest;
use pollen_proto::PieceGeometry;
use pollen_store::{Kind, Partial};
use pollen_swarm::PeerId;
use pollen_upstream::{collect_limited, FetchRequest, Route};
use std::ops::RangeInclusive;
use std::sync::Arc;
use tracing::{debug, info};

/// The longest range answered lazily: longer reads are the start of a whole pull.
pub const MAX_LAZY_RANGE: u64 = 32 << 20;
/// How much of a blob a node fetches lazily, as a share of it (and at least
/// [`MIN_LAZY_BUDGET`]): a snapshotter's background fetch reads the rest by ranges too, and
/// past this they go the whole blob's way, coordinated with the swarm, so every node does not
/// fetch the whole layer from the registry range by range.
pub const LAZY_SHARE: u64 = 10;
pub const MIN_LAZY_BUDGET: u64 = 4 << 20;

/// A short range's bytes, and where they sit in the blob.
pub(crate) struct LazyRange {
    pub start: u64,
    pub end: u64,
    pub size: u64,
    pub bytes: Bytes,
}

/// Most peers remembered per blob as sources of its lazy pieces, and blobs remembered.
const MAX_SOURCES: usize = 16;
const MAX_SOURCED_BLOBS: usize = 1024;

/// The agent's lazy reads: who writes each partial, what is offered to peers, and which peers
/// supplied pieces (to blame if the whole blob fails its digest).
#[derive(Default)]
pub(crate) struct Lazy {
    pub writers: Writers,
    pub shares: shares::Shares,
    sources: DashMap<Digest, Vec<PeerId>>,
}

impl Lazy {
    fn took_from(&self, digest: Digest, peer: PeerId) {
        if !self.sources.contains_key(&digest) && self.sources.len() >= MAX_SOURCED_BLOBS {
            return;
        }
        let mut peers = self.sources.entry(digest).or_default();
        if !peers.contains(&peer) && peers.len() < MAX_SOURCES {
            peers.push(peer);
        }
    }

    /// A whole fetch of `digest` takes over its partial: it publishes its own state to peers
    /// (so the lazy offer is withdrawn) and blames the peers returned here, with its own
    /// sources, if the blob fails its digest.
    pub fn whole_fetch_starts(
        &self,
        digest: &Digest,
        peers: &dyn crate::fetch::Peers,
    ) -> Vec<PeerId> {
        if self.shares.remove(digest) {
            peers.offer_ranges(*digest, false);
        }
        self.sources
            .remove(digest)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }
}

/// One writer per partial blob at a time: a whole blob's fetch, or a lazy range's pieces.
#[derive(Default)]
pub(crate) struct Writers(DashMap<Digest, Arc<tokio::sync::Mutex<()>>>);

/// Holds a blob's partial for writing; the entry goes when nobody else waits for it.
pub(crate) struct Writing<'a> {
    writers: &'a Writers,
    digest: Digest,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Writers {
    pub async fn lock(&self, digest: Digest) -> Writing<'_> {
        let lock = self.0.entry(digest).or_default().clone();
        let guard = lock.lock_owned().await;
        Writing {
            writers: self,
            digest,
            guard: Some(guard),
        }
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        drop(self.guard.take());
        // The map's Arc and none other: nobody holds or waits for the lock.
        self.writers
            .0
            .remove_if(&self.digest, |_, lock| Arc::strong_count(lock) == 1);
    }
}

/// The bytes of `range_header` when it is answered lazily; `None` sends the request down the
/// whole blob's path.
pub(crate) async fn fetch(
    ctx: &Ctx,
    route: &Route,
    digest: Digest,
    range_header: Option<&str>,
) -> Option<LazyRange> {
    let size = ctx.sizes.get(&digest)?;
    let RangeOutcome::Partial { start, end } = range::parse(range_header, size) else {
        return None;
    };
    // A footer (`bytes=-47`) runs to the last byte and is still a range: only the whole blob
    // goes the whole blob's way.
    let whole = start == 0 && end.checked_add(1) == Some(size);
    if whole || end - start >= MAX_LAZY_RANGE || size > ctx.cfg.max_blob_size {
        return None;
    }
    if ctx.private.contains(&digest) || !idle(ctx, &digest) {
        return None;
    }
    let _writing = ctx.lazy.writers.lock(digest).await;
    // A whole fetch may have started (and ended) while this waited.
    if !idle(ctx, &digest) {
        return None;
    }
    let geometry = PieceGeometry::choose(size, ctx.peers().piece_size()).ok()?;
    let pieces = covering(&geometry, start, end)?;
    let store = ctx.store.clone();
    let partial = tokio::task::spawn_blocking(move || store.partial_with(digest, geometry, true))
        .await
        .ok()?
        .ok()?;
    let (bytes, source) = if pieces.clone().all(|i| partial.have().get(i)) {
        (read(partial, start, end).await?, "kept")
    } else {
        let fetched = u64::from(partial.have().count_ones()) * u64::from(geometry.piece_size());
        let budget = (size / LAZY_SHARE).max(MIN_LAZY_BUDGET);
        if fetched.saturating_add(end - start) > budget {
            debug!(%digest, fetched, "lazy budget spent: the rest of the blob comes whole");
            return None;
        }
        let from = geometry.offset_of(*pieces.start())?;
        let (span, kept, source) = match from_peers(ctx, partial, &pieces).await {
            FromPeers::Kept(span, kept) => (span, Some(kept), "peers"),
            FromPeers::Not(partial) => {
                let span = upstream_span(ctx, route, &digest, &geometry, &pieces).await?;
                // Kept for later ranges, the whole pull and peers; answered either way.
                let kept = keep(partial, *pieces.start(), span.clone()).await;
                (span, kept, "upstream")
            }
            FromPeers::Lost => return None,
        };
        if let Some(partial) = kept.filter(|p| ctx.lazy.shares.publish(p)) {
            ctx.peers().offer_ranges(partial.digest(), true);
        }
        let bytes =
            span.slice(usize::try_from(start - from).ok()?..usize::try_from(end + 1 - from).ok()?);
        (bytes, source)
    };
    ctx.metrics
        .lazy_ranges
        .get_or_create(&crate::metrics::SourceLabels { source })
        .inc();
    info!(%digest, start, end, source, "served a range lazily, from its pieces alone");
    Some(LazyRange {
        start,
        end,
        size,
        bytes,
    })
}

/// Neither cached nor being fetched as a whole.
fn idle(ctx: &Ctx, digest: &Digest) -> bool {
    !ctx.store.contains(Kind::Blob, digest) && !ctx.blobs.contains_key(digest)
}

/// The pieces holding bytes `start..=end`.
fn covering(g: &PieceGeometry, start: u64, end: u64) -> Option<RangeInclusive<u32>> {
    let piece = u64::from(g.piece_size()).max(1);
    let first = u32::try_from(start / piece).ok()?;
    let last = u32::try_from(end / piece).ok()?;
    (last < g.count()).then_some(first..=last)
}

/// The bytes of `pieces`, from one range request to the upstream; `None` when the upstream
/// does not answer it with exactly those bytes (it may not serve ranges at all).
async fn upstream_span(
    ctx: &Ctx,
    route: &Route,
    digest: &Digest,
    g: &PieceGeometry,
    pieces: &RangeInclusive<u32>,
) -> Option<Bytes> {
    let from = g.offset_of(*pieces.start())?;
    let to = g
        .offset_of(*pieces.end())?
        .checked_add(u64::from(g.len_of(*pieces.end())?))?;
    let req = FetchRequest {
        route,
        method: http::Method::GET,
        path: format!("blobs/{digest}"),
        accept: None,
        range_start: from,
        range_end: Some(to),
        client_auth: None,
    };
    let resp = ctx.origin.fetch(&req).await.ok()?;
    if resp.status != http::StatusCode::PARTIAL_CONTENT || range_start(&resp) != Some(from) {
        debug!(%digest, status = %resp.status, "the upstream did not answer a range: no lazy read");
        return None;
    }
    let want = usize::try_from(to - from).ok()?;
    let idle = ctx.origin.current().config().idle_timeout;
    let out = collect_limited(resp.body, want, idle).await.ok()?;
    if out.len() != want {
        return None;
    }
    ctx.metrics.upstream_bytes.inc_by(out.len() as u64);
    Some(out)
}

/// Writes the pieces from `first` on (those not present yet) into the partial, hashed as
/// this node's own, and records them durably; the partial back if that worked.
async fn keep(mut partial: Partial, first: u32, span: Bytes) -> Option<Partial> {
    let kept = tokio::task::spawn_blocking(move || -> Option<Partial> {
        let g = *partial.geometry();
        let (mut index, mut at) = (first, 0usize);
        while at < span.len() {
            let end = at.checked_add(usize::try_from(g.len_of(index)?).ok()?)?;
            if end > span.len() {
                return None;
            }
            if !partial.have().get(index) {
                partial.seek(index).ok()?;
                partial.append(&span.slice(at..end)).ok()?;
            }
            (index, at) = (index.checked_add(1)?, end);
        }
        partial.settle().ok()?;
        partial.checkpoint().ok()?;
        Some(partial)
    })
    .await
    .ok()
    .flatten();
    if kept.is_none() {
        debug!("a lazily fetched range could not be kept in the partial blob");
    }
    kept
}

/// What asking peers for a range's pieces came to.
enum FromPeers {
    /// Their span, kept in the partial (with the hashes the peer vouched for).
    Kept(Bytes, Partial),
    /// No peer delivered them, or they do not fit what this node holds: ask the upstream.
    Not(Partial),
    /// The partial was lost on the way (a panic while writing).
    Lost,
}

async fn from_peers(ctx: &Ctx, partial: Partial, pieces: &RangeInclusive<u32>) -> FromPeers {
    let (digest, geometry) = (partial.digest(), *partial.geometry());
    let Some(got) = ctx
        .peers()
        .range_pieces(digest, geometry, pieces.clone())
        .await
    else {
        return FromPeers::Not(partial);
    };
    let bytes: u64 = got.pieces.iter().map(|p| p.bytes().len() as u64).sum();
    ctx.metrics.peer_bytes_received.inc_by(bytes);
    let peer = got.peer;
    ctx.lazy.took_from(digest, peer);
    let Ok(kept) = tokio::task::spawn_blocking(move || adopt(partial, &got)).await else {
        return FromPeers::Lost;
    };
    if matches!(kept, FromPeers::Not(_)) {
        // Its hashes contradict ones this node holds: one of the two sources lied, and the
        // whole pull's digest will say which; this range comes from the upstream.
        debug!(%digest, %peer, "a peer's pieces for a lazy range do not fit the partial");
    }
    kept
}

/// Writes a peer's pieces and the hashes it vouched for into the partial, durably, with
/// their bytes as one span.
fn adopt(mut partial: Partial, got: &PeerPieces) -> FromPeers {
    if partial.adopt_hashes(got.first, &got.hashes).is_err() {
        return FromPeers::Not(partial);
    }
    let len = got.pieces.iter().map(|p| p.bytes().len()).sum();
    let mut span = BytesMut::with_capacity(len);
    for (piece, index) in got.pieces.iter().zip(got.first..) {
        if piece.index() != index || partial.write_piece(piece).is_err() {
            return FromPeers::Not(partial);
        }
        span.extend_from_slice(piece.bytes());
    }
    if partial.settle().is_err() || partial.checkpoint().is_err() {
        return FromPeers::Not(partial);
    }
    FromPeers::Kept(span.freeze(), partial)
}

/// Bytes `start..=end` from the partial's file: every piece they touch was produced here and
/// recorded (a checkpoint made them durable).
async fn read(partial: Partial, start: u64, end: u64) -> Option<Bytes> {
    use std::os::unix::fs::FileExt;
    tokio::task::spawn_blocking(move || {
        let len = usize::try_from(end - start + 1).ok()?;
        let mut buf = vec![0u8; len];
        partial.file().read_exact_at(&mut buf, start).ok()?;
        Some(Bytes::from(buf))
    })
    .await
    .ok()?
}
