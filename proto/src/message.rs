//! The messages, one enum per direction, and the rules each must satisfy.
//!
//! The wire tag of a variant is its position: never reorder, insert or remove variants or
//! fields without a new [`crate::PROTOCOL`] id (the golden-bytes tests catch accidents).

use crate::bitfield::Bitfield;
use crate::claim::{Signature, MAX_PRODUCER_ID, MAX_SIGNED_HASHES};
use crate::geometry::PieceGeometry;
use crate::piecemap::{piece_hashes, PieceMap, PieceMapId};
use crate::serde_util::{bounded_vec, digest_bytes};
use crate::{MAX_ERROR_MESSAGE, MAX_HAVE_MORE, MAX_PIECES, MAX_PIECE_SIZE};
use pollen_oci::Digest;
use serde::{Deserialize, Serialize};

/// Downloader -> uploader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Opens the session about one blob; must be the first request, and is sent once per
    /// stream. The uploader answers `Have` (also with an empty bitfield if it is fetching the
    /// blob itself), or `Error(UnknownBlob)` and closes.
    Interest {
        /// The blob, by its OCI digest: the only thing a downloader reveals.
        #[serde(with = "digest_bytes")]
        digest: Digest,
    },
    /// Asks for the piece map; always answered. A seed (`complete`) answers `PieceMap`; any
    /// other uploader answers `PieceHashes` with the hashes it vouches for: the peer fetching
    /// the blob from the upstream its growing prefix (and pushes more later), anyone else an
    /// empty list, since a map is served only once verified end to end or by its producer.
    GetPieceMap,
    /// Asks for one piece the uploader announced; several may be outstanding (pipelined, at
    /// most [`crate::MAX_OUTSTANDING_REQUESTS`]). Answered by `Piece` and its body, in any
    /// order; dropped if the session is choked.
    GetPiece {
        /// Piece index, below the geometry's count.
        index: u32,
    },
    /// Withdraws a `GetPiece` not yet answered. The piece may still arrive (it may already be
    /// on the wire): the downloader reads and discards it.
    Cancel {
        /// The index of the `GetPiece` withdrawn.
        index: u32,
    },
    /// Ends the session; the downloader then closes its side of the stream.
    NotInterested,
    /// How many upload slots the downloader's node holds now, at any uploader and over all
    /// its downloads. An uploader hands a free slot to the waiting session whose node holds
    /// the fewest (`pollen_core::upload::Slots`); sent after `Interest` and whenever the count
    /// changes (`/pollen/pieces/2` and later only). Taken on trust:
    /// a peer that says 0 to be served first still gets at most its share of the slots.
    Holding {
        /// Slots held; any value is valid.
        slots: u32,
    },
}

/// Uploader -> downloader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The uploader's full state for the blob; answers `Interest` and may be sent again at any
    /// time (it replaces the previous state, e.g. when a fetch from the upstream completes).
    Have {
        /// How the blob is cut; the downloader's own geometry must be identical.
        geometry: PieceGeometry,
        /// The pieces the uploader has verified and can serve now.
        bitfield: Bitfield,
        /// The uploader holds the whole blob, verified against its digest: it is a seed and
        /// answers `GetPieceMap` with the complete `PieceMap`.
        complete: bool,
        /// Id of the complete map the uploader's pieces were verified against; `None` while
        /// it has no complete map (it is fetching from the upstream and its map is still
        /// growing, or it has nothing yet). A downloader takes pieces only from peers whose
        /// id equals that of its own map, so a bad piece is unambiguously the sender's fault.
        map_id: Option<PieceMapId>,
    },
    /// Pieces the uploader got since its last `Have`/`HaveMore` (1..=`MAX_HAVE_MORE`).
    HaveMore {
        /// Newly verified pieces, each below the geometry's count.
        #[serde(deserialize_with = "have_more")]
        indices: Vec<u32>,
    },
    /// The complete piece map (answer to `GetPieceMap` from a seed).
    PieceMap(PieceMap),
    /// Hashes of pieces `first..first + hashes.len()` that the uploader computed from the
    /// upstream's bytes (see `GetPieceMap`): any range, since several nodes may each fetch a
    /// part of the blob; the hash of a piece always goes before the `HaveMore` announcing it.
    PieceHashes {
        /// Index of the first piece of the range.
        first: u32,
        /// BLAKE3 hash of each piece of the range, in order.
        #[serde(deserialize_with = "piece_hashes")]
        hashes: Vec<[u8; 32]>,
    },
    /// Header of a piece: exactly `len` raw bytes follow on the stream, outside any frame.
    Piece {
        /// Which piece follows.
        index: u32,
        /// Its length, which must equal `PieceGeometry::len_of(index)`.
        len: u32,
    },
    /// The uploader will not serve pieces until `Unchoked`; outstanding `GetPiece`s are
    /// dropped (re-request after `Unchoked`). Every session starts choked.
    Choked,
    /// The uploader grants an upload slot: `GetPiece` will be served.
    Unchoked,
    /// The session failed; the uploader closes the stream after sending it.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// Diagnostic for logs, at most `MAX_ERROR_MESSAGE` bytes; never acted upon.
        message: String,
    },
    /// Hashes of pieces `first..first + hashes.len()`, each signed by `producer`, the node
    /// that computed it from the upstream's bytes (`hash_claim`): the uploader's own, or ones
    /// it took from a peer and checked, passed on (version 3 only). A receiver checks every
    /// signature against the producer's key before it takes a hash, and blames the producer
    /// for a hash the blob's digest proves wrong.
    SignedHashes {
        /// The producer's node id (a libp2p `PeerId`'s bytes, at most `MAX_PRODUCER_ID`).
        #[serde(deserialize_with = "producer_id")]
        producer: Vec<u8>,
        /// Index of the first piece of the run.
        first: u32,
        /// BLAKE3 hash of each piece of the run (1..=`MAX_SIGNED_HASHES`).
        #[serde(deserialize_with = "signed_hashes")]
        hashes: Vec<[u8; 32]>,
        /// The producer's signature of each hash's claim, as many as `hashes`.
        #[serde(deserialize_with = "signatures")]
        signatures: Vec<Signature>,
    },
}

