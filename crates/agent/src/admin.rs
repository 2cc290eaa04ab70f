//! The operator's endpoints, on two surfaces:
//! - the **admin port** (`--metrics-listen`, TCP, reachable by whatever reaches the node's IP
//!   under hostNetwork): read-only and cheap — `/metrics`, `/healthz`, `/readyz`, and a
//!   `/status` without the digests of private content;
//! - the **control socket** (`--control-socket`, a Unix socket only its owner may open): all of
//!   that with the full `/status`, plus what changes state or costs upstream requests —
//!   `POST /preheat` (progress as JSON lines while it runs) and `/doctor`.
//!
//! Both have a header read timeout and a connection cap ([`crate::listen`]).

use crate::listen::{hold, run_conn, Admitted, ConnLimit, InFlight, ADMIN_HEADER_TIMEOUT};
use crate::{Agent, PreheatSpec};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::debug;

type AdminBody = BoxBody<Bytes, Infallible>;

/// Largest request head on the admin port and the control socket (their requests are a path
/// and a short query).
const MAX_ADMIN_HEAD: usize = 16 << 10;

/// Which endpoints a connection may use.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Surface {
    /// The TCP admin port: read-only, no private digests.
    Admin,
    /// The local control socket: everything.
    Control,
}

/// Serves the read-only `/metrics`, `/status` (redacted), `/healthz` and `/readyz` on the TCP
/// admin port until the task is dropped; `/doctor` and `POST /preheat` are 404 here.
pub async fn serve_admin(agent: Agent, listener: tokio::net::TcpListener) {
    accept_loop(agent, Surface::Admin, listener).await
}

/// Serves every operator endpoint, `POST /preheat` and `/doctor` included, on the local
/// control socket until the task is dropped. Who may connect is decided by the socket file's
/// permissions (see the CLI's `--control-socket`).
pub async fn serve_control(agent: Agent, listener: tokio::net::UnixListener) {
    accept_loop(agent, Surface::Control, listener).await
}

/// A listener of either surface.
trait Accept {
    type Conn: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl std::future::Future<Output = std::io::Result<Self::Conn>> + Send;
}

impl Accept for tokio::net::TcpListener {
    type Conn = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Conn> {
        tokio::net::TcpListener::accept(self).await.map(|(s, _)| s)
    }
}

