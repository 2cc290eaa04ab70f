//! The parsers of a client's request, reachable from the fuzz targets (`fuzz/`) and nothing
//! else: not part of the API, hidden from the docs.

use http::{Method, StatusCode, Uri};
use pollen_oci::{Digest, Name, Reference};

/// What [`parse_request`] accepted.
#[derive(Debug)]
pub enum Request {
    Ping,
    Manifest { name: Name, reference: Reference },
    Blob { name: Name, digest: Digest },
}

/// The mirror's request parser (`request::parse`): the request, its `ns` and whether it is a
/// HEAD, or the status it is refused with.
pub fn parse_request(
    method: &Method,
    uri: &Uri,
) -> Result<(Request, Option<String>, bool), StatusCode> {
    use crate::request::ApiRequest;
    let p = crate::request::parse(method, uri).map_err(|e| e.status)?;
    let api = match p.api {
        ApiRequest::Ping => Request::Ping,
        ApiRequest::Manifest { name, reference } => Request::Manifest { name, reference },
        ApiRequest::Blob { name, digest } => Request::Blob { name, digest },
    };
    Ok((api, p.ns, p.head))
}

/// What [`parse_range`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Range {
    Full,
    Partial { start: u64, end: u64 },
    Unsatisfiable,
}

/// The mirror's `Range` parser (`range::parse`) for an object of `size` bytes.
pub fn parse_range(header: Option<&str>, size: u64) -> Range {
    use crate::range::RangeOutcome;
    match crate::range::parse(header, size) {
        RangeOutcome::Full => Range::Full,
        RangeOutcome::Partial { start, end } => Range::Partial { start, end },
        RangeOutcome::Unsatisfiable => Range::Unsatisfiable,
    }
}

/// The media type of a manifest a peer sent (`p2p::manifest::media_type_of`).
pub fn manifest_media_type(body: &[u8]) -> Option<String> {
    crate::p2p::manifest::media_type_of(body)
}
