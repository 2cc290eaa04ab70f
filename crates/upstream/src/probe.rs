//! What `pollen doctor` asks of each mirror: does it answer the registry API, does it accept
//! the credentials configured for it, how fast does it send a blob, and does its clock agree
//! with ours. Nothing here changes the health table or the token cache the pulls use.

use crate::auth::{self, Challenge};
use crate::client::{error_chain, token_url};
use crate::scope::RealmUse;
use crate::{FetchRequest, Upstream};
use http::header::{AUTHORIZATION, DATE, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use std::time::{Duration, SystemTime};
use tokio::time::timeout;
use tokio::time::Instant;

/// How much of a blob the throughput probe reads: enough for TCP to leave slow start on a
/// fast link, little enough that a doctor run costs the registry nothing noticeable.
pub const THROUGHPUT_PROBE_BYTES: u64 = 4 << 20;
/// The throughput probe stops reading after this long and reports what it got.
const THROUGHPUT_PROBE_TIME: Duration = Duration::from_secs(10);

/// What a mirror answered to `GET /v2/` ([`Upstream::probe`]).
#[derive(Clone, Debug)]
pub struct Probe {
    pub latency: Duration,
    /// The status and the auth scheme of its challenge (`Bearer`, `Basic`), or why there was
    /// no answer.
    pub answer: Result<(StatusCode, Option<String>), String>,
    pub credentials: CredentialCheck,
    /// The mirror's clock minus ours, in milliseconds, from its `Date` header (which has a
    /// resolution of one second).
    pub clock_offset_ms: Option<i64>,
}

/// Whether the credentials configured for a mirror work: the mistake users otherwise find
/// only when a private image fails to pull.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialCheck {
    /// None are configured for this mirror.
    NotConfigured,
    /// The registry, or its token service, accepted them.
    Accepted,
    /// The registry, or its token service, refused them; says which and how.
    Rejected(String),
    /// Configured, but the registry asks for none (it answered `/v2/` without a challenge).
    NotAsked,
    /// Could not be checked; says why.
    Unknown(String),
}

/// A short read of a blob from one mirror ([`Upstream::throughput`]).
#[derive(Clone, Debug)]
pub struct Throughput {
    pub bytes: u64,
    /// From sending the request to the response's headers (auth and redirects included).
    pub first_byte: Duration,
    /// From the headers to the last byte read.
    pub transfer: Duration,
    /// The blob read, `name@digest`: the last one pulled from this registry.
    pub blob: String,
}

impl Throughput {
    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.transfer.as_secs_f64().max(1e-3)
    }
}

impl Probe {
    /// A registry that answers: 200, or 401 with a challenge (it wants a token, as Docker Hub
    /// does for everyone).
    pub fn is_ok(&self) -> bool {
        match &self.answer {
            Ok((status, challenge)) => {
                status.is_success() || (*status == StatusCode::UNAUTHORIZED && challenge.is_some())
            }
            Err(_) => false,
        }
    }
}

impl Upstream {
    /// Asks `mirror` for `/v2/` (the registry API's version check) without credentials: how
    /// long it takes to answer and what it says; then, when credentials are configured for
    /// it, whether the registry or its token service accepts them (as `docker login` checks
    /// them: a token without a scope, or `/v2/` with Basic auth).
    pub async fn probe(&self, mirror: &str) -> Probe {
        let url = format!("{}/v2/", mirror.trim_end_matches('/'));
        let started = Instant::now();
        let answer = self.get_v2(&url, None).await;
        let latency = started.elapsed();
        let clock_offset_ms = answer
            .as_ref()
            .ok()
            .and_then(|(_, headers)| clock_offset_ms(headers, SystemTime::now() - latency / 2));
        let credentials = match (self.credentials_for(mirror), &answer) {
            (None, _) => CredentialCheck::NotConfigured,
            (Some(_), Err(e)) => CredentialCheck::Unknown(e.clone()),
            (Some(creds), Ok((status, headers))) => {
                let challenge = headers
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(auth::parse_challenge);
                match challenge {
                    None if status.is_success() => CredentialCheck::NotAsked,
                    None => CredentialCheck::Unknown(format!(
                        "HTTP {status} to /v2/ without a challenge we understand"
                    )),
                    Some(Challenge::Basic) => {
                        let answer = self.get_v2(&url, creds.basic_header()).await;
                        verdict(answer.map(|(s, _)| s), &url)
                    }
                    Some(Challenge::Bearer { realm, service, .. }) => {
                        let token = token_url(&realm, service.as_deref(), None);
                        match self.realm_use(mirror, true, &token) {
                            Err(e) => CredentialCheck::Rejected(e),
                            Ok(RealmUse::Credentials(c)) => {
                                let answer = self.token_exchange(mirror, &token, Some(c)).await;
                                verdict(answer.map(|(s, _)| s), &realm)
                            }
                            Ok(_) => CredentialCheck::Rejected(format!(
                                "not sent: its token realm {realm} is not bound to them (list \
                                 the realm's host in `realms` of the [[credentials]] entry)"
                            )),
                        }
                    }
                }
            }
        };
        Probe {
            latency,
            answer: answer.map(|(status, headers)| {
                let challenge = headers
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .map(|v| v.split_whitespace().next().unwrap_or_default().to_string());
                (status, challenge)
            }),
            credentials,
            clock_offset_ms,
        }
    }

