//! Registry authentication: `WWW-Authenticate` challenges, bearer tokens shared between
//! requests until they expire, and Basic credentials from configuration.

use base64::Engine;
use dashmap::DashMap;
use http::HeaderValue;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// Longest challenge header we parse; real ones are a few hundred bytes.
const MAX_CHALLENGE_LEN: usize = 4096;
/// Largest token response body we read.
pub(crate) const MAX_TOKEN_BODY: usize = 64 << 10;
/// Token lifetime when the server does not say (the Docker token spec's default).
const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(60);
/// Tokens are renewed this long before they expire, so a request never races the expiry.
const EXPIRY_MARGIN: Duration = Duration::from_secs(10);

/// A username and password for one registry host.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

impl Credentials {
    pub(crate) fn basic_header(&self) -> Option<HeaderValue> {
        let raw = format!("{}:{}", self.username, self.password);
        let enc = base64::engine::general_purpose::STANDARD.encode(raw);
        let mut v = HeaderValue::from_str(&format!("Basic {enc}")).ok()?;
        v.set_sensitive(true);
        Some(v)
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

pub(crate) fn parse_challenge(header: &str) -> Option<Challenge> {
    if header.len() > MAX_CHALLENGE_LEN {
        return None;
    }
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = parse_params(rest);
    let realm = params.remove("realm")?;
    if !(realm.starts_with("https://") || realm.starts_with("http://")) {
        return None;
    }
    Some(Challenge::Bearer {
        realm,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

/// `k="v", k2=v2` with commas allowed inside quotes.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| *c == ',' || c.is_whitespace()).is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=')).collect();
        if chars.next() != Some('=') {
            break;
        }
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ',')).collect();
        }
        out.insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    }
    out
}

#[derive(Clone)]
pub(crate) struct Token {
    pub header: HeaderValue,
    pub expires: Instant,
}

/// Tokens per (upstream, repository). Each slot has its own async lock, so concurrent
/// requests that need the same token wait for one token request instead of each making one.
#[derive(Default)]
pub(crate) struct TokenCache {
    slots: DashMap<String, Arc<tokio::sync::Mutex<Option<Token>>>>,
}

impl TokenCache {
    pub fn slot(&self, key: &str) -> Arc<tokio::sync::Mutex<Option<Token>>> {
        self.slots.entry(key.to_string()).or_default().clone()
    }

    /// A cached token that is still good, without waiting on an in-progress refresh.
    pub fn fresh(&self, key: &str) -> Option<HeaderValue> {
        let slot = self.slots.get(key)?.clone();
        let guard = slot.try_lock().ok()?;
        guard
            .as_ref()
            .filter(|t| t.expires > Instant::now())
            .map(|t| t.header.clone())
    }
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

/// Turns a token endpoint's JSON into a usable header; `None` when it holds no token.
pub(crate) fn parse_token(body: &[u8], now: Instant) -> Option<Token> {
    let r: TokenResponse = serde_json::from_slice(body).ok()?;
    let token = r.token.or(r.access_token).filter(|t| !t.is_empty())?;
    let ttl = r
        .expires_in
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_TOKEN_TTL)
        .min(Duration::from_secs(24 * 3600));
    let mut header = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
    header.set_sensitive(true);
    Some(Token {
        header,
        expires: now
            + ttl
                .saturating_sub(EXPIRY_MARGIN)
                .max(Duration::from_secs(1)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/busybox:pull,push""#,
        );
        assert_eq!(
            c,
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/busybox:pull,push".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(
            parse_challenge(r#"Bearer realm="file:///etc/passwd""#),
            None
        );
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge(&"Bearer ".repeat(2000)), None);
    }

    #[test]
    fn token_bodies() {
        let now = Instant::now();
        let t = parse_token(br#"{"token":"abc","expires_in":300}"#, now).unwrap();
        assert_eq!(t.header, "Bearer abc");
        assert!(t.expires > now + Duration::from_secs(280));
        assert!(parse_token(br#"{"access_token":"x"}"#, now).is_some());
        assert!(parse_token(br#"{"token":""}"#, now).is_none());
        assert!(parse_token(b"not json", now).is_none());
        assert!(parse_token(br#"{"token":"a\nb"}"#, now).is_none());
    }
}
