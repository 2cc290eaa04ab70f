//! `pollen demo`: a cluster in one process, for anyone without a registry or root at hand. A
//! registry serving a generated image through a limited uplink, N agents on loopback, the image
//! pulled on all of them at once (a progress bar per node), then the same pull straight from
//! the registry, and the table the cluster benchmark prints.

mod cluster;
mod pull;

use crate::status::human;
use bytesize::ByteSize;
use clap::Args;
use pull::{PullResult, Target};
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the progress view is redrawn on a terminal.
const DRAW_EVERY: Duration = Duration::from_millis(250);
/// How often progress is printed when stderr is not a terminal (a log).
const LOG_EVERY: Duration = Duration::from_secs(5);
/// Pulls get this long beyond the time the registry's uplink alone needs for every copy.
const PULL_SLACK: Duration = Duration::from_secs(120);

/// `pollen demo` flags.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Agents to start, each with its own cache and libp2p node on loopback
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub nodes: u16,
    /// Size of the generated image, all layers together
    #[arg(long, default_value = "128MiB")]
    pub size: ByteSize,
    /// Layers in the generated image
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub layers: u16,
    /// The registry's uplink, shared by every pull (e.g. 200Mbit/s, 25MB/s)
    #[arg(long, default_value = "200Mbit/s", value_parser = parse_rate)]
    pub rate: u64,
    /// Skip the comparison pull straight from the registry
    #[arg(long)]
    pub no_direct: bool,
}

/// A rate in bits (`200Mbit/s`, `1Gbit`) or bytes (`25MB/s`, `10MiB`) per second, as bytes
/// per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t.strip_suffix("/s").unwrap_or(t);
    let bad = || format!("{s:?}: expected a rate like 200Mbit/s or 25MB/s");
    let bytes = if let Some(n) = t.strip_suffix("bit") {
        let (num, scale) = match n.chars().last() {
            Some('k' | 'K') => (&n[..n.len() - 1], 1e3),
            Some('M') => (&n[..n.len() - 1], 1e6),
            Some('G') => (&n[..n.len() - 1], 1e9),
            _ => (n, 1.0),
        };
        let v: f64 = num.trim().parse().map_err(|_| bad())?;
        v * scale / 8.0
    } else {
        t.parse::<ByteSize>().map_err(|_| bad())?.as_u64() as f64
    };
    if !(bytes.is_finite() && bytes >= 1.0) {
        return Err(format!(
            "{s:?}: the rate must be at least 1 byte per second"
        ));
    }
    Ok(bytes as u64)
}

