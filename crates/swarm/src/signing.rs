//! Signatures with the node key, for claims other nodes pass on (`pollen_proto::hash_claim`).
//! The public key is inside an ed25519 `PeerId` (an identity multihash), so a signature can be
//! checked against the id alone, with no key exchange.

use libp2p::identity::{Keypair, PublicKey};
use libp2p::PeerId;

/// Signs with this node's key; its id is the producer named beside each signature.
#[derive(Clone)]
pub struct Signer {
    key: Keypair,
    id: std::sync::Arc<[u8]>,
}

impl Signer {
    pub(crate) fn new(key: Keypair) -> Signer {
        let id = key.public().to_peer_id().to_bytes().into();
        Signer { key, id }
    }

    /// A signer with a fresh key of its own: a producer that is no node here (tests).
    pub fn generate() -> Signer {
        Signer::new(Keypair::generate_ed25519())
    }

    /// This node's id (`PeerId` bytes).
    pub fn id(&self) -> std::sync::Arc<[u8]> {
        self.id.clone()
    }

    /// The signature of `msg`; `None` if the key cannot sign (not ed25519).
    pub fn sign(&self, msg: &[u8]) -> Option<[u8; 64]> {
        self.key.sign(msg).ok()?.try_into().ok()
    }
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").finish_non_exhaustive()
    }
}

/// The key inside `producer`, a `PeerId`'s bytes, if it is an ed25519 id: the only kind whose
/// key the id carries. Anything else names no key and is not believed. Check a signature
/// with the key's own `verify`.
pub fn producer_key(producer: &[u8]) -> Option<PublicKey> {
    let id = PeerId::from_bytes(producer).ok()?;
    let multihash = id.as_ref();
    // 0x00: the identity multihash, whose digest is the protobuf-encoded public key.
    if multihash.code() != 0x00 {
        return None;
    }
    let key = PublicKey::try_decode_protobuf(multihash.digest()).ok()?;
    (key.to_peer_id() == id).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_checks_against_the_id_alone_and_only_for_its_message() {
        let signer = Signer::new(Keypair::generate_ed25519());
        let sig = signer.sign(b"claim").unwrap();
        let key = producer_key(&signer.id()).unwrap();
        assert!(key.verify(b"claim", &sig));
        assert!(!key.verify(b"claim!", &sig));
        let mut bad = sig;
        bad[0] ^= 1;
        assert!(!key.verify(b"claim", &bad));
        let other = producer_key(&Signer::new(Keypair::generate_ed25519()).id()).unwrap();
        assert!(!other.verify(b"claim", &sig), "another node's key");
    }

    #[test]
    fn an_id_that_carries_no_key_names_no_producer() {
        assert!(producer_key(b"").is_none());
        assert!(producer_key(&[0u8; 38]).is_none());
        // A sha256 multihash PeerId (RSA-style) does not embed its key.
        let hashed =
            PeerId::from_multihash(libp2p::multihash::Multihash::wrap(0x12, &[7u8; 32]).unwrap())
                .unwrap();
        assert!(producer_key(&hashed.to_bytes()).is_none());
    }
}
