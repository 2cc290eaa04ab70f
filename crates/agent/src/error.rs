//! Why a fetch failed, and what the client is told.

use http::{HeaderValue, StatusCode};
use pollen_oci::{ErrorCode, OciError};
use pollen_store::StoreError;

/// A fetch failure, shared by every client waiting on the same fetch.
#[derive(Debug, Clone)]
pub(crate) enum FetchError {
    /// The upstream says the content does not exist.
    NotFound,
    /// The upstream wants credentials; its challenge is passed on so the client can answer it.
    Unauthorized(Option<HeaderValue>),
    Denied,
    /// The upstream could not be reached or gave an unusable answer.
    Upstream(String),
    /// The upstream's bytes did not match the digest; nothing was stored.
    Corrupt(String),
    /// The local disk failed (full, unwritable).
    Store(String),
}

impl FetchError {
    pub fn to_oci(&self, not_found: ErrorCode) -> (OciError, Option<HeaderValue>) {
        use FetchError::*;
        let e = |status, code, msg: &str| OciError::new(status, code, msg);
        match self {
            NotFound => (
                e(StatusCode::NOT_FOUND, not_found, "not found upstream"),
                None,
            ),
            Unauthorized(challenge) => (
                e(
                    StatusCode::UNAUTHORIZED,
                    ErrorCode::Unauthorized,
                    "the upstream registry requires authentication",
                ),
                challenge.clone(),
            ),
            Denied => (
                e(
                    StatusCode::FORBIDDEN,
                    ErrorCode::Denied,
                    "the upstream registry denied access",
                ),
                None,
            ),
            Upstream(msg) => (
                e(StatusCode::BAD_GATEWAY, ErrorCode::Unavailable, msg),
                None,
            ),
            Corrupt(msg) => (
                e(StatusCode::BAD_GATEWAY, ErrorCode::DigestInvalid, msg),
                None,
            ),
            Store(msg) => (
                e(
                    StatusCode::INSUFFICIENT_STORAGE,
                    ErrorCode::Unavailable,
                    msg,
                ),
                None,
            ),
        }
    }

    /// Maps an upstream's non-success status to what we tell our client.
    pub fn from_status(status: StatusCode, headers: &http::HeaderMap) -> FetchError {
        match status {
            StatusCode::NOT_FOUND => FetchError::NotFound,
            StatusCode::UNAUTHORIZED => {
                FetchError::Unauthorized(headers.get(http::header::WWW_AUTHENTICATE).cloned())
            }
            StatusCode::FORBIDDEN => FetchError::Denied,
            s => FetchError::Upstream(format!("upstream answered HTTP {s}")),
        }
    }

    /// Whether the upstream said no to these credentials or this repository (another
    /// client's, or another repository's, may still get a yes).
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            FetchError::Unauthorized(_) | FetchError::Denied | FetchError::NotFound
        )
    }

    /// Whether a stale cached answer may stand in (the upstream is down, not saying no).
    pub fn is_outage(&self) -> bool {
        matches!(self, FetchError::Upstream(_))
    }
}

impl From<StoreError> for FetchError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DigestMismatch { .. } | StoreError::TooLarge { .. } => {
                FetchError::Corrupt(e.to_string())
            }
            StoreError::Incomplete { .. } => FetchError::Upstream(e.to_string()),
            e => FetchError::Store(e.to_string()),
        }
    }
}

impl From<pollen_upstream::UpstreamError> for FetchError {
    fn from(e: pollen_upstream::UpstreamError) -> Self {
        FetchError::Upstream(e.to_string())
    }
}
