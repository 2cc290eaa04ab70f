//! `pollen`: the peer-to-peer distribution agent for container image layers.

mod control;
mod demo;
mod doctor;
mod malloc;
mod preheat;
mod runtime;
mod status;
mod swarm_key;

use clap::{Parser, Subcommand};
use config::{AgentArgs, LogFormat, Settings};
use pollen::config;
use std::process::ExitCode;
use std::time::Duration;
use tracing::{error, info, warn};

/// The bound on leaving the swarm at SIGTERM (the node has its own deadline inside; this
/// one only makes sure a stuck swarm never keeps the process alive).
const SWARM_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on the async runtime's own shutdown (blocking tasks still running).
const RUNTIME_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
/// The bound on checkpointing downloads after the drain.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Parser)]
#[command(
    name = "pollen",
    version,
    about = "Peer-to-peer distribution of container image layers",
    long_about = "Pollen runs on every node as the container runtime's registry mirror. It serves the \
OCI pull API, fetches each blob from the upstream registry once, verifies every byte against its \
digest and streams it to the runtime as it arrives."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the node agent (the registry mirror the runtime talks to)
    #[command(
        after_help = "Examples:\n  pollen agent --swarm-key /etc/pollen/swarm.key\n  pollen agent --swarm-key /etc/pollen/swarm.key --registry ghcr.io=https://ghcr.io --cache-size 50GiB\n  pollen agent --swarm-key /etc/pollen/swarm.key --bootstrap dns:pollen.kube-system.svc.cluster.local:65003 --upload-limit 100MiB\n  pollen agent --p2p false    # a single-node mirror, no peers\n  pollen agent --swarm-key /etc/pollen/swarm.key --tracker true --seed true --zone eu-west-1a --label team=storage\n  pollen agent --p2p false --upstream http://127.0.0.1:5000 --registry 127.0.0.1:5000=http://127.0.0.1:5000\n\nWith peer-to-peer on, every agent of a cluster needs the same swarm key (`pollen swarm-key`);\nwithout one the swarm listens on loopback only.\n\nEvery flag is also a config-file key (--cache-size -> cache_size) and an environment\nvariable (POLLEN_CACHE_SIZE). Flags win over the environment, which wins over the file."
    )]
    Agent(Box<AgentArgs>),
    /// Show a running agent's peers, transfers and cache (asks its control socket, or with --admin its admin port)
    #[command(
        after_help = "Examples:\n  pollen status\n  pollen status --admin 10.0.0.7:65002    # another node's, read-only\n  pollen status --json | jq .peers\n\nRates are measured over one second between two samples."
    )]
    Status(status::StatusArgs),
    /// Fetch an image's blobs into the cluster before a rollout (on the seeds, or every agent)
    #[command(
        after_help = "Examples:\n  pollen preheat nginx:1.27\n  pollen preheat ghcr.io/org/model-server:v3 --platform linux/amd64 --platform linux/arm64\n  pollen preheat registry.local:5000/app@sha256:... --all-nodes\n\nThe local agent resolves the image (index, platform manifests, layers) and asks the agents\nthat announce the seed role (--seed true) to fetch every blob; with no seed, it fetches\nthem itself. Exits non-zero if any blob failed."
    )]
    Preheat(preheat::PreheatArgs),
    /// Make a new random swarm key: only agents holding the same key can join each other's swarm
    #[command(
        name = "swarm-key",
        after_help = "Examples:\n  (umask 077; pollen swarm-key > /etc/pollen/swarm.key)\n  pollen swarm-key --out /etc/pollen/swarm.key    # once: an existing file is kept\n  pollen agent --swarm-key /etc/pollen/swarm.key\n\nThe key is the libp2p private-network format (/key/swarm/psk/1.0.0/, /base16/, 64 hex\ndigits). Every agent of a cluster needs the same key; keep it readable by root only."
    )]
    SwarmKey(swarm_key::SwarmKeyArgs),
    /// Try Pollen without a registry or root: a cluster of agents in one process pulls a
    /// generated image at once, then the same pull without Pollen, and the numbers
    #[command(
        after_help = "Examples:\n  pollen demo\n  pollen demo --nodes 16 --size 512MiB --rate 100Mbit/s\n  pollen demo --nodes 4 --size 32MiB --no-direct\n\nEverything runs on loopback inside this process (an in-process registry with a shared,\nrate-limited uplink; each agent with its own cache and libp2p node in a temporary\ndirectory) and is removed at the end, also on Ctrl-C. Exits non-zero if any pull failed or\nany blob did not match its digest. The agents log nothing unless RUST_LOG is set\n(e.g. RUST_LOG=pollen_agent=debug), then to stderr."
    )]
    Demo(demo::DemoArgs),
    /// Check everything that decides whether this node's pulls go through Pollen and work:
    /// the agent, its upstreams, the cache disk, peers, trackers, the runtimes' configuration
    #[command(
        after_help = "Examples:\n  pollen doctor\n  pollen doctor --control-socket /run/pollen/control.sock --json\n\nExits 1 when a line says FAIL; WARN lines work but deserve a look."
    )]
    Doctor(doctor::DoctorArgs),
    /// Point containerd (Kubernetes) at the local agent: hosts.toml files, kept originals,
    /// and a check that containerd actually reads them
    #[command(
        name = "containerd-config",
        after_help = "Examples:\n  pollen containerd-config --all\n  pollen containerd-config --registry docker.io --registry ghcr.io\n  pollen containerd-config --check --all\n  pollen containerd-config --restore\n\nEach hosts.toml sends pulls and resolves to the agent and falls back to the registry\nitself when the agent does not answer within 1s, so pulls keep working while the agent is\ndown. containerd reads hosts.toml files without a restart, but only if its config sets\nconfig_path to this directory: every run checks that and says so."
    )]
    ContainerdConfig(runtime::ContainerdArgs),
    /// Point Docker Engine at the local agent: registry-mirrors in daemon.json (Docker Hub only)
    #[command(
        name = "docker-config",
        after_help = "Examples:\n  pollen docker-config\n  pollen docker-config --print\n  pollen docker-config --check\n  pollen docker-config --restore\n\nEvery other key of daemon.json is kept; the original is kept beside it the first time."
    )]
    DockerConfig(runtime::DockerArgs),
    /// Point Podman and CRI-O at the local agent: a Docker Hub mirror in registries.conf
    #[command(
        name = "registries-config",
        after_help = "Examples:\n  pollen registries-config\n  pollen registries-config --file /etc/containers/registries.conf.d/pollen.conf --print\n  pollen registries-config --check\n  pollen registries-config --restore"
    )]
    RegistriesConfig(runtime::RegistriesArgs),
}

