//! `pollen-testreg`: an in-process OCI Distribution registry for tests and
//! demos.
//!
//! [`TestRegistry`] serves real manifests and blobs over a real TCP socket
//! on `127.0.0.1`, so the code under test exercises its actual HTTP client,
//! connection pooling and streaming paths rather than a mock. On top of the
//! read-only pull API it offers what tests of a mirror agent need:
//!
//! * **Auth** ([`Auth`]): Docker-style bearer-token auth (with an anonymous
//!   or password-protected `/token` endpoint) or plain Basic auth.
//! * **Fault injection** ([`Fault`]): error statuses, slow, truncated,
//!   corrupted and hung blob transfers.
//! * **Statistics** ([`Stats`]): who fetched what, how often and how many
//!   bytes, so tests can assert on deduplication and caching.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use bytes::Bytes;
//! use pollen_testreg::{Fault, TestRegistry};
//!
//! let reg = TestRegistry::start().await?;
//! let img = reg.push_image("library/busybox", "latest", vec![Bytes::from_static(b"layer")]);
//! reg.set_fault(Fault::Status { status: 503, count: 1 });
//! // ... pull `{reg.host()}/library/busybox:latest` with the client under test ...
//! assert_eq!(reg.stats().blob_get_count(&img.layer_digests[0]), 1);
//! reg.shutdown().await;
//! # Ok(()) }
//! ```

mod auth;
mod body;
mod handler;
mod image;
mod range;
mod state;
mod util;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

pub use image::{OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST};

use body::{ConnStream, KillSwitch};
use state::Shared;

/// Handle to a running registry.
///
/// Cheap to clone; all clones control the same server. The server stops
/// when [`shutdown`](TestRegistry::shutdown) is called on any clone, or when
/// the last clone is dropped. Either way, open connections (including hung
/// or slow transfers) are aborted rather than waited for.
#[derive(Clone)]
pub struct TestRegistry {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    addr: SocketAddr,
    server: Mutex<Option<Server>>,
}

struct Server {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let server = self
            .server
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(server) = server.take() {
            // Aborting the accept task drops its JoinSet, which aborts every
            // connection task; nothing outlives the last handle.
            server.task.abort();
        }
    }
}

/// What [`TestRegistry::push_image`] stored.
#[derive(Clone, Debug)]
pub struct Image {
    pub repo: String,
    pub tag: String,
    pub manifest_digest: String,
    /// The exact manifest bytes served (their digest is `manifest_digest`).
    pub manifest: Bytes,
    pub config_digest: String,
    /// Layer digests, in manifest order.
    pub layer_digests: Vec<String>,
}

/// How `/v2/` requests must authenticate.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    /// Open registry.
    #[default]
    None,
    /// Bearer tokens from this server's `/token` endpoint, announced through
    /// a `WWW-Authenticate: Bearer realm=...,service="testreg",scope=...`
    /// challenge. With `username_password`, the token endpoint itself
    /// requires those Basic credentials; without, tokens are anonymous (as
    /// for public images on Docker Hub). Tokens are not scope-checked.
    Token {
        username_password: Option<(String, String)>,
    },
    /// `Authorization: Basic` with these credentials on every `/v2/` request.
    Basic { username: String, password: String },
}

/// A failure to inject into subsequent requests; replaces any previous one.
///
/// Faults apply only to requests that pass authentication, so a test can
/// arm one without it being consumed by the auth handshake.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Fault {
    /// Behave normally.
    #[default]
    None,
    /// The next `count` requests (any /v2/ path except the /v2/ ping) answer
    /// this status with an OCI error body; then the fault clears itself.
    Status { status: u16, count: usize },
    /// Blob bodies are sent in `chunk` byte chunks with `delay` between them.
    Slow { chunk: usize, delay: Duration },
    /// Blob GETs send headers with the full Content-Length, then only `after`
    /// bytes, then close the connection (a truncated transfer). Ranged GETs
    /// count `after` from the start of the range. If `after` is at least the
    /// body length the body is sent whole.
    Truncate { after: u64 },
    /// Like `Truncate`, but the connection ends with a TCP reset (RST) instead of a close
    /// (FIN): what a crashing registry or a middlebox dropping the flow looks like.
    Reset { after: u64 },
    /// Blob GETs flip one byte at offset `offset` of the blob (the bytes no
    /// longer match the digest). Offsets past the end hit the last byte, so
    /// a full download is always damaged; ranged GETs are damaged only if
    /// they cover that byte.
    Corrupt { offset: u64 },
    /// Blob GETs send headers then never send the body (a hung upstream).
    Hang,
    /// Blob HEADs and whole-blob GETs claim `Content-Length: size` (a hostile upstream
    /// claiming a huge blob); GETs then send nothing, like `Hang`.
    ClaimSize { size: u64 },
}

