//! The pull API against a healthy upstream: headers, caching, single-flight, ranges.

mod common;

use common::*;
use http::{Method, StatusCode};
use pollen_testreg::{Fault, OCI_MANIFEST};
use std::time::Duration;

#[tokio::test]
async fn ping() {
    let h = Harness::start().await;
    let r = h.get("/v2/").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("docker-distribution-api-version"), "registry/2.0");
    // Every response names its request, as the logs do; no two alike.
    let again = h.get("/v2/nope/manifests/x").await;
    assert!(!r.header("x-request-id").is_empty());
    assert!(!again.header("x-request-id").is_empty());
    assert_ne!(r.header("x-request-id"), again.header("x-request-id"));
}

#[tokio::test]
async fn pulls_an_image_with_exact_headers_and_caches_it() {
    let h = Harness::start().await;
    let layer = random_bytes(3 << 20, 1);
    let img = h
        .reg
        .push_image("team/app", "v1", vec![layer.clone(), random_bytes(1000, 2)]);
    let ns = h.ns();

    let m = h.get(&format!("/v2/team/app/manifests/v1{ns}")).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.header("content-type"), OCI_MANIFEST);
    assert_eq!(m.header("docker-content-digest"), img.manifest_digest);
    assert_eq!(m.header("etag"), format!("\"{}\"", img.manifest_digest));
    assert_eq!(m.header("content-length"), img.manifest.len().to_string());
    assert_eq!(m.bytes(), &img.manifest);

    let head = h
        .send(
            Method::HEAD,
            &format!("/v2/team/app/blobs/{}{ns}", img.layer_digests[0]),
            &[],
        )
        .await;
    assert_eq!(head.status, StatusCode::OK);
    assert_eq!(head.header("content-length"), layer.len().to_string());
    assert_eq!(head.header("accept-ranges"), "bytes");
    assert_eq!(head.header("docker-content-digest"), img.layer_digests[0]);
    assert!(head.bytes().is_empty());

    for _ in 0..2 {
        let b = h
            .get(&format!("/v2/team/app/blobs/{}{ns}", img.layer_digests[0]))
            .await;
        assert_eq!(b.status, StatusCode::OK);
        assert_eq!(b.header("content-type"), "application/octet-stream");
        assert_eq!(sha256(b.bytes()), img.layer_digests[0]);
    }
    let by_digest = h
        .get(&format!(
            "/v2/team/app/manifests/{}{ns}",
            img.manifest_digest
        ))
        .await;
    assert_eq!(by_digest.bytes(), &img.manifest);

    // Each GET's first byte was timed (the HEAD has no body); every upstream request was
    // timed to its headers, and none failed.
    let ttfb = |source: &str| {
        h.metric(&format!(
            "pollen_time_to_first_byte_seconds_count{{source=\"{source}\"}}"
        ))
    };
    assert_eq!(ttfb("cache") + ttfb("fetch"), 2.0);
    assert_eq!(
        h.metric("pollen_upstream_response_seconds_count"),
        h.metric("pollen_upstream_requests_total")
    );
    assert!(h.metric("pollen_upstream_requests_total") >= 2.0);
    assert_eq!(h.metric("pollen_upstream_failures_total"), 0.0);

    let stats = h.reg.stats();
    // HEAD and both GETs were served by one upstream fetch; the manifest by digest from cache.
    assert_eq!(stats.blob_get_count(&img.layer_digests[0]), 1);
    assert_eq!(stats.manifest_get_count(&img.manifest_digest), 0);
    assert!(
        stats.user_agents.iter().all(|ua| ua.starts_with("pollen/")),
        "{:?}",
        stats.user_agents
    );
    h.wait_stored(&img.layer_digests[0]).await;
    let stored = h
        .dir
        .path()
        .join("blobs/sha256")
        .join(img.layer_digests[0].trim_start_matches("sha256:"));
    assert_eq!(
        sha256(&std::fs::read(stored).unwrap()),
        img.layer_digests[0]
    );
}

#[tokio::test]
async fn concurrent_requests_make_one_upstream_fetch_and_stream() {
    let h = Harness::start().await;
    let layer = random_bytes(4 << 20, 3);
    let digest = h.reg.add_blob("app", layer.clone());
    h.reg.set_fault(Fault::Slow {
        chunk: 64 << 10,
        delay: Duration::from_millis(5),
    });
    let path = format!("/v2/app/blobs/{digest}{}", h.ns());
    let mut tasks = Vec::new();
    let h = std::sync::Arc::new(h);
    for i in 0..10 {
        let (h, path) = (h.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            let method = if i % 3 == 0 {
                Method::HEAD
            } else {
                Method::GET
            };
            h.send(method, &path, &[]).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("content-length"), layer.len().to_string());
        if !r.bytes().is_empty() {
            assert_eq!(r.bytes(), &layer);
        }
    }
    assert_eq!(h.reg.stats().blob_get_count(&digest), 1);
    assert_eq!(h.metric("pollen_upstream_bytes_total"), layer.len() as f64);
}