fn main() -> ExitCode {
    malloc::tune();
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => run_agent(*args),
        Command::Status(args) => status::run(args),
        Command::Preheat(args) => preheat::run(args),
        Command::Demo(args) => {
            // The agents' logs, for a demo that goes wrong: only when asked for.
            if std::env::var_os("RUST_LOG").is_some() {
                init_logging(LogFormat::Text);
            }
            demo::run(args)
        }
        Command::SwarmKey(args) => swarm_key::run(args),
        Command::Doctor(args) => doctor::run(args),
        Command::ContainerdConfig(args) => runtime::run_containerd(args),
        Command::DockerConfig(args) => runtime::run_docker(args),
        Command::RegistriesConfig(args) => runtime::run_registries(args),
    }
}

fn run_agent(args: AgentArgs) -> ExitCode {
    let settings = match Settings::resolve(args.clone()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("pollen: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(settings.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pollen: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(agent(settings, &args));
    // Blocking work still running (a checkpoint's fsync, a hash) gets a moment, not forever:
    // the drain and the checkpoints are done, and a stop must not hang past its grace period.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN_TIMEOUT);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            error!("{msg}");
            eprintln!("pollen: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn agent(s: Settings, args: &AgentArgs) -> Result<(), String> {
    let store = pollen_store::Store::open(&s.data_dir, s.cache_size).map_err(|e| {
        format!(
            "cannot open the cache in {}: {e} (pass --data-dir with a writable directory)",
            s.data_dir.display()
        )
    })?;
    let node = match s.swarm {
        Some(swarm) => Some(start_swarm(&s.data_dir, swarm, &s.agent.p2p).await?),
        None => {
            info!("peer-to-peer is off (--p2p false): a single-node mirror");
            None
        }
    };
    let agent =
        pollen_agent::Agent::new(s.agent, store, node.clone()).map_err(|e| e.to_string())?;
    let bind = |addr, what| async move {
        tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            format!("cannot listen on {addr} for {what}: {e} (is another agent running? choose another address with --{what})")
        })
    };
    let listener = bind(s.listen, "listen").await?;
    let admin = bind(s.metrics_listen, "metrics-listen").await?;
    let local = |l: &tokio::net::TcpListener, fallback| l.local_addr().unwrap_or(fallback);
    info!(
        listen = %local(&listener, s.listen),
        metrics = %local(&admin, s.metrics_listen),
        data_dir = %s.data_dir.display(),
        cache_size = s.cache_size,
        version = env!("CARGO_PKG_VERSION"),
        "pollen agent serving"
    );
    tokio::spawn(pollen_agent::serve_admin(agent.clone(), admin));
    if let Some((addr, site)) = s.sites {
        let sites = bind(addr, "serve-listen").await?;
        info!(serve_listen = %local(&sites, addr), "serving other sites over TLS, to clients that authenticate");
        let agent = agent.clone();
        tokio::spawn(async move { agent.serve_sites(sites, site).await });
    }
    match &s.control_socket {
        Some(path) => {
            let control = control::bind(path)?;
            info!(control_socket = %path.display(), "preheat, doctor and the full status on the control socket");
            tokio::spawn(pollen_agent::serve_control(agent.clone(), control));
        }
        None => warn!("no control socket (--control-socket off, or no $XDG_RUNTIME_DIR): `pollen preheat` and `pollen doctor` cannot reach this agent"),
    }
    let serve = agent.serve(listener);
    tokio::pin!(serve);
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        tokio::select! {
            _ = &mut serve => break,
            _ = shutdown_signal() => {
                info!("stopping: no new connections; letting responses in progress finish");
                break;
            }
            Some(()) = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            } => reload(&agent, args),
        }
    }
    // SIGTERM: the listener is closed; responses in progress finish, then downloads record
    // their pieces (a restart resumes them) and the tracker role stops handing fetches on.
    let open = agent.drain().await;
    if open > 0 {
        warn!(
            connections = open,
            "drain timeout: closing client connections still open"
        );
    }
    // Downloads checkpoint, then the swarm stops (peers' connections closed now rather than
    // left to time out); bounded whatever the swarm does.
    let bound = SHUTDOWN_TIMEOUT + SWARM_SHUTDOWN_TIMEOUT;
    match tokio::time::timeout(bound, agent.shutdown(SHUTDOWN_TIMEOUT)).await {
        Ok(()) if node.is_some() => info!("left the swarm"),
        Ok(()) => {}
        Err(_) => warn!(after = ?bound, "stopping timed out"),
    }
    if let Some(path) = &s.control_socket {
        control::remove(path);
    }
    Ok(())
}

