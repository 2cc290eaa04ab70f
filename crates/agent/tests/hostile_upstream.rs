//! A hostile upstream against a real agent: finding 2 of the security review, replayed. A
//! registry answers a pod's pull with a 401 naming the victim registry's token service and
//! the victim's private repository; the agent holds credentials for the victim. Before the
//! fix the agent handed them to the victim's token service and the hostile registry got a
//! token for the private repository. Now the victim's token service sees no credentials.

mod common;

use common::*;
use http::StatusCode;
use pollen_testreg::{Auth, TestRegistry};
use pollen_upstream::Credentials;

#[tokio::test]
async fn a_hostile_registry_gets_no_token_minted_with_configured_credentials() {
    let victim = TestRegistry::start().await.unwrap();
    victim.set_auth(Auth::Token {
        username_password: Some(("u".into(), "victim-pw".into())),
    });
    let secret = victim.push_image("victim/secret", "v1", vec![random_bytes(100, 70)]);

    let hostile = TestRegistry::start().await.unwrap();
    hostile.set_auth(Auth::Token {
        username_password: None,
    });
    hostile.set_token_realm(Some(format!("http://{}/token", victim.host())));
    hostile.push_image("x", "v1", vec![random_bytes(100, 71)]);

    let mut cfg = config_for(&victim);
    // Even a configured registry (a compromised one, or a mirror) gets nothing.
    cfg.upstream
        .registries
        .insert(hostile.host(), vec![hostile.url()]);
    cfg.upstream.credentials.insert(
        victim.host(),
        Credentials {
            username: "u".into(),
            password: "victim-pw".into(),
        },
    );
    let h = Harness::with(victim, cfg).await;

    let ns = format!("?ns={}", hostile.host().replace(':', "%3A"));
    let r = h.get(&format!("/v2/x/manifests/v1{ns}")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let victim_stats = h.reg.stats();
    assert_eq!(victim_stats.token_requests, 1, "asked anonymously, once");
    assert!(
        victim_stats.token_authorizations.is_empty(),
        "credentials reached the victim's token service: {:?}",
        victim_stats.token_authorizations
    );
    assert_eq!(hostile.stats().token_requests, 0);

    // The control: the victim's own pulls still use the credentials.
    let r = h
        .get(&format!("/v2/victim/secret/manifests/v1{}", h.ns()))
        .await;
    assert_eq!(r.header("docker-content-digest"), secret.manifest_digest);
    assert_eq!(h.reg.stats().token_authorizations.len(), 1);
}
