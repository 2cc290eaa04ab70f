//! The agent's own health checks, for `pollen doctor` (`GET /doctor` on the admin port): what
//! it can see from inside — each upstream mirror answering, the cache's disk and quota, peers
//! and trackers. The command adds what only the host can see (the runtimes' configuration).

use crate::Ctx;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// A check's outcome: `Fail` makes `pollen doctor` exit non-zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    Warn,
    Fail,
}

/// One line of the doctor's table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
}

/// Free disk below this fraction of the cache quota is a warning (the cache will evict
/// sooner than configured).
const LOW_DISK_FRACTION: f64 = 0.10;
/// A mirror slower than this to answer `/v2/` is a warning.
const SLOW_MIRROR: Duration = Duration::from_secs(1);

fn check(name: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        verdict,
        detail: detail.into(),
    }
}

pub(crate) async fn run(ctx: &Ctx) -> Vec<Check> {
    let mut out = vec![if ctx.ready.load(std::sync::atomic::Ordering::Relaxed) {
        check("agent", Verdict::Ok, "serving")
    } else {
        check("agent", Verdict::Fail, "not ready yet")
    }];
    out.extend(mirrors(ctx).await);
    out.push(disk(ctx));
    out.extend(swarm(ctx).await);
    out
}

/// Every configured mirror, asked for `/v2/` at once.
async fn mirrors(ctx: &Ctx) -> Vec<Check> {
    let upstream = ctx.upstream();
    let cfg = upstream.config();
    let mut all: Vec<(String, String)> = cfg
        .default_mirrors
        .iter()
        .map(|m| ("default (Docker Hub names)".to_string(), m.clone()))
        .collect();
    let mut registries: Vec<_> = cfg.registries.iter().collect();
    registries.sort();
    for (host, mirrors) in registries {
        all.extend(mirrors.iter().map(|m| (host.clone(), m.clone())));
    }
    let probes =
        futures_util::future::join_all(all.iter().map(|(_, mirror)| upstream.probe(mirror))).await;
    all.into_iter()
        .zip(probes)
        .map(|((registry, mirror), probe)| {
            let ms = probe.latency.as_millis();
            let creds = if probe.credentials {
                "; credentials configured (checked at the first pull)"
            } else {
                ""
            };
            let (verdict, detail) = match &probe.answer {
                Err(e) => (Verdict::Fail, format!("{mirror}: {e}")),
                Ok((status, challenge)) if probe.is_ok() => {
                    let how = match challenge {
                        Some(scheme) => format!("HTTP {status}, asks for {scheme} auth"),
                        None => format!("HTTP {status}"),
                    };
                    let verdict = if probe.latency > SLOW_MIRROR {
                        Verdict::Warn
                    } else {
                        Verdict::Ok
                    };
                    (verdict, format!("{mirror}: {how} in {ms} ms{creds}"))
                }
                Ok((status, _)) => (
                    Verdict::Fail,
                    format!("{mirror}: HTTP {status} to /v2/ in {ms} ms: not a registry API, or refusing us"),
                ),
            };
            check(format!("upstream {registry}"), verdict, detail)
        })
        .collect()
}

/// The cache: how full against its quota, and whether the disk has room for the quota.
fn disk(ctx: &Ctx) -> Check {
    let usage = ctx.store.usage();
    let gib = |b: u64| b as f64 / f64::from(1u32 << 30);
    let used = format!(
        "{:.1} of {:.1} GiB quota used",
        gib(usage.bytes),
        gib(usage.quota)
    );
    match free_space(ctx.store.root()) {
        Err(e) => check(
            "cache",
            Verdict::Warn,
            format!("{used}; free disk unknown: {e}"),
        ),
        Ok(free) => {
            let room = usage.quota.saturating_sub(usage.bytes);
            let detail = format!("{used}; {:.1} GiB free on the disk", gib(free));
            if free < room && (free as f64) < LOW_DISK_FRACTION * usage.quota as f64 {
                check(
                    "cache",
                    Verdict::Fail,
                    format!("{detail}: the disk fills before the quota; lower --cache-size or free space"),
                )
            } else if free < room {
                check(
                    "cache",
                    Verdict::Warn,
                    format!("{detail}: less than the quota's remaining room"),
                )
            } else {
                check("cache", Verdict::Ok, detail)
            }
        }
    }
}

/// Below this much free space the cache's disk counts as full (not ready): a miss could not
/// be stored, so not served either.
const FULL_BELOW: u64 = 16 << 20;

/// Why the cache's disk is full, if it is.
pub(crate) fn disk_full(ctx: &Ctx) -> Option<String> {
    let free = free_space(ctx.store.root()).ok()?;
    (free < FULL_BELOW).then(|| {
        format!(
            "the cache's disk is full ({} MiB free under {}): free space or lower --cache-size",
            free >> 20,
            ctx.store.root().display()
        )
    })
}

fn free_space(path: &std::path::Path) -> Result<u64, String> {
    let st = rustix::fs::statvfs(path).map_err(|e| e.to_string())?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Peers connected over libp2p and trackers found.
async fn swarm(ctx: &Ctx) -> Vec<Check> {
    let Some(p2p) = &ctx.p2p else {
        return vec![check(
            "peers",
            Verdict::Ok,
            "peer-to-peer is off (--p2p false): a single-node mirror",
        )];
    };
    let peers = p2p
        .node
        .connected_peers()
        .await
        .map(|p| p.len())
        .unwrap_or(0);
    let peers = if peers == 0 {
        check(
            "peers",
            Verdict::Warn,
            "no peer connected: check --bootstrap (or --mdns) and that the p2p port is open between nodes",
        )
    } else {
        check("peers", Verdict::Ok, format!("{peers} connected"))
    };
    let trackers = p2p.directory.trackers(p2p).await.len();
    let trackers = if trackers == 0 {
        check(
            "trackers",
            Verdict::Warn,
            "none found: concurrent pulls are not coordinated (run some agents with --tracker true)",
        )
    } else {
        check("trackers", Verdict::Ok, format!("{trackers} found"))
    };
    vec![peers, trackers]
}