pub fn run(args: DemoArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pollen: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = demo(&args) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted; cleaning up".to_string()),
        }
    });
    // Agents, registry and temporary directories go with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(5));
    match outcome {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(msg) => {
            eprintln!("pollen demo: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// One contender's run.
struct Round {
    name: &'static str,
    results: Vec<PullResult>,
    from_upstream: u64,
    from_peers: Option<u64>,
}

async fn demo(args: &DemoArgs) -> Result<bool, String> {
    let n = usize::from(args.nodes);
    let size = args.size.as_u64();
    eprintln!(
        "pollen demo: {n} agents on loopback; a registry serving a {} image ({} layers) through a {} uplink",
        human(size),
        args.layers,
        rate_text(args.rate)
    );
    let up = cluster::upstream(size, usize::from(args.layers), args.rate).await?;
    let members = cluster::agents(&up.reg, n).await?;
    let ns = up.reg.host().replace(':', "%3A");
    let targets: Vec<(String, Target)> = members
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let roles = if m.roles.is_empty() {
                String::new()
            } else {
                format!(" ({})", m.roles)
            };
            let target = Target {
                base: format!("http://{}", m.addr),
                ns: Some(ns.clone()),
            };
            (format!("node {}{roles}", i + 1), target)
        })
        .collect();
    let f = up.blob_bytes;
    let deadline = PULL_SLACK + Duration::from_secs_f64(n as f64 * f as f64 / args.rate as f64);

    eprintln!(
        "pulling {}:{} on every node at once, through its agent:",
        up.image.repo, up.image.tag
    );
    up.reg.reset_stats();
    let results = pull_all(&targets, &up, f, deadline).await;
    let mut from_peers = 0;
    for m in &members {
        from_peers += m.agent.status().await.bytes_from_peers;
    }
    let mut rounds = vec![Round {
        name: "pollen",
        results,
        from_upstream: up.reg.stats().blob_bytes_sent,
        from_peers: Some(from_peers),
    }];

    if !args.no_direct {
        eprintln!("the same pull straight from the registry on {n} clients at once (no Pollen):");
        up.reg.reset_stats();
        let direct: Vec<(String, Target)> = (1..=n)
            .map(|i| {
                let target = Target {
                    base: up.reg.url(),
                    ns: None,
                };
                (format!("client {i}"), target)
            })
            .collect();
        let results = pull_all(&direct, &up, f, deadline).await;
        rounds.push(Round {
            name: "direct",
            results,
            from_upstream: up.reg.stats().blob_bytes_sent,
            from_peers: None,
        });
    }
    print_table(&rounds, f, n, args.rate);
    let failures: Vec<&String> = rounds
        .iter()
        .flat_map(|r| r.results.iter().filter_map(|r| r.as_ref().err()))
        .collect();
    for why in &failures {
        eprintln!("FAILED: {why}");
    }
    if failures.is_empty() {
        println!(
            "Every pull verified: {} blobs on each of {} clients, checked against their digests.",
            up.image.layer_digests.len() + 1,
            rounds.len() * n
        );
    }
    Ok(failures.is_empty())
}

/// Pulls the image on every target at once, showing a bar per target.
async fn pull_all(
    targets: &[(String, Target)],
    up: &cluster::Upstream,
    total: u64,
    deadline: Duration,
) -> Vec<PullResult> {
    let counters: Vec<Arc<AtomicU64>> = targets.iter().map(|_| Arc::default()).collect();
    let started = Instant::now();
    let pulls = targets
        .iter()
        .zip(&counters)
        .map(|((_, target), progress)| {
            let (repo, tag) = (&up.image.repo, &up.image.tag);
            async move {
                match tokio::time::timeout(
                    deadline,
                    pull::pull(target, repo, tag, progress, started),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => Err(format!("{}: not done within {deadline:?}", target.base)),
                }
            }
        });
    let all = futures_util::future::join_all(pulls);
    tokio::pin!(all);
    let mut view = View::new(
        targets.iter().map(|(name, _)| name.clone()).collect(),
        total,
    );
    let mut tick = tokio::time::interval(DRAW_EVERY);
    let results = loop {
        tokio::select! {
            results = &mut all => break results,
            _ = tick.tick() => view.draw(&counters, started.elapsed(), false),
        }
    };
    view.draw(&counters, started.elapsed(), true);
    results
}

/// The progress bars: redrawn in place on a terminal, a summary line now and then in a log.
struct View {
    names: Vec<String>,
    total: u64,
    terminal: bool,
    drawn: bool,
    last_log: Option<Instant>,
}

impl View {
    fn new(names: Vec<String>, total: u64) -> View {
        View {
            names,
            total,
            terminal: std::io::stderr().is_terminal(),
            drawn: false,
            last_log: None,
        }
    }

    fn draw(&mut self, counters: &[Arc<AtomicU64>], elapsed: Duration, last: bool) {
        let mut err = std::io::stderr().lock();
        let values: Vec<u64> = counters.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        if self.terminal {
            if self.drawn {
                let _ = write!(err, "\x1b[{}A", self.names.len());
            }
            for (name, have) in self.names.iter().zip(&values) {
                let _ = writeln!(err, "\r\x1b[K  {}", bar_line(name, *have, self.total));
            }
            self.drawn = true;
        } else if last || self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
            self.last_log = Some(Instant::now());
            let done = values.iter().filter(|v| **v >= self.total).count();
            let sum: u64 = values.iter().sum();
            let _ = writeln!(
                err,
                "  {:.1} s: {done}/{} done, {} of {} received",
                elapsed.as_secs_f64(),
                self.names.len(),
                human(sum),
                human(self.total * self.names.len() as u64)
            );
        }
    }
}

