//! OCI error bodies: every failure a client sees is one of these, never a bare status.

use http::StatusCode;
use serde::Serialize;

/// The error codes of the OCI Distribution spec (plus `UNAVAILABLE` from Distribution, for an
/// upstream that cannot be reached).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    BlobUnknown,
    DigestInvalid,
    ManifestUnknown,
    ManifestInvalid,
    NameInvalid,
    NameUnknown,
    RangeInvalid,
    Unauthorized,
    Denied,
    Unsupported,
    TooManyRequests,
    Unavailable,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::RangeInvalid => "RANGE_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unavailable => "UNAVAILABLE",
        }
    }
}

/// One OCI error with the HTTP status it travels with.
#[derive(Clone, Debug)]
pub struct OciError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub message: String,
}

#[derive(Serialize)]
struct Body<'a> {
    errors: [Entry<'a>; 1],
}
#[derive(Serialize)]
struct Entry<'a> {
    code: &'static str,
    message: &'a str,
    detail: Option<()>,
}

impl OciError {
    pub fn new(status: StatusCode, code: ErrorCode, message: impl Into<String>) -> OciError {
        OciError {
            status,
            code,
            message: message.into(),
        }
    }

    /// `{"errors":[{"code":...,"message":...,"detail":null}]}`
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&Body {
            errors: [Entry {
                code: self.code.as_str(),
                message: &self.message,
                detail: None,
            }],
        })
        .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn body_shape() {
        let e = OciError::new(
            StatusCode::NOT_FOUND,
            ErrorCode::BlobUnknown,
            "no \"such\" blob",
        );
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["errors"][0]["code"], "BLOB_UNKNOWN");
        assert_eq!(v["errors"][0]["message"], "no \"such\" blob");
    }
}
