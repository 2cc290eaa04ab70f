//! A blob's trusted size, as a fetch learns it: from a verified manifest's descriptor
//! ([`crate::sizes`]), else from its own upstream (see `crate::sizes` for why a peer's claim
//! is not enough).

use super::BlobFetch;
use crate::error::FetchError;
use crate::origin::Origin;
use http::{Method, StatusCode};
use pollen_oci::Digest;
use std::time::Duration;
use tokio::time::timeout;

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

impl BlobFetch<'_> {
    /// The blob's size as this node can vouch for it: a verified manifest's descriptor, else
    /// a `HEAD` to its own upstream (bounded by [`SIZE_CHECK_TIMEOUT`], asked once per fetch).
    /// `None` when neither answers (the upstream is down or does not know the blob).
    pub(crate) async fn trusted_size(&self) -> Option<(u64, SizeSource)> {
        if let Some(size) = self.sizes.get(&self.digest) {
            return Some((size, SizeSource::Descriptor));
        }
        let size = self.upstream_size.get_or_init(|| self.head_size()).await;
        size.map(|size| (size, SizeSource::Upstream))
    }

    /// Starts the upstream's size check in the background when no verified manifest gave the
    /// size; [`BlobFetch::trusted_size`] then waits for that one answer instead of asking again.
    pub(crate) fn check_size_early(&self) {
        if self.sizes.get(&self.digest).is_some() || self.upstream_size.initialized() {
            return;
        }
        let cell = self.upstream_size.clone();
        let (origin, route) = (self.origin.clone(), self.route.clone());
        let (digest, auth) = (self.digest, self.client_auth.clone());
        tokio::spawn(async move {
            cell.get_or_init(|| head_size(&origin, &route, digest, auth))
                .await;
        });
    }

    fn head_size(&self) -> impl std::future::Future<Output = Option<u64>> + '_ {
        head_size(
            self.origin,
            self.route,
            self.digest,
            self.client_auth.clone(),
        )
    }

    /// Refuses a size over `--max-blob-size`, naming the limit for the client.
    pub(crate) fn check_size(&self, size: u64) -> Result<(), FetchError> {
        let limit = self.max_blob_size;
        if size > limit {
            return Err(FetchError::Upstream(format!(
                "blob {} is {size} bytes, over this node's --max-blob-size of {limit} bytes",
                self.digest
            )));
        }
        Ok(())
    }
}

/// The `Content-Length` of a `HEAD` for the blob to this node's own upstream.
async fn head_size(
    origin: &Origin,
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
    let deadline = SIZE_CHECK_TIMEOUT.min(origin.current().config().response_timeout);
    let resp = timeout(deadline, origin.fetch(&req)).await.ok()?.ok()?;
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
