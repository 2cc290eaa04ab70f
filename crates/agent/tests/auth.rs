//! Upstream authentication: anonymous tokens, configured credentials, client pass-through.

mod common;

use common::*;
use http::{Method, StatusCode};
use pollen_testreg::{Auth, TestRegistry};
use pollen_upstream::Credentials;

#[tokio::test]
async fn anonymous_bearer_tokens_are_fetched_once_and_shared() {
    let h = Harness::start().await;
    h.reg.set_auth(Auth::Token {
        username_password: None,
    });
    let img = h.reg.push_image(
        "app",
        "v1",
        vec![random_bytes(1000, 30), random_bytes(2000, 31)],
    );
    let ns = h.ns();
    assert_eq!(
        h.get(&format!("/v2/app/manifests/v1{ns}")).await.status,
        StatusCode::OK
    );
    for d in &img.layer_digests {
        assert_eq!(
            sha256(h.get(&format!("/v2/app/blobs/{d}{ns}")).await.bytes()),
            *d
        );
    }
    assert_eq!(h.reg.stats().token_requests, 1);
}

#[tokio::test]
async fn configured_credentials_are_used() {
    let reg = TestRegistry::start().await.unwrap();
    reg.set_auth(Auth::Basic {
        username: "u".into(),
        password: "p".into(),
    });
    let mut cfg = config_for(&reg);
    cfg.upstream.credentials.insert(
        reg.host(),
        Credentials {
            username: "u".into(),
            password: "p".into(),
        },
    );
    let h = Harness::with(reg, cfg).await;
    let img = h.reg.push_image("app", "v1", vec![random_bytes(1000, 32)]);
    let r = h.get(&format!("/v2/app/manifests/v1{}", h.ns())).await;
    assert_eq!(r.header("docker-content-digest"), img.manifest_digest);

    // Token flow with credentials at the token endpoint.
    h.reg.set_auth(Auth::Token {
        username_password: Some(("u".into(), "p".into())),
    });
    let r = h
        .get(&format!("/v2/app/blobs/{}{}", img.layer_digests[0], h.ns()))
        .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn client_credentials_pass_through_and_challenges_reach_the_client() {
    let h = Harness::start().await;
    h.reg.set_auth(Auth::Basic {
        username: "alice".into(),
        password: "secret".into(),
    });
    h.reg
        .push_image("private/app", "v1", vec![random_bytes(1000, 33)]);
    let path = format!("/v2/private/app/manifests/v1{}", h.ns());

    let r = h.get(&path).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert!(
        r.header("www-authenticate").starts_with("Basic"),
        "challenge not passed on"
    );
    assert_eq!(r.json()["errors"][0]["code"], "UNAUTHORIZED");

    // base64("alice:secret")
    let r = h
        .send(
            Method::GET,
            &path,
            &[("authorization", "Basic YWxpY2U6c2VjcmV0")],
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(h
        .reg
        .stats()
        .authorizations
        .iter()
        .any(|a| a == "Basic YWxpY2U6c2VjcmV0"));
}

#[tokio::test]
async fn wrong_credentials_are_a_401_not_a_hang() {
    let reg = TestRegistry::start().await.unwrap();
    reg.set_auth(Auth::Token {
        username_password: Some(("u".into(), "right".into())),
    });
    let mut cfg = config_for(&reg);
    cfg.upstream.credentials.insert(
        reg.host(),
        Credentials {
            username: "u".into(),
            password: "wrong".into(),
        },
    );
    let h = Harness::with(reg, cfg).await;
    h.reg.push_image("app", "v1", vec![random_bytes(10, 34)]);
    let r = h.get(&format!("/v2/app/manifests/v1{}", h.ns())).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_token_revoked_before_expiry_is_replaced() {
    let h = Harness::start().await;
    h.reg.set_auth(Auth::Token {
        username_password: None,
    });
    let img = h.reg.push_image(
        "app",
        "v1",
        vec![random_bytes(10, 35), random_bytes(20, 36)],
    );
    let ns = h.ns();
    let first = h
        .get(&format!("/v2/app/blobs/{}{ns}", img.layer_digests[0]))
        .await;
    assert_eq!(first.status, StatusCode::OK);
    h.reg.revoke_tokens();
    let second = h
        .get(&format!("/v2/app/blobs/{}{ns}", img.layer_digests[1]))
        .await;
    assert_eq!(second.status, StatusCode::OK);
    assert_eq!(h.reg.stats().token_requests, 2);
}
