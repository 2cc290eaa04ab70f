//! A running agent in front of the in-process test registry, and a plain HTTP client.
#![allow(dead_code)]

pub mod cluster;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use pollen_agent::{Agent, AgentConfig};
use pollen_store::Store;
use pollen_testreg::TestRegistry;
use std::net::SocketAddr;
use std::time::Duration;

pub struct Harness {
    pub reg: TestRegistry,
    pub agent: Agent,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
    client: Client<HttpConnector, Empty<Bytes>>,
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// `Err` when the body was cut off (the agent aborted the response).
    pub body: Result<Bytes, String>,
}

impl Resp {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
    pub fn bytes(&self) -> &Bytes {
        self.body.as_ref().expect("body was aborted")
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(self.bytes()).expect("body is not JSON")
    }
}

/// Config for an agent whose every upstream is `reg`, with short deadlines for fault tests.
pub fn config_for(reg: &TestRegistry) -> AgentConfig {
    let mut cfg = AgentConfig::default();
    cfg.upstream.default_mirrors = vec![reg.url()];
    cfg.upstream.registries.insert(reg.host(), vec![reg.url()]);
    cfg.upstream.response_timeout = Duration::from_secs(5);
    cfg.upstream.idle_timeout = Duration::from_secs(2);
    // These tests name their trackers (`cfg.p2p.tracker = true`); the default, every agent a
    // tracker, is what `startup.rs` tests.
    cfg.p2p.tracker = false;
    cfg
}

impl Harness {
    pub async fn start() -> Harness {
        let reg = TestRegistry::start().await.unwrap();
        let cfg = config_for(&reg);
        Harness::with(reg, cfg).await
    }

    pub async fn with(reg: TestRegistry, cfg: AgentConfig) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        Harness::with_dir(reg, cfg, dir, 1 << 30).await
    }

    pub async fn with_dir(
        reg: TestRegistry,
        cfg: AgentConfig,
        dir: tempfile::TempDir,
        quota: u64,
    ) -> Harness {
        Harness::with_swarm(reg, cfg, dir, quota, None).await
    }

    /// An agent with a swarm node (or none); `reg` may be shared with other agents (clones
    /// share one registry).
    pub async fn with_swarm(
        reg: TestRegistry,
        cfg: AgentConfig,
        dir: tempfile::TempDir,
        quota: u64,
        node: Option<pollen_agent::Node>,
    ) -> Harness {
        let store = Store::open(dir.path(), quota).unwrap();
        let agent = Agent::new(cfg, store, node).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let a = agent.clone();
        let task = tokio::spawn(async move { a.serve(listener).await });
        let client = Client::builder(TokioExecutor::new()).build_http();
        Harness {
            reg,
            agent,
            addr,
            dir,
            task,
            client,
        }
    }

    /// Stops the agent and hands back its registry and data dir, for restart tests.
    pub fn stop(self) -> (TestRegistry, tempfile::TempDir) {
        self.task.abort();
        (self.reg, self.dir)
    }

    /// `?ns=` for the test registry, as containerd sends it.
    pub fn ns(&self) -> String {
        format!("?ns={}", self.reg.host().replace(':', "%3A"))
    }

    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
        self.client().send(method, path, headers).await
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.client().get(path).await
    }

    /// A client of this agent that can move into a task.
    pub fn client(&self) -> AgentClient {
        AgentClient {
            client: self.client.clone(),
            addr: self.addr,
        }
    }

    /// Waits, with a deadline, until the agent has committed `digest` to its store. A client
    /// gets its last byte as soon as the digest verifies, a moment before the blob is durable
    /// and indexed, so tests that look at the store right after a response wait for this.
    pub async fn wait_stored(&self, digest: &str) {
        let d: pollen_oci::Digest = digest.parse().expect("test digest");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !self.agent.store().contains(pollen_store::Kind::Blob, &d) {
            assert!(
                std::time::Instant::now() < deadline,
                "{digest} was never committed"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    pub fn metric(&self, name: &str) -> f64 {
        metric(&self.agent.metrics().encode(), name)
    }
}

/// A plain HTTP client of one agent.
#[derive(Clone)]
pub struct AgentClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    addr: SocketAddr,
}

impl AgentClient {
    /// A GET whose body the caller reads as it arrives.
    pub async fn open(&self, path: &str) -> (StatusCode, hyper::body::Incoming) {
        let req = Request::builder()
            .uri(format!("http://{}{}", self.addr, path))
            .body(Empty::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(30), self.client.request(req))
            .await
            .expect("agent did not answer within 30s")
            .expect("request failed");
        (resp.status(), resp.into_body())
    }

    pub async fn send(&self, method: Method, path: &str, headers: &[(&str, &str)]) -> Resp {
        let mut b = Request::builder()
            .method(method)
            .uri(format!("http://{}{}", self.addr, path));
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        let resp = tokio::time::timeout(
            Duration::from_secs(30),
            self.client.request(b.body(Empty::new()).unwrap()),
        )
        .await
        .expect("agent did not answer within 30s")
        .expect("request failed");
        let (parts, body) = resp.into_parts();
        let body = tokio::time::timeout(Duration::from_secs(60), body.collect())
            .await
            .expect("body did not finish within 60s")
            .map(|c| c.to_bytes())
            .map_err(|e| e.to_string());
        Resp {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    pub async fn get(&self, path: &str) -> Resp {
        self.send(Method::GET, path, &[]).await
    }
}

/// A sample's value from Prometheus text, e.g. `pollen_upstream_requests_total`.
/// Sets the registry's fault to `then` as soon as the first GET of `digest` has reached it (the
/// fault in force before applies to that first transfer); the task answers whether that
/// happened within `spins` yields.
pub fn after_first_get(
    reg: &TestRegistry,
    digest: &str,
    then: pollen_testreg::Fault,
    spins: usize,
) -> tokio::task::JoinHandle<bool> {
    let (reg, digest) = (reg.clone(), digest.to_string());
    tokio::spawn(async move {
        for _ in 0..spins {
            if reg.stats().blob_get_count(&digest) >= 1 {
                reg.set_fault(then);
                return true;
            }
            tokio::task::yield_now().await;
        }
        false
    })
}

pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Incompressible, reproducible bytes.
pub fn random_bytes(len: usize, seed: u64) -> Bytes {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
}

pub fn sha256(b: &[u8]) -> String {
    pollen_oci::Digest::of(b).to_string()
}
