//! The parsers of an upstream's authentication answers, reachable from the fuzz targets
//! (`fuzz/`) and nothing else: not part of the API, hidden from the docs.

use std::time::Instant;

/// A `WWW-Authenticate` header parsed (`auth::parse_challenge`), as its debug text (so this
/// seam does not follow every change of the type).
pub fn parse_challenge(header: &str) -> Option<String> {
    crate::auth::parse_challenge(header).map(|c| format!("{c:?}"))
}

/// A token endpoint's JSON body parsed (`auth::parse_token`): when the token expires, if the
/// body holds one. In std's `Instant`, so the fuzz targets need no tokio; the crate itself
/// keeps tokio's clock.
pub fn parse_token(body: &[u8], now: Instant) -> Option<Instant> {
    let now = tokio::time::Instant::from_std(now);
    crate::auth::parse_token(body, now).map(|t| t.expires.into_std())
}
