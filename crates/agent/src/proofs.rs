//! Producers' signatures of piece hashes (`pollen_proto::hash_claim`). A node signs the hashes
//! it computes from the upstream's bytes, checks the signatures of hashes peers pass on before
//! it takes them, and keeps both so its own sessions pass them on further
//! (docs/trust-model.md, "Piece maps"). All of it runs on the blob's writer thread: checking a
//! signature costs tens of microseconds, and a run may hold thousands.

use pollen_oci::Digest;
use pollen_peer::{Proof, Proofs};
use pollen_proto::{hash_claim, Bitfield, PieceGeometry, Signature};
use pollen_swarm::signing::producer_key;
use pollen_swarm::Signer;
use std::sync::Arc;

/// Signatures that came with hashes from a peer, not checked yet.
pub(crate) struct Signed {
    pub producer: Arc<[u8]>,
    pub signatures: Vec<Signature>,
}

/// One blob's signatures: what its sessions may pass on.
pub(crate) struct Book {
    digest: Digest,
    geometry: PieceGeometry,
    signer: Option<Signer>,
    proofs: Arc<Proofs>,
    /// The pieces with a signature in `proofs`.
    proven: Bitfield,
}

impl Book {
    pub fn new(digest: Digest, geometry: PieceGeometry, signer: Option<Signer>) -> Book {
        Book {
            digest,
            geometry,
            signer,
            proofs: Arc::new(Proofs::new(geometry.count())),
            proven: Bitfield::new(&geometry),
        }
    }

    /// Signs the hashes this node produced that it has not signed yet (`slots`: the map's).
    pub fn sign_produced(&mut self, produced: &Bitfield, slots: &[[u8; 32]]) {
        let Some(signer) = &self.signer else {
            return;
        };
        let unsigned: Vec<u32> = produced
            .iter_ones()
            .filter(|i| !self.proven.get(*i))
            .collect();
        for index in unsigned {
            let Some(hash) = slots.get(index as usize) else {
                continue;
            };
            let claim = hash_claim(&self.digest, &self.geometry, index, hash);
            let Some(signature) = signer.sign(&claim) else {
                return;
            };
            let proof = Proof {
                producer: signer.id(),
                signature: Signature(signature),
            };
            if self.proofs.add(index, proof) {
                let _ = self.proven.set(index);
            }
        }
    }

    /// Checks the signature of every hash of the run that `known` lacks: `Err` names the first
    /// that fails (the sender passed on a forgery, or signed garbage itself).
    pub fn check(
        &self,
        first: u32,
        hashes: &[[u8; 32]],
        signed: &Signed,
        known: &Bitfield,
    ) -> Result<(), String> {
        let wanted = |i: u32| !known.get(i);
        check(&self.digest, &self.geometry, first, hashes, signed, wanted)
    }

    /// Keeps the signatures [`Book::check`] checked (of the pieces `known` lacked before the
    /// run) whose hashes the map now holds (`slots`), where none is kept yet.
    pub fn keep(
        &mut self,
        first: u32,
        hashes: &[[u8; 32]],
        signed: Signed,
        known: &Bitfield,
        slots: &[[u8; 32]],
    ) {
        for ((index, hash), signature) in (first..).zip(hashes).zip(signed.signatures) {
            let in_map = slots.get(index as usize) == Some(hash);
            let proof = Proof {
                producer: signed.producer.clone(),
                signature,
            };
            if !known.get(index) && in_map && self.proofs.add(index, proof) {
                let _ = self.proven.set(index);
            }
        }
    }

    /// What the blob's sessions are given: the table and the pieces it covers.
    pub fn shared(&self) -> (Arc<Proofs>, Bitfield) {
        (self.proofs.clone(), self.proven.clone())
    }

    pub fn proven(&self) -> u32 {
        self.proven.count_ones()
    }
}

/// Checks the signature of each hash of the run at an index `wanted` takes, against the key
/// inside the producer's id: `Err` names the first that fails.
pub(crate) fn check(
    digest: &Digest,
    geometry: &PieceGeometry,
    first: u32,
    hashes: &[[u8; 32]],
    signed: &Signed,
    wanted: impl Fn(u32) -> bool,
) -> Result<(), String> {
    let key = producer_key(&signed.producer)
        .ok_or("signed hashes from a producer id that carries no key")?;
    for ((index, hash), signature) in (first..).zip(hashes).zip(&signed.signatures) {
        if !wanted(index) {
            continue;
        }
        let claim = hash_claim(digest, geometry, index, hash);
        if !key.verify(&claim, &signature.0) {
            return Err(format!(
                "the signature of piece {index}'s hash is not its producer's"
            ));
        }
    }
    Ok(())
}
