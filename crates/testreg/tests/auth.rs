//! Token and Basic authentication, driven the way a registry client does:
//! follow the 401 challenge to the token endpoint and retry.

mod common;

use base64::Engine;
use common::{fetch, get, parse_challenge, Reply};
use http::{Method, StatusCode};
use pollen_testreg::{Auth, Fault, TestRegistry};

fn basic(user: &str, pass: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"))
    )
}

/// Follows a Bearer challenge: builds the token URL from realm, service and
/// scope, asserts the realm points back at this registry.
async fn get_token(reg: &TestRegistry, challenge: &Reply, creds: Option<&str>) -> Reply {
    let (scheme, params) = parse_challenge(challenge.header("www-authenticate"));
    assert_eq!(scheme, "Bearer");
    let realm = &params["realm"];
    let path = realm
        .strip_prefix(&reg.url())
        .expect("realm on this registry");
    assert_eq!(path, "/token");
    let mut url = format!("{path}?service={}", params["service"]);
    if let Some(scope) = params.get("scope") {
        url.push_str(&format!("&scope={scope}"));
    }
    let headers: Vec<(&str, &str)> = creds.map(|c| ("authorization", c)).into_iter().collect();
    fetch(reg, Method::GET, &url, &headers).await
}

#[tokio::test]
async fn anonymous_token_flow() {
    let reg = TestRegistry::start().await.unwrap();
    let img = reg.push_image("library/alpine", "3", vec![]);
    reg.set_auth(Auth::Token {
        username_password: None,
    });

    let ping = get(&reg, "/v2/").await;
    assert_eq!(ping.status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        ping.header("docker-distribution-api-version"),
        "registry/2.0"
    );
    let (_, params) = parse_challenge(ping.header("www-authenticate"));
    assert_eq!(params["service"], "testreg");
    assert!(
        !params.contains_key("scope"),
        "the ping challenge has no scope"
    );

    let denied = get(&reg, "/v2/library/alpine/manifests/3").await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    assert_eq!(denied.error_code(), "UNAUTHORIZED");
    let (_, params) = parse_challenge(denied.header("www-authenticate"));
    assert_eq!(params["scope"], "repository:library/alpine:pull");

    let t = get_token(&reg, &denied, None).await;
    assert_eq!(t.status, StatusCode::OK);
    let body = t.json();
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["access_token"], token.as_str());
    assert_eq!(body["expires_in"], 300);
    let issued = body["issued_at"].as_str().unwrap();
    assert!(
        issued.len() == 20 && issued.ends_with('Z') && issued.as_bytes()[10] == b'T',
        "{issued}"
    );

    let bearer = format!("Bearer {token}");
    let ok = fetch(
        &reg,
        Method::GET,
        "/v2/library/alpine/manifests/3",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(ok.body, img.manifest);
    let ok = fetch(&reg, Method::GET, "/v2/", &[("authorization", &bearer)]).await;
    assert_eq!(ok.status, StatusCode::OK);

    let bogus = fetch(
        &reg,
        Method::GET,
        "/v2/",
        &[("authorization", "Bearer made-up")],
    )
    .await;
    assert_eq!(bogus.status, StatusCode::UNAUTHORIZED);

    let s = reg.stats();
    assert_eq!(s.token_requests, 1);
    assert!(s.authorizations.contains(&bearer));
    // Only the authorized manifest GET counts towards the manifest stats.
    assert_eq!(s.manifest_get_count("3"), 1);

    // Tokens stop working once revoked; a fresh one is different.
    reg.revoke_tokens();
    let r = fetch(&reg, Method::GET, "/v2/", &[("authorization", &bearer)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let t2 = get_token(&reg, &r, None).await.json();
    assert_ne!(t2["token"].as_str().unwrap(), token);
}

#[tokio::test]
async fn token_endpoint_with_credentials() {
    let reg = TestRegistry::start().await.unwrap();
    reg.push_image("private/app", "v1", vec![]);
    reg.set_auth(Auth::Token {
        username_password: Some(("alice".into(), "s3cret".into())),
    });

    let denied = get(&reg, "/v2/private/app/manifests/v1").await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);

    let no_creds = get_token(&reg, &denied, None).await;
    assert_eq!(no_creds.status, StatusCode::UNAUTHORIZED);
    assert!(no_creds.header("www-authenticate").starts_with("Basic"));
    let wrong = get_token(&reg, &denied, Some(&basic("alice", "nope"))).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);

    let t = get_token(&reg, &denied, Some(&basic("alice", "s3cret"))).await;
    assert_eq!(t.status, StatusCode::OK);
    let bearer = format!("Bearer {}", t.json()["token"].as_str().unwrap());
    let ok = fetch(
        &reg,
        Method::GET,
        "/v2/private/app/manifests/v1",
        &[("authorization", &bearer)],
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert_eq!(reg.stats().token_requests, 3);

    // Tokens from another registry instance are not accepted here.
    let other = TestRegistry::start().await.unwrap();
    other.set_auth(Auth::Token {
        username_password: None,
    });
    let foreign = get_token(&other, &get(&other, "/v2/").await, None)
        .await
        .json();
    let foreign = format!("Bearer {}", foreign["token"].as_str().unwrap());
    let r = fetch(&reg, Method::GET, "/v2/", &[("authorization", &foreign)]).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn basic_auth() {
    let reg = TestRegistry::start().await.unwrap();
    let img = reg.push_image("r", "t", vec![common::data(10, 0)]);
    reg.set_auth(Auth::Basic {
        username: "bob".into(),
        password: "pw".into(),
    });
    let path = format!("/v2/r/blobs/{}", img.layer_digests[0]);

    let r = get(&reg, &path).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.header("www-authenticate"), "Basic realm=\"testreg\"");
    assert_eq!(r.error_code(), "UNAUTHORIZED");

    let wrong = basic("bob", "nope");
    assert_eq!(
        fetch(&reg, Method::GET, &path, &[("authorization", &wrong)])
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let right = basic("bob", "pw");
    let r = fetch(&reg, Method::GET, &path, &[("authorization", &right)]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), 10);
    assert_eq!(reg.stats().authorizations, vec![wrong, right]);

    reg.set_auth(Auth::None);
    assert_eq!(get(&reg, &path).await.status, StatusCode::OK);
}

#[tokio::test]
async fn auth_challenges_do_not_consume_status_faults() {
    let reg = TestRegistry::start().await.unwrap();
    reg.push_image("r", "t", vec![]);
    reg.set_auth(Auth::Token {
        username_password: None,
    });
    reg.set_fault(Fault::Status {
        status: 500,
        count: 1,
    });

    let denied = get(&reg, "/v2/r/manifests/t").await;
    assert_eq!(denied.status, StatusCode::UNAUTHORIZED);
    let token = get_token(&reg, &denied, None).await.json();
    let bearer = format!("Bearer {}", token["token"].as_str().unwrap());
    let auth = [("authorization", bearer.as_str())];

    let r = fetch(&reg, Method::GET, "/v2/r/manifests/t", &auth).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    let r = fetch(&reg, Method::GET, "/v2/r/manifests/t", &auth).await;
    assert_eq!(r.status, StatusCode::OK);
}