#[tokio::test]
async fn client_gets_bytes_before_the_upstream_finishes() {
    use http_body_util::BodyExt;
    let h = Harness::start().await;
    let layer = random_bytes(8 << 20, 4);
    let digest = h.reg.add_blob("app", layer.clone());
    h.reg.set_fault(Fault::Slow {
        chunk: 64 << 10,
        delay: Duration::from_millis(10),
    });
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let uri = format!("http://{}/v2/app/blobs/{digest}{}", h.addr, h.ns());
    let req = http::Request::get(uri)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(!first.is_empty());
    // State, not timing: when the first bytes reached us the upstream was still sending.
    let sent = h.reg.stats().blob_bytes_sent;
    assert!(
        sent < layer.len() as u64,
        "first byte arrived only after the whole blob ({sent} bytes)"
    );
    let rest = body.collect().await.unwrap().to_bytes();
    assert_eq!(first.len() + rest.len(), layer.len());
}

#[tokio::test]
async fn ranges_cold_and_warm() {
    let h = Harness::start().await;
    let layer = random_bytes(1 << 20, 5);
    let digest = h.reg.add_blob("app", layer.clone());
    let path = format!("/v2/app/blobs/{digest}{}", h.ns());
    for _ in 0..2 {
        let r = h
            .send(Method::GET, &path, &[("range", "bytes=1000-1999")])
            .await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(
            r.header("content-range"),
            format!("bytes 1000-1999/{}", layer.len())
        );
        assert_eq!(r.header("content-length"), "1000");
        assert_eq!(r.bytes(), &layer.slice(1000..2000));
    }
    let r = h.send(Method::GET, &path, &[("range", "bytes=-10")]).await;
    assert_eq!(r.bytes(), &layer.slice(layer.len() - 10..));
    let r = h
        .send(Method::GET, &path, &[("range", "bytes=9999999-")])
        .await;
    assert_eq!(r.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        r.header("content-range"),
        format!("bytes */{}", layer.len())
    );
    assert_eq!(r.json()["errors"][0]["code"], "RANGE_INVALID");
}

/// A cached blob is read in chunks, the next read while the last is sent: whole and in
/// ranges that start off a page boundary and cross chunk boundaries, the bytes are exact.
#[tokio::test]
async fn a_cached_blob_reads_back_exactly_across_chunks() {
    let h = Harness::start().await;
    let layer = random_bytes((5 << 20) + 123, 8);
    let digest = h.reg.add_blob("app", layer.clone());
    let path = format!("/v2/app/blobs/{digest}{}", h.ns());
    for _ in 0..2 {
        let r = h.get(&path).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.bytes(), &layer);
    }
    let n = layer.len();
    for (from, to) in [
        (100, (3 << 20) + 5),
        (2 << 20, n - 1),
        (4097, n - 2),
        (n - 5000, n - 1),
    ] {
        let r = h
            .send(
                Method::GET,
                &path,
                &[("range", &format!("bytes={from}-{to}"))],
            )
            .await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "bytes={from}-{to}");
        assert_eq!(r.bytes(), &layer.slice(from..to + 1), "bytes={from}-{to}");
    }
}

#[tokio::test]
async fn docker_hub_style_requests_get_the_library_prefix() {
    let h = Harness::start().await;
    let img = h
        .reg
        .push_image("library/busybox", "latest", vec![random_bytes(100, 6)]);
    // Docker Engine sends no ns; a single-component name means library/ on Docker Hub.
    let m = h.get("/v2/busybox/manifests/latest").await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.header("docker-content-digest"), img.manifest_digest);
}

#[tokio::test]
async fn unknown_content_gets_oci_errors() {
    let h = Harness::start().await;
    let ns = h.ns();
    let r = h.get(&format!("/v2/app/manifests/nope{ns}")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["errors"][0]["code"], "MANIFEST_UNKNOWN");
    let r = h
        .get(&format!("/v2/app/blobs/{}{ns}", sha256(b"missing")))
        .await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert_eq!(r.json()["errors"][0]["code"], "BLOB_UNKNOWN");
}