impl Accept for tokio::net::UnixListener {
    type Conn = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Conn> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Accepts connections for `surface` under the admin connection cap, each served on its own
/// task.
async fn accept_loop(agent: Agent, surface: Surface, listener: impl Accept) {
    let limit = ConnLimit::new(agent.ctx.cfg.max_admin_connections);
    loop {
        let Ok(stream) = listener.accept().await else {
            // Out of file descriptors and the like: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        if let Some(place) = limit.admit().await {
            tokio::spawn(serve_conn(agent.clone(), stream, place, surface));
        }
    }
}

/// One connection, with the header read timeout, until it ends or a newcomer needs its place.
async fn serve_conn<S>(agent: Agent, stream: S, place: Admitted, surface: Surface)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let evict = place.evict.clone();
    let _place = place;
    let inflight = InFlight::default();
    let busy = inflight.clone();
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        let agent = agent.clone();
        let guard = busy.start();
        async move {
            let resp = answer(&agent, &req, surface).await;
            Ok::<_, Infallible>(resp.map(|b| hold(b, guard)))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(ADMIN_HEADER_TIMEOUT)
        .max_buf_size(MAX_ADMIN_HEAD);
    let conn = builder.serve_connection(TokioIo::new(stream), svc);
    let result = run_conn(conn, &evict, &inflight, std::future::pending()).await;
    if let Err(e) = result {
        debug!(error = %e, ?surface, "admin connection ended with an error");
    }
}

/// Routes one request by surface: preheat and doctor only on the control socket.
async fn answer(
    agent: &Agent,
    req: &http::Request<hyper::body::Incoming>,
    surface: Surface,
) -> Response<AdminBody> {
    let (method, path) = (req.method(), req.uri().path());
    if surface == Surface::Control && method == Method::POST && path == "/preheat" {
        return preheat(agent, req.uri().query());
    }
    if method != Method::GET && method != Method::HEAD {
        return not_found(surface).map(BodyExt::boxed);
    }
    route(agent, path, surface).await.map(BodyExt::boxed)
}

fn not_found(surface: Surface) -> Response<Full<Bytes>> {
    let hint = match surface {
        Surface::Admin => "not found: try /metrics, /status, /healthz or /readyz (preheat and doctor are on the local control socket)\n",
        Surface::Control => "not found: try /metrics, /status, /doctor, /healthz, /readyz or POST /preheat\n",
    };
    let mut r = Response::new(Full::new(Bytes::from_static(hint.as_bytes())));
    *r.status_mut() = StatusCode::NOT_FOUND;
    r
}

async fn route(agent: &Agent, path: &str, surface: Surface) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match path {
        "/metrics" => {
            let usage = agent.store().usage();
            let m = agent.metrics();
            m.cache_bytes.set(usage.bytes as i64);
            m.cache_entries.set(usage.entries as i64);
            // The store counts since start; the counter only ever catches up with it.
            let seen = m.cache_evictions.get();
            m.cache_evictions
                .inc_by(usage.evictions.saturating_sub(seen));
            m.cache_quota
                .set(i64::try_from(usage.quota).unwrap_or(i64::MAX));
            if let Ok(free) = crate::disk::free_space(agent.store().root()) {
                m.cache_disk_free
                    .set(i64::try_from(free).unwrap_or(i64::MAX));
            }
            agent.refresh_peer_metrics();
            (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                m.encode(),
            )
        }
        "/status" => {
            let status = match surface {
                Surface::Control => agent.status().await,
                Surface::Admin => agent.public_status().await,
            };
            (
                StatusCode::OK,
                "application/json",
                serde_json::to_string_pretty(&status).unwrap_or_default(),
            )
        }
        "/doctor" if surface == Surface::Control => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&agent.doctor_cached().await).unwrap_or_default(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" => match agent.readiness() {
            Ok(()) => (StatusCode::OK, "text/plain", "ready\n".to_string()),
            Err(why) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!("not ready: {why}\n"),
            ),
        },
        _ => return not_found(surface),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = http::HeaderValue::from_str(ctype) {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

/// `POST /preheat?image=REF[&platform=os/arch]...[&all_nodes=true]`: runs the preheat and
/// streams its events as JSON lines (`PreheatEvent`).
fn preheat(agent: &Agent, query: Option<&str>) -> Response<AdminBody> {
    let spec = match preheat_spec(query.unwrap_or("")) {
        Ok(spec) => spec,
        Err(why) => {
            let mut r = Response::new(Full::new(Bytes::from(format!("{why}\n"))).boxed());
            *r.status_mut() = StatusCode::BAD_REQUEST;
            return r;
        }
    };
    let events = tokio_stream_of(agent.preheat(spec)).map(|event| {
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Ok::<_, Infallible>(Frame::data(Bytes::from(line)))
    });
    let mut r = Response::new(BodyExt::boxed(StreamBody::new(events)));
    if let Ok(v) = http::HeaderValue::from_str("application/x-ndjson") {
        r.headers_mut().insert(http::header::CONTENT_TYPE, v);
    }
    r
}

fn tokio_stream_of<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

fn preheat_spec(query: &str) -> Result<PreheatSpec, String> {
    let mut spec = PreheatSpec::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_encoding::percent_decode_str(v)
            .decode_utf8()
            .map_err(|_| format!("{k}: not UTF-8"))?
            .into_owned();
        match k {
            "image" => spec.image = v,
            "platform" => spec.platforms.push(v),
            "all_nodes" => spec.all_nodes = v == "true",
            other => return Err(format!("unknown parameter {other:?}")),
        }
    }
    if spec.image.is_empty() {
        return Err("missing image=NAME[:TAG|@DIGEST]".into());
    }
    Ok(spec)
}
