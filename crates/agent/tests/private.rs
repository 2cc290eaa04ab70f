//! Private stays private, locally too: content first fetched with a client's own credentials is
//! served from the cache only to clients the upstream lets read it, each confirmed by a HEAD
//! with its own credentials; everyone else gets the upstream's 401 with its challenge, and no
//! byte of the content. Public content stays free on a hit.

mod common;

use common::*;
use http::{Method, StatusCode};
use pollen_testreg::{Auth, Fault, TestRegistry};
use std::time::Duration;

/// base64("alice:secret"): what the registry accepts.
const ALICE: &str = "Basic YWxpY2U6c2VjcmV0";
/// The same credentials written differently (the scheme is case-insensitive): another client,
/// as far as the cache is concerned.
const ALICE_AGAIN: &str = "basic YWxpY2U6c2VjcmV0";
/// base64("alice:wrong").
const WRONG: &str = "Basic YWxpY2U6d3Jvbmc=";
const CHALLENGE: &str = "Basic realm=\"testreg\"";

async fn private_registry(cfg: impl FnOnce(&mut pollen_agent::AgentConfig)) -> Harness {
    let reg = TestRegistry::start().await.unwrap();
    reg.set_auth(Auth::Basic {
        username: "alice".into(),
        password: "secret".into(),
    });
    let mut c = config_for(&reg);
    c.upstream.failure_backoff = Duration::from_millis(1);
    cfg(&mut c);
    Harness::with(reg, c).await
}

async fn as_client(h: &Harness, method: Method, path: &str, auth: Option<&str>) -> Resp {
    let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
    h.send(method, path, &headers).await
}

/// A refusal as the registry itself gives it: 401, its challenge, an error body, no content.
fn assert_refused(r: &Resp, content: &[u8], what: &str) {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
    assert_eq!(r.header("www-authenticate"), CHALLENGE, "{what}");
    assert!(r.header("docker-content-digest").is_empty(), "{what}");
    let body = r.bytes();
    assert!(
        body.is_empty() || r.json()["errors"][0]["code"] == "UNAUTHORIZED",
        "{what}: not an error body"
    );
    assert!(
        !body
            .windows(content.len().min(64))
            .any(|w| content.starts_with(w)),
        "{what}: content leaked"
    );
}

