//! Manifests: tags resolved upstream (briefly cached, last answer kept for outages), content by
//! digest cached for good, one upstream request per manifest however many clients ask.

use crate::error::FetchError;
use crate::flight::SingleFlight;
use crate::Ctx;
use bytes::Bytes;
use dashmap::DashMap;
use http::{HeaderValue, Method};
use pollen_oci::{is_manifest_media_type, Digest, Reference, MANIFEST_ACCEPT, MAX_MANIFEST_BYTES};
use pollen_store::Kind;
use pollen_upstream::{collect_limited, FetchRequest, Route};
use std::os::unix::fs::FileExt;
use std::time::Instant;
use tracing::warn;

/// A manifest ready to serve.
#[derive(Clone, Debug)]
pub(crate) struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

#[derive(Clone, Copy)]
struct TagEntry {
    digest: Digest,
    resolved: Instant,
}

type TagKey = (String, String, String);

#[derive(Default)]
pub(crate) struct Manifests {
    tags: DashMap<TagKey, TagEntry>,
    flights: SingleFlight<String, Result<Manifest, FetchError>>,
}

/// Serves a manifest by tag or digest. A tag asked for without the client's own credentials
/// is resolved once for the cluster, by the tag's tracker, when there is one.
pub(crate) async fn get(
    ctx: &Ctx,
    route: &Route,
    reference: &Reference,
    client_auth: Option<HeaderValue>,
) -> Result<Manifest, FetchError> {
    get_with(ctx, route, reference, client_auth, true).await
}

/// [`get`], resolving tags on this node only (`cluster: false`): what a tracker does when it
/// resolves a tag for the others.
pub(crate) async fn get_with(
    ctx: &Ctx,
    route: &Route,
    reference: &Reference,
    client_auth: Option<HeaderValue>,
    cluster: bool,
) -> Result<Manifest, FetchError> {
    match reference {
        Reference::Digest(d) => {
            if let Some(m) = load(ctx, d).await {
                return Ok(m);
            }
            let key = format!("{d}");
            ctx.manifests
                .flights
                .run(key, || fetch(ctx, route, reference, client_auth))
                .await
        }
        Reference::Tag(tag) => {
            let key: TagKey = (route.registry.clone(), route.name.to_string(), tag.clone());
            let known = ctx.manifests.tags.get(&key).map(|e| *e);
            if let Some(entry) = known.filter(|e| e.resolved.elapsed() < ctx.cfg.tag_ttl) {
                if let Some(m) = load(ctx, &entry.digest).await {
                    return Ok(m);
                }
            }
            let flight_key = format!("{}/{}:{}", key.0, key.1, key.2);
            let fetched = ctx
                .manifests
                .flights
                .run(flight_key, || {
                    fetch_tag(ctx, route, tag, client_auth, cluster)
                })
                .await;
            match fetched {
                Ok(m) => {
                    ctx.manifests.tags.insert(
                        key,
                        TagEntry {
                            digest: m.digest,
                            resolved: Instant::now(),
                        },
                    );
                    Ok(m)
                }
                Err(e) if e.is_outage() => {
                    let Some(stale) = known else { return Err(e) };
                    let Some(m) = load(ctx, &stale.digest).await else {
                        return Err(e);
                    };
                    warn!(
                        registry = %route.registry,
                        name = %route.name,
                        tag,
                        digest = %m.digest,
                        age_secs = stale.resolved.elapsed().as_secs(),
                        error = ?e,
                        "every upstream failed; serving the last known manifest for this tag"
                    );
                    ctx.metrics.stale_manifests.inc();
                    Ok(m)
                }
                Err(e) => Err(e),
            }
        }
    }
}

