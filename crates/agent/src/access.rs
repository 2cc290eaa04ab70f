//! Who may read private content out of the cache.
//!
//! Content first fetched with a client's own credentials (marked in [`crate::private`]) is served
//! from the cache only after the upstream confirmed that the asking client's credentials may
//! read the repository it names: a `HEAD` with those credentials on the requested blob or
//! manifest, the way containerd (and kubelet's re-verification of cached images, KEP-2535)
//! would find out from the registry itself. A client without credentials, or with wrong ones,
//! gets the upstream's answer: a 401 with its challenge intact, a 403 or a 404. A yes is
//! remembered per (credential hash, registry, repository) for [`AUTH_CACHE_TTL`]; a no is never
//! remembered, and an upstream that cannot be reached confirms nothing (no stale answers).

use crate::error::FetchError;
use crate::Ctx;
use dashmap::DashMap;
use http::{HeaderMap, HeaderValue, Method};
use pollen_oci::Digest;
use pollen_upstream::{FetchRequest, Route};
use sha2::{Digest as _, Sha256};
use std::time::Duration;
use tokio::time::Instant;

/// How long the upstream's yes to (credentials, registry, repository) is believed: short, so a
/// revoked pull secret or token stops opening the cache within a minute, long enough that an
/// image's layers, pulled together, cost one `HEAD`.
pub(crate) const AUTH_CACHE_TTL: Duration = Duration::from_secs(60);
/// At most this many confirmations are remembered; past it, expired ones are dropped, and if
/// that is not enough the table starts over (costing `HEAD`s, never a wrong answer).
const MAX_CONFIRMATIONS: usize = 16 * 1024;

/// A client's credentials as a key: their SHA-256, or none (the agent's own: configured or
/// anonymous). The header itself is never kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct CredKey(Option<[u8; 32]>);

impl CredKey {
    pub fn of(client_auth: Option<&HeaderValue>) -> CredKey {
        CredKey(client_auth.map(|v| Sha256::digest(v.as_bytes()).into()))
    }

    /// Whether these are a client's own credentials (content fetched with them is private).
    pub fn is_client(&self) -> bool {
        self.0.is_some()
    }
}

type AccessKey = (CredKey, String, String);

/// The upstream's recent yeses.
#[derive(Default)]
pub(crate) struct Access {
    confirmed: DashMap<AccessKey, Instant>,
}

impl Access {
    fn key(route: &Route, client_auth: Option<&HeaderValue>) -> AccessKey {
        (
            CredKey::of(client_auth),
            route.registry.clone(),
            route.name.to_string(),
        )
    }

    /// Whether the upstream said yes to these credentials for this repository lately.
    pub fn is_confirmed(&self, route: &Route, client_auth: Option<&HeaderValue>) -> bool {
        self.confirmed
            .get(&Self::key(route, client_auth))
            .is_some_and(|at| at.elapsed() < AUTH_CACHE_TTL)
    }

    /// Records that the upstream just answered these credentials with content of this
    /// repository.
    pub fn record(&self, route: &Route, client_auth: Option<&HeaderValue>) {
        if self.confirmed.len() >= MAX_CONFIRMATIONS {
            self.confirmed.retain(|_, at| at.elapsed() < AUTH_CACHE_TTL);
            if self.confirmed.len() >= MAX_CONFIRMATIONS {
                self.confirmed.clear();
            }
        }
        self.confirmed
            .insert(Self::key(route, client_auth), Instant::now());
    }
}

/// Confirms that `client_auth` may read `path` (`blobs/<digest>` or `manifests/<reference>`)
/// of the route's repository: at once when the upstream said so within [`AUTH_CACHE_TTL`], else
/// by a `HEAD` with those credentials. The error is the upstream's answer, to pass on as is.
pub(crate) async fn confirm(
    ctx: &Ctx,
    route: &Route,
    path: String,
    digest: &Digest,
    client_auth: Option<&HeaderValue>,
) -> Result<(), FetchError> {
    if !may_vouch(ctx, route, digest) {
        return Err(FetchError::NotFound);
    }
    if ctx.access.is_confirmed(route, client_auth) {
        return Ok(());
    }
    head(ctx, route, path, client_auth).await.map(drop)
}

