//! Where a blob's size may come from. A peer's `Have` (or a tracker's `Sized`) is a claim: a
//! size is trusted only when it is the upstream's (`Content-Length` of a response for the
//! blob, or a `HEAD` to this node's own upstream) or a descriptor's in a manifest this node
//! verified (its bytes hashed to the digest it was asked for, or came from the upstream).
//! A trusted size is what a partial download may be recorded with
//! (`pollen_store::Store::partial_with`); peers that claim another are not used.
//!
//! With the upstream down and no descriptor known, a peer's claim (at most
//! `--max-blob-size`) is used to download, but it reserves nothing, is not recorded on disk,
//! and the partial is dropped unless the digest verifies: the blob's digest is the final word.

use crate::Ctx;
use bytes::Bytes;
use pollen_oci::Digest;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// Blob sizes remembered from verified manifests, at most (a descriptor is ~100 bytes; the
/// oldest are forgotten first).
const MAX_KNOWN_SIZES: usize = 65_536;
/// Descriptors read from one manifest, at most (a manifest is at most 4 MiB).
const MAX_DESCRIPTORS: usize = 4096;
/// Blob sizes from verified manifests' descriptors, bounded.
#[derive(Default)]
pub(crate) struct KnownSizes {
    inner: Mutex<(HashMap<Digest, u64>, VecDeque<Digest>)>,
}

#[derive(Deserialize)]
struct SizedDescriptor {
    digest: String,
    size: u64,
}

#[derive(Deserialize)]
struct Shape {
    config: Option<SizedDescriptor>,
    #[serde(default)]
    layers: Vec<SizedDescriptor>,
}

impl KnownSizes {
    /// The size a verified manifest gave `digest`, if any.
    pub fn get(&self, digest: &Digest) -> Option<u64> {
        let guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        guard.0.get(digest).copied()
    }

    /// Remembers the blob sizes of a manifest whose digest this node checked. Two manifests
    /// that disagree about a blob leave its size unknown (the upstream is asked instead).
    pub fn learn(&self, manifest: &[u8]) {
        let Ok(shape) = serde_json::from_slice::<Shape>(manifest) else {
            return; // an index, or not a manifest: no blob sizes
        };
        let mut guard = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (map, order) = &mut *guard;
        let descriptors = shape.config.iter().chain(&shape.layers);
        for d in descriptors.take(MAX_DESCRIPTORS) {
            let Ok(digest) = d.digest.parse::<Digest>() else {
                continue;
            };
            match map.get(&digest) {
                Some(&known) if known == d.size => {}
                Some(_) => {
                    map.remove(&digest);
                }
                None => {
                    if map.len() >= MAX_KNOWN_SIZES {
                        while let Some(old) = order.pop_front() {
                            if map.remove(&old).is_some() {
                                break;
                            }
                        }
                    }
                    map.insert(digest, d.size);
                    order.push_back(digest);
                }
            }
        }
        // Keep the queue from growing with digests already forgotten.
        if order.len() > MAX_KNOWN_SIZES.saturating_mul(2) {
            order.retain(|d| map.contains_key(d));
        }
    }
}

/// Records a verified manifest's blob sizes (the hook `manifests.rs` calls once it has
/// checked a manifest's digest).
pub(crate) fn learn_manifest(ctx: &Ctx, body: &Bytes) {
    ctx.sizes.learn(body);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn manifest(layers: &[(Digest, u64)]) -> Vec<u8> {
        let layers: Vec<_> = layers
            .iter()
            .map(|(d, s)| serde_json::json!({"digest": d.to_string(), "size": s, "mediaType": "x"}))
            .collect();
        serde_json::to_vec(&serde_json::json!({"schemaVersion": 2, "layers": layers})).unwrap()
    }

    #[test]
    fn sizes_come_from_descriptors_and_conflicts_forget_them() {
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let known = KnownSizes::default();
        known.learn(&manifest(&[(a, 10), (b, 20)]));
        assert_eq!(known.get(&a), Some(10));
        assert_eq!(known.get(&b), Some(20));
        known.learn(&manifest(&[(a, 4 << 40)]));
        assert_eq!(known.get(&a), None, "two manifests disagree: unknown");
        assert_eq!(known.get(&b), Some(20));
        known.learn(b"not json");
        known.learn(br#"{"manifests": []}"#);
        assert_eq!(known.get(&b), Some(20));
    }
}
