//! A hostile upstream against the upstream client, over real sockets: challenges that name
//! another registry's token service or a plain-http one, an unlisted registry, redirects to
//! loopback, cloud metadata and this node's own listeners, and redirects to blob storage. Each
//! test asserts on what the other servers received, not on log text.

use base64::Engine;
use http::{Method, StatusCode};
use pollen_oci::Name;
use pollen_testreg::{Auth, TestRegistry};
use pollen_upstream::{load_roots, Credentials, FetchRequest, Route, Upstream, UpstreamConfig};
use std::sync::{Arc, Mutex};
use std::time::Duration;

mod common;
use common::{private_tls, respond, token, Server};

fn cfg() -> UpstreamConfig {
    UpstreamConfig {
        default_mirrors: vec![],
        response_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(2),
        ..UpstreamConfig::default()
    }
}

fn creds(user: &str) -> Credentials {
    Credentials {
        username: user.into(),
        password: "pw".into(),
    }
}

fn basic(user: &str) -> String {
    let raw = format!("{user}:pw");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

fn route(registry: &str, mirror: &str) -> Route {
    Route {
        registry: registry.into(),
        mirrors: vec![mirror.to_string()],
        name: Name::parse("app").unwrap(),
    }
}

async fn get(
    up: &Upstream,
    route: &Route,
    path: &str,
    client_auth: Option<&'static str>,
) -> Result<StatusCode, String> {
    let req = FetchRequest {
        route,
        method: Method::GET,
        path: path.into(),
        accept: None,
        range_start: 0,
        range_end: None,
        client_auth: client_auth.map(http::HeaderValue::from_static),
    };
    up.fetch(&req)
        .await
        .map(|r| r.status)
        .map_err(|e| e.to_string())
}

/// The reproduction of the review: a registry answers 401 with the realm of a victim
/// registry's token service and the victim's private repository as scope. The agent holds
/// credentials for both; the victim's token service must see none of them.
#[tokio::test]
async fn a_realm_on_another_host_never_receives_configured_credentials() {
    let victim_tokens = Server::start(|_| token("victim-repo-token")).await;
    let challenge = format!(
        r#"Bearer realm="http://{}/token",service="victim",scope="repository:victim/secret:pull""#,
        victim_tokens.host()
    );
    let hostile =
        Server::start(move |_| respond(401, &[("www-authenticate", &challenge)], "")).await;
    let mut cfg = cfg();
    cfg.registries.insert(hostile.host(), vec![hostile.url()]);
    cfg.credentials.insert(hostile.host(), creds("mine"));
    cfg.credentials
        .insert(victim_tokens.host(), creds("victim"));
    let r = route(&hostile.host(), &hostile.url());

    let up = Upstream::new(cfg.clone()).unwrap();
    assert_eq!(
        get(&up, &r, "manifests/v1", None).await,
        Ok(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(victim_tokens.seen().len(), 1, "asked once, anonymously");
    assert_eq!(victim_tokens.authorizations(), Vec::<String>::new());
    assert!(
        hostile
            .authorizations()
            .iter()
            .all(|a| !a.starts_with("Basic")),
        "{:?}",
        hostile.authorizations()
    );

    // The control: bound by configuration, the realm gets the hostile registry's own
    // credentials (and still never the victim's).
    cfg.realms
        .insert(hostile.host(), vec![victim_tokens.host()]);
    let up = Upstream::new(cfg).unwrap();
    assert_eq!(
        get(&up, &r, "manifests/v1", None).await,
        Ok(StatusCode::UNAUTHORIZED)
    );
    assert_eq!(victim_tokens.authorizations(), vec![basic("mine")]);
}

/// An https registry whose challenge names a plain-http realm, on its own host or another:
/// no token request at all, so nothing crosses the network in clear; an https realm on its
/// own host gets the credentials (the control).
#[tokio::test]
async fn a_plain_http_realm_of_an_https_registry_gets_nothing() {
    let plain_tokens = Server::start(|_| token("t")).await;
    let challenge = Arc::new(Mutex::new(String::new()));
    let c = challenge.clone();
    let backend = Server::start(move |req| {
        if req.uri().path() == "/token" {
            return token("t");
        }
        let c = c.lock().unwrap().clone();
        respond(401, &[("www-authenticate", &c)], "")
    })
    .await;
    let tls = private_tls(backend.addr).await;
    let host = format!("localhost:{}", tls.port);
    let mirror = format!("https://{host}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &tls.ca_pem).unwrap();
    let mut cfg = cfg();
    cfg.extra_roots = load_roots(&dir.path().join("ca.pem")).unwrap();
    cfg.registries.insert(host.clone(), vec![mirror.clone()]);
    cfg.credentials.insert(host.clone(), creds("u"));
    let up = Upstream::new(cfg).unwrap();
    let r = route(&host, &mirror);

    for realm in [
        format!("http://{host}/token"),
        format!("http://{}/token", plain_tokens.host()),
    ] {
        *challenge.lock().unwrap() = format!(r#"Bearer realm="{realm}",service="s""#);
        assert_eq!(
            get(&up, &r, "manifests/v1", None).await,
            Ok(StatusCode::UNAUTHORIZED)
        );
    }
    assert!(plain_tokens.seen().is_empty(), "{:?}", plain_tokens.seen());
    assert!(backend
        .seen()
        .iter()
        .all(|s| s.path != "/token" && s.authorization.is_none()));

    *challenge.lock().unwrap() = format!(r#"Bearer realm="https://{host}/token",service="s""#);
    assert_eq!(
        get(&up, &r, "manifests/v1", None).await,
        Ok(StatusCode::UNAUTHORIZED)
    );
    let asked: Vec<_> = backend
        .seen()
        .into_iter()
        .filter(|s| s.path == "/token")
        .collect();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].authorization.as_deref(), Some(basic("u").as_str()));
}

/// An `ns` host with no `[registries]` or `[[credentials]]` entry gets anonymous access,
/// even when its mirror's host has credentials configured (the route decides, not the URL).
#[tokio::test]
async fn unlisted_registries_get_anonymous_access_only() {
    let reg = TestRegistry::start().await.unwrap();
    reg.set_auth(Auth::Basic {
        username: "u".into(),
        password: "pw".into(),
    });
    reg.push_image("app", "v1", vec![bytes::Bytes::from_static(b"layer")]);
    let mut cfg = cfg();
    cfg.registries
        .insert("listed.example".into(), vec![reg.url()]);
    cfg.credentials.insert(reg.host(), creds("u"));
    let up = Upstream::new(cfg).unwrap();

    let unlisted = route("unlisted.example", &reg.url());
    assert_eq!(
        get(&up, &unlisted, "manifests/v1", None).await,
        Ok(StatusCode::UNAUTHORIZED)
    );
    assert!(
        reg.stats().authorizations.is_empty(),
        "{:?}",
        reg.stats().authorizations
    );

    let listed = route("listed.example", &reg.url());
    assert_eq!(
        get(&up, &listed, "manifests/v1", None).await,
        Ok(StatusCode::OK)
    );
    assert_eq!(reg.stats().authorizations, vec![basic("u")]);
}

/// A registry configured by name (not on loopback as far as the policy knows) redirects a
/// blob to loopback by address and by name, to IPv6 loopback and to the cloud metadata
/// service: all refused, and the loopback service never sees a request. The same host on
/// another port is the operator's choice and followed, unless it is this node's listener.
#[tokio::test]
async fn redirects_to_loopback_metadata_or_own_listeners_are_refused() {
    let internal = Server::start(|_| respond(200, &[], "internal secret")).await;
    let target = Arc::new(Mutex::new(String::new()));
    let t = target.clone();
    let hostile = Server::start(move |_| {
        let location = t.lock().unwrap().clone();
        respond(307, &[("location", &location)], "")
    })
    .await;
    let mirror = format!("http://registry.test:{}", hostile.addr.port());
    let mut cfg = cfg();
    cfg.registries
        .insert("registry.test".into(), vec![mirror.clone()]);
    let loopback = vec!["127.0.0.1".parse().unwrap()];
    cfg.resolve_overrides
        .insert("registry.test".into(), loopback.clone());
    cfg.resolve_overrides
        .insert("internal.test".into(), loopback);
    cfg.resolve_overrides.insert(
        "metadata.test".into(),
        vec!["169.254.169.254".parse().unwrap()],
    );
    let up = Upstream::new(cfg.clone()).unwrap();
    let r = route("registry.test", &mirror);
    let port = internal.addr.port();

    for to in [
        format!("http://127.0.0.1:{port}/x"),
        format!("http://localhost:{port}/x"),
        format!("http://internal.test:{port}/x"),
        format!("http://[::1]:{port}/x"),
        format!("http://[::ffff:127.0.0.1]:{port}/x"),
        "http://169.254.169.254/latest/meta-data/".to_string(),
        "http://metadata.test/computeMetadata/v1/".to_string(),
    ] {
        *target.lock().unwrap() = to.clone();
        let got = get(&up, &r, "blobs/sha256:aa", None).await;
        let err = got.expect_err(&to);
        assert!(err.contains("refused to connect"), "{to}: {err}");
    }
    assert!(internal.seen().is_empty(), "{:?}", internal.seen());

    // The configured registry's own host on another port: followed.
    *target.lock().unwrap() = format!("http://registry.test:{port}/x");
    assert_eq!(
        get(&up, &r, "blobs/sha256:aa", None).await,
        Ok(StatusCode::OK)
    );
    assert_eq!(internal.seen().len(), 1);

    // ... unless that port is one of this node's listeners.
    cfg.own_listeners = vec![internal.addr];
    let up = Upstream::new(cfg).unwrap();
    let err = get(&up, &r, "blobs/sha256:aa", None).await.unwrap_err();
    assert!(err.contains("refused to connect"), "{err}");
    assert_eq!(internal.seen().len(), 1);
}

/// Blob storage behind a redirect gets no `Authorization`: neither the client's own header
/// nor the agent's configured credentials, as Distribution clients do.
#[tokio::test]
async fn authorization_never_follows_a_redirect_to_another_host() {
    let storage = Server::start(|_| respond(200, &[], "blob")).await;
    let location = format!("http://127.0.0.1:{}/bucket/blob", storage.addr.port());
    let registry = Server::start(move |req| match req.headers().get("authorization") {
        None => respond(401, &[("www-authenticate", r#"Basic realm="r""#)], ""),
        Some(_) => respond(307, &[("location", &location)], ""),
    })
    .await;
    let mut cfg = cfg();
    cfg.registries.insert(registry.host(), vec![registry.url()]);
    cfg.credentials.insert(registry.host(), creds("agent"));
    let up = Upstream::new(cfg).unwrap();
    let r = route(&registry.host(), &registry.url());

    let client = Some("Bearer client-secret");
    assert_eq!(
        get(&up, &r, "blobs/sha256:aa", client).await,
        Ok(StatusCode::OK)
    );
    assert_eq!(
        get(&up, &r, "blobs/sha256:bb", None).await,
        Ok(StatusCode::OK)
    );
    assert_eq!(storage.seen().len(), 2);
    assert_eq!(storage.authorizations(), Vec::<String>::new());
    let sent = registry.authorizations();
    assert!(
        sent.contains(&"Bearer client-secret".to_string()),
        "{sent:?}"
    );
    assert!(sent.contains(&basic("agent")), "{sent:?}");
}

/// A registry that redirects forever costs six requests, then an error.
#[tokio::test]
async fn redirect_loops_are_cut_short() {
    let looping =
        Server::start(|_| respond(302, &[("location", "/v2/app/blobs/sha256:aa")], "")).await;
    let mut cfg = cfg();
    cfg.registries.insert(looping.host(), vec![looping.url()]);
    let up = Upstream::new(cfg).unwrap();
    let r = route(&looping.host(), &looping.url());
    let err = get(&up, &r, "blobs/sha256:aa", None).await.unwrap_err();
    assert!(err.contains("redirects"), "{err}");
    assert_eq!(looping.seen().len(), pollen_upstream::MAX_REDIRECTS + 1);
}
