//! A quick loopback harness for the scheduling: N agents in one process, one of them the tracker,
//! all pulling one blob at the same moment from a throttled in-process registry, each agent's
//! upload capped. Prints the time until every agent has the blob against the minimum
//! distribution time `T_min = max(F/u_s, N*F/(u_s + sum u_i))` (downloads are not capped, so
//! the `F/d_min` term is left out), and the registry's egress against F.
//!
//!     cargo run --release -p pollen-agent --example swarm_bound -- [N] [MiB] [u_s MB/s] [u_i MB/s] [piece KiB]
//!
//! Defaults: 8 agents, 32 MiB, 20 MB/s from the registry, 10 MB/s upload per agent, the
//! automatic piece size. Part 4's
//! benchmark measures the same on emulated hosts with real clients; this is the quick version.

use pollen_agent::{Agent, AgentConfig, Node};
use pollen_store::Store;
use pollen_swarm::{Bootstrap, Limits, SwarmConfig, SwarmKey};
use pollen_testreg::{Fault, TestRegistry};
use std::time::{Duration, Instant};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<f64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("numbers: N MiB u_s u_i"))
        .collect();
    let arg = |i: usize, default: f64| args.get(i).copied().unwrap_or(default);
    let (n, mib, u_s, u_i) = (
        arg(0, 8.0) as usize,
        arg(1, 32.0),
        arg(2, 20.0),
        arg(3, 10.0),
    );
    let size = (mib * 1048576.0) as usize;
    let piece_size = args.get(4).map(|kib| (kib * 1024.0) as u32);

    let reg = TestRegistry::start().await?;
    let data: Vec<u8> = (0..size)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let digest = reg.add_blob("app", data.into());
    // u_s: 64 KiB chunks with a delay between them.
    let chunk = 64 << 10;
    reg.set_fault(Fault::Slow {
        chunk,
        delay: Duration::from_secs_f64(chunk as f64 / (u_s * 1e6)),
    });

    let mut agents = Vec::new();
    let mut dirs = Vec::new();
    let mut first_addr = None;
    let swarm_key = SwarmKey::generate()?;
    // All agents connect from 127.0.0.1: lift the per-address limits meant for one agent each.
    let n32 = u32::try_from(n).unwrap_or(u32::MAX);
    let limits = Limits {
        max_connections: n32.saturating_mul(8).max(1024),
        max_pending_incoming: n32.max(128),
        max_pending_per_ip: n32.max(128),
        max_connections_per_ip: n32.saturating_mul(8).max(1024),
        ..Limits::default()
    };
    for i in 0..n {
        let dir = tempfile::tempdir()?;
        let mut swarm = SwarmConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
            swarm_key: Some(swarm_key),
            limits,
            ..SwarmConfig::default()
        };
        if let Some(addr) = &first_addr {
            swarm.bootstrap = vec![Bootstrap::Addr(Clone::clone(addr))];
        }
        let node = Node::start(dir.path(), swarm).await?;
        if first_addr.is_none() {
            first_addr = node.listen_addrs().await?.first().cloned();
        }
        let mut cfg = AgentConfig::default();
        cfg.upstream.default_mirrors = vec![reg.url()];
        cfg.upstream.registries.insert(reg.host(), vec![reg.url()]);
        cfg.p2p.upload_limit = (u_i * 1e6) as u64;
        cfg.p2p.session.piece_size = piece_size;
        cfg.p2p.tracker = i == 0;
        let agent = Agent::new(cfg, Store::open(dir.path(), 1 << 34)?, Some(node))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let a = agent.clone();
        tokio::spawn(async move { a.serve(listener).await });
        agents.push((agent, addr));
        dirs.push(dir);
    }
    // Everyone connected to the first agent (the tracker) and able to look it up.
    let deadline = Instant::now() + Duration::from_secs(30);
    for (agent, _) in agents.iter().skip(1) {
        while agent.node().map_or(0, |n| n.stats().routing_table_peers) == 0 {
            assert!(Instant::now() < deadline, "agents did not connect");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    let ns = reg.host().replace(':', "%3A");
    let started = Instant::now();
    let pulls: Vec<_> = agents
        .iter()
        .map(|(_, addr)| {
            let url = format!("http://{addr}/v2/app/blobs/{digest}?ns={ns}");
            tokio::spawn(async move { fetch(&url).await.map(|n| (n, started.elapsed())) })
        })
        .collect();
    let mut times = Vec::new();
    for p in pulls {
        let (bytes, t) = p.await??;
        assert_eq!(bytes, size, "a pull came back short");
        times.push(t.as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let per_agent = |metric: &str| -> String {
        let values: Vec<String> = agents
            .iter()
            .map(|(a, _)| {
                a.refresh_peer_metrics();
                let text = a.metrics().encode();
                let v = text
                    .lines()
                    .find_map(|l| l.strip_prefix(metric)?.strip_prefix(' '))
                    .and_then(|v| v.trim().parse::<f64>().ok())
                    .unwrap_or(0.0);
                format!("{:.0}", v / 1e6)
            })
            .collect();
        values.join(" ")
    };
    println!(
        "MB per agent (the tracker first): uploaded {}; from the registry {}",
        per_agent("pollen_peer_bytes_sent_total"),
        per_agent("pollen_upstream_bytes_total"),
    );
    let f = size as f64 / 1e6;
    let nf = n as f64;
    let t_min = (f / u_s).max(nf * f / (u_s + nf * u_i));
    let max = times[times.len() - 1];
    let egress = reg.stats().blob_bytes_sent as f64 / size as f64;
    println!(
        "N={n} F={mib} MiB u_s={u_s} MB/s u_i={u_i} MB/s: T_min {t_min:.2} s; done p50 {:.2} s, max {max:.2} s = {:.2} x T_min; registry egress {egress:.3} x F",
        times[times.len() / 2],
        max / t_min
    );
    Ok(())
}

/// GETs `url` with a bare HTTP/1.1 client; the body's length.
async fn fetch(url: &str) -> Result<usize, String> {
    use http_body_util::{BodyExt, Empty};
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<bytes::Bytes>>();
    let resp = client
        .get(url.parse().map_err(|e| format!("{e}"))?)
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("HTTP {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame.map_err(|e| e.to_string())?.into_data() {
            n += data.len();
        }
    }
    Ok(n)
}