    /// Reads the first [`THROUGHPUT_PROBE_BYTES`] of the last blob pulled from this mirror's
    /// registry, from this mirror (for at most 10 s). `None`: nothing pulled from it yet
    /// since the agent started (or since the last reload).
    pub async fn throughput(&self, mirror: &str) -> Option<Result<Throughput, String>> {
        let (route, path) = self
            .samples
            .iter()
            .find(|s| s.value().0.mirrors.iter().any(|m| m == mirror))
            .map(|s| s.value().clone())?;
        let req = FetchRequest {
            route: &route,
            method: Method::GET,
            path: path.clone(),
            accept: None,
            range_start: 0,
            range_end: Some(THROUGHPUT_PROBE_BYTES),
            client_auth: None,
        };
        let blob = format!("{}@{}", route.name, path.trim_start_matches("blobs/"));
        let started = Instant::now();
        let resp = match self.fetch_from(mirror, &req).await {
            Err(e) => return Some(Err(e)),
            Ok(r) if !r.status.is_success() => {
                return Some(Err(format!("HTTP {} for {blob}", r.status)))
            }
            Ok(r) => r,
        };
        let first_byte = started.elapsed();
        let mut body = resp.body;
        let mut bytes = 0u64;
        let deadline = Instant::now() + THROUGHPUT_PROBE_TIME;
        while bytes < THROUGHPUT_PROBE_BYTES {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Err(_) | Ok(None) => break,
                Ok(Some(Err(e))) => return Some(Err(format!("reading {blob}: {e}"))),
                Ok(Some(Ok(frame))) => {
                    bytes += frame.data_ref().map_or(0, |d| d.len() as u64);
                }
            }
        }
        Some(Ok(Throughput {
            bytes,
            first_byte,
            transfer: started.elapsed().saturating_sub(first_byte),
            blob,
        }))
    }

    /// The mirrors in the order a pull tries them now: configured order, mirrors in a
    /// failure backoff last.
    pub fn current_order(&self, mirrors: &[String]) -> Vec<String> {
        self.health
            .order(mirrors, Instant::now())
            .into_iter()
            .map(|m| m.to_string())
            .collect()
    }

    async fn get_v2(
        &self,
        url: &str,
        auth: Option<HeaderValue>,
    ) -> Result<(StatusCode, HeaderMap), String> {
        let uri = url
            .parse::<Uri>()
            .map_err(|e| format!("bad mirror URL {url}: {e}"))?;
        let mut b = Request::builder()
            .uri(uri)
            .header(USER_AGENT, &self.cfg.user_agent);
        if let Some(a) = auth {
            b = b.header(AUTHORIZATION, a);
        }
        let request = b.body(Empty::new()).map_err(|e| e.to_string())?;
        let resp = timeout(self.cfg.response_timeout, self.client.request(request))
            .await
            .map_err(|_| format!("no answer within {:?}", self.cfg.response_timeout))?
            .map_err(|e| error_chain(&e))?;
        let (parts, _) = resp.into_parts();
        Ok((parts.status, parts.headers))
    }
}

/// What a status from a credentials check means.
fn verdict(answer: Result<StatusCode, String>, asked: &str) -> CredentialCheck {
    match answer {
        Ok(s) if s.is_success() => CredentialCheck::Accepted,
        Ok(s) if s == StatusCode::UNAUTHORIZED || s == StatusCode::FORBIDDEN => {
            CredentialCheck::Rejected(format!("{asked} answered HTTP {s} to them"))
        }
        Ok(s) => CredentialCheck::Unknown(format!("{asked} answered HTTP {s}")),
        Err(e) => CredentialCheck::Unknown(e),
    }
}

/// The sender's clock minus ours (`at`: our time when it answered), from a `Date` header.
fn clock_offset_ms(headers: &HeaderMap, at: SystemTime) -> Option<i64> {
    let date = headers.get(DATE)?.to_str().ok()?;
    let theirs = httpdate::parse_http_date(date).ok()?;
    Some(offset_ms(theirs, at))
}

/// `theirs - ours` in milliseconds, saturating: how far another clock is ahead of ours.
pub fn offset_ms(theirs: SystemTime, ours: SystemTime) -> i64 {
    match theirs.duration_since(ours) {
        Ok(ahead) => i64::try_from(ahead.as_millis()).unwrap_or(i64::MAX),
        Err(behind) => -i64::try_from(behind.duration().as_millis()).unwrap_or(i64::MAX),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_offsets_from_date_headers() {
        let mut h = HeaderMap::new();
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        assert_eq!(clock_offset_ms(&h, now), None);
        h.insert(
            DATE,
            HeaderValue::from_static("Tue, 14 Nov 2023 22:13:20 GMT"),
        );
        assert_eq!(clock_offset_ms(&h, now), Some(0));
        assert_eq!(
            clock_offset_ms(&h, now + Duration::from_secs(90)),
            Some(-90_000)
        );
        assert_eq!(
            clock_offset_ms(&h, now - Duration::from_millis(1500)),
            Some(1500)
        );
        h.insert(DATE, HeaderValue::from_static("yesterday"));
        assert_eq!(clock_offset_ms(&h, now), None);
    }

    #[test]
    fn credential_verdicts() {
        assert_eq!(verdict(Ok(StatusCode::OK), "x"), CredentialCheck::Accepted);
        assert!(matches!(
            verdict(Ok(StatusCode::UNAUTHORIZED), "x"),
            CredentialCheck::Rejected(_)
        ));
        assert!(matches!(
            verdict(Ok(StatusCode::FORBIDDEN), "x"),
            CredentialCheck::Rejected(_)
        ));
        assert!(matches!(
            verdict(Ok(StatusCode::BAD_GATEWAY), "x"),
            CredentialCheck::Unknown(_)
        ));
        assert!(matches!(
            verdict(Err("down".into()), "x"),
            CredentialCheck::Unknown(_)
        ));
    }
}
