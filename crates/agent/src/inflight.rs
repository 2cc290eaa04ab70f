//! A blob in flight as its clients and its writer share it: where its bytes are
//! ([`Progress`], published on a watch channel by the writer, [`crate::sink`]), the chunks
//! kept in memory for readers at the live edge ([`Recent`]), and whose fetch it is
//! ([`Inflight`]). [`crate::blobs`] starts and joins fetches; the writer only publishes, so
//! neither needs the other's internals.

use crate::access::CredKey;
use crate::error::FetchError;
use crate::p2p::PieceShare;
use bytes::Bytes;
use pollen_store::{Blob, DataFile};
use pollen_upstream::Route;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokio::sync::watch;

/// Where a blob's bytes are, as seen by the clients reading it.
#[derive(Clone)]
pub(crate) enum Progress {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `0..written` of `size` are in `file`; none of them verified yet. The chunks
    /// received last are also kept in memory (the upstream's may not be on disk yet), so
    /// readers at the live edge take them without waiting for the disk or reading it back.
    Streaming {
        size: u64,
        written: u64,
        data: DataFile,
        recent: Recent,
        /// The digest has been checked: the last byte may go out (the fsync is pending).
        verified: bool,
    },
    /// Verified and committed; the handle pins it in the store.
    Done(Arc<Blob>),
    Failed(FetchError),
}

/// Bytes of a blob in flight kept in memory after they arrived, at most (but always the
/// newest chunk): clients near the live edge read them there, not back from the disk. Pieces
/// from peers arrive out of order, so the piece that extends the readable prefix often makes
/// several stored earlier readable at once.
pub(crate) const RECENT_BYTES: usize = 16 << 20;

/// Chunks of the blob kept in memory, each at its own offset: the upstream's chunks and the
/// pieces from peers that arrived last ([`RECENT_BYTES`]).
#[derive(Clone, Default)]
pub(crate) struct Recent {
    chunks: Arc<[(u64, Bytes)]>,
}

impl Recent {
    /// These chunks and `newer` ones, the oldest dropped beyond [`RECENT_BYTES`].
    pub fn with(&self, newer: impl IntoIterator<Item = (u64, Bytes)>) -> Recent {
        let mut all: Vec<(u64, Bytes)> = self.chunks.iter().cloned().chain(newer).collect();
        let mut bytes: usize = all.iter().map(|(_, c)| c.len()).sum();
        let mut oldest_kept = 0;
        while bytes > RECENT_BYTES && oldest_kept + 1 < all.len() {
            bytes -= all.get(oldest_kept).map_or(0, |(_, c)| c.len());
            oldest_kept += 1;
        }
        all.drain(..oldest_kept);
        Recent { chunks: all.into() }
    }

    /// Bytes from `pos` (inclusive) up to `limit` (exclusive) out of the chunk holding `pos`.
    pub fn slice(&self, pos: u64, limit: u64) -> Option<Bytes> {
        self.chunks.iter().find_map(|(offset, chunk)| {
            let end = offset.checked_add(chunk.len() as u64)?;
            if pos < *offset || pos >= end || pos >= limit {
                return None;
            }
            let from = usize::try_from(pos - offset).ok()?;
            let to = usize::try_from(end.min(limit) - offset).ok()?;
            Some(chunk.slice(from..to))
        })
    }
}

/// A blob being fetched, shared by every client that asked for it meanwhile.
pub(crate) struct Inflight {
    progress: watch::Sender<Progress>,
    /// Whose request started it: the credentials and repository it is fetched with.
    owner: Owner,
    /// The blob as peers see it, once its geometry is known.
    share: std::sync::Mutex<Option<Arc<PieceShare>>>,
    /// Bytes that came from peers and from the upstream (for status).
    pub from_peers: AtomicU64,
    pub from_upstream: AtomicU64,
}

impl Inflight {
    pub fn new(progress: watch::Sender<Progress>, owner: Owner) -> Inflight {
        Inflight {
            progress,
            owner,
            share: std::sync::Mutex::new(None),
            from_peers: AtomicU64::new(0),
            from_upstream: AtomicU64::new(0),
        }
    }

    /// Whose fetch it is: a client with other credentials or another repository may not
    /// simply join it.
    pub fn owner(&self) -> &Owner {
        &self.owner
    }

    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }

    pub fn progress(&self) -> &watch::Sender<Progress> {
        &self.progress
    }

    pub fn share(&self) -> Option<Arc<PieceShare>> {
        self.share.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn set_share(&self, share: Arc<PieceShare>) {
        *self.share.lock().unwrap_or_else(|e| e.into_inner()) = Some(share);
    }
}

/// The credentials and repository a fetch uses.
#[derive(PartialEq, Eq)]
pub(crate) struct Owner(CredKey, String, String);

impl Owner {
    pub fn of(route: &Route, client_auth: Option<&http::HeaderValue>) -> Owner {
        Owner(
            CredKey::of(client_auth),
            route.registry.clone(),
            route.name.to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_slices_stay_inside_chunks_and_limits() {
        // Two pieces that are not neighbours (peers deliver out of order).
        let recent = Recent::default().with([
            (104, Bytes::from_static(b"efgh")),
            (100, Bytes::from_static(b"abcd")),
            (200, Bytes::from_static(b"wxyz")),
        ]);
        assert_eq!(recent.slice(100, 300).as_deref(), Some(&b"abcd"[..]));
        assert_eq!(recent.slice(102, 300).as_deref(), Some(&b"cd"[..]));
        assert_eq!(recent.slice(104, 300).as_deref(), Some(&b"efgh"[..]));
        assert_eq!(recent.slice(201, 300).as_deref(), Some(&b"xyz"[..]));
        assert_eq!(
            recent.slice(105, 107).as_deref(),
            Some(&b"fg"[..]),
            "limit holds back"
        );
        assert_eq!(
            recent.slice(107, 107),
            None,
            "nothing readable at the limit"
        );
        assert_eq!(
            recent.slice(99, 300),
            None,
            "before the chunks: read the file"
        );
        assert_eq!(recent.slice(108, 300), None, "in a gap: read the file");
        assert_eq!(recent.slice(204, 300), None, "past the chunks");
        assert_eq!(Recent::default().slice(0, 10), None);
    }

    #[test]
    fn recent_keeps_the_newest_chunks_within_its_bound() {
        let chunk = |n: u8| Bytes::from(vec![n; RECENT_BYTES / 4]);
        let mut recent = Recent::default();
        for n in 0..6u8 {
            recent = recent.with([(u64::from(n) * (RECENT_BYTES / 4) as u64, chunk(n))]);
        }
        let kept: Vec<u64> = recent.chunks.iter().map(|(o, _)| *o).collect();
        let q = (RECENT_BYTES / 4) as u64;
        assert_eq!(
            kept,
            vec![2 * q, 3 * q, 4 * q, 5 * q],
            "the newest, up to the bound"
        );
        let big = Bytes::from(vec![9; RECENT_BYTES * 2]);
        let recent = recent.with([(0, big)]);
        assert_eq!(
            recent.chunks.len(),
            1,
            "the newest chunk stays even when too big"
        );
    }
}
