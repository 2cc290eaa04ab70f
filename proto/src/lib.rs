//! Pollen's peer wire protocol: how two agents exchange pieces of a blob over one libp2p stream.
//!
//! Everything a peer sends is hostile until it has been decoded here. Decoding is bounded
//! (every length is checked against a limit before anything is allocated for it) and strict
//! (a value that breaks an invariant of this crate's types is refused), so code past this
//! boundary can rely on a [`PieceGeometry`], [`Bitfield`] or [`PieceMap`] being well formed.
//! A peer that sends something undecodable or invalid gets an error for which
//! [`ProtoError::is_peer_fault`] is true, so the caller can blame and ban its `PeerId`.
//!
//! What this crate does not do: authentication and encryption (libp2p's upgrade does), choosing
//! peers or pieces, storage, and timeouts. Every read here waits as long as the peer makes it
//! wait: the caller wraps each call in `tokio::time::timeout`.
//!
//! The protocol itself (session order, limits, what a receiver must verify) is described in
//! `PROTOCOL.md` next to this crate's `Cargo.toml`.
//!
//! ```
//! use pollen_oci::Digest;
//! use pollen_proto::{PieceGeometry, PieceMapBuilder};
//!
//! // The fetching node hashes pieces as the blob streams in from the upstream...
//! let blob = vec![7u8; 500_000];
//! let geometry = PieceGeometry::choose(blob.len() as u64, None)?; // 256 KiB pieces: 2
//! let mut builder = PieceMapBuilder::new(Digest::of(&blob), geometry);
//! for chunk in blob.chunks(65_536) {
//!     builder.update(chunk)?;
//! }
//! let map = builder.finish()?;
//! // ...and a downloader checks each piece it receives before storing it.
//! let last = geometry.range_of(1).unwrap();
//! assert!(map.verify_piece(1, &blob[last.start as usize..]));
//! assert!(!map.verify_piece(0, &blob[..100]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod bitfield;
mod buffer;
mod builder;
mod claim;
mod codec;
mod error;
mod geometry;
#[cfg(feature = "io")]
mod io;
mod message;
mod piecemap;
mod preheat;
mod serde_util;
mod tracker;

pub use bitfield::Bitfield;
pub use buffer::{PieceBuf, DIRECT_ALIGN};
pub use builder::{BuildError, PieceMapBuilder};
pub use claim::{hash_claim, Signature, MAX_PRODUCER_ID, MAX_SIGNED_HASHES};
pub use codec::{decode_reply, decode_request, encode_reply, encode_request};
pub use error::{GeometryError, ProtoError};
pub use geometry::PieceGeometry;
#[cfg(feature = "io")]
pub use io::{
    read_piece_body, read_reply, read_request, write_piece, write_piece_header, write_reply,
    write_request,
};
pub use message::{ErrorCode, Reply, Request};
pub use piecemap::{HashedPiece, PartialPieceMap, PieceHasher, PieceMap, PieceMapId};
#[cfg(feature = "io")]
pub use preheat::{
    read_preheat_reply, read_preheat_request, write_preheat_reply, write_preheat_request,
};
pub use preheat::{PreheatReply, PreheatRequest, MAX_PREHEAT_NAME, PREHEAT_PROTOCOL};
pub use tracker::{
    decode_tracker_reply, decode_tracker_request, encode_tracker_reply, encode_tracker_request,
    TrackerReply, TrackerRequest, LEGACY_TRACKER_PROTOCOL, MAX_LABELS, MAX_LABEL_LEN,
    MAX_PEER_ID_LEN, MAX_RESOLVE_ERROR, MAX_TRACKER_FRAME, MAX_TRACKER_PEERS, TRACKER_PROTOCOL,
};
#[cfg(feature = "io")]
pub use tracker::{
    read_tracker_reply, read_tracker_request, write_tracker_reply, write_tracker_request,
};

/// The libp2p protocol id. The version is part of the id: an incompatible change to anything in
/// this crate's wire format gets a new id, and libp2p's multistream-select negotiates the
/// newest one both sides speak. There is no in-band version field. Version 2 added
/// `Request::Holding`, version 3 `Reply::SignedHashes`.
pub const PROTOCOL: &str = "/pollen/pieces/3";

/// The id before `Reply::SignedHashes`: an agent still accepts it, and opens it to a peer that
/// does not speak [`PROTOCOL`] (an older agent during a rolling upgrade). An uploader never
/// sends `SignedHashes` on it (only its own hashes, unsigned). Its messages are otherwise the
/// same. Version 1 is no longer spoken.
pub const LEGACY_PROTOCOL: &str = "/pollen/pieces/2";

/// Smallest piece size a geometry may have (for tests and explicit overrides); below it the
/// per-piece overhead (a hash, a frame, a request) outweighs the payload.
pub const MIN_PIECE_SIZE: u32 = 64 * 1024;

/// Largest piece size: bounds the memory one piece body takes on the receiving side.
pub const MAX_PIECE_SIZE: u32 = 64 * 1024 * 1024;

/// Largest number of pieces in one blob: bounds bitfields (8 KiB) and piece maps (2 MiB).
pub const MAX_PIECES: u32 = 1 << 16;

/// Largest blob the protocol can describe: `MAX_PIECES` pieces of `MAX_PIECE_SIZE` (4 TiB).
pub const MAX_BLOB_SIZE: u64 = MAX_PIECES as u64 * MAX_PIECE_SIZE as u64;

/// Largest request frame payload (downloader -> uploader). Requests are a tag and a digest or
/// an index (at most 33 bytes encoded), so anything bigger is garbage; the small limit keeps
/// an uploader's per-stream memory tiny.
pub const MAX_REQUEST_FRAME: u32 = 256;

/// Largest reply frame payload (uploader -> downloader): a full [`PieceMap`] of `MAX_PIECES`
/// hashes (2 MiB) plus 4 KiB for its header. Every other reply is far smaller and is further
/// bounded per message (see [`MAX_HAVE_MORE`], [`MAX_ERROR_MESSAGE`]); piece bodies are not
/// frames at all.
pub const MAX_REPLY_FRAME: u32 = MAX_PIECES * 32 + 4096;

/// Most indices in one `HaveMore`: an uploader batches new pieces, and a bounded batch keeps
/// each frame small (at most ~20 KiB encoded).
pub const MAX_HAVE_MORE: usize = 4096;

/// Longest `Error` message in bytes: enough for a diagnostic, too short to be a payload.
pub const MAX_ERROR_MESSAGE: usize = 512;

/// Most `GetPiece` requests a downloader may have outstanding on one session. Enough to keep
/// a fast link busy with 4 MiB pieces; an uploader may treat more as a protocol violation.
pub const MAX_OUTSTANDING_REQUESTS: usize = 16;
