//! One request to an upstream: mirror failover, authentication, redirects, deadlines.

use crate::auth::{self, Challenge, Credentials, TokenCache};
use crate::connect::{GuardedConnector, Policy};
use crate::health::Health;
use crate::scope::{self, RealmUse};
use crate::{Route, UpstreamConfig, UpstreamError};
use bytes::{Bytes, BytesMut};
use dashmap::DashMap;
use http::header::{ACCEPT, AUTHORIZATION, LOCATION, RANGE, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::timeout;
use tokio::time::Instant;
use tracing::{debug, warn};

/// Redirects followed per request; registries redirect blobs once, to their storage.
pub const MAX_REDIRECTS: usize = 5;

/// What to fetch; the caller has already validated every part.
pub struct FetchRequest<'a> {
    pub route: &'a Route,
    pub method: Method,
    /// `manifests/<reference>` or `blobs/<digest>`.
    pub path: String,
    pub accept: Option<&'static str>,
    /// Resume a transfer from this offset (`Range: bytes=N-`); 0 means the whole object.
    pub range_start: u64,
    /// Stop before this offset (`Range: bytes=N-M` with `M = end - 1`): the pieces of a blob
    /// that no peer could supply. `None`: to the end.
    pub range_end: Option<u64>,
    /// The client's own credentials, passed through instead of the agent's.
    pub client_auth: Option<HeaderValue>,
}

/// An upstream's answer, headers received, body still streaming.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Incoming,
    /// Which mirror answered (its base URL as configured).
    pub mirror: String,
}

/// The shared upstream client: one connection pool, health table and token cache per agent.
pub struct Upstream {
    pub(crate) cfg: UpstreamConfig,
    pub(crate) client: Client<HttpsConnector<GuardedConnector>, Empty<Bytes>>,
    /// Where connections, redirects and token realms may go.
    policy: Arc<Policy>,
    pub(crate) health: Health,
    tokens: TokenCache,
    /// Per registry, the last blob fetched from it: what the doctor's throughput probe reads.
    pub(crate) samples: DashMap<String, (Route, String)>,
}

