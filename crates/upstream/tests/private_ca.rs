//! A registry behind TLS signed by a private CA: refused with the built-in roots alone,
//! trusted with the CA from a PEM file (`--ca-file`), and bad PEM files refused by name.

use base64::Engine;
use http::{Method, StatusCode};
use pollen_oci::Name;
use pollen_upstream::{load_roots, FetchRequest, Route, Upstream, UpstreamConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

/// A CA, and a TLS listener on loopback with a certificate for `localhost` signed by it, that
/// forwards every connection to a plain-HTTP backend.
struct PrivateTls {
    ca_pem: String,
    port: u16,
}

fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = b64
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    format!(
        "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
        lines.join("\n")
    )
}

async fn private_tls(backend: std::net::SocketAddr) -> PrivateTls {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Pollen test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                if let Ok(mut plain) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    PrivateTls {
        ca_pem: pem(ca.der()),
        port,
    }
}

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