/// Why an uploader ended a session. Every error is final for the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorCode {
    /// The uploader has nothing of that blob (any more).
    UnknownBlob,
    /// The downloader broke the protocol (request out of order, a second `Interest`, an index
    /// it was never offered, too many outstanding requests).
    BadRequest,
    /// No capacity for another session now; try again later or elsewhere.
    Busy,
    /// Something failed on the uploader's side (e.g. reading its disk).
    Internal,
}

/// At most `MAX_PRODUCER_ID` bytes.
fn producer_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    bounded_vec(d, MAX_PRODUCER_ID)
}

/// At most `MAX_SIGNED_HASHES` hashes.
fn signed_hashes<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<[u8; 32]>, D::Error> {
    bounded_vec(d, MAX_SIGNED_HASHES)
}

/// At most `MAX_SIGNED_HASHES` signatures.
fn signatures<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Signature>, D::Error> {
    bounded_vec(d, MAX_SIGNED_HASHES)
}

/// A run of `len` hashes from piece `first` ends within [`MAX_PIECES`].
fn run_within(what: &str, first: u32, len: usize) -> Result<(), String> {
    let end = u64::from(first) + len as u64;
    match end > u64::from(MAX_PIECES) {
        true => Err(format!("{what} run to {end}, past {MAX_PIECES}")),
        false => Ok(()),
    }
}

/// At most `MAX_HAVE_MORE` indices.
fn have_more<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    bounded_vec(d, MAX_HAVE_MORE)
}

impl Request {
    /// Checks the rules a decoded request must satisfy beyond its encoding. Index bounds that
    /// depend on the blob are the session's to check against its geometry.
    pub(crate) fn validate(&self) -> Result<(), String> {
        match self {
            Request::GetPiece { index } | Request::Cancel { index } if *index >= MAX_PIECES => {
                Err(format!("piece index {index} exceeds {MAX_PIECES}"))
            }
            _ => Ok(()),
        }
    }
}

impl Reply {
    /// An `Error` reply with `message` cut to [`MAX_ERROR_MESSAGE`] bytes (at a character
    /// boundary), so a long diagnostic never makes the reply unsendable.
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Reply {
        let mut message = message.into();
        if message.len() > MAX_ERROR_MESSAGE {
            let mut cut = MAX_ERROR_MESSAGE;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        Reply::Error { code, message }
    }

    /// Checks the rules a decoded reply must satisfy beyond its encoding (and the invariants
    /// its parts already checked). Cross-message rules (an index below the geometry's count, a
    /// map matching the advertised id) are the session's.
    pub(crate) fn validate(&self) -> Result<(), String> {
        match self {
            Reply::Have {
                geometry,
                bitfield,
                complete,
                map_id,
            } => {
                if bitfield.count() != geometry.count() {
                    return Err(format!(
                        "bitfield of {} pieces for a geometry of {}",
                        bitfield.count(),
                        geometry.count()
                    ));
                }
                if *complete && !bitfield.is_complete() {
                    return Err("complete, but the bitfield lacks pieces".into());
                }
                if *complete && map_id.is_none() {
                    return Err("complete, but no piece map id".into());
                }
                Ok(())
            }
            Reply::HaveMore { indices } => {
                if indices.is_empty() || indices.len() > MAX_HAVE_MORE {
                    return Err(format!(
                        "HaveMore with {} indices (allowed 1..={MAX_HAVE_MORE})",
                        indices.len()
                    ));
                }
                match indices.iter().find(|&&i| i >= MAX_PIECES) {
                    Some(i) => Err(format!("piece index {i} exceeds {MAX_PIECES}")),
                    None => Ok(()),
                }
            }
            Reply::PieceHashes { first, hashes } => {
                run_within("piece hashes", *first, hashes.len())
            }
            Reply::SignedHashes {
                producer,
                first,
                hashes,
                signatures,
            } => {
                if producer.is_empty() || hashes.is_empty() || hashes.len() != signatures.len() {
                    return Err(format!(
                        "signed hashes: a producer of {} bytes, {} hashes, {} signatures",
                        producer.len(),
                        hashes.len(),
                        signatures.len()
                    ));
                }
                run_within("signed hashes", *first, hashes.len())
            }
            Reply::Piece { index, len } => {
                if *index >= MAX_PIECES {
                    return Err(format!("piece index {index} exceeds {MAX_PIECES}"));
                }
                if *len == 0 || *len > MAX_PIECE_SIZE {
                    return Err(format!("piece length {len} outside 1..={MAX_PIECE_SIZE}"));
                }
                Ok(())
            }
            Reply::Error { message, .. } if message.len() > MAX_ERROR_MESSAGE => Err(format!(
                "error message of {} bytes exceeds {MAX_ERROR_MESSAGE}",
                message.len()
            )),
            Reply::PieceMap(_) | Reply::Choked | Reply::Unchoked | Reply::Error { .. } => Ok(()),
        }
    }
}
