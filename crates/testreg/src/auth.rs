//! Authentication: checking `/v2/` requests against the configured
//! [`Auth`] mode and the `/token` endpoint that issues bearer tokens.

use std::time::SystemTime;

use base64::Engine;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, Method, Request, Response, StatusCode};

use crate::body::Body;
use crate::state::Shared;
use crate::util::{json, oci_error, rfc3339, set_header};
use crate::Auth;

/// The `service` this registry names in its bearer challenges.
const SERVICE: &str = "testreg";

/// Checks a `/v2/` request against the configured [`Auth`] mode. Returns
/// `None` if it may proceed, else the `WWW-Authenticate` challenge a real
/// registry would answer with (scoped to `repo` for bearer auth).
pub(crate) fn auth_challenge(
    shared: &Shared,
    headers: &HeaderMap,
    repo: Option<&str>,
) -> Option<String> {
    let authz = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    match shared.auth() {
        Auth::None => None,
        Auth::Basic { username, password } => (!basic_matches(authz, &username, &password))
            .then(|| "Basic realm=\"testreg\"".to_owned()),
        Auth::Token { .. } => {
            if scheme_param(authz, "bearer").is_some_and(|t| shared.token_valid(t)) {
                return None;
            }
            let scope = repo.map_or(String::new(), |r| format!(",scope=\"repository:{r}:pull\""));
            let realm = shared
                .realm()
                .unwrap_or_else(|| format!("http://{}/token", shared.host));
            Some(format!(
                "Bearer realm=\"{realm}\",service=\"{SERVICE}\"{scope}"
            ))
        }
    }
}

/// `GET /token`: the token server. Anonymous unless the registry was set to
/// `Auth::Token` with a username and password, in which case the client must
/// present them with Basic auth (the Docker Hub model for private repos).
///
/// Tokens are not scoped: any issued token opens any repository, which keeps
/// the server simple and has not mattered for the clients under test.
pub(crate) fn handle_token<B>(shared: &Shared, req: &Request<B>) -> Response<Body> {
    shared.count_token_request(
        req.headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
    );
    if req.method() != Method::GET {
        return oci_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
            "token endpoint supports GET only",
        );
    }
    if let Auth::Token {
        username_password: Some((user, pass)),
    } = shared.auth()
    {
        let authz = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !basic_matches(authz, &user, &pass) {
            let mut resp = oci_error(StatusCode::UNAUTHORIZED, "UNAUTHORIZED", "bad credentials");
            set_header(
                resp.headers_mut(),
                WWW_AUTHENTICATE,
                "Basic realm=\"testreg\"",
            );
            return resp;
        }
    }
    let token = shared.issue_token();
    json(
        StatusCode::OK,
        serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": 300,
            "issued_at": rfc3339(SystemTime::now()),
        }),
    )
}

/// The parameter of an `Authorization` header if its scheme is `scheme`
/// (compared case-insensitively, as RFC 9110 requires).
fn scheme_param<'a>(authz: Option<&'a str>, scheme: &str) -> Option<&'a str> {
    let (s, param) = authz?.trim().split_once(' ')?;
    s.eq_ignore_ascii_case(scheme).then(|| param.trim())
}

fn basic_matches(authz: Option<&str>, username: &str, password: &str) -> bool {
    scheme_param(authz, "basic")
        .and_then(|p| base64::engine::general_purpose::STANDARD.decode(p).ok())
        .and_then(|raw| String::from_utf8(raw).ok())
        .and_then(|creds| {
            let (u, p) = creds.split_once(':')?;
            Some(u == username && p == password)
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials() {
        let good = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("u:p:w")
        );
        assert!(basic_matches(Some(&good), "u", "p:w"));
        assert!(!basic_matches(Some(&good), "u", "p"));
        assert!(!basic_matches(Some("Basic !!!"), "u", "p"));
        assert!(!basic_matches(None, "u", "p"));
        assert_eq!(scheme_param(Some("bearer abc"), "Bearer"), Some("abc"));
    }
}
