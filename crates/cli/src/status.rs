//! `pollen status`: a running agent's view of itself, read from its admin endpoint's `/status`
//! twice, one second apart, so that the report can show rates as well as totals.

use clap::Args;
use pollen_agent::{BlobStatus, Status, TrackedBlob};
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Where `--admin` points when given without a port: the agent's default `--metrics-listen`.
pub const DEFAULT_ADMIN: &str = crate::config::DEFAULT_METRICS_LISTEN;
/// Connecting to the admin endpoint; it is local or on the cluster network, so this is long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// One whole request. The agent asks its swarm for the listen addresses and the connected
/// peers before it answers, each question bounded at 5 s inside the swarm.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Between the two samples the rates are computed from.
const SAMPLE_INTERVAL: Duration = Duration::from_secs(1);
/// Largest `/status` answer read (a few hundred bytes per blob in flight and per peer).
const MAX_RESPONSE: usize = 16 << 20;
/// Peers listed by name in the report; `--json` lists them all.
const MAX_LISTED_PEERS: usize = 20;
/// Blobs a tracker coordinates listed in the report, most members first; `--json` lists all.
const MAX_LISTED_TRACKED: usize = 20;

/// `pollen status` flags.
#[derive(Args, Debug, Default)]
pub struct StatusArgs {
    /// The agent's control socket (the full status) [default: /run/pollen/control.sock as root, else $XDG_RUNTIME_DIR/pollen/control.sock]
    #[arg(long, env = "POLLEN_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Read an agent's admin port instead (its --metrics-listen, HOST:PORT, e.g. another node's): the read-only status, without private content [default: the control socket]
    #[arg(long, env = "POLLEN_ADMIN", value_name = "ADDR")]
    pub admin: Option<String>,
    /// Print the agent's /status JSON (the second sample) as it answered, instead of the report
    #[arg(long)]
    pub json: bool,
}

/// Where a command reaches the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// The control socket: every endpoint.
    Socket(PathBuf),
    /// An admin port (`--metrics-listen`): the read-only ones.
    Tcp(String),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Socket(p) => write!(f, "{}", p.display()),
            Endpoint::Tcp(a) => f.write_str(a),
        }
    }
}

impl Endpoint {
    /// `--admin ADDR` if given, else the control socket (`--control-socket`, or its default).
    pub fn choose(admin: Option<&str>, socket: Option<&Path>) -> Result<Endpoint, String> {
        if let Some(a) = admin {
            return admin_addr(a)
                .map(Endpoint::Tcp)
                .map_err(|m| format!("invalid --admin: {m}"));
        }
        socket
            .map(Path::to_path_buf)
            .or_else(crate::config::default_control_socket)
            .map(Endpoint::Socket)
            .ok_or_else(|| "no control socket: $XDG_RUNTIME_DIR is not set; pass --control-socket PATH (the agent's)".to_string())
    }

    /// What to add to an error so the user knows what to fix.
    fn hint(&self) -> &'static str {
        match self {
            Endpoint::Socket(_) => "is `pollen agent` running, and are you its user (root for the default socket)? pass --control-socket PATH with the agent's",
            Endpoint::Tcp(_) => "is `pollen agent` running? pass --admin ADDR with its --metrics-listen address",
        }
    }

    /// A connection to the agent, within [`CONNECT_TIMEOUT`].
    pub async fn connect(&self) -> Result<Box<dyn Io>, String> {
        let unreachable =
            |why: String| format!("cannot reach the agent at {self}: {why} ({})", self.hint());
        let connected: std::io::Result<Box<dyn Io>> =
            match tokio::time::timeout(CONNECT_TIMEOUT, async {
                match self {
                    Endpoint::Socket(p) => tokio::net::UnixStream::connect(p)
                        .await
                        .map(|s| Box::new(s) as Box<dyn Io>),
                    Endpoint::Tcp(a) => tokio::net::TcpStream::connect(a)
                        .await
                        .map(|s| Box::new(s) as Box<dyn Io>),
                }
            })
            .await
            {
                Ok(r) => r,
                Err(_) => return Err(unreachable(format!("no answer within {CONNECT_TIMEOUT:?}"))),
            };
        connected.map_err(|e| unreachable(e.to_string()))
    }

    /// The `Host` header's value.
    pub fn host(&self) -> &str {
        match self {
            Endpoint::Socket(_) => "localhost",
            Endpoint::Tcp(a) => a,
        }
    }
}

