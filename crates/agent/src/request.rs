//! Turning an HTTP request line into a validated API request, refusing everything else.

use http::{Method, StatusCode, Uri};
use pollen_oci::{Digest, ErrorCode, Name, NameError, OciError, Reference};

/// What a client asked for.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ApiRequest {
    /// `GET /v2/`
    Ping,
    Manifest {
        name: Name,
        reference: Reference,
    },
    Blob {
        name: Name,
        digest: Digest,
    },
}

/// A parsed request plus the registry it is meant for (containerd's `ns`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub api: ApiRequest,
    pub ns: Option<String>,
    pub head: bool,
}

/// Longest path we look at; the longest valid one is well under this.
const MAX_PATH: usize = 1024;

pub(crate) fn parse(method: &Method, uri: &Uri) -> Result<Parsed, OciError> {
    let head = match *method {
        Method::GET => false,
        Method::HEAD => true,
        _ => {
            return Err(OciError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::Unsupported,
                "this is a pull-only mirror: only GET and HEAD are supported",
            ))
        }
    };
    let path = uri.path();
    if path.len() > MAX_PATH {
        return Err(bad(ErrorCode::NameInvalid, "request path too long"));
    }
    let ns = ns_param(uri.query())?;
    let rest = match path.strip_prefix("/v2") {
        Some("" | "/") => {
            return Ok(Parsed {
                api: ApiRequest::Ping,
                ns,
                head,
            })
        }
        Some(rest) => rest.strip_prefix('/').ok_or_else(not_found)?,
        None => return Err(not_found()),
    };
    let (name, kind, reference) = split_api_path(rest).ok_or_else(not_found)?;
    let name = Name::parse(name).map_err(|e| bad(ErrorCode::NameInvalid, &e.to_string()))?;
    let api = match kind {
        "manifests" => ApiRequest::Manifest {
            name,
            reference: Reference::parse(reference).map_err(|e| match e {
                NameError::Digest(d) => bad(ErrorCode::DigestInvalid, &d.to_string()),
                e => bad(ErrorCode::ManifestInvalid, &e.to_string()),
            })?,
        },
        "blobs" => ApiRequest::Blob {
            name,
            digest: reference.parse().map_err(|e: pollen_oci::DigestError| {
                bad(ErrorCode::DigestInvalid, &e.to_string())
            })?,
        },
        _ => return Err(not_found()),
    };
    Ok(Parsed { api, ns, head })
}

/// `<name>/(manifests|blobs)/<reference>`; the name may itself contain slashes.
fn split_api_path(rest: &str) -> Option<(&str, &str, &str)> {
    let (before, reference) = rest.rsplit_once('/')?;
    let (name, kind) = before.rsplit_once('/')?;
    Some((name, kind, reference))
}

/// containerd's `ns=<registry host>`, URL-decoded. Validated later, against the routing table.
fn ns_param(query: Option<&str>) -> Result<Option<String>, OciError> {
    let Some(q) = query else { return Ok(None) };
    for pair in q.split('&') {
        if let Some(v) = pair.strip_prefix("ns=") {
            let decoded = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| bad(ErrorCode::NameInvalid, "ns is not valid UTF-8"))?;
            return Ok(Some(decoded.into_owned()));
        }
    }
    Ok(None)
}

fn bad(code: ErrorCode, msg: &str) -> OciError {
    OciError::new(StatusCode::BAD_REQUEST, code, msg)
}

fn not_found() -> OciError {
    OciError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NameUnknown,
        "not an OCI pull API path (/v2/<name>/manifests/<ref> or /v2/<name>/blobs/<digest>)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(m: Method, s: &str) -> Result<Parsed, OciError> {
        parse(&m, &s.parse().unwrap())
    }

    #[test]
    fn valid_requests() {
        assert_eq!(p(Method::GET, "/v2/").unwrap().api, ApiRequest::Ping);
        assert_eq!(p(Method::GET, "/v2").unwrap().api, ApiRequest::Ping);
        let r = p(Method::HEAD, "/v2/a/b/c/manifests/v1?ns=127.0.0.1%3A5000").unwrap();
        assert!(r.head);
        assert_eq!(r.ns.as_deref(), Some("127.0.0.1:5000"));
        assert!(matches!(r.api, ApiRequest::Manifest { ref name, .. } if name.as_str() == "a/b/c"));
        let d = Digest::of(b"x");
        let r = p(Method::GET, &format!("/v2/library/busybox/blobs/{d}")).unwrap();
        assert_eq!(
            r.api,
            ApiRequest::Blob {
                name: Name::parse("library/busybox").unwrap(),
                digest: d
            }
        );
    }

    #[test]
    fn hostile_requests() {
        let cases = [
            (
                Method::GET,
                "/v2/../../etc/passwd/blobs/sha256:00",
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::GET,
                "/v2/a/blobs/sha256:zz",
                StatusCode::BAD_REQUEST,
            ),
            (Method::GET, "/v2/a/blobs/md5:abcd", StatusCode::BAD_REQUEST),
            (Method::GET, "/v2/a/manifests/..", StatusCode::BAD_REQUEST),
            (
                Method::GET,
                "/v2/A/manifests/latest",
                StatusCode::BAD_REQUEST,
            ),
            (Method::GET, "/v2/a/tags/list", StatusCode::NOT_FOUND),
            (Method::GET, "/v2/a", StatusCode::NOT_FOUND),
            (Method::GET, "/etc/passwd", StatusCode::NOT_FOUND),
            (Method::GET, "/v2x/a/blobs/x", StatusCode::NOT_FOUND),
            (
                Method::GET,
                "/v2/a/manifests/v1?ns=%ff",
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::PUT,
                "/v2/a/manifests/v1",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Method::POST,
                "/v2/a/blobs/uploads/",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Method::DELETE,
                "/v2/a/blobs/sha256:00",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
        ];
        for (m, path, status) in cases {
            assert_eq!(p(m.clone(), path).unwrap_err().status, status, "{m} {path}");
        }
        let long = format!("/v2/{}/manifests/v1", "a/".repeat(600));
        assert_eq!(
            p(Method::GET, &long).unwrap_err().status,
            StatusCode::BAD_REQUEST
        );
    }
}

#[cfg(test)]
mod fuzz {
    use super::*;

    /// Random paths and queries built from the characters that matter: never a panic, and
    /// anything accepted is a request whose parts re-validate.
    #[test]
    fn random_request_lines_never_panic() {
        let alphabet = b"/v2abcAZ09._-:%?&=@sha256manifestsblobs";
        let mut x: u64 = 0x1234_5678_9abc_def1;
        let mut parsed = 0;
        for _ in 0..50_000 {
            let len = (x % 80) as usize;
            let mut path = String::from("/");
            for _ in 0..len {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                path.push(alphabet[(x % alphabet.len() as u64) as usize] as char);
            }
            let Ok(uri) = path.parse::<Uri>() else {
                continue;
            };
            parsed += 1;
            if let Ok(p) = parse(&Method::GET, &uri) {
                match p.api {
                    ApiRequest::Ping => {}
                    ApiRequest::Manifest { name, .. } | ApiRequest::Blob { name, .. } => {
                        assert!(Name::parse(name.as_str()).is_ok());
                        assert!(!name.as_str().contains(".."));
                    }
                }
            }
        }
        assert!(parsed > 40_000, "only {parsed} inputs reached the parser");
    }
}