/// Resolves a tag: through the tag's tracker when allowed (one upstream request per cluster;
/// the manifest itself then comes by digest from the tracker's node), else from the upstream.
async fn fetch_tag(
    ctx: &Ctx,
    route: &Route,
    tag: &str,
    client_auth: Option<HeaderValue>,
    cluster: bool,
) -> Result<Manifest, FetchError> {
    if cluster && client_auth.is_none() {
        if let Some(digest) = crate::p2p::tracker::resolve_tag(ctx, route, tag).await {
            if let Some(m) = load(ctx, &digest).await {
                return Ok(m);
            }
            return fetch(ctx, route, &Reference::Digest(digest), None).await;
        }
    }
    fetch(ctx, route, &Reference::Tag(tag.to_string()), client_auth).await
}

/// A cached manifest, if stored.
async fn load(ctx: &Ctx, digest: &Digest) -> Option<Manifest> {
    let blob = ctx.store.get(Kind::Manifest, digest)?;
    let digest = *digest;
    tokio::task::spawn_blocking(move || {
        let size = usize::try_from(blob.size())
            .ok()
            .filter(|s| *s <= MAX_MANIFEST_BYTES)?;
        let mut buf = vec![0u8; size];
        blob.file().read_exact_at(&mut buf, 0).ok()?;
        let body = Bytes::from(buf);
        // Re-check: a manifest is small, and a flipped bit on disk would otherwise be served.
        (Digest::of(&body) == digest).then(|| Manifest {
            digest,
            media_type: blob.media_type().unwrap_or_default().to_string(),
            body,
        })
    })
    .await
    .ok()
    .flatten()
}

async fn fetch(
    ctx: &Ctx,
    route: &Route,
    reference: &Reference,
    client_auth: Option<HeaderValue>,
) -> Result<Manifest, FetchError> {
    let private = client_auth.is_some();
    if let (Reference::Digest(d), Some(p2p)) = (reference, &ctx.p2p) {
        if let Some((body, media_type)) = crate::p2p::manifest::fetch(p2p, d).await {
            ctx.metrics.peer_bytes_received.inc_by(body.len() as u64);
            return keep(ctx, *d, media_type, body).await;
        }
    }
    let req = FetchRequest {
        route,
        method: Method::GET,
        path: format!("manifests/{reference}"),
        accept: Some(MANIFEST_ACCEPT),
        range_start: 0,
        range_end: None,
        client_auth,
    };
    let resp = ctx.upstream_fetch(&req).await?;
    if !resp.status.is_success() {
        return Err(FetchError::from_status(resp.status, &resp.headers));
    }
    let media_type = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    if !is_manifest_media_type(&media_type) {
        return Err(FetchError::Upstream(format!(
            "upstream sent a manifest with media type {media_type:?}"
        )));
    }
    let body = collect_limited(
        resp.body,
        MAX_MANIFEST_BYTES,
        ctx.upstream().config().idle_timeout,
    )
    .await
    .map_err(FetchError::Upstream)?;
    ctx.metrics.upstream_bytes.inc_by(body.len() as u64);
    let digest = Digest::of(&body);
    if let Reference::Digest(want) = reference {
        if *want != digest {
            ctx.metrics.digest_mismatch.inc();
            return Err(FetchError::Corrupt(format!(
                "upstream manifest for {want} hashes to {digest}"
            )));
        }
    }
    if private {
        ctx.private.mark(digest);
    }
    keep(ctx, digest, media_type, body).await
}

/// Stores a verified manifest and hands it out.
async fn keep(
    ctx: &Ctx,
    digest: Digest,
    media_type: String,
    body: Bytes,
) -> Result<Manifest, FetchError> {
    crate::sizes::learn_manifest(ctx, &body);
    let store = ctx.store.clone();
    let (b, mt) = (body.clone(), media_type.clone());
    tokio::task::spawn_blocking(move || {
        let mut w = store.writer(Kind::Manifest, digest, Some(b.len() as u64), Some(mt))?;
        w.write(&b)?;
        w.commit().map(drop)
    })
    .await
    .map_err(|e| FetchError::Store(e.to_string()))??;
    if let Some(p2p) = ctx.p2p.as_ref().filter(|_| !ctx.private.contains(&digest)) {
        p2p.provide(digest);
    }
    Ok(Manifest {
        digest,
        media_type,
        body,
    })
}
