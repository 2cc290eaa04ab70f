//! Piece maps: the BLAKE3 hash of every piece of a blob, so each piece can be checked on arrival.

use crate::bitfield::Bitfield;
use crate::error::{ProtoError, Violation};
use crate::geometry::PieceGeometry;
use crate::serde_util::{bounded_vec, digest_bytes};
use crate::MAX_PIECES;
use pollen_oci::Digest;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::fmt;

/// Domain separation for [`PieceMap::id`], so a map id can never equal some other sha256 that
/// happens to hash the same bytes.
const MAP_ID_DOMAIN: &[u8] = b"pollen piece map v1\0";

/// BLAKE3 of one piece's bytes: about three times faster than SHA-256 on the CPUs we run on,
/// so the upstream fetcher's extra pass over every byte (the blob digest is SHA-256 anyway)
/// stays cheap. The piece map is trusted only through the blob's SHA-256 digest, not through
/// the choice of piece hash.
fn hash_piece(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// Incremental piece hash, for code that sees a piece's bytes in several chunks (the
/// upstream stream). The one definition of "the hash of a piece" besides [`PieceMap`]'s own.
#[derive(Default, Clone)]
pub struct PieceHasher(blake3::Hasher);

impl PieceHasher {
    pub fn new() -> PieceHasher {
        PieceHasher::default()
    }
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }
    pub fn finish(&self) -> [u8; 32] {
        *self.0.finalize().as_bytes()
    }
}

/// A piece with its hash already computed, so that hashing (the costly part of a check) can
/// run on any thread and the check against a map is a comparison. The fields are private:
/// the hash is always the hash of these bytes.
#[derive(Clone, Debug)]
pub struct HashedPiece {
    index: u32,
    bytes: bytes::Bytes,
    hash: [u8; 32],
}

impl HashedPiece {
    /// Hashes `bytes` (about a millisecond per 4 MiB: call it off the async threads).
    pub fn new(index: u32, bytes: bytes::Bytes) -> HashedPiece {
        let hash = hash_piece(&bytes);
        HashedPiece { index, bytes, hash }
    }
    pub fn index(&self) -> u32 {
        self.index
    }
    pub fn bytes(&self) -> &bytes::Bytes {
        &self.bytes
    }
}

/// True when `bytes` is piece `index` of `geometry` with hash `expected`: the length must be
/// exactly the geometry's, so a truncated or padded piece fails even before hashing.
fn verify(geometry: &PieceGeometry, index: u32, expected: Option<&[u8; 32]>, bytes: &[u8]) -> bool {
    match (geometry.len_of(index), expected) {
        (Some(len), Some(expected)) => {
            u64::try_from(bytes.len()).is_ok_and(|n| n == u64::from(len))
                && hash_piece(bytes) == *expected
        }
        _ => false,
    }
}

/// Identity of a piece map: sha256 over its canonical encoding (see [`PieceMap::id`]). Peers
/// advertise it in `Have`, so maps can be compared without transferring them and pieces are
/// only ever taken from peers whose map is the same as ours.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PieceMapId(pub [u8; 32]);

impl fmt::Display for PieceMapId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PieceMapId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PieceMapId({self})")
    }
}

/// The BLAKE3 hash of every piece of the blob `digest`, cut by `geometry`.
///
/// A map is a claim by the peer that sent it, not a fact: pieces verified against it are only
/// as good as the map, and the blob's OCI digest is the final check (see `PROTOCOL.md`).
/// Invariant (checked by every constructor and on decode): one hash per piece of the geometry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "PieceMapWire")]
pub struct PieceMap {
    #[serde(with = "digest_bytes")]
    digest: Digest,
    geometry: PieceGeometry,
    hashes: Vec<[u8; 32]>,
}

/// The unvalidated wire form, checked by `TryFrom` on decode.
#[derive(Deserialize)]
struct PieceMapWire {
    #[serde(with = "digest_bytes")]
    digest: Digest,
    geometry: PieceGeometry,
    #[serde(deserialize_with = "piece_hashes")]
    hashes: Vec<[u8; 32]>,
}

/// At most one hash per possible piece.
pub(crate) fn piece_hashes<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<[u8; 32]>, D::Error> {
    bounded_vec(d, MAX_PIECES as usize)
}

impl TryFrom<PieceMapWire> for PieceMap {
    type Error = Violation;
    fn try_from(w: PieceMapWire) -> Result<Self, Violation> {
        Ok(PieceMap::new(w.digest, w.geometry, w.hashes)?)
    }
}

impl fmt::Debug for PieceMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Up to 65536 hashes: print the identity, not the contents.
        f.debug_struct("PieceMap")
            .field("digest", &self.digest)
            .field("geometry", &self.geometry)
            .field("id", &self.id())
            .finish()
    }
}

