//! Request routing and the `/v2/` pull API: ping, manifests, blobs and the
//! tag list. Authentication and `/token` live in [`crate::auth`].
//!
//! Handlers are synchronous: every answer is computed from in-memory state,
//! and anything slow (faults, large blobs) lives in the response body.

use std::sync::Arc;

use http::header::{
    ACCEPT_RANGES, AUTHORIZATION, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RANGE, USER_AGENT,
    WWW_AUTHENTICATE,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode};

use crate::auth::{auth_challenge, handle_token};
use crate::body::{BlobBody, Body, KillSwitch};
use crate::range::{parse_range, RangeSpec};
use crate::state::Shared;
use crate::util::{json, oci_error, set_header, status_only};
use crate::Fault;

const DOCKER_CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");

/// What a `/v2/...` path addresses. Repository names may contain slashes,
/// so the path is split from the right.
#[derive(Debug, PartialEq)]
enum Route {
    Ping,
    Manifest { name: String, reference: String },
    Blob { name: String, digest: String },
    Tags { name: String },
    Unknown,
}

impl Route {
    fn parse(path: &str) -> Route {
        let Some(rest) = path.strip_prefix("/v2") else {
            return Route::Unknown;
        };
        let rest = match rest {
            "" | "/" => return Route::Ping,
            r => match r.strip_prefix('/') {
                Some(r) => r,
                None => return Route::Unknown,
            },
        };
        if let Some(name) = rest.strip_suffix("/tags/list").filter(|n| !n.is_empty()) {
            return Route::Tags {
                name: name.to_owned(),
            };
        }
        let mut parts = rest.rsplitn(3, '/');
        let (Some(reference), Some(kind), Some(name)) = (parts.next(), parts.next(), parts.next())
        else {
            return Route::Unknown;
        };
        if name.is_empty() || reference.is_empty() {
            return Route::Unknown;
        }
        // Some clients percent-encode the `:` of a digest.
        let reference = reference.replace("%3A", ":").replace("%3a", ":");
        let name = name.to_owned();
        match kind {
            "manifests" => Route::Manifest { name, reference },
            "blobs" => Route::Blob {
                name,
                digest: reference,
            },
            _ => Route::Unknown,
        }
    }

    fn repo(&self) -> Option<&str> {
        match self {
            Route::Manifest { name, .. } | Route::Blob { name, .. } | Route::Tags { name } => {
                Some(name)
            }
            Route::Ping | Route::Unknown => None,
        }
    }
}

/// Entry point for every request on every connection.
pub(crate) fn handle<B>(
    shared: &Arc<Shared>,
    kill: &KillSwitch,
    req: &Request<B>,
) -> Response<Body> {
    let path = req.uri().path();
    let is_v2 = path == "/v2" || path.starts_with("/v2/");
    let header = |name: HeaderName| req.headers().get(name).and_then(|v| v.to_str().ok());
    shared.record_request(header(USER_AGENT), header(AUTHORIZATION).filter(|_| is_v2));

    if is_v2 {
        let mut resp = handle_v2(shared, kill, req);
        resp.headers_mut()
            .insert(API_VERSION, HeaderValue::from_static("registry/2.0"));
        resp
    } else if path == "/token" {
        handle_token(shared, req)
    } else {
        status_only(StatusCode::NOT_FOUND)
    }
}

fn handle_v2<B>(shared: &Arc<Shared>, kill: &KillSwitch, req: &Request<B>) -> Response<Body> {
    let route = Route::parse(req.uri().path());
    if let Some(challenge) = auth_challenge(shared, req.headers(), route.repo()) {
        let msg = "authentication required";
        let mut resp = oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", msg);
        set_header(resp.headers_mut(), WWW_AUTHENTICATE, &challenge);
        return resp;
    }
    // Faults model a failing upstream behind working auth, so they apply
    // only to requests that got past authentication, and never to the ping
    // (clients use it to discover auth, not to fetch content).
    if route != Route::Ping {
        if let Some(status) = shared.take_status_fault() {
            return injected_status(status);
        }
    }
    let head = match *req.method() {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            return oci_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "UNSUPPORTED",
                "this registry is read-only",
            )
        }
    };
    match route {
        Route::Ping => status_only(StatusCode::OK),
        Route::Manifest { name, reference } => manifest(shared, &name, &reference, head),
        Route::Blob { name, digest } => blob(shared, kill, req.headers(), &name, &digest, head),
        Route::Tags { name } => tags(shared, &name),
        Route::Unknown => oci_error(StatusCode::NOT_FOUND, "UNSUPPORTED", "unknown endpoint"),
    }
}