#[tokio::test]
async fn private_content_is_refused_to_other_local_clients_with_the_upstreams_challenge() {
    let h = private_registry(|_| {}).await;
    let layer = random_bytes(300 << 10, 70);
    let img = h.reg.push_image("private/app", "v1", vec![layer.clone()]);
    let ns = h.ns();
    let blob = format!("/v2/private/app/blobs/{}{ns}", img.layer_digests[0]);
    let by_digest = format!("/v2/private/app/manifests/{}{ns}", img.manifest_digest);
    let by_tag = format!("/v2/private/app/manifests/v1{ns}");

    // Client A pulls with its credentials: the content is now cached, and private.
    let r = as_client(&h, Method::GET, &blob, Some(ALICE)).await;
    assert_eq!(r.bytes(), &layer);
    h.wait_stored(&img.layer_digests[0]).await;
    let r = as_client(&h, Method::GET, &by_tag, Some(ALICE)).await;
    assert_eq!(r.bytes(), &img.manifest);

    // Client B, without credentials and with wrong ones: the upstream's 401, no content,
    // and nothing fetched for it.
    h.reg.reset_stats();
    for auth in [None, Some(WRONG)] {
        for method in [Method::GET, Method::HEAD] {
            let what = format!("{method} blob as {auth:?}");
            let r = as_client(&h, method.clone(), &blob, auth).await;
            assert_refused(&r, &layer, &what);
            let what = format!("{method} manifest by digest as {auth:?}");
            let r = as_client(&h, method.clone(), &by_digest, auth).await;
            assert_refused(&r, &img.manifest, &what);
            let what = format!("{method} tag as {auth:?}");
            let r = as_client(&h, method, &by_tag, auth).await;
            assert_refused(&r, &img.manifest, &what);
        }
    }
    let stats = h.reg.stats();
    assert_eq!(stats.total_blob_gets(), 0, "no blob was fetched for B");
    assert_eq!(
        stats.manifest_get_count(&img.manifest_digest),
        stats.manifest_head_count(&img.manifest_digest),
        "only HEADs"
    );

    // A again: its GET of the tag a moment ago told the cache it may read the repository.
    h.reg.reset_stats();
    let r = as_client(&h, Method::GET, &blob, Some(ALICE)).await;
    assert_eq!(r.bytes(), &layer);
    let r = as_client(&h, Method::GET, &by_tag, Some(ALICE)).await;
    assert_eq!(r.bytes(), &img.manifest);
    assert_eq!(h.reg.stats().requests, 0, "A is confirmed for a while");

    // Another client with valid credentials: one HEAD, then the cache within the TTL.
    let r = as_client(&h, Method::GET, &blob, Some(ALICE_AGAIN)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
    let stats = h.reg.stats();
    assert_eq!(stats.requests, 1);
    assert_eq!(stats.blob_heads.get(&img.layer_digests[0]), Some(&1));
    let r = as_client(&h, Method::GET, &by_digest, Some(ALICE_AGAIN)).await;
    assert_eq!(r.bytes(), &img.manifest);
    let r = as_client(&h, Method::GET, &blob, Some(ALICE_AGAIN)).await;
    assert_eq!(r.bytes(), &layer);
    assert_eq!(h.reg.stats().requests, 1, "confirmed within the TTL");
}

#[tokio::test]
async fn a_private_tag_is_never_answered_stale_during_an_outage() {
    // Every tag request asks the upstream again.
    let h = private_registry(|c| c.tag_ttl = Duration::ZERO).await;
    let img = h
        .reg
        .push_image("private/app", "v1", vec![random_bytes(1000, 71)]);
    let ns = h.ns();
    let by_tag = format!("/v2/private/app/manifests/v1{ns}");
    let r = as_client(&h, Method::GET, &by_tag, Some(ALICE)).await;
    assert_eq!(r.bytes(), &img.manifest);

    h.reg.set_fault(Fault::Status {
        status: 503,
        count: 1_000_000,
    });
    // Valid credentials: the outage (502). Others: the registry still says 401 (its faults
    // apply after authentication). Nobody gets the old answer.
    for (auth, status) in [
        (Some(ALICE), StatusCode::BAD_GATEWAY),
        (Some(ALICE_AGAIN), StatusCode::BAD_GATEWAY),
        (None, StatusCode::UNAUTHORIZED),
        (Some(WRONG), StatusCode::UNAUTHORIZED),
    ] {
        let r = as_client(&h, Method::GET, &by_tag, auth).await;
        assert_eq!(r.status, status, "{auth:?}");
        assert_ne!(r.bytes(), &img.manifest, "{auth:?}");
        assert!(r.header("docker-content-digest").is_empty(), "{auth:?}");
    }
    // Content by digest needs a confirmation too: nobody new gets one during the outage.
    let by_digest = format!("/v2/private/app/manifests/{}{ns}", img.manifest_digest);
    for (auth, status) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some(ALICE_AGAIN), StatusCode::BAD_GATEWAY),
    ] {
        let r = as_client(&h, Method::GET, &by_digest, auth).await;
        assert_eq!(r.status, status, "{auth:?}");
        assert!(r.header("docker-content-digest").is_empty(), "{auth:?}");
    }
}