#[tokio::test]
async fn hostile_requests_get_clear_4xx() {
    let h = Harness::start().await;
    let cases: &[(Method, &str, StatusCode, &str)] = &[
        (
            Method::GET,
            "/v2/../../etc/passwd/manifests/x",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/app/blobs/sha256:1234",
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/app/blobs/sha512:1234",
            StatusCode::BAD_REQUEST,
            "DIGEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/app/manifests/-bad",
            StatusCode::BAD_REQUEST,
            "MANIFEST_INVALID",
        ),
        (
            Method::GET,
            "/v2/app/manifests/v1?ns=evil%2Fpath",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::GET,
            "/v2/app/manifests/v1?ns=user%40host",
            StatusCode::BAD_REQUEST,
            "NAME_INVALID",
        ),
        (
            Method::PUT,
            "/v2/app/manifests/v1",
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::POST,
            "/v2/app/blobs/uploads/",
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::PATCH,
            "/v2/app/blobs/uploads/x",
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::DELETE,
            "/v2/app/manifests/v1",
            StatusCode::METHOD_NOT_ALLOWED,
            "UNSUPPORTED",
        ),
        (
            Method::GET,
            "/etc/passwd",
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
        ),
    ];
    for (m, path, status, code) in cases {
        let r = h.send(m.clone(), path, &[]).await;
        assert_eq!(r.status, *status, "{m} {path}");
        assert_eq!(r.json()["errors"][0]["code"], *code, "{m} {path}");
    }
    let huge = "x".repeat(100 << 10);
    let r = h.send(Method::GET, "/v2/", &[("x-junk", &huge)]).await;
    assert_eq!(r.status, StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    assert_eq!(
        h.reg.stats().requests,
        0,
        "bad requests must not reach the upstream"
    );
}

#[tokio::test]
async fn cache_survives_restart_with_upstream_gone() {
    let h = Harness::start().await;
    let img = h
        .reg
        .push_image("app", "v1", vec![random_bytes(2 << 20, 7)]);
    let ns = h.ns();
    let blob_path = format!("/v2/app/blobs/{}{ns}", img.layer_digests[0]);
    let manifest_path = format!("/v2/app/manifests/{}{ns}", img.manifest_digest);
    assert_eq!(h.get(&blob_path).await.status, StatusCode::OK);
    assert_eq!(h.get(&manifest_path).await.status, StatusCode::OK);
    h.wait_stored(&img.layer_digests[0]).await;
    let (reg, dir) = h.stop();
    let cfg = config_for(&reg);
    reg.shutdown().await;
    let reg2 = pollen_testreg::TestRegistry::start().await.unwrap();
    let h = Harness::with_dir(reg2, cfg, dir, 1 << 30).await;
    let b = h.get(&blob_path).await;
    assert_eq!(sha256(b.bytes()), img.layer_digests[0]);
    assert_eq!(h.get(&manifest_path).await.bytes(), &img.manifest);
}

#[tokio::test]
async fn concurrent_manifest_requests_make_one_upstream_request() {
    let h = std::sync::Arc::new(Harness::start().await);
    let img = h.reg.push_image("app", "v1", vec![random_bytes(100, 8)]);
    // A slow registry, so the requests overlap for certain.
    h.reg.set_response_delay(Duration::from_millis(300));
    let ns = h.ns();
    let mut tasks = Vec::new();
    for i in 0..12 {
        let h = h.clone();
        let reference = if i < 6 {
            "v1".to_string()
        } else {
            img.manifest_digest.clone()
        };
        let path = format!("/v2/app/manifests/{reference}{ns}");
        tasks.push(tokio::spawn(async move {
            let method = if i % 2 == 0 {
                Method::HEAD
            } else {
                Method::GET
            };
            h.send(method, &path, &[]).await
        }));
    }
    for t in tasks {
        let r = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.header("docker-content-digest"), img.manifest_digest);
    }
    let stats = h.reg.stats();
    assert_eq!(
        stats.manifest_get_count("v1"),
        1,
        "tag requests were not merged"
    );
    assert!(
        stats.manifest_get_count(&img.manifest_digest) <= 1,
        "digest requests were not merged"
    );
}

#[tokio::test]
async fn empty_and_tiny_blobs() {
    let h = Harness::start().await;
    let ns = h.ns();
    for data in [bytes::Bytes::new(), bytes::Bytes::from_static(b"x")] {
        let digest = h.reg.add_blob("app", data.clone());
        for _ in 0..2 {
            let r = h.get(&format!("/v2/app/blobs/{digest}{ns}")).await;
            assert_eq!(r.status, StatusCode::OK);
            assert_eq!(r.header("content-length"), data.len().to_string());
            assert_eq!(r.bytes(), &data);
        }
    }
}
