//! Manifests: tags confirmed by this node's own upstream (briefly cached per credentials, the
//! last answer kept for outages), content by digest cached for good, one upstream request per
//! manifest and credentials however many clients ask. Private manifests are served from the
//! cache only to clients the upstream lets read them ([`crate::access`]).

use crate::access::{self, CredKey};
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
use tokio::time::Instant;
use tracing::{debug, warn};

/// A manifest ready to serve.
#[derive(Clone, Debug)]
pub(crate) struct Manifest {
    pub digest: Digest,
    pub media_type: String,
    pub body: Bytes,
}

/// A tag's digest as this node's own upstream last confirmed it, for these credentials.
#[derive(Clone, Copy)]
struct TagEntry {
    digest: Digest,
    resolved: Instant,
}

/// (credentials, registry, repository, tag): a client's own credentials get answers of their
/// own, never those of another client or of the agent's credentials.
type TagKey = (CredKey, String, String, String);

#[derive(Default)]
pub(crate) struct Manifests {
    tags: DashMap<TagKey, TagEntry>,
    /// Keyed by credentials too: one client's fetch never answers another client's request.
    flights: SingleFlight<(CredKey, String), Result<Manifest, FetchError>>,
}

/// Past this many tags in the cache, the answers for clients' own credentials that are too
/// old to be used (they are never used stale) are dropped: each pull may come with a token of
/// its own.
const MAX_TAG_ENTRIES: usize = 16 * 1024;

impl Manifests {
    fn remember(&self, ctx: &Ctx, key: TagKey, digest: Digest) {
        if self.tags.len() >= MAX_TAG_ENTRIES {
            let ttl = ctx.cfg.tag_ttl;
            self.tags
                .retain(|k, e| !k.0.is_client() || e.resolved.elapsed() < ttl);
        }
        let resolved = Instant::now();
        self.tags.insert(key, TagEntry { digest, resolved });
    }
}

/// Serves a manifest by tag or digest. A tag asked for without the client's own credentials
/// is also resolved by the tag's tracker, when there is one, so that the manifest's body comes
/// from the tracker's node instead of one GET per node; its digest still comes from this
/// node's own upstream.
pub(crate) async fn get(
    ctx: &Ctx,
    route: &Route,
    reference: &Reference,
    client_auth: Option<HeaderValue>,
) -> Result<Manifest, FetchError> {
    get_with(ctx, route, reference, client_auth, true).await
}

/// [`get`], without asking the tag's tracker (`cluster: false`): what a tracker does when it
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
                if ctx.private.contains(d) {
                    let path = format!("manifests/{d}");
                    access::confirm(ctx, route, path, d, client_auth.as_ref()).await?;
                }
                return Ok(m);
            }
            let key = (CredKey::of(client_auth.as_ref()), format!("{d}"));
            ctx.manifests
                .flights
                .run(key, || fetch(ctx, route, reference, client_auth, None))
                .await
        }
        Reference::Tag(tag) => get_tag(ctx, route, tag, client_auth, cluster).await,
    }
}

/// A manifest by tag: the digest this node's upstream confirmed for these credentials within
/// `--tag-ttl`, else confirmed again now; with every upstream down, this node's own last
/// confirmed answer, for content that is not private.
async fn get_tag(
    ctx: &Ctx,
    route: &Route,
    tag: &str,
    client_auth: Option<HeaderValue>,
    cluster: bool,
) -> Result<Manifest, FetchError> {
    let cred = CredKey::of(client_auth.as_ref());
    let key: TagKey = (
        cred,
        route.registry.clone(),
        route.name.to_string(),
        tag.to_string(),
    );
    let known = ctx.manifests.tags.get(&key).map(|e| *e);
    if let Some(entry) = known.filter(|e| e.resolved.elapsed() < ctx.cfg.tag_ttl) {
        if let Some(m) = load(ctx, &entry.digest).await {
            // Private content only while the upstream's yes to these credentials is fresh.
            if !ctx.private.contains(&m.digest)
                || (access::may_vouch(ctx, route, &m.digest)
                    && ctx.access.is_confirmed(route, client_auth.as_ref()))
            {
                return Ok(m);
            }
        }
    }
    let flight_key = (cred, format!("{}/{}:{}", key.1, key.2, key.3));
    let last = known.map(|e| e.digest);
    let fetched = ctx
        .manifests
        .flights
        .run(flight_key, || {
            resolve(ctx, route, tag, client_auth, cluster, last)
        })
        .await;
    match fetched {
        Ok(m) => {
            ctx.manifests.remember(ctx, key, m.digest);
            Ok(m)
        }
        // A client's own credentials confirm nothing while the upstream is down, and private
        // content is never served on an old answer.
        Err(e) if e.is_outage() && !cred.is_client() => {
            let Some(stale) = known.filter(|k| !ctx.private.contains(&k.digest)) else {
                return Err(e);
            };
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
                "every upstream failed; serving this node's last confirmed manifest for this tag"
            );
            ctx.metrics.stale_manifests.inc();
            Ok(m)
        }
        Err(e) => Err(e),
    }
}