/// A snapshot of what the registry has served since start or the last
/// [`TestRegistry::reset_stats`].
///
/// The per-object maps count requests that passed authentication, whatever
/// the outcome (including 404s and injected faults); `requests` counts
/// everything, including 401s and `/token`.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    /// All requests.
    pub requests: u64,
    /// Digest -> number of GET requests for that blob (HEAD not counted).
    pub blob_gets: HashMap<String, u64>,
    /// Digest -> number of HEAD requests for that blob.
    pub blob_heads: HashMap<String, u64>,
    /// Reference (tag or digest) as requested -> count, GET and HEAD both.
    pub manifest_gets: HashMap<String, u64>,
    /// Reference as requested -> number of HEAD requests (also counted in `manifest_gets`).
    pub manifest_heads: HashMap<String, u64>,
    /// Body bytes actually written for blob responses (counted as each
    /// chunk is handed to the connection; HEADs and manifests excluded).
    pub blob_bytes_sent: u64,
    /// Requests to the `/token` endpoint.
    pub token_requests: u64,
    /// Distinct User-Agent values seen, in order of first appearance.
    pub user_agents: Vec<String>,
    /// Distinct Authorization header values seen on /v2/ paths.
    pub authorizations: Vec<String>,
    /// Distinct Authorization header values seen at `/token`.
    pub token_authorizations: Vec<String>,
}

impl Stats {
    /// GET count for one blob digest (0 if never requested).
    pub fn blob_get_count(&self, digest: &str) -> u64 {
        self.blob_gets.get(digest).copied().unwrap_or(0)
    }

    /// Sum of all blob GETs.
    pub fn total_blob_gets(&self) -> u64 {
        self.blob_gets.values().sum()
    }

    /// HEAD count for one manifest reference (0 if never requested).
    pub fn manifest_head_count(&self, reference: &str) -> u64 {
        self.manifest_heads.get(reference).copied().unwrap_or(0)
    }

    /// GET+HEAD count for one manifest reference (0 if never requested).
    pub fn manifest_get_count(&self, reference: &str) -> u64 {
        self.manifest_gets.get(reference).copied().unwrap_or(0)
    }
}

impl TestRegistry {
    /// Starts a registry on an ephemeral port of `127.0.0.1`.
    pub async fn start() -> std::io::Result<TestRegistry> {
        TestRegistry::start_on(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await
    }

    /// Starts a registry on `addr` (e.g. a fixed port for `pollen demo`).
    /// Must be called within a Tokio runtime, which then hosts the server.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<TestRegistry> {
        let listener = TcpListener::bind(addr).await?;
        let mut addr = listener.local_addr()?;
        // A wildcard bind is reachable via loopback; advertise that, since
        // `0.0.0.0` is not something a client can connect to.
        match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => addr.set_ip(Ipv4Addr::LOCALHOST.into()),
            IpAddr::V6(ip) if ip.is_unspecified() => addr.set_ip(Ipv6Addr::LOCALHOST.into()),
            _ => {}
        }
        let shared = Arc::new(Shared::new(addr));
        let (stop, stopped) = oneshot::channel();
        let task = tokio::spawn(accept_loop(listener, shared.clone(), stopped));
        let server = Mutex::new(Some(Server { stop, task }));
        Ok(TestRegistry {
            inner: Arc::new(Inner {
                shared,
                addr,
                server,
            }),
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.host())
    }

