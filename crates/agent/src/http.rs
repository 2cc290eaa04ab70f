//! The mirror's HTTP front: connections, routing, response headers.

use crate::blobs;
use crate::follow::Follower;
use crate::listen::{run_conn, ConnLimit, InFlight};
use crate::range::{self, RangeOutcome};
use crate::request::{self, ApiRequest, Parsed};
use crate::sites::SiteServing;
use crate::{lazy, manifests, Ctx};
use bytes::Bytes;
use futures_util::stream;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioIo, TokioTimer};
use pollen_oci::{Digest, ErrorCode, OciError, Reference};
use pollen_upstream::Route;
use std::convert::Infallible;
use std::sync::Arc;
use tracing::{debug, warn};

pub(crate) type Body = BoxBody<Bytes, std::io::Error>;

pub(crate) async fn serve(ctx: Arc<Ctx>, listener: tokio::net::TcpListener) {
    serve_with(ctx, listener, None).await;
}

/// The accept loop of the mirror (`site`: `None`) and of the listener for other sites, whose
/// connections are TLS and whose requests must authenticate ([`crate::sites`]).
pub(crate) async fn serve_with(
    ctx: Arc<Ctx>,
    listener: tokio::net::TcpListener,
    site: Option<Arc<SiteServing>>,
) {
    let mut draining = ctx.draining.subscribe();
    let limit = ConnLimit::new(ctx.cfg.max_connections);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = drained(&mut draining) => return,
        };
        let (stream, peer) = match accepted {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: keep serving the open connections.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some(place) = limit.admit().await else {
            debug!(%peer, "at the connection cap: closing a new client connection");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        ctx.clients.send_modify(|n| *n += 1);
        let open = ClientGuard(ctx.clone());
        let site = site.clone();
        tokio::spawn(async move {
            let _open = open;
            match site {
                None => serve_conn(ctx, TokioIo::new(stream), place, peer, None).await,
                Some(site) => {
                    let Some((tls, verified)) = site.handshake(stream, peer).await else {
                        return;
                    };
                    let gate = Some(Gate { site, verified });
                    serve_conn(ctx, TokioIo::new(tls), place, peer, gate).await;
                }
            }
        });
    }
}

/// A site connection's credentials: its verified client certificate, or a token to check in
/// each request.
struct Gate {
    site: Arc<SiteServing>,
    verified: bool,
}