/// Asks this node's upstream which digest the tag points to, and gets that manifest. With no
/// tracker to ask and no earlier answer, one `GET` by tag does both. Otherwise a `HEAD` (which
/// Docker Hub does not count against pull limits) gives the digest, and the body comes from
/// the cache, from peers by digest (checked against it), or from the upstream by digest. The
/// tag's tracker, asked meanwhile, only makes its node fetch (and announce) the manifest once
/// for the cluster: its digest is never used, and one that differs from the upstream's is
/// logged and counted.
async fn resolve(
    ctx: &Ctx,
    route: &Route,
    tag: &str,
    client_auth: Option<HeaderValue>,
    cluster: bool,
    last: Option<Digest>,
) -> Result<Manifest, FetchError> {
    let tracker = match cluster && client_auth.is_none() {
        true => ctx.peers().tag_tracker(route, tag).await,
        false => None,
    };
    let by_tag = Reference::Tag(tag.to_string());
    if tracker.is_none() && last.is_none() {
        return fetch(ctx, route, &by_tag, client_auth, None).await;
    }
    let hint = async {
        match tracker {
            Some(t) => ctx.peers().ask_resolve(t, route, tag).await,
            None => None,
        }
    };
    let head_auth = client_auth.clone();
    let head = access::head(ctx, route, format!("manifests/{tag}"), head_auth.as_ref());
    tokio::pin!(hint, head);
    let mut hinted = None;
    let headers = loop {
        tokio::select! {
            h = &mut head => break h?,
            d = &mut hint, if hinted.is_none() => hinted = Some(d),
        }
    };
    let Some(digest) = digest_header(&headers) else {
        // A registry that does not say the digest on HEAD: the GET by tag tells it.
        return fetch(ctx, route, &by_tag, client_auth, None).await;
    };
    if let Some(m) = load(ctx, &digest).await {
        if !access::may_vouch(ctx, route, &digest) {
            return Err(FetchError::NotFound);
        }
        return Ok(m);
    }
    let mut holder = None;
    if tracker.is_some() {
        // Wait (bounded by the tracker's own timeout) for the tracker's node to hold the body.
        let hinted = match hinted {
            Some(h) => h,
            None => hint.await,
        };
        holder = tracker.filter(|_| hinted == Some(digest));
        if let Some(other) = hinted.filter(|h| *h != digest) {
            ctx.metrics.tag_hint_mismatch.inc();
            warn!(
                registry = %route.registry,
                name = %route.name,
                tag,
                upstream = %digest,
                tracker = %other,
                "the tag's tracker answered another digest than this node's upstream; using the upstream's"
            );
        }
    }
    fetch(ctx, route, &Reference::Digest(digest), client_auth, holder).await
}

/// The `Docker-Content-Digest` of an upstream's answer, if it names a valid digest.
fn digest_header(headers: &http::HeaderMap) -> Option<Digest> {
    headers
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
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

/// A manifest from peers (by digest; `holder` asked first) or else from the upstream.
async fn fetch(
    ctx: &Ctx,
    route: &Route,
    reference: &Reference,
    client_auth: Option<HeaderValue>,
    holder: Option<pollen_swarm::PeerId>,
) -> Result<Manifest, FetchError> {
    let private = client_auth.is_some();
    if let Reference::Digest(d) = reference {
        if let Some((body, media_type)) = ctx.peers().manifest(d, holder).await {
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
    let resp = ctx.origin.fetch(&req).await?;
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
        ctx.origin.current().config().idle_timeout,
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
        ctx.private.mark(digest, &route.registry);
    }
    ctx.access.record(route, req.client_auth.as_ref());
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
    if !ctx.private.contains(&digest) {
        ctx.peers().provide(digest);
    }
    Ok(Manifest {
        digest,
        media_type,
        body,
    })
}

/// The tracker's side: resolves tags for the cluster through this node's own manifest path.
pub(crate) struct TagResolver(pub std::sync::Weak<Ctx>);

impl pollen_tracker::Resolver for TagResolver {
    fn resolve<'a>(
        &'a self,
        registry: Option<&'a str>,
        name: &'a str,
        tag: &'a str,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Digest, String>> + Send + 'a>>
    {
        Box::pin(async move {
            let ctx = self.0.upgrade().ok_or(crate::confine::FAILED)?;
            // A member names the registry: only one this node is configured for, and the
            // member learns nothing of why a lookup failed (the cause is logged here).
            let route = crate::confine::peer_route(ctx.origin.current().config(), registry, name)
                .ok_or(crate::confine::REFUSED)?;
            let reference = Reference::Tag(tag.to_string());
            get_with(&ctx, &route, &reference, None, false)
                .await
                .map(|m| m.digest)
                .map_err(|e| {
                    debug!(registry = %route.registry, error = ?e, "resolving a tag for a member failed");
                    crate::confine::FAILED.to_string()
                })
        })
    }
}