    /// `host:port` as used in image references, e.g. `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.inner.shared.host.clone()
    }

    /// The socket address the server listens on (loopback if bound to a
    /// wildcard address).
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// Stores a blob in `repo` and returns its digest (`sha256:<hex>`).
    pub fn add_blob(&self, repo: &str, data: Bytes) -> String {
        self.inner.shared.put_blob(repo, data)
    }

    /// Stores a manifest of any media type (image manifest, index, Docker
    /// v2 schema 2, ...) in `repo`, optionally tagging it, and returns its
    /// digest. The body is served verbatim; referenced blobs are not checked.
    pub fn add_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        body: Bytes,
    ) -> String {
        self.inner.shared.put_manifest(repo, tag, media_type, body)
    }

    /// Stores a complete single-platform OCI image: the layers, a generated
    /// config and an [`OCI_MANIFEST`] manifest tagged `tag`.
    pub fn push_image(&self, repo: &str, tag: &str, layers: Vec<Bytes>) -> Image {
        let layers: Vec<(String, u64)> = layers
            .into_iter()
            .map(|l| {
                let len = l.len() as u64;
                (self.add_blob(repo, l), len)
            })
            .collect();
        let (config, manifest) = image::build(&layers);
        let config_digest = self.add_blob(repo, config);
        let manifest_digest = self.add_manifest(repo, Some(tag), OCI_MANIFEST, manifest.clone());
        Image {
            repo: repo.to_owned(),
            tag: tag.to_owned(),
            manifest_digest,
            manifest,
            config_digest,
            layer_digests: layers.into_iter().map(|(d, _)| d).collect(),
        }
    }

    /// Arms `fault` for subsequent requests (requests already streaming keep
    /// the behaviour they started with). `Fault::None` disarms.
    pub fn set_fault(&self, fault: Fault) {
        self.inner.shared.set_fault(fault);
    }

    /// Delays every content response (not the `/v2/` ping or `/token`) by `delay` before
    /// its headers, like a slow registry; lets tests overlap concurrent requests.
    pub fn set_response_delay(&self, delay: Duration) {
        self.inner.shared.set_response_delay(delay);
    }

    /// Limits the rate of every blob body together, like the registry's network uplink
    /// (bytes per second, 0 for none); applies to requests made from now on.
    pub fn set_uplink(&self, bytes_per_sec: u64) {
        self.inner.shared.set_uplink(bytes_per_sec);
    }

    /// Switches the authentication mode for subsequent requests. Tokens
    /// issued earlier stay valid.
    pub fn set_auth(&self, auth: Auth) {
        self.inner.shared.set_auth(auth);
    }

    /// Makes [`Auth::Token`] challenges name `realm` (a full URL) instead of this server's
    /// own `/token`: a hostile registry pointing clients at another registry's token
    /// service. `None` restores the default.
    pub fn set_token_realm(&self, realm: Option<String>) {
        self.inner.shared.set_realm(realm);
    }

    /// Forgets every issued token, as if they had all expired, so clients
    /// must go back to the token endpoint.
    pub fn revoke_tokens(&self) {
        self.inner.shared.revoke_tokens();
    }

    /// A snapshot of the statistics.
    pub fn stats(&self) -> Stats {
        self.inner.shared.stats()
    }

    /// Zeroes the statistics (content, auth and faults are untouched).
    pub fn reset_stats(&self) {
        self.inner.shared.reset_stats();
    }

    /// Stops accepting, aborts all open connections and waits for that to
    /// finish. Returns promptly even with hung or slow transfers in flight.
    /// Affects every clone of this handle.
    pub async fn shutdown(self) {
        let server = self
            .inner
            .server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(Server { stop, task }) = server {
            let _ = stop.send(());
            // The task only fails if it was aborted or panicked; either way
            // it is gone, which is all shutdown promises.
            let _ = task.await;
        }
    }
}

impl std::fmt::Debug for TestRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestRegistry")
            .field("url", &self.url())
            .finish_non_exhaustive()
    }
}

/// Accepts connections until told to stop (or the handle is gone), running
/// each in its own task so slow or hung transfers never block others.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, mut stop: oneshot::Receiver<()>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            biased;
            // Fires on an explicit stop and when the sender is dropped.
            _ = &mut stop => break,
            // Reap finished connections so the set does not grow forever.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    conns.spawn(serve_connection(stream, shared.clone()));
                }
                // Typically fd exhaustion under a stress test: back off a
                // little instead of spinning on a failing accept.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
        }
    }
    drop(listener);
    conns.shutdown().await;
}

/// Serves HTTP/1.1 (with keep-alive) on one accepted connection.
async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    // Many small request/response exchanges; don't let Nagle delay them.
    let _ = stream.set_nodelay(true);
    let kill = KillSwitch::default();
    let io = TokioIo::new(ConnStream::new(stream, kill.clone()));
    let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        let (shared, kill) = (shared.clone(), kill.clone());
        async move {
            let delay = shared.response_delay();
            if !delay.is_zero() && req.uri().path().len() > "/v2/".len() {
                tokio::time::sleep(delay).await;
            }
            Ok::<_, Infallible>(handler::handle(&shared, &kill, &req))
        }
    });
    // Connection errors are client hang-ups or our own injected truncation;
    // neither is worth reporting.
    let _ = http1::Builder::new().serve_connection(io, service).await;
}
