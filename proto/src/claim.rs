//! Piece hashes signed by the node that computed them, so that any peer can pass them on.
//!
//! Before a blob's map is complete, a piece's hash is vouched for only by its producer: the
//! node that fetched that piece from the upstream. Taken only over a session with the
//! producer, hashes reached at most the producer's upload slots and waiting places (40
//! sessions by default), and at scale most nodes learned no hash until the first nodes
//! completed (`benches/README.md`, part 9, "Where hashes come from"). Signed with the
//! producer's node key over the blob, its geometry, the index and the hash, a claim can be
//! relayed by anyone and still names its producer: a relay can drop claims but not forge or
//! move them to another blob or piece.

use crate::geometry::PieceGeometry;
use pollen_oci::Digest;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest producer id in bytes (an ed25519 libp2p `PeerId` is 38).
pub const MAX_PRODUCER_ID: usize = 64;

/// Most hashes in one `SignedHashes` reply: 96 bytes each with their signatures, so a frame
/// stays far below [`crate::MAX_REPLY_FRAME`].
pub const MAX_SIGNED_HASHES: usize = 8192;

/// An ed25519 signature (serde has no impl for arrays longer than 32, hence two halves).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature(pub [u8; 64]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({}..)", hex::encode(&self.0[..4]))
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        a.copy_from_slice(&self.0[..32]);
        b.copy_from_slice(&self.0[32..]);
        (a, b).serialize(s)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Signature, D::Error> {
        let (a, b) = <([u8; 32], [u8; 32])>::deserialize(d)?;
        let mut sig = [0u8; 64];
        sig[..32].copy_from_slice(&a);
        sig[32..].copy_from_slice(&b);
        Ok(Signature(sig))
    }
}

/// The bytes a producer signs for piece `index` of `digest` cut by `geometry`: bound to all
/// four, so a signature is good for that hash of that piece of that blob only.
pub fn hash_claim(
    digest: &Digest,
    geometry: &PieceGeometry,
    index: u32,
    hash: &[u8; 32],
) -> Vec<u8> {
    const DOMAIN: &[u8] = b"pollen piece hash v1\0";
    let mut out = Vec::with_capacity(DOMAIN.len() + 32 + 8 + 4 + 4 + 32);
    out.extend_from_slice(DOMAIN);
    out.extend_from_slice(digest.as_bytes());
    out.extend_from_slice(&geometry.size().to_be_bytes());
    out.extend_from_slice(&geometry.piece_size().to_be_bytes());
    out.extend_from_slice(&index.to_be_bytes());
    out.extend_from_slice(hash);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_claim_is_bound_to_blob_geometry_index_and_hash() {
        let d = Digest::from_hex(&"ab".repeat(32)).unwrap();
        let e = Digest::from_hex(&"cd".repeat(32)).unwrap();
        let g = PieceGeometry::new(10 << 20, 1 << 20).unwrap();
        let h = PieceGeometry::new(10 << 20, 2 << 20).unwrap();
        let base = hash_claim(&d, &g, 3, &[7; 32]);
        assert_ne!(base, hash_claim(&e, &g, 3, &[7; 32]));
        assert_ne!(base, hash_claim(&d, &h, 3, &[7; 32]));
        assert_ne!(base, hash_claim(&d, &g, 4, &[7; 32]));
        assert_ne!(base, hash_claim(&d, &g, 3, &[8; 32]));
        assert_eq!(base, hash_claim(&d, &g, 3, &[7; 32]));
    }
}