fn manifest(shared: &Shared, repo: &str, reference: &str, head: bool) -> Response<Body> {
    shared.count_manifest(reference);
    if head {
        shared.count_manifest_head(reference);
    }
    let Some(m) = shared.manifest(repo, reference) else {
        let msg = format!("manifest unknown: {repo}:{reference}");
        return oci_error(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", &msg);
    };
    let len = m.body.len() as u64;
    let mut resp = Response::new(if head {
        Body::empty()
    } else {
        Body::full(m.body)
    });
    let h = resp.headers_mut();
    set_header(h, CONTENT_TYPE, &m.media_type);
    h.insert(CONTENT_LENGTH, HeaderValue::from(len));
    set_header(h, DOCKER_CONTENT_DIGEST, &m.digest);
    resp
}

fn blob(
    shared: &Arc<Shared>,
    kill: &KillSwitch,
    headers: &HeaderMap,
    repo: &str,
    digest: &str,
    head: bool,
) -> Response<Body> {
    if head {
        shared.count_blob_head(digest);
    } else {
        shared.count_blob_get(digest);
    }
    let Some(data) = shared.blob(repo, digest) else {
        let msg = format!("blob unknown to registry: {repo}@{digest}");
        return oci_error(StatusCode::NOT_FOUND, "BLOB_UNKNOWN", &msg);
    };
    let total = data.len() as u64;
    let (status, start, end) = match parse_range(headers.get(RANGE), total) {
        RangeSpec::Full => (StatusCode::OK, 0, total),
        RangeSpec::Partial(start, end) => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeSpec::Unsatisfiable => {
            let mut resp = status_only(StatusCode::RANGE_NOT_SATISFIABLE);
            set_header(
                resp.headers_mut(),
                CONTENT_RANGE,
                &format!("bytes */{total}"),
            );
            return resp;
        }
    };
    let body = if head {
        Body::empty()
    } else {
        // Ranges are clamped to `total`, which is `data.len()`: in bounds.
        let slice = data.slice(start as usize..end as usize);
        let fault = shared.fault();
        let sent = shared.blob_bytes_sent.clone();
        Body::Blob(
            BlobBody::new(slice, start, total, &fault, kill.clone(), sent).through(shared.uplink()),
        )
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    h.insert(CONTENT_LENGTH, HeaderValue::from(end - start));
    if let (Fault::ClaimSize { size }, StatusCode::OK) = (shared.fault(), status) {
        h.insert(CONTENT_LENGTH, HeaderValue::from(size));
    }
    set_header(h, DOCKER_CONTENT_DIGEST, digest);
    h.insert(ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        set_header(
            h,
            CONTENT_RANGE,
            &format!("bytes {start}-{}/{total}", end - 1),
        );
    }
    resp
}

fn tags(shared: &Shared, repo: &str) -> Response<Body> {
    let Some(tags) = shared.tags(repo) else {
        let msg = format!("repository name not known to registry: {repo}");
        return oci_error(StatusCode::NOT_FOUND, "NAME_UNKNOWN", &msg);
    };
    json(
        StatusCode::OK,
        serde_json::json!({ "name": repo, "tags": tags }),
    )
}

/// The response for an injected `Fault::Status`, with an OCI error code that
/// matches the status where the spec defines one.
fn injected_status(status: u16) -> Response<Body> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let code = match status.as_u16() {
        401 => "UNAUTHORIZED",
        403 => "DENIED",
        404 => "NAME_UNKNOWN",
        405 => "UNSUPPORTED",
        429 => "TOOMANYREQUESTS",
        _ => "UNKNOWN",
    };
    oci_error(
        status,
        code,
        &format!("injected fault: status {}", status.as_u16()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let m = |n: &str, r: &str| Route::Manifest {
            name: n.into(),
            reference: r.into(),
        };
        assert_eq!(Route::parse("/v2/"), Route::Ping);
        assert_eq!(Route::parse("/v2"), Route::Ping);
        assert_eq!(
            Route::parse("/v2/a/b/c/manifests/latest"),
            m("a/b/c", "latest")
        );
        assert_eq!(
            Route::parse("/v2/x/manifests/sha256%3Aab"),
            m("x", "sha256:ab")
        );
        assert_eq!(
            Route::parse("/v2/library/busybox/blobs/sha256:ab"),
            Route::Blob {
                name: "library/busybox".into(),
                digest: "sha256:ab".into()
            }
        );
        assert_eq!(
            Route::parse("/v2/a/b/tags/list"),
            Route::Tags { name: "a/b".into() }
        );
        assert_eq!(Route::parse("/v2/manifests/latest"), Route::Unknown);
        assert_eq!(Route::parse("/v2/a/blobs/uploads/"), Route::Unknown);
        assert_eq!(Route::parse("/v2x"), Route::Unknown);
    }
}