impl Upstream {
    pub fn new(cfg: UpstreamConfig) -> Result<Upstream, rustls::Error> {
        let policy = Arc::new(Policy::new(&cfg));
        let tcp = GuardedConnector {
            policy: policy.clone(),
        };
        let mut roots = rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        for cert in &cfg.extra_roots {
            roots.add(cert.clone())?;
        }
        let tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https);
        Ok(Upstream {
            cfg,
            client,
            policy,
            health: Health::default(),
            tokens: TokenCache::default(),
            samples: DashMap::new(),
        })
    }

    pub fn config(&self) -> &UpstreamConfig {
        &self.cfg
    }

    /// Tries the route's mirrors in order, healthy first. A success wins at once; a 4xx from
    /// a mirror that is not the last moves on (a mirror may lack what the origin has); a 5xx,
    /// 429, refused connection or deadline marks the mirror down for a backoff.
    pub async fn fetch(&self, req: &FetchRequest<'_>) -> Result<UpstreamResponse, UpstreamError> {
        let order = self.health.order(&req.route.mirrors, Instant::now());
        let count = order.len();
        let mut failures = Vec::new();
        let mut last_answer = None;
        for (i, mirror) in order.into_iter().enumerate() {
            let outcome = self.fetch_from(mirror, req).await;
            match outcome {
                Ok(resp) if resp.status.is_success() || resp.status == StatusCode::NOT_MODIFIED => {
                    self.health.success(mirror);
                    if req.method == Method::GET && req.path.starts_with("blobs/") {
                        self.samples.insert(
                            req.route.registry.clone(),
                            (req.route.clone(), req.path.clone()),
                        );
                    }
                    return Ok(resp);
                }
                Ok(resp)
                    if !(resp.status.is_server_error()
                        || resp.status == StatusCode::TOO_MANY_REQUESTS) =>
                {
                    self.health.success(mirror);
                    if i + 1 == count {
                        return Ok(resp);
                    }
                    failures.push(format!("{mirror}: HTTP {}", resp.status));
                    last_answer = Some(resp);
                }
                other => {
                    let why = match other {
                        Ok(r) => format!("HTTP {}", r.status),
                        Err(e) => e,
                    };
                    let backoff =
                        self.health
                            .failure(mirror, self.cfg.failure_backoff, Instant::now());
                    warn!(
                        mirror = %mirror,
                        registry = %req.route.registry,
                        error = %why,
                        skip_for = ?backoff,
                        "upstream mirror failed; trying the next one"
                    );
                    failures.push(format!("{mirror}: {why}"));
                }
            }
        }
        match last_answer {
            Some(resp) => Ok(resp),
            None => Err(UpstreamError::Unavailable(failures.join("; "))),
        }
    }

    pub(crate) async fn fetch_from(
        &self,
        mirror: &str,
        req: &FetchRequest<'_>,
    ) -> Result<UpstreamResponse, String> {
        let mut resp = self.fetch_from_inner(mirror, req).await?;
        resp.mirror = mirror.to_string();
        Ok(resp)
    }

    /// Records that a transfer from `mirror` broke after its headers, so a retry prefers the
    /// next mirror for a while.
    pub fn report_failure(&self, mirror: &str) {
        self.health
            .failure(mirror, self.cfg.failure_backoff, Instant::now());
    }

    async fn fetch_from_inner(
        &self,
        mirror: &str,
        req: &FetchRequest<'_>,
    ) -> Result<UpstreamResponse, String> {
        let url = format!(
            "{}/v2/{}/{}{}",
            mirror.trim_end_matches('/'),
            req.route.name,
            req.path,
            crate::route::ns_query(mirror, &req.route.registry)
        );
        // Only a registry the configuration names may use configured credentials; its tokens
        // are kept apart from anonymous ones for the same mirror.
        let configured = scope::route_configured(&self.cfg, req.route);
        let key = format!("{mirror}|{}|{configured}", req.route.name);
        let auth = match &req.client_auth {
            Some(a) => Some(a.clone()),
            None => self.tokens.fresh(&key),
        };
        let resp = self.send(&url, auth.clone(), req).await?;
        if resp.status != StatusCode::UNAUTHORIZED || req.client_auth.is_some() {
            return Ok(resp);
        }
        let challenge = resp
            .headers
            .get(WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .and_then(auth::parse_challenge);
        let Some(challenge) = challenge else {
            return Ok(resp);
        };
        match self
            .authorize(&key, mirror, configured, &challenge, auth.as_ref())
            .await
        {
            Ok(Some(header)) => self.send(&url, Some(header), req).await,
            Ok(None) => Ok(resp),
            Err(e) => {
                warn!(mirror, error = %e, "upstream authentication failed; passing the 401 on");
                Ok(resp)
            }
        }
    }

    /// Gets credentials for a challenge. The slot lock makes concurrent requests share one
    /// token request; a token refreshed by another request meanwhile is used as is.
    async fn authorize(
        &self,
        key: &str,
        mirror: &str,
        configured: bool,
        challenge: &Challenge,
        rejected: Option<&HeaderValue>,
    ) -> Result<Option<HeaderValue>, String> {
        let slot = self.tokens.slot(key);
        let mut guard = slot.lock().await;
        if let Some(t) = guard.as_ref() {
            if t.expires > Instant::now() && Some(&t.header) != rejected {
                return Ok(Some(t.header.clone()));
            }
        }
        let token = match challenge {
            Challenge::Basic => match self.credentials_for(mirror).filter(|_| configured) {
                Some(c) => c.basic_header().map(|header| auth::Token {
                    header,
                    expires: Instant::now() + Duration::from_secs(24 * 3600),
                }),
                None => None,
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => Some(
                self.request_token(
                    mirror,
                    configured,
                    realm,
                    service.as_deref(),
                    scope.as_deref(),
                )
                .await?,
            ),
        };
        let header = token.as_ref().map(|t| t.header.clone());
        *guard = token;
        Ok(header)
    }

    async fn request_token(
        &self,
        mirror: &str,
        configured: bool,
        realm: &str,
        service: Option<&str>,
        scope: Option<&str>,
    ) -> Result<auth::Token, String> {
        let url = token_url(realm, service, scope);
        let creds = match self.realm_use(mirror, configured, &url)? {
            RealmUse::Credentials(c) => Some(c),
            RealmUse::Anonymous => None,
            RealmUse::Unbound => {
                warn!(
                    mirror,
                    realm,
                    "the token realm is not bound to the credentials configured for this \
                     registry; asking it anonymously (if it is the registry's own token \
                     service, list its host in `realms` of the [[credentials]] entry)"
                );
                None
            }
        };
        let (status, body) = self.token_exchange(mirror, &url, creds).await?;
        if !status.is_success() {
            return Err(format!("token endpoint {realm} answered HTTP {status}"));
        }
        debug!(realm, scope, "got upstream token");
        auth::parse_token(&body, Instant::now())
            .ok_or_else(|| format!("token endpoint {realm} sent no usable token"))
    }

    /// What a token request for `mirror`'s challenge to the realm `url` may carry; an error
    /// when the realm may not be asked at all (plain http for an https registry).
    pub(crate) fn realm_use(
        &self,
        mirror: &str,
        configured: bool,
        url: &str,
    ) -> Result<RealmUse<'_>, String> {
        let mirror = mirror
            .parse::<Uri>()
            .map_err(|e| format!("bad mirror URL {mirror}: {e}"))?;
        let realm = url
            .parse::<Uri>()
            .map_err(|e| format!("bad token realm {url}: {e}"))?;
        scope::realm_use(&self.cfg, configured, &mirror, &realm)
    }

    /// One request to a token endpoint (`url` with its query) for `mirror`'s challenge, with
    /// `creds` (decided by [`Self::realm_use`]): its status and (small) body.
    pub(crate) async fn token_exchange(
        &self,
        mirror: &str,
        url: &str,
        creds: Option<&Credentials>,
    ) -> Result<(StatusCode, Bytes), String> {
        let origin = mirror
            .parse::<Uri>()
            .map_err(|e| format!("bad mirror URL {mirror}: {e}"))?;
        let target = url
            .parse::<Uri>()
            .map_err(|e| format!("bad token realm {url}: {e}"))?;
        self.policy.check_hop(&origin, &target).await?;
        let mut builder = Request::get(url).header(USER_AGENT, &self.cfg.user_agent);
        if let Some(h) = creds.and_then(Credentials::basic_header) {
            builder = builder.header(AUTHORIZATION, h);
        }
        let request = builder
            .body(Empty::new())
            .map_err(|e| format!("token URL {url}: {e}"))?;
        let resp = timeout(self.cfg.response_timeout, self.client.request(request))
            .await
            .map_err(|_| format!("token request to {url} timed out"))?
            .map_err(|e| format!("token request to {url}: {e}"))?;
        let status = resp.status();
        let body = collect_limited(
            resp.into_body(),
            auth::MAX_TOKEN_BODY,
            self.cfg.idle_timeout,
        )
        .await?;
        Ok((status, body))
    }

    /// The credentials configured for a mirror's own host (not for an unlisted registry's:
    /// callers check [`scope::route_configured`]).
    pub(crate) fn credentials_for(&self, mirror: &str) -> Option<&Credentials> {
        scope::for_mirror(&self.cfg, &mirror.parse::<Uri>().ok()?).map(|(_, c)| c)
    }

    /// One HTTP exchange, following redirects. `Authorization` (configured, minted or the
    /// client's own) never follows a redirect to another scheme, host or port: blob storage
    /// gets none, as with Distribution clients. A redirect to a forbidden address is refused
    /// ([`Policy::check_hop`]).
    async fn send(
        &self,
        url: &str,
        mut auth: Option<HeaderValue>,
        req: &FetchRequest<'_>,
    ) -> Result<UpstreamResponse, String> {
        let mut uri: Uri = url
            .parse()
            .map_err(|e| format!("bad upstream URL {url}: {e}"))?;
        for _ in 0..=MAX_REDIRECTS {
            let mut b = Request::builder()
                .method(req.method.clone())
                .uri(uri.clone())
                .header(USER_AGENT, &self.cfg.user_agent);
            if let Some(a) = &auth {
                b = b.header(AUTHORIZATION, a.clone());
            }
            if let Some(accept) = req.accept {
                b = b.header(ACCEPT, accept);
            }
            match req.range_end {
                Some(end) if end > req.range_start => {
                    b = b.header(RANGE, format!("bytes={}-{}", req.range_start, end - 1));
                }
                _ if req.range_start > 0 => {
                    b = b.header(RANGE, format!("bytes={}-", req.range_start));
                }
                _ => {}
            }
            let request = b.body(Empty::new()).map_err(|e| e.to_string())?;
            let resp = timeout(self.cfg.response_timeout, self.client.request(request))
                .await
                .map_err(|_| format!("no response within {:?}", self.cfg.response_timeout))?
                .map_err(|e| error_chain(&e))?;
            if resp.status().is_redirection() {
                if let Some(next) = resp
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| redirect_target(&uri, l))
                {
                    self.policy.check_hop(&uri, &next).await?;
                    if next.scheme() != uri.scheme() || next.authority() != uri.authority() {
                        auth = None;
                    }
                    uri = next;
                    continue;
                }
            }
            let (parts, body) = resp.into_parts();
            return Ok(UpstreamResponse {
                status: parts.status,
                headers: parts.headers,
                body,
                mirror: url.to_string(),
            });
        }
        Err(format!("more than {MAX_REDIRECTS} redirects"))
    }
}