#[tokio::test]
async fn a_resumed_private_partial_streams_only_after_the_upstream_confirmed_the_client() {
    let h = private_registry(|_| {}).await;
    let layer = random_bytes(4 << 20, 72);
    let digest = h.reg.add_blob("private/app", layer.clone());
    let path = format!("/v2/private/app/blobs/{digest}{}", h.ns());

    // A's fetch breaks after 2 MiB and the upstream then fails: a private partial is left.
    h.reg.set_fault(Fault::Truncate { after: 2 << 20 });
    let watcher = after_first_get(
        &h.reg,
        &digest,
        Fault::Status {
            status: 503,
            count: 1000,
        },
        100_000,
    );
    let r = as_client(&h, Method::GET, &path, Some(ALICE)).await;
    assert!(watcher.await.unwrap());
    assert!(r.body.is_err(), "the failed fetch must not look complete");
    let partial = h
        .dir
        .path()
        .join("partial")
        .join(digest.trim_start_matches("sha256:"));
    assert!(partial.join("state.json").exists(), "no partial was kept");

    // The upstream is back. B gets its 401 and none of the bytes on disk.
    h.reg.set_fault(Fault::None);
    h.reg.reset_stats();
    for auth in [None, Some(WRONG)] {
        let r = as_client(&h, Method::GET, &path, auth).await;
        assert_refused(&r, &layer, &format!("{auth:?}"));
    }
    let stats = h.reg.stats();
    assert_eq!(stats.total_blob_gets(), 0, "B's request fetched nothing");
    assert!(
        stats.requests >= 2,
        "B's credentials were put to the upstream"
    );

    // A: one HEAD, then the resumed fetch.
    let r = as_client(&h, Method::GET, &path, Some(ALICE)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
    let stats = h.reg.stats();
    // (The registry counts only HEADs that passed its authentication: A's.)
    assert_eq!(stats.blob_heads.get(&digest), Some(&1), "A's confirmation");
    assert_eq!(stats.blob_get_count(&digest), 1, "one ranged GET to finish");
}

#[tokio::test]
async fn public_content_on_a_hit_costs_no_upstream_request_whatever_the_client_sends() {
    let h = Harness::start().await;
    let img = h.reg.push_image("app", "v1", vec![random_bytes(1000, 73)]);
    let ns = h.ns();
    let blob = format!("/v2/app/blobs/{}{ns}", img.layer_digests[0]);
    let by_digest = format!("/v2/app/manifests/{}{ns}", img.manifest_digest);
    assert_eq!(h.get(&blob).await.status, StatusCode::OK);
    assert_eq!(h.get(&by_digest).await.status, StatusCode::OK);
    h.wait_stored(&img.layer_digests[0]).await;
    h.reg.reset_stats();
    for auth in [None, Some(ALICE), Some(WRONG)] {
        let r = as_client(&h, Method::GET, &blob, auth).await;
        assert_eq!(r.status, StatusCode::OK, "{auth:?}");
        let r = as_client(&h, Method::GET, &by_digest, auth).await;
        assert_eq!(r.bytes(), &img.manifest, "{auth:?}");
    }
    assert_eq!(h.reg.stats().requests, 0);
}

#[tokio::test]
async fn a_fetch_with_one_clients_credentials_never_answers_another_client() {
    let h = private_registry(|_| {}).await;
    let layer = random_bytes(300 << 10, 74);
    let img = h.reg.push_image("private/app", "v1", vec![layer.clone()]);
    let ns = h.ns();
    let blob = format!("/v2/private/app/blobs/{}{ns}", img.layer_digests[0]);
    let by_digest = format!("/v2/private/app/manifests/{}{ns}", img.manifest_digest);
    // A slow registry: B asks while A's fetches are still waiting for their answers.
    h.reg.set_response_delay(Duration::from_millis(1000));
    let mut asks = Vec::new();
    for path in [&blob, &by_digest] {
        let (client, path) = (h.client(), path.clone());
        asks.push(tokio::spawn(async move {
            client
                .send(Method::GET, &path, &[("authorization", ALICE)])
                .await
        }));
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.metric("pollen_upstream_requests_total") < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "A's fetches never started"
        );
        tokio::task::yield_now().await;
    }
    for (path, content) in [(&blob, &layer), (&by_digest, &img.manifest)] {
        for auth in [None, Some(WRONG)] {
            let r = as_client(&h, Method::GET, path, auth).await;
            assert_refused(&r, content, &format!("{path} as {auth:?}"));
        }
    }
    let a_blob = asks.remove(0).await.unwrap();
    assert_eq!(a_blob.bytes(), &layer);
    let a_manifest = asks.remove(0).await.unwrap();
    assert_eq!(a_manifest.bytes(), &img.manifest);
}

#[tokio::test]
async fn a_client_that_joined_a_refused_fetch_gets_its_own() {
    let h = private_registry(|_| {}).await;
    let layer = random_bytes(300 << 10, 75);
    let digest = h.reg.add_blob("private/app", layer.clone());
    let path = format!("/v2/private/app/blobs/{digest}{}", h.ns());
    h.reg.set_response_delay(Duration::from_millis(500));
    // B without credentials starts the fetch; A, with them, asks while it runs.
    let client = h.client();
    let b_path = path.clone();
    let b = tokio::spawn(async move { client.get(&b_path).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while h.metric("pollen_upstream_requests_total") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "B's fetch never started"
        );
        tokio::task::yield_now().await;
    }
    let a = as_client(&h, Method::GET, &path, Some(ALICE)).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.bytes(), &layer);
    assert_refused(&b.await.unwrap(), &layer, "B");
}
