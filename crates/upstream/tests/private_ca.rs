//! A registry behind TLS signed by a private CA: refused with the built-in roots alone,
//! trusted with the CA from a PEM file (`--ca-file`), and bad PEM files refused by name.

use http::{Method, StatusCode};
use pollen_oci::Name;
use pollen_upstream::{load_roots, FetchRequest, Route, Upstream, UpstreamConfig};
use std::time::Duration;

mod common;
use common::private_tls;

async fn fetch_manifest(up: &Upstream, mirror: &str) -> Result<StatusCode, String> {
    let route = Route {
        registry: "private.example".into(),
        mirrors: vec![mirror.to_string()],
        name: Name::parse("app").unwrap(),
    };
    let req = FetchRequest {
        route: &route,
        method: Method::GET,
        path: "manifests/v1".into(),
        accept: None,
        range_start: 0,
        range_end: None,
        client_auth: None,
    };
    up.fetch(&req)
        .await
        .map(|r| r.status)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn a_private_ca_is_trusted_only_when_configured() {
    let reg = pollen_testreg::TestRegistry::start().await.unwrap();
    reg.push_image("app", "v1", vec![bytes::Bytes::from_static(b"layer")]);
    let tls = private_tls(reg.addr()).await;
    let mirror = format!("https://localhost:{}", tls.port);
    let cfg = UpstreamConfig {
        // Configured, so it may be on loopback.
        default_mirrors: vec![mirror.clone()],
        response_timeout: Duration::from_secs(5),
        ..UpstreamConfig::default()
    };

    let builtin = Upstream::new(cfg.clone()).unwrap();
    let err = fetch_manifest(&builtin, &mirror).await.unwrap_err();
    assert!(err.contains("UnknownIssuer"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ca.pem");
    std::fs::write(&file, &tls.ca_pem).unwrap();
    let trusted = Upstream::new(UpstreamConfig {
        extra_roots: load_roots(&file).unwrap(),
        ..cfg
    })
    .unwrap();
    assert_eq!(fetch_manifest(&trusted, &mirror).await, Ok(StatusCode::OK));
}

#[test]
fn bad_pem_files_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    assert!(load_roots(&missing).unwrap_err().contains("missing.pem"));
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "nothing here\n").unwrap();
    assert!(load_roots(&empty)
        .unwrap_err()
        .contains("no PEM certificate"));
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let err = load_roots(&garbage).unwrap_err();
    assert!(
        err.contains("garbage.pem") && err.contains("certificate 1"),
        "{err}"
    );
}
