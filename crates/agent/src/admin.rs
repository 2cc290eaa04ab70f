//! The operator's endpoint: Prometheus metrics, status (JSON), liveness and readiness, and
//! `POST /preheat` (progress as JSON lines while it runs). It listens on loopback by default:
//! whoever reaches it can make the node fetch images.

use crate::{Agent, PreheatSpec};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{Method, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tracing::debug;

type AdminBody = BoxBody<Bytes, Infallible>;

/// Serves `/metrics`, `/status`, `/healthz`, `/readyz` and `POST /preheat` until the task is
/// dropped.
pub async fn serve_admin(agent: Agent, listener: tokio::net::TcpListener) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors and the like: back off instead of spinning.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            continue;
        };
        let agent = agent.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let agent = agent.clone();
                    async move {
                        if req.method() == Method::POST && req.uri().path() == "/preheat" {
                            return Ok::<_, Infallible>(preheat(&agent, req.uri().query()));
                        }
                        Ok(route(&agent, req.uri().path()).await.map(BodyExt::boxed))
                    }
                });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                debug!(error = %e, "admin connection ended with an error");
            }
        });
    }
}

async fn route(agent: &Agent, path: &str) -> Response<Full<Bytes>> {
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
            if let Ok(free) = crate::doctor::free_space(agent.store().root()) {
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
        "/status" => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&agent.status().await).unwrap_or_default(),
        ),
        "/doctor" => (
            StatusCode::OK,
            "application/json",
            serde_json::to_string_pretty(&agent.doctor().await).unwrap_or_default(),
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
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /status, /healthz or /readyz\n".to_string(),
        ),
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
