//! `pollen preheat`: asks the local agent (over its control socket) to have the seeds, or every
//! agent, fetch an image's blobs before a rollout, and shows the progress as it comes.

use crate::status::{client_setup, human, Endpoint};
use clap::Args;
use pollen_agent::PreheatEvent;
use std::collections::BTreeMap;
use std::io::{IsTerminal, Write as _};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

/// The longest the agent may go without a word (it reports every blob twice a second).
const SILENCE: Duration = Duration::from_secs(180);
/// Longest line read from the agent.
const MAX_LINE: usize = 1 << 20;
/// How often progress is printed when stderr is not a terminal (a log).
const LOG_EVERY: Duration = Duration::from_secs(5);

/// `pollen preheat` flags.
#[derive(Args, Debug)]
pub struct PreheatArgs {
    /// The image: [HOST/]NAME[:TAG|@DIGEST], as for `docker pull` (Docker Hub when no host)
    pub image: String,
    /// Platform to preheat, os/arch[/variant] (repeatable) [default: this machine's, e.g. linux/amd64]
    #[arg(long = "platform", value_name = "OS/ARCH")]
    pub platforms: Vec<String>,
    /// Have every agent fetch the blobs, not only the seeds
    #[arg(long)]
    pub all_nodes: bool,
    /// The local agent's control socket [default: /run/pollen/control.sock as root, else $XDG_RUNTIME_DIR/pollen/control.sock]
    #[arg(long, env = "POLLEN_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<std::path::PathBuf>,
}