/// `node 2 (tracker) [#########-----------]  45%  57.6 MiB`
fn bar_line(name: &str, have: u64, total: u64) -> String {
    const WIDTH: u64 = 30;
    let shown = have.min(total);
    let filled = (shown * WIDTH).checked_div(total).unwrap_or(WIDTH) as usize;
    let pct = (shown * 100).checked_div(total).unwrap_or(100);
    format!(
        "{name:<22} [{}{}] {pct:>3}%  {}",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled),
        human(have)
    )
}

fn rate_text(bytes_per_sec: u64) -> String {
    format!("{:.0} Mbit/s", bytes_per_sec as f64 * 8.0 / 1e6)
}

/// The benchmark's table: finish times, registry egress against the image, and the bound.
fn print_table(rounds: &[Round], f: u64, n: usize, rate: u64) {
    // Downloads and agents' uploads are not limited here: the registry's uplink is the bound.
    let t_min = f as f64 / rate as f64;
    println!();
    println!(
        "{:<8} {:>16} {:>8} {:>22} {:>12} {:>10}",
        "", "every node done", "median", "from the registry", "from peers", "/ T_min"
    );
    let mut maxes = Vec::new();
    for r in rounds {
        let mut times: Vec<f64> = r
            .results
            .iter()
            .filter_map(|t| t.as_ref().ok())
            .map(Duration::as_secs_f64)
            .collect();
        times.sort_by(f64::total_cmp);
        let (max, median) = match (times.last(), times.get(times.len() / 2)) {
            (Some(max), Some(median)) if times.len() == n => (*max, *median),
            _ => {
                println!("{:<8} {:>16}", r.name, "did not finish");
                continue;
            }
        };
        maxes.push(max);
        println!(
            "{:<8} {:>14.1} s {:>6.1} s {:>12} ({:>4.2} x) {:>12} {:>8.2} x",
            r.name,
            max,
            median,
            human(r.from_upstream),
            r.from_upstream as f64 / f as f64,
            r.from_peers.map_or("-".into(), human),
            max / t_min
        );
    }
    println!(
        "T_min = F / u_s = {} / {} = {t_min:.1} s (the registry's uplink; agents' links are loopback)",
        human(f),
        rate_text(rate)
    );
    if let [pollen, direct] = maxes[..] {
        println!(
            "pollen finished {:.1} x sooner than the direct pull",
            direct / pollen
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_read_in_bits_or_bytes() {
        assert_eq!(parse_rate("200Mbit/s"), Ok(25_000_000));
        assert_eq!(parse_rate("1Gbit"), Ok(125_000_000));
        assert_eq!(parse_rate("800kbit/s"), Ok(100_000));
        assert_eq!(parse_rate("25MB/s"), Ok(25_000_000));
        assert_eq!(parse_rate("10MiB"), Ok(10 << 20));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("0Mbit/s").is_err());
        assert!(parse_rate("-5MB/s").is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_small_demo_pulls_verified_bytes_on_every_node() {
        let args = DemoArgs {
            nodes: 3,
            size: ByteSize::mib(3),
            layers: 2,
            rate: 50_000_000,
            no_direct: false,
        };
        assert_eq!(demo(&args).await, Ok(true));
    }

    #[test]
    fn bars_fill_with_progress() {
        assert!(bar_line("node 1", 0, 100).contains("[------------------------------]   0%"));
        assert!(bar_line("node 1", 50, 100).contains("[###############---------------]  50%"));
        assert!(bar_line("node 1", 200, 100).contains("100%"));
        assert!(bar_line("node 1", 0, 0).contains("100%"));
    }
}
