//! `pollen`: the peer-to-peer distribution agent for container image layers.

mod config;

use clap::{Parser, Subcommand};
use config::{AgentArgs, LogFormat, Settings};
use std::process::ExitCode;
use tracing::{error, info};

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
        after_help = "Examples:\n  pollen agent\n  pollen agent --registry ghcr.io=https://ghcr.io --cache-size 50GiB\n  pollen agent --upstream http://127.0.0.1:5000 --registry 127.0.0.1:5000=http://127.0.0.1:5000\n\nEvery flag is also a config-file key (--cache-size -> cache_size) and an environment\nvariable (POLLEN_CACHE_SIZE). Flags win over the environment, which wins over the file."
    )]
    Agent(AgentArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Agent(args) => run_agent(args),
    }
}

fn run_agent(args: AgentArgs) -> ExitCode {
    let settings = match Settings::resolve(args) {
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
    match runtime.block_on(agent(settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            error!("{msg}");
            eprintln!("pollen: {msg}");
            ExitCode::FAILURE
        }
    }
}

async fn agent(s: Settings) -> Result<(), String> {
    let store = pollen_store::Store::open(&s.data_dir, s.cache_size).map_err(|e| {
        format!(
            "cannot open the cache in {}: {e} (pass --data-dir with a writable directory)",
            s.data_dir.display()
        )
    })?;
    let agent = pollen_agent::Agent::new(s.agent, store, None).map_err(|e| e.to_string())?;
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
    tokio::select! {
        _ = agent.serve(listener) => Ok(()),
        _ = shutdown_signal() => {
            info!("shutting down");
            Ok(())
        }
    }
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