impl PieceMap {
    /// A map from its parts, refused unless there is exactly one hash per piece.
    pub fn new(
        digest: Digest,
        geometry: PieceGeometry,
        hashes: Vec<[u8; 32]>,
    ) -> Result<PieceMap, ProtoError> {
        let count = geometry.count();
        if u32::try_from(hashes.len()).ok() != Some(count) {
            return Err(ProtoError::invalid(format_args!(
                "piece map has {} hashes for {count} pieces",
                hashes.len()
            )));
        }
        Ok(PieceMap {
            digest,
            geometry,
            hashes,
        })
    }

    /// The map of a blob held whole in memory (tests, small blobs); streaming producers use
    /// [`crate::PieceMapBuilder`].
    pub fn of(
        digest: Digest,
        geometry: PieceGeometry,
        blob: &[u8],
    ) -> Result<PieceMap, ProtoError> {
        if u64::try_from(blob.len()).ok() != Some(geometry.size()) {
            return Err(ProtoError::invalid(format_args!(
                "blob has {} bytes, geometry says {}",
                blob.len(),
                geometry.size()
            )));
        }
        let piece_size = usize::try_from(geometry.piece_size())
            .map_err(|_| ProtoError::invalid("piece size does not fit in memory"))?;
        let hashes = blob.chunks(piece_size).map(hash_piece).collect();
        PieceMap::new(digest, geometry, hashes)
    }

    /// The blob this map is about.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// How the blob is cut.
    pub fn geometry(&self) -> &PieceGeometry {
        &self.geometry
    }

    /// All piece hashes, in piece order.
    pub fn hashes(&self) -> &[[u8; 32]] {
        &self.hashes
    }

    /// True when `bytes` is exactly piece `index` (right length and hash). Run this on every
    /// piece received, before it is stored or forwarded.
    pub fn verify_piece(&self, index: u32, bytes: &[u8]) -> bool {
        verify(
            &self.geometry,
            index,
            self.hashes.get(index as usize),
            bytes,
        )
    }

    /// sha256 over the canonical encoding, independent of the wire codec:
    /// `"pollen piece map v1\0" || digest (32) || size (u64 LE) || piece_size (u32 LE) ||
    /// count (u32 LE) || hash_0 || ... || hash_{count-1}`.
    pub fn id(&self) -> PieceMapId {
        let mut h = Sha256::new();
        h.update(MAP_ID_DOMAIN);
        h.update(self.digest.as_bytes());
        h.update(self.geometry.size().to_le_bytes());
        h.update(self.geometry.piece_size().to_le_bytes());
        h.update(self.geometry.count().to_le_bytes());
        for hash in &self.hashes {
            h.update(hash);
        }
        PieceMapId(h.finalize().into())
    }
}

/// A piece map still arriving (`PieceHashes` replies from the peers that fetch the blob's
/// pieces from the upstream and hash them as they arrive; with several fetchers each sends the
/// hashes of its own ranges, so the map fills out of order). Pieces whose hash is known can be
/// verified already; once every hash is in, [`Self::finish`] yields the complete map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartialPieceMap {
    digest: Digest,
    geometry: PieceGeometry,
    /// One slot per piece; meaningful where `known` is set.
    hashes: Vec<[u8; 32]>,
    known: Bitfield,
}

