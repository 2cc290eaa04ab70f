//! The agent's own health checks, for `pollen doctor` (`GET /doctor` on the admin port): what
//! it can see from inside — each upstream mirror answering, the cache's disk and quota, peers
//! and trackers. The command adds what only the host can see (the runtimes' configuration).

use crate::{p2p, Ctx};
use pollen_proto::{TrackerReply, TrackerRequest};
use pollen_upstream::{CredentialCheck, Upstream};
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
/// Trackers asked for their clock, at most.
const MAX_CLOCKS: usize = 8;
/// A mirror slower than this to answer `/v2/` is a warning.
const SLOW_MIRROR: Duration = Duration::from_secs(1);

fn check(name: impl Into<String>, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        verdict,
        detail: detail.into(),
    }
}

/// How long a doctor's answer is reused: `/doctor` asks every upstream mirror (and reads from
/// each) and every tracker, so a caller looping on it must not turn into that many requests.
pub const CACHE_TTL: Duration = Duration::from_secs(10);

/// The last answer and when it was made; the lock is held through a run, so concurrent
/// callers wait for one run instead of starting their own.
/// A reload (new upstreams) makes the last answer stale at once.
#[derive(Default)]
pub(crate) struct Cache {
    last: tokio::sync::Mutex<Option<(tokio::time::Instant, u64, Vec<Check>)>>,
    generation: std::sync::atomic::AtomicU64,
}

impl Cache {
    pub async fn get(&self, ctx: &Ctx) -> Vec<Check> {
        let mut last = self.last.lock().await;
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        if let Some((at, g, checks)) = last.as_ref() {
            if at.elapsed() < CACHE_TTL && *g == generation {
                return checks.clone();
            }
        }
        let checks = run(ctx).await;
        *last = Some((tokio::time::Instant::now(), generation, checks.clone()));
        checks
    }

