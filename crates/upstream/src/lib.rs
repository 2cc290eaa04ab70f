//! The agent's HTTP client to upstream registries.
//!
//! It picks the ordered mirror list for a registry, tries the mirrors in turn with health
//! tracking (first healthy mirror wins, the origin last), authenticates (bearer tokens shared
//! between requests, Basic credentials, or the client's own `Authorization` passed through),
//! follows blob redirects and puts a deadline on every step. Configured credentials go only
//! to the registry they name and its bound token realms (`scope.rs`); connections never reach
//! loopback, link-local or this node's listeners unless configured (`connect.rs`).

mod auth;
mod client;
mod connect;
#[doc(hidden)]
pub mod fuzzing;
mod health;
mod probe;
mod route;
mod scope;

pub use auth::Credentials;
pub use client::{collect_limited, FetchRequest, Upstream, UpstreamResponse, MAX_REDIRECTS};
pub use probe::{offset_ms, CredentialCheck, Probe, Throughput, THROUGHPUT_PROBE_BYTES};
pub use route::{Route, RouteError, DOCKER_HUB, DOCKER_HUB_URL};
pub use scope::DOCKER_HUB_REALM;

use rustls::pki_types::pem::PemObject;
pub use rustls::pki_types::CertificateDer;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Everything the upstream client is configured with.
#[derive(Clone, Debug)]
pub struct UpstreamConfig {
    /// Mirrors for requests without `ns` (Docker Engine's requests, meaning Docker Hub).
    pub default_mirrors: Vec<String>,
    /// Registry host (as containerd sends it in `ns`) to its ordered mirror list.
    pub registries: HashMap<String, Vec<String>>,
    /// Credentials by registry host (`host[:port]` of a mirror URL; Docker Hub by any of its
    /// names). Sent only to that host and to token realms bound to it: the same host and
    /// port, one listed in [`Self::realms`], or `auth.docker.io` for Docker Hub.
    pub credentials: HashMap<String, Credentials>,
    /// Token realm hosts (`host[:port]`) bound to the credentials of the same key, besides
    /// the registry's own host (`realms = [...]` of a `[[credentials]]` entry).
    pub realms: HashMap<String, Vec<String>>,
    /// This node's own listeners: no upstream connection (a redirect, a realm) may reach
    /// them, even on a configured host.
    pub own_listeners: Vec<SocketAddr>,
    /// Host names resolved to these addresses instead of asking DNS, as `curl --resolve`
    /// does. For tests: a registry "not on loopback" by name, served from 127.0.0.1, while
    /// the connection policy still judges the name and the address it resolves to.
    #[doc(hidden)]
    pub resolve_overrides: HashMap<String, Vec<IpAddr>>,
    /// Whether an `ns` host with no configured mirrors may be fetched from `https://<host>`.
    pub allow_unlisted_registries: bool,
    pub connect_timeout: Duration,
    /// Deadline for an upstream to answer with response headers.
    pub response_timeout: Duration,
    /// Longest pause between two body chunks before the transfer counts as stalled.
    pub idle_timeout: Duration,
    /// First backoff after a mirror fails; doubles per consecutive failure.
    pub failure_backoff: Duration,
    pub user_agent: String,
    /// Root certificates trusted besides the built-in Mozilla roots: registries signed by a
    /// private CA, or a TLS-intercepting proxy's ([`load_roots`]).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            default_mirrors: vec![DOCKER_HUB_URL.to_string()],
            registries: HashMap::new(),
            credentials: HashMap::new(),
            realms: HashMap::new(),
            own_listeners: Vec::new(),
            resolve_overrides: HashMap::new(),
            allow_unlisted_registries: true,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            failure_backoff: Duration::from_secs(5),
            user_agent: concat!("pollen/", env!("CARGO_PKG_VERSION")).to_string(),
            extra_roots: Vec::new(),
        }
    }
}

/// Most certificates read from one PEM file (a system bundle holds about 150).
const MAX_ROOTS_PER_FILE: usize = 4096;
/// Largest PEM file read.
const MAX_PEM_FILE: u64 = 8 << 20;

/// The certificates of a PEM file (`--ca-file`), checked as trust anchors; an error says which
/// file and why, and a file with no certificate is one.
pub fn load_roots(path: &std::path::Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let len = std::fs::metadata(path)
        .map_err(|e| format!("{shown}: {e}"))?
        .len();
    if len > MAX_PEM_FILE {
        return Err(format!("{shown}: larger than {MAX_PEM_FILE} bytes"));
    }
    let pem = std::fs::read(path).map_err(|e| format!("{shown}: {e}"))?;
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| format!("{shown}: not a PEM certificate file: {e}"))?;
        if certs.len() == MAX_ROOTS_PER_FILE {
            return Err(format!(
                "{shown}: more than {MAX_ROOTS_PER_FILE} certificates"
            ));
        }
        // What Upstream::new will do with it, so a bad one fails here with the file's name.
        rustls::RootCertStore::empty()
            .add(cert.clone())
            .map_err(|e| format!("{shown}: certificate {}: {e}", certs.len() + 1))?;
        certs.push(cert);
    }
    if certs.is_empty() {
        return Err(format!(
            "{shown}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"
        ));
    }
    Ok(certs)
}

/// Why no upstream could give an answer at all (an HTTP error status is an answer, not this).
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("no upstream reachable: {0}")]
    Unavailable(String),
}
