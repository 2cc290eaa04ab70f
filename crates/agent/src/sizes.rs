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

use crate::blobs::BlobFetch;
use crate::Ctx;
use bytes::Bytes;
use http::{Method, StatusCode};
use pollen_oci::Digest;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::timeout;

/// Blob sizes remembered from verified manifests, at most (a descriptor is ~100 bytes; the
/// oldest are forgotten first).
const MAX_KNOWN_SIZES: usize = 65_536;
/// Descriptors read from one manifest, at most (a manifest is at most 4 MiB).
const MAX_DESCRIPTORS: usize = 4096;
/// Longest wait for the upstream's `HEAD` when peers offer a blob of unknown size: an
/// upstream that hangs must not hold up a download peers can supply (the claim is then used
/// unconfirmed, see the module doc).
const SIZE_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Where a trusted size came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SizeSource {
    /// The node's own upstream said so: a peer that claims another size is lying.
    Upstream,
    /// A verified manifest's descriptor: right unless that manifest lies about another blob
    /// (a crafted manifest is still a valid one), so the upstream overrides it.
    Descriptor,
}

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

impl BlobFetch<'_> {
    /// The blob's size as this node can vouch for it: a verified manifest's descriptor, else
    /// a `HEAD` to its own upstream (bounded by [`SIZE_CHECK_TIMEOUT`], asked once per fetch).
    /// `None` when neither answers (the upstream is down or does not know the blob).
    pub(crate) async fn trusted_size(&self) -> Option<(u64, SizeSource)> {
        if let Some(size) = self.ctx.sizes.get(&self.digest) {
            return Some((size, SizeSource::Descriptor));
        }
        let size = self.upstream_size.get_or_init(|| self.head_size()).await;
        size.map(|size| (size, SizeSource::Upstream))
    }

    /// Starts the upstream's size check in the background when no verified manifest gave the
    /// size; [`BlobFetch::trusted_size`] then waits for that one answer instead of asking again.
    pub(crate) fn check_size_early(&self) {
        if self.ctx.sizes.get(&self.digest).is_some() || self.upstream_size.initialized() {
            return;
        }
        let cell = self.upstream_size.clone();
        let (ctx, route) = (self.ctx.clone(), self.route.clone());
        let (digest, auth) = (self.digest, self.client_auth.clone());
        tokio::spawn(async move {
            cell.get_or_init(|| head_size(&ctx, &route, digest, auth))
                .await;
        });
    }

    fn head_size(&self) -> impl std::future::Future<Output = Option<u64>> + '_ {
        head_size(self.ctx, self.route, self.digest, self.client_auth.clone())
    }

    /// Refuses a size over `--max-blob-size`, naming the limit for the client.
    pub(crate) fn check_size(&self, size: u64) -> Result<(), crate::error::FetchError> {
        let limit = self.ctx.cfg.max_blob_size;
        if size > limit {
            return Err(crate::error::FetchError::Upstream(format!(
                "blob {} is {size} bytes, over this node's --max-blob-size of {limit} bytes",
                self.digest
            )));
        }
        Ok(())
    }
}

/// The `Content-Length` of a `HEAD` for the blob to this node's own upstream.
async fn head_size(
    ctx: &Ctx,
    route: &pollen_upstream::Route,
    digest: Digest,
    client_auth: Option<http::HeaderValue>,
) -> Option<u64> {
    let req = pollen_upstream::FetchRequest {
        route,
        method: Method::HEAD,
        path: format!("blobs/{digest}"),
        accept: None,
        range_start: 0,
        range_end: None,
        client_auth,
    };
    let deadline = SIZE_CHECK_TIMEOUT.min(ctx.upstream().config().response_timeout);
    let resp = timeout(deadline, ctx.upstream_fetch(&req))
        .await
        .ok()?
        .ok()?;
    if resp.status != StatusCode::OK {
        return None;
    }
    resp.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
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