    /// Forgets the last answer (the configuration changed).
    pub fn invalidate(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub(crate) async fn run(ctx: &Ctx) -> Vec<Check> {
    let mut out = vec![if ctx.ready.load(std::sync::atomic::Ordering::Relaxed) {
        check("agent", Verdict::Ok, "serving")
    } else {
        check("agent", Verdict::Fail, "not ready yet")
    }];
    let mut clocks = Vec::new();
    out.extend(mirrors(ctx, &mut clocks).await);
    out.push(disk(ctx));
    out.extend(swarm(ctx, &mut clocks).await);
    out.push(clock_line(&clocks));
    out
}

/// Every configured mirror, as `(registry, mirrors in configured order)`.
fn configured_mirrors(cfg: &pollen_upstream::UpstreamConfig) -> Vec<(String, Vec<String>)> {
    let mut all = vec![(
        "default (Docker Hub names)".to_string(),
        cfg.default_mirrors.clone(),
    )];
    let mut registries: Vec<_> = cfg.registries.iter().collect();
    registries.sort();
    all.extend(registries.into_iter().map(|(h, m)| (h.clone(), m.clone())));
    all
}

/// Every configured mirror, asked for `/v2/` at once (and its credentials checked), then
/// each registry's mirrors read for a moment, one mirror at a time so they do not share the
/// link; and the clock offsets the answers showed.
async fn mirrors(ctx: &Ctx, clocks: &mut Vec<(String, i64)>) -> Vec<Check> {
    let upstream = ctx.origin.current();
    let registries = configured_mirrors(upstream.config());
    let all: Vec<(&str, &str)> = registries
        .iter()
        .flat_map(|(r, ms)| ms.iter().map(move |m| (r.as_str(), m.as_str())))
        .collect();
    let probes =
        futures_util::future::join_all(all.iter().map(|(_, mirror)| upstream.probe(mirror))).await;
    let mut out = Vec::new();
    for ((registry, mirror), probe) in all.into_iter().zip(probes) {
        if let Some(ms) = probe.clock_offset_ms {
            clocks.push((mirror.to_string(), ms));
        }
        out.push(answer_line(registry, mirror, &probe));
        if let Some(line) = credentials_line(mirror, &probe.credentials) {
            out.push(line);
        }
    }
    for (registry, mirrors) in &registries {
        out.push(throughput_line(&upstream, registry, mirrors, &ctx.private).await);
    }
    out
}

fn answer_line(registry: &str, mirror: &str, probe: &pollen_upstream::Probe) -> Check {
    let ms = probe.latency.as_millis();
    let (verdict, detail) = match &probe.answer {
        Err(e) if e.contains("UnknownIssuer") => (
            Verdict::Fail,
            format!("{mirror}: {e}: its certificate is signed by a CA the agent does not trust; add that CA with --ca-file"),
        ),
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
            (verdict, format!("{mirror}: {how} in {ms} ms"))
        }
        Ok((status, _)) => (
            Verdict::Fail,
            format!(
                "{mirror}: HTTP {status} to /v2/ in {ms} ms: not a registry API, or refusing us"
            ),
        ),
    };
    check(format!("upstream {registry}"), verdict, detail)
}

fn credentials_line(mirror: &str, creds: &CredentialCheck) -> Option<Check> {
    let (verdict, detail) = match creds {
        CredentialCheck::NotConfigured => return None,
        CredentialCheck::Accepted => (Verdict::Ok, format!("{mirror}: accepted")),
        CredentialCheck::NotAsked => (
            Verdict::Ok,
            format!("{mirror}: configured, but the registry asks for none"),
        ),
        CredentialCheck::Rejected(why) => (
            Verdict::Fail,
            format!("{mirror}: rejected ({why}): fix the username or password in the [credentials] of the config file, then reload (SIGHUP)"),
        ),
        CredentialCheck::Unknown(why) => {
            (Verdict::Warn, format!("{mirror}: could not be checked: {why}"))
        }
    };
    Some(check("credentials", verdict, detail))
}

/// A later mirror this many times faster than the first one tried is worth putting first.
const FASTER_BY: f64 = 2.0;

/// Reads the last blob pulled from `registry` from each of its mirrors, in the order a pull
/// tries them now, and says whether that order is the fast one.
async fn throughput_line(
    upstream: &Upstream,
    registry: &str,
    mirrors: &[String],
    private: &crate::private::Private,
) -> Check {
    let name = format!("throughput {registry}");
    let mut rates = Vec::new();
    let mut parts = Vec::new();
    for mirror in upstream.current_order(mirrors) {
        match upstream.throughput(&mirror).await {
            None => {
                return check(
                    name,
                    Verdict::Ok,
                    "not measured: nothing pulled from this registry since the agent started",
                )
            }
            Some(Err(e)) => parts.push(format!("{mirror}: failed ({})", hide_names(&e, private))),
            Some(Ok(t)) => {
                let rate = t.bytes_per_sec();
                parts.push(format!(
                    "{mirror}: {:.1} MB/s ({} KiB of {}, first byte in {} ms)",
                    rate / 1e6,
                    t.bytes >> 10,
                    hide_names(&t.blob, private),
                    t.first_byte.as_millis()
                ));
                rates.push((mirror, rate));
            }
        }
    }
    let detail = format!("in the order pulls try them: {}", parts.join("; "));
    let Some((first, first_rate)) = rates.first() else {
        return check(name, Verdict::Fail, detail);
    };
    match rates.iter().skip(1).find(|(_, r)| *r > FASTER_BY * first_rate) {
        Some((fast, _)) => check(
            name,
            Verdict::Warn,
            format!("{detail}: {fast} is more than {FASTER_BY}x faster than {first} ahead of it; consider listing it first"),
        ),
        None => check(name, Verdict::Ok, detail),
    }
}

/// `text` with every `name@digest` shown as its digest alone, or as "a private blob" when
/// the content is private: the doctor does not name repositories (a private one's name is
/// itself a secret of whoever pulled it).
fn hide_names(text: &str, private: &crate::private::Private) -> String {
    text.split(' ')
        .map(|word| match word.split_once('@') {
            None => word.to_string(),
            Some((_, rest)) => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == ':'))
                    .unwrap_or(rest.len());
                let (digest, tail) = rest.split_at(end);
                match digest.parse::<pollen_oci::Digest>() {
                    Ok(d) if private.contains(&d) => format!("a private blob{tail}"),
                    Ok(_) => format!("{digest}{tail}"),
                    Err(_) => format!("a blob{tail}"),
                }
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Clock offsets from this many ms on are worth a warning (logs stop lining up; the
/// comparison has a resolution of a second against `Date` headers).
const CLOCK_WARN_MS: i64 = 5_000;
/// From this offset on, time-limited things break: certificates "not yet valid" or
/// "expired", registry tokens and signed storage URLs refused.
const CLOCK_FAIL_MS: i64 = 300_000;

/// This node's clock against the others it heard from (mirrors' `Date`, trackers' `Time`).
fn clock_line(clocks: &[(String, i64)]) -> Check {
    let Some((who, worst)) = clocks.iter().max_by_key(|(_, ms)| ms.unsigned_abs()) else {
        return check("clock", Verdict::Ok, "no clock to compare with");
    };
    let detail = format!(
        "largest offset {:+.1} s against {who} ({} compared)",
        *worst as f64 / 1000.0,
        clocks.len()
    );
    match worst.unsigned_abs() {
        d if d >= CLOCK_FAIL_MS.unsigned_abs() => check(
            "clock",
            Verdict::Fail,
            format!("{detail}: TLS certificates and registry tokens fail at this skew; run NTP (chrony, systemd-timesyncd)"),
        ),
        d if d >= CLOCK_WARN_MS.unsigned_abs() => check(
            "clock",
            Verdict::Warn,
            format!("{detail}: check NTP on this node and the other"),
        ),
        _ => check("clock", Verdict::Ok, detail),
    }
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
    match crate::disk::free_space(ctx.store.root()) {
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

/// A tracker's clock against ours (taken halfway through the exchange), or `None` when it
/// did not answer.
async fn tracker_clock(p2p: &p2p::P2p, tracker: pollen_swarm::PeerId) -> Option<(String, i64)> {
    let sent = std::time::SystemTime::now();
    let started = tokio::time::Instant::now();
    let Some(TrackerReply::Time { unix_ms }) =
        p2p::tracker::ask(p2p, tracker, &TrackerRequest::Time).await
    else {
        return None;
    };
    let theirs = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    let ours = sent + started.elapsed() / 2;
    Some((
        format!("tracker {tracker}"),
        pollen_upstream::offset_ms(theirs, ours),
    ))
}

/// Peers connected over libp2p and trackers found (each asked for its clock).
async fn swarm(ctx: &Ctx, clocks: &mut Vec<(String, i64)>) -> Vec<Check> {
    let Some(p2p) = &ctx.peers().swarm() else {
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
    let found = p2p.directory.trackers(p2p).await;
    let me = p2p.node.peer_id();
    let asked = found
        .iter()
        .filter(|t| **t != me)
        .take(MAX_CLOCKS)
        .map(|t| tracker_clock(p2p, *t));
    clocks.extend(
        futures_util::future::join_all(asked)
            .await
            .into_iter()
            .flatten(),
    );
    let trackers = found.len();
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