/// Serves one client connection until it ends, the agent drains, or a newcomer at the cap
/// needs its place.
async fn serve_conn<I>(
    ctx: Arc<Ctx>,
    io: I,
    place: crate::listen::Admitted,
    peer: std::net::SocketAddr,
    gate: Option<Gate>,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let header_timeout = ctx.cfg.header_read_timeout;
    let max_head = ctx.cfg.max_header_bytes;
    let mut draining = ctx.draining.subscribe();
    let evict = place.evict.clone();
    let _place = place;
    let inflight = InFlight::default();
    let busy = inflight.clone();
    let gate = gate.map(Arc::new);
    let svc = hyper::service::service_fn(move |mut req| {
        let ctx = ctx.clone();
        let guard = busy.start();
        let gate = gate.clone();
        async move {
            let admitted = gate
                .as_deref()
                .is_none_or(|g| g.site.admits(&mut req, g.verified));
            let resp = match admitted {
                true => with_request_id(&ctx, req).await,
                false => unauthorized_site(),
            };
            Ok::<_, Infallible>(resp.map(|b| crate::listen::hold(b, guard)))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_header_size(max_head)
        .max_buf_size(max_head.max(64 << 10));
    let conn = builder.serve_connection(io, svc);
    let result = run_conn(conn, &evict, &inflight, drained(&mut draining)).await;
    if let Err(e) = result {
        debug!(%peer, error = %e, "client connection ended with an error");
    }
}

/// A site's request without a verified certificate or a valid token: a Basic challenge, so
/// registry clients answer with their credentials (a token as the password).
fn unauthorized_site() -> Response<Body> {
    let e = OciError::new(
        StatusCode::UNAUTHORIZED,
        ErrorCode::Unauthorized,
        "authenticate with a client certificate or a token (Bearer, or as the Basic password)",
    );
    error(&e, Some(HeaderValue::from_static("Basic realm=\"pollen\"")))
}

/// Resolves once the agent drains (never, if the flag's sender is gone).
async fn drained(draining: &mut tokio::sync::watch::Receiver<bool>) {
    if draining.wait_for(|d| *d).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Counts a client connection while it is open ([`crate::Agent::drain`] waits for none).
struct ClientGuard(Arc<Ctx>);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.clients.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Request ids: one per client request, in every log line written while handling it and in
/// the `X-Request-Id` response header, so a user's failed pull can be found in the logs.
static NEXT_REQUEST: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

async fn with_request_id(ctx: &Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    use tracing::Instrument;
    let id = format!(
        "{:x}-{:x}",
        std::process::id(),
        NEXT_REQUEST.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let span =
        tracing::info_span!("request", id = %id, method = %req.method(), path = %req.uri().path());
    let mut resp = handle(ctx, req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

async fn handle(ctx: &Arc<Ctx>, req: Request<Incoming>) -> Response<Body> {
    let parsed = match request::parse(req.method(), req.uri()) {
        Ok(p) => p,
        Err(e) => {
            ctx.metrics.request("invalid", "rejected");
            return error(&e, None);
        }
    };
    let client_auth = req.headers().get(header::AUTHORIZATION).cloned();
    let range = req
        .headers()
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let Parsed { api, ns, head } = parsed;
    match api {
        ApiRequest::Ping => {
            ctx.metrics.request("ping", "ok");
            let mut r = Response::new(full(Bytes::from_static(b"{}")));
            set(&mut r, header::CONTENT_TYPE, "application/json");
            set(&mut r, "Docker-Distribution-API-Version", "registry/2.0");
            r
        }
        ApiRequest::Manifest { name, reference } => {
            let route = match Route::resolve(ctx.origin.current().config(), ns.as_deref(), &name) {
                Ok(r) => r,
                Err(e) => return route_error(ctx, "manifest", e),
            };
            manifest(ctx, &route, &reference, client_auth, head).await
        }
        ApiRequest::Blob { name, digest } => {
            let route = match Route::resolve(ctx.origin.current().config(), ns.as_deref(), &name) {
                Ok(r) => r,
                Err(e) => return route_error(ctx, "blob", e),
            };
            blob(ctx, route, digest, client_auth, head, range.as_deref()).await
        }
    }
}

async fn manifest(
    ctx: &Ctx,
    route: &Route,
    reference: &Reference,
    client_auth: Option<HeaderValue>,
    head: bool,
) -> Response<Body> {
    match manifests::get(ctx, route, reference, client_auth).await {
        Ok(m) => {
            ctx.metrics.request("manifest", "ok");
            let len = m.body.len();
            let mut r = Response::new(if head { empty() } else { full(m.body) });
            set(&mut r, header::CONTENT_TYPE, &m.media_type);
            set(&mut r, header::CONTENT_LENGTH, &len.to_string());
            content_headers(&mut r, &m.digest);
            r
        }
        Err(e) => {
            ctx.metrics.request("manifest", "error");
            let (oci, challenge) = e.to_oci(ErrorCode::ManifestUnknown);
            error(&oci, challenge)
        }
    }
}

async fn blob(
    ctx: &Arc<Ctx>,
    route: Route,
    digest: Digest,
    client_auth: Option<HeaderValue>,
    head: bool,
    range_header: Option<&str>,
) -> Response<Body> {
    if !head && client_auth.is_none() {
        if let Some(lazy) = lazy::fetch(ctx, &route, digest, range_header).await {
            return lazy_response(ctx, lazy, &digest);
        }
    }
    let upstream = ctx.origin.current();
    let cfg = upstream.config();
    let stall = (cfg.response_timeout + cfg.idle_timeout) * (route.mirrors.len() as u32 + 1);
    let asked = tokio::time::Instant::now();
    let (rx, cached) = blobs::open(ctx, route, digest, client_auth);
    let mut follower = Follower::new(rx, 0, None, stall);
    let size = match follower.wait_started().await {
        Ok(size) => size,
        Err(e) => {
            ctx.metrics.request("blob", "error");
            let (oci, challenge) = e.to_oci(ErrorCode::BlobUnknown);
            return error(&oci, challenge);
        }
    };
    let source = if cached { "cache" } else { "fetch" };
    ctx.metrics
        .request("blob", if cached { "hit" } else { "miss" });
    let mut status = StatusCode::OK;
    let mut length = size;
    let mut content_range = None;
    match range::parse(range_header, size) {
        RangeOutcome::Full => {}
        RangeOutcome::Partial { start, end } => {
            follower.set_range(start, Some(end + 1), size);
            // A range short of the last byte carries verified bytes only (follow.rs).
            if let Err(e) = follower.wait_verified().await {
                ctx.metrics.request("blob", "error");
                let (oci, challenge) = e.to_oci(ErrorCode::BlobUnknown);
                return error(&oci, challenge);
            }
            status = StatusCode::PARTIAL_CONTENT;
            length = end + 1 - start;
            content_range = Some(format!("bytes {start}-{end}/{size}"));
        }
        RangeOutcome::Unsatisfiable => {
            let e = OciError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                ErrorCode::RangeInvalid,
                format!("range not satisfiable for a blob of {size} bytes"),
            );
            let mut r = error(&e, None);
            set(&mut r, header::CONTENT_RANGE, &format!("bytes */{size}"));
            return r;
        }
    }
    let body = if head {
        empty()
    } else {
        let metrics = ctx.metrics.clone();
        let s = stream::unfold((follower, Some(asked)), move |(mut f, first)| {
            let metrics = metrics.clone();
            async move {
                let chunk = f.next_chunk().await?;
                let mut first = first;
                if let Ok(b) = &chunk {
                    metrics.served(source, b.len() as u64);
                    if let Some(asked) = first.take() {
                        metrics.first_byte(source, asked.elapsed());
                    }
                }
                Some((chunk.map(Frame::data), (f, first)))
            }
        });
        BodyExt::boxed(StreamBody::new(s))
    };
    blob_response(body, status, length, content_range, &digest)
}

/// A range answered from its own pieces ([`lazy`]).
fn lazy_response(ctx: &Ctx, lazy: lazy::LazyRange, digest: &Digest) -> Response<Body> {
    ctx.metrics.request("blob", "lazy");
    ctx.metrics.served("lazy", lazy.bytes.len() as u64);
    let len = lazy.bytes.len() as u64;
    let range = format!("bytes {}-{}/{}", lazy.start, lazy.end, lazy.size);
    let body = full(lazy.bytes);
    blob_response(body, StatusCode::PARTIAL_CONTENT, len, Some(range), digest)
}

/// A blob's body (or part of it, with its `Content-Range`) and the headers every blob gets.
fn blob_response(
    body: Body,
    status: StatusCode,
    length: u64,
    content_range: Option<String>,
    digest: &Digest,
) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    set(&mut r, header::CONTENT_TYPE, "application/octet-stream");
    set(&mut r, header::ACCEPT_RANGES, "bytes");
    set(&mut r, header::CONTENT_LENGTH, &length.to_string());
    if let Some(cr) = content_range {
        set(&mut r, header::CONTENT_RANGE, &cr);
    }
    content_headers(&mut r, digest);
    r
}

fn route_error(ctx: &Ctx, kind: &'static str, e: pollen_upstream::RouteError) -> Response<Body> {
    ctx.metrics.request(kind, "rejected");
    error(
        &OciError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::NameInvalid,
            e.to_string(),
        ),
        None,
    )
}

/// An OCI error response; a 401 carries the upstream's challenge so the client can answer it.
fn error(e: &OciError, challenge: Option<HeaderValue>) -> Response<Body> {
    let body = Bytes::from(e.body());
    let len = body.len();
    let mut r = Response::new(full(body));
    *r.status_mut() = e.status;
    set(&mut r, header::CONTENT_TYPE, "application/json");
    set(&mut r, header::CONTENT_LENGTH, &len.to_string());
    set(&mut r, "Docker-Distribution-API-Version", "registry/2.0");
    if let Some(c) = challenge {
        r.headers_mut().insert(header::WWW_AUTHENTICATE, c);
    }
    r
}

fn content_headers(r: &mut Response<Body>, digest: &Digest) {
    let d = digest.to_string();
    set(r, "Docker-Content-Digest", &d);
    set(r, header::ETAG, &format!("\"{d}\""));
    set(r, "Docker-Distribution-API-Version", "registry/2.0");
}

fn set<K: header::IntoHeaderName>(r: &mut Response<Body>, k: K, v: &str) {
    if let Ok(v) = HeaderValue::from_str(v) {
        r.headers_mut().insert(k, v);
    }
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed()
}