pub fn run(args: PreheatArgs) -> ExitCode {
    let (endpoint, runtime) = match client_setup(None, args.control_socket.as_deref()) {
        Ok(setup) => setup,
        Err(code) => return code,
    };
    match runtime.block_on(preheat(&endpoint, &args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(msg) => {
            eprintln!("pollen: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// The request line's query: every value percent-encoded.
pub fn query(args: &PreheatArgs) -> String {
    let enc = |s: &str| {
        percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
    };
    let mut q = format!("image={}", enc(&args.image));
    for p in &args.platforms {
        q.push_str(&format!("&platform={}", enc(p)));
    }
    if args.all_nodes {
        q.push_str("&all_nodes=true");
    }
    q
}

async fn preheat(endpoint: &Endpoint, args: &PreheatArgs) -> Result<bool, String> {
    let unreachable = |e: String| {
        format!("cannot reach the agent at {endpoint} ({e}); is `pollen agent` running, and are you its user? pass --control-socket PATH")
    };
    let mut stream = endpoint.connect().await?;
    let request = format!(
        "POST /preheat?{} HTTP/1.0\r\nHost: {}\r\nContent-Length: 0\r\n\r\n",
        query(args),
        endpoint.host()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| unreachable(e.to_string()))?;
    let mut lines = BufReader::new(stream);
    let mut status = String::new();
    read_line(&mut lines, &mut status).await?;
    let ok_status = status.split_whitespace().nth(1) == Some("200");
    // Headers, up to the blank line.
    loop {
        let mut h = String::new();
        read_line(&mut lines, &mut h).await?;
        if h.trim().is_empty() {
            break;
        }
    }
    if !ok_status {
        let mut body = String::new();
        let _ = read_line(&mut lines, &mut body).await;
        return Err(format!(
            "the agent refused the preheat: {} {}",
            status.trim(),
            body.trim()
        ));
    }
    let mut view = View::new(std::io::stderr().is_terminal());
    loop {
        let mut line = String::new();
        if read_line(&mut lines, &mut line).await? == 0 {
            return Err("the agent ended the preheat without a summary (see its log)".into());
        }
        let event: PreheatEvent = serde_json::from_str(line.trim())
            .map_err(|e| format!("unexpected answer from the agent: {e}"))?;
        if let Some(done) = view.on(event) {
            return Ok(done);
        }
    }
}

async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    out: &mut String,
) -> Result<usize, String> {
    let n = tokio::time::timeout(SILENCE, r.read_line(out))
        .await
        .map_err(|_| format!("the agent said nothing for {SILENCE:?}"))?
        .map_err(|e| format!("reading from the agent: {e}"))?;
    if out.len() > MAX_LINE {
        return Err("the agent sent an overlong line".into());
    }
    Ok(n)
}

/// What the user sees: the plan, a progress line (redrawn on a terminal, every few seconds in a
/// log), one line per blob finished on a target, and the summary.
pub struct View {
    terminal: bool,
    blobs: BTreeMap<(String, String), (u64, u64)>,
    last_log: Option<Instant>,
}

impl View {
    pub fn new(terminal: bool) -> View {
        View {
            terminal,
            blobs: BTreeMap::new(),
            last_log: None,
        }
    }

    /// Shows one event; `Some(success)` once the preheat has ended.
    pub fn on(&mut self, event: PreheatEvent) -> Option<bool> {
        let mut err = std::io::stderr().lock();
        match event {
            PreheatEvent::Plan { blobs, targets } => {
                let _ = writeln!(
                    err,
                    "preheating {} blob(s) on {} target(s): {}",
                    blobs.len(),
                    targets.len(),
                    targets.join(", ")
                );
            }
            PreheatEvent::Progress {
                target,
                digest,
                have,
                size,
            } => {
                self.blobs.insert((target, digest), (have, size));
                let line = self.progress_line();
                if self.terminal {
                    let _ = write!(err, "\r\x1b[K{line}");
                } else if self.last_log.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                    self.last_log = Some(Instant::now());
                    let _ = writeln!(err, "{line}");
                }
            }
            PreheatEvent::Done {
                target,
                digest,
                ok,
                message,
            } => {
                let size = self
                    .blobs
                    .get(&(target.clone(), digest.clone()))
                    .map_or(0, |b| b.1);
                self.blobs
                    .insert((target.clone(), digest.clone()), (size, size));
                let clear = if self.terminal { "\r\x1b[K" } else { "" };
                let short = digest.get(..19).unwrap_or(&digest);
                let _ = match ok {
                    true => writeln!(err, "{clear}ok      {short}… {} on {target}", human(size)),
                    false => writeln!(err, "{clear}FAILED  {short}… on {target}: {message}"),
                };
            }
            PreheatEvent::Finished { ok, failed } => {
                let clear = if self.terminal { "\r\x1b[K" } else { "" };
                let _ = writeln!(err, "{clear}preheat done: {ok} ok, {failed} failed");
                return Some(failed == 0);
            }
            PreheatEvent::Failed { message } => {
                let _ = writeln!(err, "preheat failed: {message}");
                return Some(false);
            }
        }
        None
    }

    /// `[2/6 blobs] 45% of 120.0 MiB` over every target and blob seen so far.
    pub fn progress_line(&self) -> String {
        let (have, size) = self
            .blobs
            .values()
            .fold((0u64, 0u64), |(h, s), (bh, bs)| (h + bh, s + bs));
        let done = self
            .blobs
            .values()
            .filter(|(h, s)| *s > 0 && h >= s)
            .count();
        let pct = (have * 100).checked_div(size).unwrap_or(0);
        format!(
            "[{done}/{} blobs] {pct}% of {}",
            self.blobs.len(),
            human(size)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_encodes_every_value() {
        let args = PreheatArgs {
            image: "ghcr.io/org/app:v1".into(),
            platforms: vec!["linux/arm64/v8".into()],
            all_nodes: true,
            control_socket: None,
        };
        assert_eq!(
            query(&args),
            "image=ghcr%2Eio%2Forg%2Fapp%3Av1&platform=linux%2Farm64%2Fv8&all_nodes=true"
        );
    }

    #[test]
    fn view_tracks_progress_and_the_verdict() {
        let mut v = View::new(false);
        let p = |have| PreheatEvent::Progress {
            target: "t".into(),
            digest: "sha256:aa".into(),
            have,
            size: 100,
        };
        assert_eq!(v.on(p(50)), None);
        assert_eq!(v.progress_line(), "[0/1 blobs] 50% of 100 B");
        v.on(PreheatEvent::Done {
            target: "t".into(),
            digest: "sha256:aa".into(),
            ok: true,
            message: String::new(),
        });
        assert_eq!(v.progress_line(), "[1/1 blobs] 100% of 100 B");
        assert_eq!(
            v.on(PreheatEvent::Finished { ok: 1, failed: 0 }),
            Some(true)
        );
        assert_eq!(
            v.on(PreheatEvent::Finished { ok: 0, failed: 1 }),
            Some(false)
        );
        assert_eq!(
            v.on(PreheatEvent::Failed {
                message: "x".into()
            }),
            Some(false)
        );
    }
}
