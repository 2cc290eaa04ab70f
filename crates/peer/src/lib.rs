//! One piece-exchange session between two Pollen agents, both sides, over one already
//! authenticated bidirectional byte stream (a libp2p stream in production, a
//! `tokio::io::duplex` pair in tests). It speaks `proto/PROTOCOL.md` and nothing else: no
//! libp2p, no store, no peer or piece selection.
//!
//! - **Uploader**: [`serve`] answers one downloader from a [`PieceSource`] (what this node
//!   holds, and a watch on how that grows), under node-wide [`UploadLimits`] (a cap on
//!   sessions being served and a byte rate).
//! - **Downloader**: [`Session`] opens a session about a digest, pipelines piece requests and
//!   yields checked [`Event`]s. It does not verify piece contents; the caller does, with
//!   [`verify`], against the map it holds.
//!
//! Every wait on the peer has a deadline ([`SessionConfig`]), and every failure says who is to
//! blame ([`SessionError::is_peer_fault`]), so the caller can ban a `PeerId` for the blob.
//!
//! ```no_run
//! # async fn demo(stream: tokio::io::DuplexStream, digest: pollen_oci::Digest) -> Result<(), Box<dyn std::error::Error>> {
//! use pollen_peer::{verify, Event, Session, SessionConfig};
//! use pollen_proto::PartialPieceMap;
//!
//! let (mut session, have) = Session::open(stream, digest, &SessionConfig::default()).await?;
//! let mut map = PartialPieceMap::new(digest, have.geometry);
//! session.request_map()?;
//! loop {
//!     match session.next_event().await? {
//!         Event::Hashes { first, hashes } => map.insert(first, &hashes)?,
//!         Event::Unchoked => session.request(0)?,
//!         Event::Piece { index, bytes } => {
//!             // Never store, serve or forward a piece that fails here.
//!             if !verify(&map, index, &bytes) { /* drop it; blame the sender if it vouched */ }
//!             break;
//!         }
//!         _ => {}
//!     }
//! }
//! session.close().await;
//! # Ok(()) }
//! ```

mod config;
mod error;
mod limits;
mod serve;
mod session;
mod slots;
mod source;
mod spread;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{
    SessionConfig, DEFAULT_IDLE_TIMEOUT, DEFAULT_SLOT_TIMEOUT, DEFAULT_STALL_TIMEOUT,
};
pub use error::SessionError;
pub use limits::{
    PeerKey, RateLimiter, UploadLimits, DEFAULT_MAX_UPLOAD_SESSIONS, PEER_SHARE_DIVISOR,
    SLOTLESS_MAX_BYTES, SLOT_YIELD_AFTER,
};
pub use serve::{serve, serve_peer, ServeEnd, ServeSummary};
pub use session::{Event, Have, RequestError, Session};
pub use source::{BlobView, PieceFuture, PieceReader, PieceSource, PieceState, Proof, Proofs};
pub use spread::Spread;

use pollen_proto::{PartialPieceMap, PieceMap};

/// Hashes a received piece can be checked against: a complete [`PieceMap`] or a growing
/// [`PartialPieceMap`].
pub trait KnownHashes: sealed::Sealed {
    /// True when `bytes` is exactly piece `index` (length and hash).
    fn verify_piece(&self, index: u32, bytes: &[u8]) -> bool;
}

impl KnownHashes for PieceMap {
    fn verify_piece(&self, index: u32, bytes: &[u8]) -> bool {
        PieceMap::verify_piece(self, index, bytes)
    }
}

impl KnownHashes for PartialPieceMap {
    fn verify_piece(&self, index: u32, bytes: &[u8]) -> bool {
        PartialPieceMap::verify_piece(self, index, bytes)
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for pollen_proto::PieceMap {}
    impl Sealed for pollen_proto::PartialPieceMap {}
}

/// Checks an [`Event::Piece`] against the map the caller holds, before the piece is stored,
/// served or forwarded. `false` for a wrong length, a wrong hash, or a piece whose hash the
/// (partial) map does not have yet.
///
/// On `false` the piece is dropped. Whether the sender is to blame depends on the map
/// (PROTOCOL.md, "What a receiver must verify"): if the sender vouched for it (it sent the map
/// or the hashes itself, or its `Have` advertised the same map id), ban its `PeerId` for the
/// blob; a piece whose hash is simply not known yet is neither right nor wrong. Pieces
/// verified against maps with different ids must never be mixed.
pub fn verify<M: KnownHashes + ?Sized>(map: &M, index: u32, bytes: &[u8]) -> bool {
    map.verify_piece(index, bytes)
}
