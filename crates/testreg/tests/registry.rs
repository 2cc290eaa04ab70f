//! The pull API without faults or auth: manifests, blobs, ranges, routing,
//! connection handling and statistics.

mod common;

use std::net::SocketAddr;

use bytes::Bytes;
use common::{data, digest, fetch, get, Conn};
use http::{Method, StatusCode};
use pollen_testreg::{TestRegistry, OCI_MANIFEST};

#[tokio::test]
async fn ping_answers_with_api_version() {
    let reg = TestRegistry::start().await.unwrap();
    assert!(reg.url().starts_with("http://127.0.0.1:"));
    assert_eq!(reg.url(), format!("http://{}", reg.host()));
    let r = get(&reg, "/v2/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-distribution-api-version"), "registry/2.0");
    assert_eq!(get(&reg, "/v2").await.status, StatusCode::OK);
    assert_eq!(get(&reg, "/elsewhere").await.status, StatusCode::NOT_FOUND);
    reg.shutdown().await;
}

#[tokio::test]
async fn push_image_then_pull_it() {
    let reg = TestRegistry::start().await.unwrap();
    let layers = vec![data(300_000, 1), data(10, 2)];
    let img = reg.push_image("library/busybox", "latest", layers.clone());
    assert_eq!(img.repo, "library/busybox");
    assert_eq!(img.tag, "latest");
    assert_eq!(img.manifest_digest, digest(&img.manifest));

    let m = get(&reg, "/v2/library/busybox/manifests/latest").await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.header("content-type"), OCI_MANIFEST);
    assert_eq!(m.header("docker-content-digest"), img.manifest_digest);
    assert_eq!(m.content_length(), m.body.len() as u64);
    assert_eq!(m.body, img.manifest);
    assert_eq!(digest(&m.body), img.manifest_digest);

    let manifest = m.json();
    assert_eq!(manifest["schemaVersion"], 2);
    assert_eq!(manifest["mediaType"], OCI_MANIFEST);
    assert_eq!(manifest["config"]["digest"], img.config_digest.as_str());
    let listed: Vec<&str> = manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap())
        .collect();
    assert_eq!(
        listed,
        img.layer_digests
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    assert_eq!(manifest["layers"][0]["size"], 300_000);

    // By digest, too.
    let by_digest = get(
        &reg,
        &format!("/v2/library/busybox/manifests/{}", img.manifest_digest),
    )
    .await;
    assert_eq!(by_digest.body, img.manifest);

    let config = get(
        &reg,
        &format!("/v2/library/busybox/blobs/{}", img.config_digest),
    )
    .await;
    assert_eq!(digest(&config.body), img.config_digest);
    assert_eq!(config.json()["rootfs"]["type"], "layers");

    let mut sent = config.body.len() as u64;
    for (layer, d) in layers.iter().zip(&img.layer_digests) {
        let b = get(&reg, &format!("/v2/library/busybox/blobs/{d}")).await;
        assert_eq!(b.status, StatusCode::OK);
        assert_eq!(b.header("content-type"), "application/octet-stream");
        assert_eq!(b.header("docker-content-digest"), d.as_str());
        assert_eq!(b.header("accept-ranges"), "bytes");
        assert_eq!(b.content_length(), layer.len() as u64);
        assert_eq!(&b.body, layer);
        assert_eq!(digest(&b.body), *d);
        sent += layer.len() as u64;
    }

    let stats = reg.stats();
    assert_eq!(stats.manifest_get_count("latest"), 1);
    assert_eq!(stats.manifest_get_count(&img.manifest_digest), 1);
    assert_eq!(stats.blob_get_count(&img.layer_digests[0]), 1);
    assert_eq!(stats.total_blob_gets(), 3);
    assert_eq!(stats.blob_bytes_sent, sent);
    assert_eq!(stats.requests, 5);
}

