//! Serving other sites (`--serve-listen`): the mirror API over TLS to clients that
//! authenticate, played against by a site agent that uses it as its upstream and by clients
//! that do not authenticate, or authenticate wrongly.

mod common;

use common::{config_for, random_bytes, sha256, Harness};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use pollen_agent::{SiteFiles, SiteServing};
use pollen_upstream::Credentials;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

const TOKEN: &str = "site-a-5f0c2a9e41d7b3c8";

/// A CA, the parent's certificate for `localhost`, and a client certificate it signed.
struct Pki {
    dir: tempfile::TempDir,
    ca: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
}

impl Pki {
    fn new(name: &str) -> Pki {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let ca = params.self_signed(&ca_key).unwrap();
        let pki = Pki {
            dir: tempfile::tempdir().unwrap(),
            ca,
            ca_key,
        };
        std::fs::write(pki.path("ca.pem"), pki.ca.pem()).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A certificate for `names` signed by this CA, written as NAME.pem and NAME.key.
    fn issue(&self, file: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.ca, &self.ca_key)
            .unwrap();
        let (c, k) = (
            self.path(&format!("{file}.pem")),
            self.path(&format!("{file}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }
}

/// The parent: an agent in front of the test registry, serving sites on a TLS port.
async fn parent(
    pki: &Pki,
    tokens: bool,
    client_ca: bool,
) -> (Harness, u16, tokio::task::JoinHandle<()>) {
    let (cert, key) = pki.issue("parent", &["localhost"]);
    let token_file = pki.path("tokens");
    std::fs::write(&token_file, format!("# sites\n{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let ca = pki.path("ca.pem");
    let serving = SiteServing::load(SiteFiles {
        cert: &cert,
        key: &key,
        tokens: tokens.then_some(token_file.as_path()),
        client_ca: client_ca.then_some(ca.as_path()),
    })
    .unwrap();
    let h = Harness::start().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let agent = h.agent.clone();
    let task = tokio::spawn(async move { agent.serve_sites(listener, serving).await });
    (h, port, task)
}

/// A TLS client of the parent's site port, with a client certificate or none.
async fn tls_get(
    pki: &Pki,
    port: u16,
    path: &str,
    auth: Option<&str>,
    client: Option<(&PathBuf, &PathBuf)>,
) -> Result<(StatusCode, http::HeaderMap, bytes::Bytes), String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_file_iter(cert)
                    .unwrap()
                    .map(Result::unwrap)
                    .collect(),
                PrivateKeyDer::from_pem_file(key).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let mut req = Request::builder()
        .method(Method::GET)
        .uri(path)
        .header("host", format!("localhost:{port}"));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = send
        .send_request(req.body(Empty::<bytes::Bytes>::new()).unwrap())
        .await
        .map_err(|e| format!("request: {e}"))?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

#[tokio::test]
async fn a_site_without_credentials_gets_nothing_and_one_with_them_gets_the_blob() {
    let pki = Pki::new("sites CA");
    let (h, port, _sites) = parent(&pki, true, true).await;
    let img = h
        .reg
        .push_image("app", "v1", vec![random_bytes(300_000, 7)]);
    let layer = &img.layer_digests[0];
    let path = format!("/v2/app/blobs/{layer}{}", h.ns());

    // Plain HTTP on the TLS port: no response at all.
    let plain = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let url = format!("http://127.0.0.1:{port}{path}");
    assert!(
        plain.get(url.parse().unwrap()).await.is_err(),
        "no plaintext"
    );

    // TLS, no credentials: a 401 with a Basic challenge, so registry clients send theirs.
    let (status, headers, _) = tls_get(&pki, port, &path, None, None).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        headers.get("www-authenticate").unwrap(),
        "Basic realm=\"pollen\""
    );
    let (status, ..) = tls_get(
        &pki,
        port,
        "/v2/",
        Some("Bearer not-the-token-at-all"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "a wrong token");
    assert_eq!(
        h.reg.stats().blob_gets.get(layer.as_str()),
        None,
        "nothing fetched"
    );

    // A token, or a certificate the sites CA signed: the blob.
    let bearer = format!("Bearer {TOKEN}");
    let (status, _, body) = tls_get(&pki, port, &path, Some(&bearer), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(sha256(&body), *layer);
    let (cert, key) = pki.issue("site-b", &["site-b"]);
    let (status, _, body) = tls_get(&pki, port, &path, None, Some((&cert, &key)))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "a client certificate alone");
    assert_eq!(sha256(&body), *layer);

    // A certificate another CA signed: refused in the handshake.
    let rogue = Pki::new("rogue CA");
    let (cert, key) = rogue.issue("rogue", &["rogue"]);
    let refused = tls_get(&pki, port, &path, Some(&bearer), Some((&cert, &key))).await;
    assert!(
        !matches!(refused, Ok((StatusCode::OK, ..))),
        "a certificate that does not verify is refused, token or not: {refused:?}"
    );
    assert_eq!(h.reg.stats().blob_gets.get(layer.as_str()), Some(&1));
}

#[tokio::test]
async fn a_sites_agents_pull_through_the_parent_and_fall_back_to_the_origin_without_it() {
    let pki = Pki::new("sites CA");
    let (parent, port, sites) = parent(&pki, true, false).await;
    let img = parent
        .reg
        .push_image("app", "v1", vec![random_bytes(500_000, 9)]);
    let layer = img.layer_digests[0].clone();
    let origin = parent.reg.clone();
    let site = |origin: &pollen_testreg::TestRegistry| {
        let mut cfg = config_for(origin);
        let parent_url = format!("https://localhost:{port}");
        cfg.upstream
            .registries
            .insert(origin.host(), vec![parent_url, origin.url()]);
        cfg.upstream.credentials.insert(
            format!("localhost:{port}"),
            Credentials {
                username: "site-a".into(),
                password: TOKEN.into(),
            },
        );
        cfg.upstream.extra_roots = vec![pki.ca_der()];
        cfg
    };
    // Two sites' agents pull the same blob through the parent: the origin sends it once.
    for _ in 0..2 {
        let s = Harness::with(origin.clone(), site(&origin)).await;
        let r = s.get(&format!("/v2/app/blobs/{layer}{}", s.ns())).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(sha256(r.bytes()), layer);
    }
    assert_eq!(origin.stats().blob_gets.get(layer.as_str()), Some(&1));
    let text = parent.agent.metrics().encode();
    let served: f64 = text
        .lines()
        .filter(|l| l.starts_with("pollen_served_bytes_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(
        served >= 1_000_000.0,
        "the parent served both sites: {served} bytes"
    );

    // The parent gone: a site's agent falls back to the origin, with the right bytes.
    let img2 = origin.push_image("app", "v2", vec![random_bytes(200_000, 10)]);
    let layer2 = img2.layer_digests[0].clone();
    sites.abort();
    let _ = sites.await;
    let _ = parent.stop();
    let s = Harness::with(origin.clone(), site(&origin)).await;
    let r = s.get(&format!("/v2/app/blobs/{layer2}{}", s.ns())).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(sha256(r.bytes()), layer2);
}
