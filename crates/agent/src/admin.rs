//! The operator's endpoint: Prometheus metrics, status (JSON), liveness and readiness.

use crate::Agent;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use std::convert::Infallible;
use tracing::debug;

/// Serves `/metrics`, `/status`, `/healthz` and `/readyz` until the task is dropped.
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
                    async move { Ok::<_, Infallible>(route(&agent, req.uri().path()).await) }
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
            m.cache_evictions.set(usage.evictions as i64);
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
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        "/readyz" if agent.is_ready() => (StatusCode::OK, "text/plain", "ready\n".to_string()),
        "/readyz" => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready: the mirror listener is not serving yet\n".to_string(),
        ),
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