#[tokio::test]
async fn head_requests_carry_headers_but_no_body() {
    let reg = TestRegistry::start().await.unwrap();
    let img = reg.push_image("a/b/c", "v1", vec![data(5000, 3)]);
    let layer = &img.layer_digests[0];

    let m = fetch(&reg, Method::HEAD, "/v2/a/b/c/manifests/v1", &[]).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.content_length(), img.manifest.len() as u64);
    assert_eq!(m.header("docker-content-digest"), img.manifest_digest);
    assert!(m.body.is_empty());

    let b = fetch(&reg, Method::HEAD, &format!("/v2/a/b/c/blobs/{layer}"), &[]).await;
    assert_eq!(b.status, StatusCode::OK);
    assert_eq!(b.content_length(), 5000);
    assert!(b.body.is_empty());

    let stats = reg.stats();
    assert_eq!(
        stats.manifest_get_count("v1"),
        1,
        "HEAD counts as a manifest get"
    );
    assert_eq!(stats.blob_heads.get(layer), Some(&1));
    assert_eq!(stats.blob_get_count(layer), 0, "HEAD is not a blob GET");
    assert_eq!(stats.blob_bytes_sent, 0);
}

#[tokio::test]
async fn unknown_content_gives_oci_errors() {
    let reg = TestRegistry::start().await.unwrap();
    let d = reg.add_blob("one", Bytes::from_static(b"hello"));

    let m = get(&reg, "/v2/one/manifests/nope").await;
    assert_eq!(m.status, StatusCode::NOT_FOUND);
    let err = &m.json()["errors"][0];
    assert_eq!(err["code"], "MANIFEST_UNKNOWN");
    assert!(err["message"].is_string());
    assert!(err["detail"].is_null());

    // Blobs are looked up within the repository.
    assert_eq!(get(&reg, &format!("/v2/one/blobs/{d}")).await.body, "hello");
    let other = get(&reg, &format!("/v2/two/blobs/{d}")).await;
    assert_eq!(other.status, StatusCode::NOT_FOUND);
    assert_eq!(other.error_code(), "BLOB_UNKNOWN");
    assert_eq!(reg.stats().blob_get_count(&d), 2);
}

#[tokio::test]
async fn writes_are_rejected() {
    let reg = TestRegistry::start().await.unwrap();
    let img = reg.push_image("r", "t", vec![]);
    for (method, path) in [
        (
            Method::DELETE,
            format!("/v2/r/manifests/{}", img.manifest_digest),
        ),
        (Method::PUT, "/v2/r/manifests/t".to_owned()),
        (Method::POST, "/v2/r/blobs/uploads/".to_owned()),
    ] {
        let r = fetch(&reg, method, &path, &[]).await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{path}");
        assert_eq!(r.error_code(), "UNSUPPORTED");
    }
    assert_eq!(get(&reg, "/v2/r/manifests/t").await.status, StatusCode::OK);
}

#[tokio::test]
async fn range_requests() {
    let reg = TestRegistry::start().await.unwrap();
    let blob = data(1000, 4);
    let d = reg.add_blob("r", blob.clone());
    let path = format!("/v2/r/blobs/{d}");
    let ranged = |range: &'static str| {
        let (reg, path) = (reg.clone(), path.clone());
        async move { fetch(&reg, Method::GET, &path, &[("range", range)]).await }
    };

    let r = ranged("bytes=10-19").await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-range"), "bytes 10-19/1000");
    assert_eq!(r.content_length(), 10);
    assert_eq!(r.body, blob.slice(10..20));

    let r = ranged("bytes=990-").await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.header("content-range"), "bytes 990-999/1000");
    assert_eq!(r.body, blob.slice(990..));

    let r = ranged("bytes=900-5000").await;
    assert_eq!(r.header("content-range"), "bytes 900-999/1000");
    assert_eq!(r.body, blob.slice(900..));

    let r = ranged("bytes=-5").await;
    assert_eq!(r.header("content-range"), "bytes 995-999/1000");
    assert_eq!(r.body, blob.slice(995..));

    let r = ranged("bytes=1000-").await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(r.header("content-range"), "bytes */1000");
    assert!(r.body.is_empty());

    // Multiple ranges are not supported: the whole blob comes back.
    let r = ranged("bytes=0-1,5-6").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, blob);

    assert_eq!(reg.stats().blob_bytes_sent, 10 + 10 + 100 + 5 + 1000);
}

