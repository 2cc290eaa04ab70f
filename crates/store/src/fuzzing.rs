//! The parsers of what the store reads back at start, reachable from the fuzz targets
//! (`fuzz/`) and nothing else: not part of the API, hidden from the docs.

use pollen_oci::Digest;
use pollen_proto::{Bitfield, PartialPieceMap, PieceMap};

/// A partial's `state.json`, parsed and checked against the digest and geometry it claims
/// itself (at start the store checks it against the ones it asks for): the map, the pieces
/// it claims and those this node produced.
pub fn parse_state(text: &[u8]) -> Option<(PartialPieceMap, Bitfield, Bitfield)> {
    let state = crate::partial_state::parse_state(text)?;
    let digest: Digest = state.digest.parse().ok()?;
    let geometry = state.geometry;
    crate::partial_state::check_state(state, digest, geometry)
}

/// A complete blob's `.pieces` sidecar (the wire frame of its piece map), for `digest`.
pub fn parse_piece_map(frame: &[u8], digest: &Digest) -> Option<PieceMap> {
    crate::piece_map_from_frame(frame, digest)
}
