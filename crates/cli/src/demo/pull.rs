//! The demo's client: pulls an image the way a runtime does (the manifest by tag, then the
//! config and every layer at once), checks each blob against its digest as it streams, and
//! counts the bytes for the progress view.

use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use sha2::{Digest as _, Sha256};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json";
/// The most a manifest may be (the same cap the agent applies).
const MAX_MANIFEST: usize = 4 << 20;

/// Where a pull goes: an agent (with the registry named by `?ns=`) or the registry itself.
pub struct Target {
    pub base: String,
    pub ns: Option<String>,
}

/// One pull's outcome: when it finished, or why it failed.
pub type PullResult = Result<Duration, String>;

type HttpClient = Client<HttpConnector, Empty<bytes::Bytes>>;

/// Pulls `repo:tag` from `target`, adding every body byte to `progress`; the time from
/// `started` to the last verified byte.
pub async fn pull(
    target: &Target,
    repo: &str,
    tag: &str,
    progress: &AtomicU64,
    started: Instant,
) -> PullResult {
    let client: HttpClient =
        Client::builder(hyper_util::rt::TokioExecutor::new()).build(HttpConnector::new());
    let manifest = get(
        &client,
        &target.url(&format!("{repo}/manifests/{tag}")),
        None,
        progress,
    )
    .await?;
    let blobs = blob_digests(&manifest)?;
    let fetches = blobs.iter().map(|digest| {
        let url = target.url(&format!("{repo}/blobs/{digest}"));
        let client = client.clone();
        async move { get(&client, &url, Some(digest), progress).await.map(drop) }
    });
    for result in futures_util::future::join_all(fetches).await {
        result?;
    }
    Ok(started.elapsed())
}

impl Target {
    fn url(&self, path: &str) -> String {
        match &self.ns {
            Some(ns) => format!("{}/v2/{path}?ns={ns}", self.base),
            None => format!("{}/v2/{path}", self.base),
        }
    }
}

/// GETs `url`; a blob (`digest` given) is hashed as it streams and not kept, a manifest is
/// returned whole.
async fn get(
    client: &HttpClient,
    url: &str,
    digest: Option<&str>,
    progress: &AtomicU64,
) -> Result<Vec<u8>, String> {
    let req = http::Request::get(url)
        .header(http::header::ACCEPT, MANIFEST_ACCEPT)
        .body(Empty::new())
        .map_err(|e| format!("{url}: {e}"))?;
    let resp = client
        .request(req)
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("{url}: HTTP {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut hasher = Sha256::new();
    let mut kept = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("{url}: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        progress.fetch_add(data.len() as u64, Ordering::Relaxed);
        match digest {
            Some(_) => hasher.update(&data),
            None if kept.len() + data.len() <= MAX_MANIFEST => kept.extend_from_slice(&data),
            None => return Err(format!("{url}: manifest over {MAX_MANIFEST} bytes")),
        }
    }
    if let Some(want) = digest {
        let got = format!("sha256:{}", hex::encode(hasher.finalize()));
        if got != want {
            return Err(format!("{url}: content hashes to {got}"));
        }
    }
    Ok(kept)
}

/// The config's and the layers' digests from an image manifest.
fn blob_digests(manifest: &[u8]) -> Result<Vec<String>, String> {
    #[derive(serde::Deserialize)]
    struct Descriptor {
        digest: String,
    }
    #[derive(serde::Deserialize)]
    struct Manifest {
        config: Descriptor,
        layers: Vec<Descriptor>,
    }
    let m: Manifest =
        serde_json::from_slice(manifest).map_err(|e| format!("the image manifest: {e}"))?;
    Ok(std::iter::once(m.config)
        .chain(m.layers)
        .map(|d| d.digest)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_blobs_are_config_then_layers() {
        let m = br#"{"schemaVersion":2,"config":{"digest":"sha256:c","size":1},
            "layers":[{"digest":"sha256:a","size":2},{"digest":"sha256:b","size":3}]}"#;
        assert_eq!(
            blob_digests(m).unwrap(),
            vec!["sha256:c", "sha256:a", "sha256:b"]
        );
        assert!(blob_digests(b"{}").is_err());
    }
}