impl PartialPieceMap {
    /// A map of the blob with no hash known yet.
    pub fn new(digest: Digest, geometry: PieceGeometry) -> PartialPieceMap {
        PartialPieceMap {
            digest,
            geometry,
            hashes: vec![[0; 32]; geometry.count() as usize],
            known: Bitfield::new(&geometry),
        }
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    pub fn geometry(&self) -> &PieceGeometry {
        &self.geometry
    }

    /// The hash of piece `index`, if known.
    pub fn hash(&self, index: u32) -> Option<&[u8; 32]> {
        self.known
            .get(index)
            .then(|| self.hashes.get(index as usize))
            .flatten()
    }

    /// Which pieces have a known hash.
    pub fn known(&self) -> &Bitfield {
        &self.known
    }

    /// Every piece's slot, in piece order: the hash where [`Self::known`] is set, zeros
    /// elsewhere (for persisting and publishing without a copy per piece).
    pub fn slots(&self) -> &[[u8; 32]] {
        &self.hashes
    }

    /// Adds the hashes of pieces `first..first + hashes.len()`, as sent in `PieceHashes`:
    /// any range inside the geometry. A hash already known must be equal: a different one
    /// means one of the two senders lied, and is refused ([`ProtoError::Invalid`]) with the
    /// map unchanged.
    pub fn insert(&mut self, first: u32, hashes: &[[u8; 32]]) -> Result<(), ProtoError> {
        let end = u64::from(first) + hashes.len() as u64;
        if end > u64::from(self.geometry.count()) {
            return Err(ProtoError::invalid(format_args!(
                "piece hashes run to {end}, past {} pieces",
                self.geometry.count()
            )));
        }
        for (index, h) in (first..).zip(hashes) {
            if self.hash(index).is_some_and(|known| known != h) {
                return Err(ProtoError::invalid(format_args!(
                    "piece {index} hash differs from the known map"
                )));
            }
        }
        for (index, h) in (first..).zip(hashes) {
            if let Some(slot) = self.hashes.get_mut(index as usize) {
                *slot = *h;
                self.known.set(index)?;
            }
        }
        Ok(())
    }

    /// True when piece `index`'s hash is known and `bytes` matches it and the geometry.
    pub fn verify_piece(&self, index: u32, bytes: &[u8]) -> bool {
        verify(&self.geometry, index, self.hash(index), bytes)
    }

    /// [`PartialPieceMap::verify_piece`] for a piece hashed already.
    pub fn verify_hashed(&self, piece: &HashedPiece) -> bool {
        let index = piece.index;
        match (self.geometry.len_of(index), self.hash(index)) {
            (Some(len), Some(expected)) => {
                u64::try_from(piece.bytes.len()).is_ok_and(|n| n == u64::from(len))
                    && piece.hash == *expected
            }
            _ => false,
        }
    }

    /// The complete map once every hash is known; otherwise `self` back, unchanged.
    pub fn finish(self) -> Result<PieceMap, PartialPieceMap> {
        if !self.known.is_complete() {
            return Err(self);
        }
        Ok(PieceMap {
            digest: self.digest,
            geometry: self.geometry,
            hashes: self.hashes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MIN_PIECE_SIZE;

    fn blob(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn map_of(data: &[u8]) -> PieceMap {
        let g = PieceGeometry::new(data.len() as u64, MIN_PIECE_SIZE).unwrap();
        PieceMap::of(Digest::of(data), g, data).unwrap()
    }

    #[test]
    fn verify_right_and_wrong_bytes() {
        let data = blob(3 * MIN_PIECE_SIZE as usize + 100);
        let map = map_of(&data);
        assert_eq!(map.geometry().count(), 4);
        let ps = MIN_PIECE_SIZE as usize;
        for (i, piece) in data.chunks(ps).enumerate() {
            assert!(map.verify_piece(i as u32, piece));
        }
        let mut bad = data[..ps].to_vec();
        bad[17] ^= 1;
        assert!(!map.verify_piece(0, &bad));
        // Right bytes under the wrong index, truncated, padded, past the end.
        assert!(!map.verify_piece(1, &data[..ps]));
        assert!(!map.verify_piece(0, &data[..ps - 1]));
        assert!(!map.verify_piece(3, &data[3 * ps - 1..]));
        assert!(!map.verify_piece(4, &[]));
        assert!(!map.verify_piece(u32::MAX, &data[..ps]));
    }

    #[test]
    fn hash_count_must_match_geometry() {
        let data = blob(2 * MIN_PIECE_SIZE as usize);
        let map = map_of(&data);
        let g = *map.geometry();
        let mut hashes = map.hashes().to_vec();
        hashes.push([0; 32]);
        assert!(PieceMap::new(Digest::of(&data), g, hashes.clone()).is_err());
        hashes.truncate(1);
        assert!(PieceMap::new(Digest::of(&data), g, hashes).is_err());
        assert!(PieceMap::of(Digest::of(&data), g, &data[1..]).is_err());
    }

    #[test]
    fn id_is_stable_and_sensitive() {
        let data = blob(2 * MIN_PIECE_SIZE as usize + 1);
        let a = map_of(&data);
        assert_eq!(a.id(), map_of(&data).id());
        let mut other = data.clone();
        other[5] ^= 0xff;
        let g = *a.geometry();
        let b = PieceMap::of(*a.digest(), g, &other).unwrap();
        assert_ne!(a.id(), b.id());
        let c = PieceMap::new(Digest::of(b"x"), g, a.hashes().to_vec()).unwrap();
        assert_ne!(a.id(), c.id());
        assert_eq!(a.id().to_string().len(), 64);
    }

    #[test]
    fn partial_map_fills_in_any_order() {
        let data = blob(3 * MIN_PIECE_SIZE as usize);
        let full = map_of(&data);
        let mut p = PartialPieceMap::new(*full.digest(), *full.geometry());
        let ps = MIN_PIECE_SIZE as usize;
        assert!(!p.verify_piece(0, &data[..ps]));
        p.insert(2, &full.hashes()[2..]).unwrap();
        assert!(p.verify_piece(2, &data[2 * ps..]));
        assert!(!p.verify_piece(0, &data[..ps]), "not known yet");
        p.insert(0, &full.hashes()[..1]).unwrap();
        assert!(p.verify_piece(0, &data[..ps]));
        assert!(!p.verify_piece(1, &data[ps..2 * ps]));
        p.insert(0, &full.hashes()[..1]).unwrap(); // again, agreeing
        let before = p.clone();
        assert!(p.insert(1, &[[0; 32], [7; 32]]).is_err(), "disagrees");
        assert_eq!(p, before, "a refused insert changes nothing");
        assert!(p.insert(2, &[[0; 32]; 3]).is_err(), "past the end");
        assert_eq!(p.known().count_ones(), 2);
        let mut p = p.finish().unwrap_err();
        p.insert(1, &full.hashes()[1..2]).unwrap();
        assert_eq!(p.finish().unwrap(), full);
    }
}