/// Whether the route's registry's yes may open the cached `digest`: always for content that
/// is not private; for private content, only a registry the operator configured (its answers
/// are trusted like the agent's own) or one the content was fetched from with a client's
/// credentials. Any other host a client names in `ns` could say yes to anything, so it cannot
/// open another registry's private content.
pub(crate) fn may_vouch(ctx: &Ctx, route: &Route, digest: &Digest) -> bool {
    vouches(
        &ctx.private,
        ctx.origin.current().config(),
        &route.registry,
        digest,
    )
}

fn vouches(
    private: &crate::private::Private,
    cfg: &pollen_upstream::UpstreamConfig,
    registry: &str,
    digest: &Digest,
) -> bool {
    !private.contains(digest)
        || registry == pollen_oci::DOCKER_HUB
        || cfg.registries.contains_key(registry)
        || private.fetched_from(digest, registry)
}

/// A `HEAD` on `path` with the client's credentials (or the agent's own): the response headers
/// on success, which is recorded as a confirmation; else the upstream's answer as an error
/// (`Upstream` when every mirror failed: an outage, which confirms nothing).
pub(crate) async fn head(
    ctx: &Ctx,
    route: &Route,
    path: String,
    client_auth: Option<&HeaderValue>,
) -> Result<HeaderMap, FetchError> {
    let manifest = path.starts_with("manifests/");
    let req = FetchRequest {
        route,
        method: Method::HEAD,
        path,
        accept: manifest.then_some(pollen_oci::MANIFEST_ACCEPT),
        range_start: 0,
        range_end: None,
        client_auth: client_auth.cloned(),
    };
    let resp = ctx.origin.fetch(&req).await?;
    if !resp.status.is_success() {
        return Err(FetchError::from_status(resp.status, &resp.headers));
    }
    ctx.access.record(route, client_auth);
    Ok(resp.headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_keyed_by_their_hash() {
        let a = HeaderValue::from_static("Basic YTpi");
        let b = HeaderValue::from_static("Basic YTpj");
        assert_eq!(CredKey::of(Some(&a)), CredKey::of(Some(&a.clone())));
        assert_ne!(CredKey::of(Some(&a)), CredKey::of(Some(&b)));
        assert_ne!(CredKey::of(Some(&a)), CredKey::of(None));
        assert!(!CredKey::of(None).is_client());
        assert!(CredKey::of(Some(&a)).is_client());
    }

    #[test]
    fn only_configured_or_origin_registries_vouch_for_private_content() {
        let dir = tempfile::tempdir().unwrap();
        let private = crate::private::Private::load(dir.path());
        let mut cfg = pollen_upstream::UpstreamConfig::default();
        cfg.registries.insert(
            "listed.example".into(),
            vec!["https://listed.example".into()],
        );
        let (secret, public) = (Digest::of(b"secret"), Digest::of(b"public"));
        private.mark(secret, "origin.example");
        assert!(vouches(&private, &cfg, "evil.example", &public));
        assert!(!vouches(&private, &cfg, "evil.example", &secret));
        assert!(vouches(&private, &cfg, "origin.example", &secret));
        assert!(vouches(&private, &cfg, "listed.example", &secret));
        assert!(vouches(&private, &cfg, pollen_oci::DOCKER_HUB, &secret));
    }

    #[test]
    fn confirmations_are_per_credentials_and_repository() {
        let access = Access::default();
        let route = |name: &str| Route {
            registry: "reg.example".into(),
            mirrors: vec![],
            name: pollen_oci::Name::parse(name).unwrap(),
        };
        let a = HeaderValue::from_static("Bearer a");
        access.record(&route("team/app"), Some(&a));
        assert!(access.is_confirmed(&route("team/app"), Some(&a)));
        assert!(!access.is_confirmed(&route("team/other"), Some(&a)));
        assert!(!access.is_confirmed(&route("team/app"), None));
        let b = HeaderValue::from_static("Bearer b");
        assert!(!access.is_confirmed(&route("team/app"), Some(&b)));
    }
}