#[tokio::test]
async fn tags_list() {
    let reg = TestRegistry::start().await.unwrap();
    reg.push_image("x/y", "b", vec![]);
    reg.push_image("x/y", "a", vec![data(1, 0)]);
    let r = get(&reg, "/v2/x/y/tags/list").await;
    assert_eq!(
        r.json(),
        serde_json::json!({ "name": "x/y", "tags": ["a", "b"] })
    );
    assert_eq!(
        get(&reg, "/v2/nope/tags/list").await.error_code(),
        "NAME_UNKNOWN"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_and_concurrent_connections() {
    let reg = TestRegistry::start().await.unwrap();
    let blob = data(200_000, 5);
    let d = reg.add_blob("r", blob.clone());
    let path = format!("/v2/r/blobs/{d}");

    let mut conn = Conn::open(&reg).await;
    for _ in 0..5 {
        let r = conn.fetch(Method::GET, &path, &[]).await;
        assert!(r.complete);
        assert_eq!(r.body, blob);
    }

    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (reg, path) = (reg.clone(), path.clone());
            tokio::spawn(async move { get(&reg, &path).await })
        })
        .collect();
    for t in tasks {
        assert_eq!(digest(&t.await.unwrap().body), d);
    }
    let stats = reg.stats();
    assert_eq!(stats.blob_get_count(&d), 69);
    assert_eq!(stats.blob_bytes_sent, 69 * 200_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_blob_is_streamed() {
    let reg = TestRegistry::start().await.unwrap();
    let blob = data(64 << 20, 6);
    let d = reg.add_blob("big", blob);
    let mut conn = Conn::open(&reg).await;
    let r = conn
        .fetch(Method::GET, &format!("/v2/big/blobs/{d}"), &[])
        .await;
    assert!(r.complete);
    assert_eq!(r.content_length(), 64 << 20);
    assert_eq!(digest(&r.body), d);
}

#[tokio::test]
async fn stats_record_clients_and_reset() {
    let reg = TestRegistry::start().await.unwrap();
    let img = reg.push_image("r", "t", vec![data(10, 7)]);
    let ua = [("user-agent", "pollen/0.1")];
    fetch(&reg, Method::GET, "/v2/r/manifests/t", &ua).await;
    fetch(
        &reg,
        Method::GET,
        "/v2/r/manifests/t",
        &[("user-agent", "other"), ("authorization", "Bearer x")],
    )
    .await;
    fetch(&reg, Method::GET, "/v2/", &ua).await;
    fetch(
        &reg,
        Method::GET,
        "/token",
        &[("authorization", "Basic not-v2")],
    )
    .await;

    let s = reg.stats();
    assert_eq!(s.requests, 4);
    assert_eq!(s.user_agents, vec!["pollen/0.1", "other"]);
    assert_eq!(
        s.authorizations,
        vec!["Bearer x"],
        "only /v2/ paths are recorded"
    );
    assert_eq!(s.manifest_get_count("t"), 2);
    assert_eq!(s.token_requests, 1);

    reg.reset_stats();
    let s = reg.stats();
    assert_eq!((s.requests, s.blob_bytes_sent, s.token_requests), (0, 0, 0));
    assert!(s.manifest_gets.is_empty() && s.user_agents.is_empty() && s.authorizations.is_empty());

    get(&reg, &format!("/v2/r/blobs/{}", img.layer_digests[0])).await;
    assert_eq!(reg.stats().blob_bytes_sent, 10);
}

#[tokio::test]
async fn start_on_explicit_and_wildcard_addresses() {
    let reg = TestRegistry::start_on("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(get(&reg, "/v2/").await.status, StatusCode::OK);

    let wild: SocketAddr = "0.0.0.0:0".parse().unwrap();
    let reg2 = TestRegistry::start_on(wild).await.unwrap();
    assert!(reg2.host().starts_with("127.0.0.1:"), "{}", reg2.host());
    assert_eq!(get(&reg2, "/v2/").await.status, StatusCode::OK);

    // A port in use is an error, not a panic.
    assert!(TestRegistry::start_on(reg.addr()).await.is_err());
}