/// A connection to the agent, over TCP or the control socket.
pub trait Io: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Io for T {}

/// What a command that talks to the agent starts with: where (checked) and a
/// single-threaded runtime; or the exit code, the reason printed.
pub fn client_setup(
    admin: Option<&str>,
    socket: Option<&Path>,
) -> Result<(Endpoint, tokio::runtime::Runtime), ExitCode> {
    let endpoint = Endpoint::choose(admin, socket).map_err(|msg| {
        eprintln!("pollen: {msg}");
        ExitCode::from(2)
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("pollen: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })?;
    Ok((endpoint, runtime))
}

pub fn run(args: StatusArgs) -> ExitCode {
    let (endpoint, runtime) =
        match client_setup(args.admin.as_deref(), args.control_socket.as_deref()) {
            Ok(setup) => setup,
            Err(code) => return code,
        };
    let addr = endpoint.to_string();
    let samples = match runtime.block_on(sample_twice(&endpoint)) {
        Ok(s) => s,
        Err(msg) => {
            eprintln!("pollen: {msg}");
            return ExitCode::FAILURE;
        }
    };
    let mut text = if args.json {
        samples.raw
    } else {
        report(&addr, &samples.first, &samples.second, samples.elapsed)
    };
    if !text.ends_with('\n') {
        text.push('\n');
    }
    // A closed pipe (`pollen status | head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::SUCCESS
}

/// `HOST:PORT`, also accepted with `http://` in front or a path behind (a pasted URL).
pub fn admin_addr(s: &str) -> Result<String, String> {
    let t = s.trim();
    let t = t.strip_prefix("http://").unwrap_or(t);
    let t = t.split('/').next().unwrap_or_default();
    let port_ok = t
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if port_ok {
        Ok(t.to_string())
    } else {
        Err(format!(
            "{s:?} is not HOST:PORT; give the agent's --metrics-listen address, e.g. {DEFAULT_ADMIN}"
        ))
    }
}

struct Samples {
    first: Status,
    second: Status,
    /// The second answer as it came, for `--json`.
    raw: String,
    elapsed: Duration,
}

async fn sample_twice(endpoint: &Endpoint) -> Result<Samples, String> {
    let addr = &endpoint.to_string();
    let first = parse_status(addr, &get_status(endpoint).await?)?;
    let t0 = Instant::now();
    tokio::time::sleep(SAMPLE_INTERVAL).await;
    let raw = get_status(endpoint).await?;
    let elapsed = t0.elapsed();
    let second = parse_status(addr, &raw)?;
    Ok(Samples {
        first,
        second,
        raw,
        elapsed,
    })
}

fn parse_status(addr: &str, body: &str) -> Result<Status, String> {
    serde_json::from_str(body).map_err(|e| {
        format!("the admin endpoint at {addr} answered /status with something that is not a Pollen agent's status ({e}); pass --admin with the agent's --metrics-listen address")
    })
}

/// `GET /status` over HTTP/1.0 (the server closes the connection after the answer, so the
/// body is everything until EOF); every wait bounded.
async fn get_status(endpoint: &Endpoint) -> Result<String, String> {
    admin_get(endpoint, "/status").await
}

/// `GET path` from the agent; the body of a `200`.
pub async fn admin_get(endpoint: &Endpoint, path: &str) -> Result<String, String> {
    let addr = endpoint.to_string();
    let unreachable = |why: String| {
        format!(
            "cannot reach the agent at {addr}: {why} ({})",
            endpoint.hint()
        )
    };
    let mut stream = endpoint.connect().await?;
    let request = format!(
        "GET {path} HTTP/1.0\r\nHost: {}\r\nAccept: application/json\r\nUser-Agent: pollen/{}\r\n\r\n",
        endpoint.host(),
        env!("CARGO_PKG_VERSION")
    );
    let exchange = async {
        stream.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        (&mut stream)
            .take(MAX_RESPONSE as u64 + 1)
            .read_to_end(&mut raw)
            .await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
        Ok(Ok(raw)) => raw,
        Ok(Err(e)) => return Err(unreachable(format!("reading the answer: {e}"))),
        Err(_) => {
            return Err(format!(
                "the agent's admin endpoint at {addr} did not answer {path} within {REQUEST_TIMEOUT:?}; the agent may be overloaded, try again"
            ))
        }
    };
    if raw.len() > MAX_RESPONSE {
        return Err(format!(
            "the admin endpoint at {addr} answered {path} with more than {} MiB; is it a Pollen agent? pass --admin with the agent's --metrics-listen address",
            MAX_RESPONSE >> 20
        ));
    }
    parse_response(&addr, &raw)
}

/// The body of a complete `200` answer.
fn parse_response(addr: &str, raw: &[u8]) -> Result<String, String> {
    let not_status = |what: String| {
        format!("the admin endpoint at {addr} {what}; is it a Pollen agent of this version? pass --admin with the agent's --metrics-listen address")
    };
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| not_status("sent an incomplete HTTP answer".into()))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let body = &raw[split + 4..];
    let mut lines = head.lines();
    let status_line = lines.next().unwrap_or_default();
    if status_line.split_whitespace().nth(1) != Some("200") {
        return Err(not_status(format!(
            "answered {:?} to GET /status",
            status_line.trim()
        )));
    }
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            if value.parse::<usize>().ok() != Some(body.len()) {
                return Err(not_status(format!(
                    "sent {} body bytes where it announced {value}",
                    body.len()
                )));
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(not_status(format!(
                "answered with transfer-encoding {value:?}"
            )));
        }
    }
    String::from_utf8(body.to_vec()).map_err(|_| not_status("answered with non-UTF-8".into()))
}

/// The human-readable report: the second sample, with rates from the difference to the first.
pub fn report(addr: &str, first: &Status, now: &Status, elapsed: Duration) -> String {
    let mut out = String::new();
    let secs = elapsed.as_secs_f64().max(0.001);
    // A counter smaller than before means the agent restarted between the samples.
    let rate = |before: u64, after: u64| human_rate(after.saturating_sub(before) as f64 / secs);
    let _ = writeln!(out, "Agent         {addr} (pollen {})", now.version);
    match &now.peer_id {
        None => {
            let _ = writeln!(
                out,
                "Peer-to-peer  off (the agent runs with --p2p false: a single-node mirror)"
            );
        }
        Some(peer_id) => {
            let _ = writeln!(out, "PeerId        {peer_id}");
            let roles = if now.roles.is_empty() {
                "none".to_string()
            } else {
                now.roles.join(", ")
            };
            let _ = writeln!(out, "Roles         {roles}");
            let limit = |r: u64| match r {
                0 => "unlimited".to_string(),
                r => human_rate(r as f64),
            };
            let _ = writeln!(
                out,
                "Peer limits   upload {}, download {}",
                limit(now.upload_limit),
                limit(now.download_limit)
            );
            let trackers = match now.trackers.len() {
                0 => "none found (downloads are not coordinated)".to_string(),
                n => format!("{n} known"),
            };
            let _ = writeln!(out, "Trackers      {trackers}");
            if now.listen_addrs.is_empty() {
                let _ = writeln!(out, "Listening     (unknown)");
            }
            for (i, a) in now.listen_addrs.iter().enumerate() {
                let label = if i == 0 { "Listening" } else { "" };
                let _ = writeln!(out, "{label:<14}{a}");
            }
            let _ = writeln!(
                out,
                "Peers         {} connected, {} in the routing table",
                now.peers.len(),
                now.routing_table_peers
            );
            for p in now.peers.iter().take(MAX_LISTED_PEERS) {
                let _ = writeln!(out, "                {p}");
            }
            if now.peers.len() > MAX_LISTED_PEERS {
                let _ = writeln!(
                    out,
                    "                ... and {} more (--json lists them all)",
                    now.peers.len() - MAX_LISTED_PEERS
                );
            }
            let _ = writeln!(out, "Providing     {}", count(now.provided_blobs, "blob"));
            let _ = writeln!(
                out,
                "Bans          {} in force",
                count(now.banned_peers, "peer")
            );
        }
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "{:<16}{:>12}{:>14}", "Traffic", "total", "rate");
    for (label, before, after) in [
        ("from peers", first.bytes_from_peers, now.bytes_from_peers),
        (
            "from upstream",
            first.bytes_from_upstream,
            now.bytes_from_upstream,
        ),
        ("to peers", first.bytes_to_peers, now.bytes_to_peers),
    ] {
        let _ = writeln!(
            out,
            "  {label:<14}{:>12}{:>14}",
            human(after),
            rate(before, after)
        );
    }
    let used = if now.cache_quota > 0 {
        format!(
            " ({:.0}%)",
            now.cache_bytes as f64 * 100.0 / now.cache_quota as f64
        )
    } else {
        String::new()
    };
    let _ = writeln!(
        out,
        "Cache         {} of {}{used}, {}",
        human(now.cache_bytes),
        human(now.cache_quota),
        count(now.cache_entries as usize, "entry")
    );
    let _ = writeln!(out);
    blobs_in_flight(&mut out, &now.blobs_in_flight);
    if !now.tracked_blobs.is_empty() {
        let _ = writeln!(out);
        tracked_blobs(&mut out, &now.tracked_blobs);
    }
    out
}

fn blobs_in_flight(out: &mut String, blobs: &[BlobStatus]) {
    if blobs.is_empty() {
        let _ = writeln!(out, "Blobs in flight: none");
        return;
    }
    let _ = writeln!(out, "Blobs in flight: {}", blobs.len());
    let _ = writeln!(
        out,
        "  {:<20}{:>6}{:>12}{:>12}{:>15}",
        "DIGEST", "DONE", "SIZE", "FROM PEERS", "FROM UPSTREAM"
    );
    for b in blobs {
        let _ = writeln!(
            out,
            "  {:<20}{:>6}{:>12}{:>12}{:>15}",
            short_digest(&b.digest),
            done(b),
            b.size.map(human).unwrap_or_else(|| "?".into()),
            human(b.bytes_from_peers),
            human(b.bytes_from_upstream)
        );
    }
}

/// On a tracker: the blobs it coordinates, the busiest first.
fn tracked_blobs(out: &mut String, blobs: &[TrackedBlob]) {
    let mut sorted: Vec<&TrackedBlob> = blobs.iter().collect();
    sorted.sort_by(|a, b| b.members.cmp(&a.members).then(a.digest.cmp(&b.digest)));
    let _ = writeln!(out, "Blobs coordinated here: {}", blobs.len());
    let _ = writeln!(
        out,
        "  {:<20}{:>9}{:>9}  FETCHING",
        "DIGEST", "MEMBERS", "HOLDERS"
    );
    for b in sorted.iter().take(MAX_LISTED_TRACKED) {
        let _ = writeln!(
            out,
            "  {:<20}{:>9}{:>9}  {}",
            short_digest(&b.digest),
            b.members,
            b.holders,
            if b.fetching { "yes" } else { "no" }
        );
    }
    if blobs.len() > MAX_LISTED_TRACKED {
        let _ = writeln!(
            out,
            "  ... and {} more (--json lists them all)",
            blobs.len() - MAX_LISTED_TRACKED
        );
    }
}

/// `sha256:` and the first 12 hex digits, as `docker images` shows them.
fn short_digest(d: &str) -> String {
    match d.split_once(':') {
        Some((alg, hex)) => format!("{alg}:{}", hex.get(..12).unwrap_or(hex)),
        None => d.get(..19).unwrap_or(d).to_string(),
    }
}

/// Pieces present as a percentage, rounded down so 100% means complete.
fn done(b: &BlobStatus) -> String {
    match (b.pieces, b.size) {
        (0, Some(0)) => "100%".into(),
        (0, _) => "-".into(),
        (n, _) => format!(
            "{}%",
            u64::from(b.pieces_present.min(n)) * 100 / u64::from(n)
        ),
    }
}

fn count(n: usize, what: &str) -> String {
    match (n, what) {
        (1, _) => format!("1 {what}"),
        (_, "entry") => format!("{n} entries"),
        _ => format!("{n} {what}s"),
    }
}

/// Bytes in binary units: `512 B`, `1.5 KiB`, `20.0 GiB`.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

pub fn human_rate(bytes_per_sec: f64) -> String {
    format!("{}/s", human(bytes_per_sec.round() as u64))
}

#[cfg(test)]
#[path = "status_tests.rs"]
mod tests;