/// SIGHUP: the configuration (flags, environment, file) is read again and what can change
/// without a restart takes effect: the upstream registries, mirrors, credentials and their
/// timeouts, and the peer upload and download limits. An invalid configuration changes nothing.
fn reload(agent: &pollen_agent::Agent, args: &AgentArgs) {
    match Settings::resolve(args.clone()) {
        Ok(s) => match agent.reload(s.agent) {
            Ok(()) => info!("SIGHUP: reloaded the upstream registries, mirrors, credentials and the peer rate limits; other settings take effect at the next start"),
            Err(e) => warn!(error = %e, "SIGHUP: the new upstream configuration cannot be used; keeping the one in use"),
        },
        Err(e) => warn!(error = %e, "SIGHUP: the configuration is invalid; keeping the one in use"),
    }
}

/// Fails if something already listens on the swarm address's fixed port. libp2p binds its
/// listeners with `SO_REUSEPORT`, so a second agent on the same port would otherwise start
/// without an error and the kernel would hand each incoming peer to one of the two at random.
/// This probe binds without it, which Linux refuses while any other socket listens there.
fn probe_p2p_port(addr: &pollen_swarm::Multiaddr) -> std::io::Result<()> {
    // Settings only accept `/ip4|ip6/ADDR/tcp/PORT`.
    let text = addr.to_string();
    let parts: Vec<&str> = text.split('/').collect();
    let ["", "ip4" | "ip6", ip, "tcp", port] = parts.as_slice() else {
        return Ok(());
    };
    let (Ok(ip), Ok(port)) = (ip.parse::<std::net::IpAddr>(), port.parse::<u16>()) else {
        return Ok(());
    };
    if port == 0 {
        return Ok(());
    }
    std::net::TcpListener::bind((ip, port)).map(drop)
}

/// Joins the swarm: loads or creates the node key in the data dir and binds the peer port.
/// `p2p` only names the node's roles and labels in the log line.
async fn start_swarm(
    data_dir: &std::path::Path,
    cfg: pollen_swarm::SwarmConfig,
    p2p: &pollen_agent::P2pConfig,
) -> Result<pollen_agent::Node, String> {
    let taken = |addr: &dyn std::fmt::Display, reason: &dyn std::fmt::Display| {
        format!(
            "cannot listen on {addr} for peers: {reason} (is another agent running? choose another address with --p2p-listen, or run without peers with --p2p false)"
        )
    };
    for addr in &cfg.listen {
        probe_p2p_port(addr).map_err(|e| taken(addr, &e))?;
    }
    let bootstrap: Vec<String> = cfg.bootstrap.iter().map(ToString::to_string).collect();
    let mdns = cfg.mdns;
    let node = pollen_swarm::Node::start(data_dir, cfg)
        .await
        .map_err(|e| match e {
            pollen_swarm::Error::Listen { addr, reason } => taken(&addr, &reason),
            pollen_swarm::Error::Identity(e) => format!(
                "cannot load or create the node key in {}: {e} (pass --data-dir with a writable directory)",
                data_dir.display()
            ),
            e => format!(
                "cannot start the peer-to-peer node: {e} (check --p2p-listen, or run without peers with --p2p false)"
            ),
        })?;
    let addrs = match node.listen_addrs().await {
        Ok(addrs) => addrs.iter().map(ToString::to_string).collect::<Vec<_>>(),
        Err(e) => {
            warn!(error = %e, "cannot read the swarm's listen addresses");
            Vec::new()
        }
    };
    info!(
        peer_id = %node.peer_id(),
        listen = ?addrs,
        bootstrap = ?bootstrap,
        mdns,
        roles = ?config::roles(p2p),
        labels = ?config::label_strings(p2p),
        "joined the swarm"
    );
    Ok(node)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    use std::io::IsTerminal;
    // Colour only for a person at a terminal, never into log files or journald.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