fn redirect_target(base: &Uri, location: &HeaderValue) -> Option<Uri> {
    let loc = location.to_str().ok()?;
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return loc.parse().ok();
    }
    if loc.starts_with('/') && !loc.starts_with("//") {
        let scheme = base.scheme_str()?;
        let authority = base.authority()?;
        return format!("{scheme}://{authority}{loc}").parse().ok();
    }
    None
}

/// A token endpoint's URL: the challenge's realm with its `service` and `scope`.
pub(crate) fn token_url(realm: &str, service: Option<&str>, scope: Option<&str>) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    let mut url = realm.to_string();
    let mut sep = if realm.contains('?') { '&' } else { '?' };
    for (k, v) in [("service", service), ("scope", scope)] {
        if let Some(v) = v {
            url.push(sep);
            url.push_str(k);
            url.push('=');
            url.extend(utf8_percent_encode(v, NON_ALPHANUMERIC));
            sep = '&';
        }
    }
    url
}

pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Reads a small body (manifest, token) with a size cap and a deadline per chunk.
pub async fn collect_limited(
    mut body: Incoming,
    limit: usize,
    idle: Duration,
) -> Result<Bytes, String> {
    let mut buf = BytesMut::new();
    loop {
        let frame = match timeout(idle, body.frame()).await {
            Err(_) => return Err(format!("upstream body stalled for {idle:?}")),
            Ok(None) => return Ok(buf.freeze()),
            Ok(Some(Err(e))) => return Err(format!("upstream body: {e}")),
            Ok(Some(Ok(f))) => f,
        };
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(format!("upstream body larger than {limit} bytes"));
            }
            buf.extend_from_slice(&data);
        }
    }
}
