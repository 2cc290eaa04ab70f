//! `pollen containerd-config`, `pollen docker-config`, `pollen registries-config`: make the
//! container runtime use the local agent as its mirror, check that it does, or put back what
//! was there (the file logic is `pollen_runtime_config`'s; this is the command line).

use pollen_runtime_config::files::{self, Change, Outcome};
use pollen_runtime_config::{containerd, docker, registries, AgentUrl, ConfigError};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The agent's default listen address, as a URL.
pub const DEFAULT_AGENT: &str = "http://127.0.0.1:65001";

/// What to do with a runtime's configuration; shared by the three commands.
#[derive(clap::Args, Clone, Debug)]
pub struct Mode {
    /// The local agent's address [default: http://127.0.0.1:65001, the agent's default --listen]
    #[arg(long, value_name = "URL", default_value = DEFAULT_AGENT, hide_default_value = true)]
    agent: String,
    /// Change nothing: report whether the runtime uses the agent; exit 1 if it does not
    #[arg(long, conflicts_with_all = ["restore", "print"])]
    check: bool,
    /// Put back the files as they were before Pollen changed them
    #[arg(long, conflicts_with = "print")]
    restore: bool,
    /// Change nothing: print what would be written
    #[arg(long)]
    print: bool,
}

#[derive(clap::Args, Debug)]
pub struct ContainerdArgs {
    /// A registry to pull through the agent, e.g. docker.io, ghcr.io, registry.local:5000 (repeatable)
    #[arg(long = "registry", value_name = "HOST", required_unless_present_any = ["all", "restore", "check"])]
    registries: Vec<String>,
    /// Every registry: one hosts.toml in containerd's `_default` directory
    #[arg(long, conflicts_with = "registries")]
    all: bool,
    /// Where containerd looks for hosts.toml files: its CRI `config_path`
    #[arg(long, value_name = "DIR", default_value = containerd::DEFAULT_CONFIG_PATH)]
    config_path: PathBuf,
    /// containerd's main configuration, read to check that `config_path` is set
    #[arg(long, value_name = "FILE", default_value = containerd::DEFAULT_MAIN_CONFIG)]
    containerd_config: PathBuf,
    #[command(flatten)]
    mode: Mode,
}

#[derive(clap::Args, Debug)]
pub struct DockerArgs {
    /// Docker's daemon configuration
    #[arg(long, value_name = "FILE", default_value = docker::DEFAULT_DAEMON_JSON)]
    daemon_json: PathBuf,
    #[command(flatten)]
    mode: Mode,
}

#[derive(clap::Args, Debug)]
pub struct RegistriesArgs {
    /// The registries configuration of Podman and CRI-O
    #[arg(long, value_name = "FILE", default_value = registries::DEFAULT_REGISTRIES_CONF)]
    file: PathBuf,
    #[command(flatten)]
    mode: Mode,
}

fn agent(mode: &Mode) -> Result<AgentUrl, ExitCode> {
    AgentUrl::parse(&mode.agent).map_err(|e| fail(&e.to_string(), 2))
}

fn fail(msg: &str, code: u8) -> ExitCode {
    eprintln!("pollen: {msg}");
    ExitCode::from(code)
}

fn report(path: &Path, outcome: &Outcome) {
    let path = path.display();
    match outcome {
        Outcome::Unchanged => println!("unchanged  {path}"),
        Outcome::Written { backup: Some(b) } => {
            println!(
                "wrote      {path} (the original is kept as {})",
                b.display()
            )
        }
        Outcome::Written { backup: None } => println!("wrote      {path}"),
        Outcome::Restored => println!("restored   {path}"),
        Outcome::Removed => println!("removed    {path} (Pollen had created it)"),
        Outcome::Untouched => println!("untouched  {path} (Pollen never changed it)"),
    }
}

/// Writes (or prints) `changes`; the exit code.
fn write_all(changes: &[Change], print: bool) -> Result<(), ConfigError> {
    for change in changes {
        if print {
            println!("# {}\n{}", change.path.display(), change.contents);
            continue;
        }
        report(&change.path, &files::apply(change)?);
    }
    Ok(())
}

/// A merged single file (daemon.json, registries.conf): read, merge, write or check.
fn single_file(
    path: &Path,
    mode: &Mode,
    format: &'static str,
    merge: impl Fn(Option<&str>, &AgentUrl) -> Result<String, String>,
    check: impl Fn(Option<&str>, &AgentUrl) -> Result<Vec<String>, String>,
) -> Result<ExitCode, ConfigError> {
    let agent =
        agent(mode).map_err(|_| ConfigError::Invalid(format!("--agent {:?}", mode.agent)))?;
    if mode.restore {
        report(path, &files::restore(path)?);
        return Ok(ExitCode::SUCCESS);
    }
    let existing = files::read(path)?;
    let parse_error = |why: String| ConfigError::Parse {
        path: path.display().to_string(),
        format,
        why,
    };
    if mode.check {
        let problems = check(existing.as_deref(), &agent).map_err(parse_error)?;
        if problems.is_empty() {
            println!("ok: {} sends pulls to {agent}", path.display());
            return Ok(ExitCode::SUCCESS);
        }
        for p in problems {
            println!("problem: {}: {p}", path.display());
        }
        return Ok(ExitCode::FAILURE);
    }
    let contents = merge(existing.as_deref(), &agent).map_err(parse_error)?;
    write_all(
        &[Change {
            path: path.to_path_buf(),
            contents,
        }],
        mode.print,
    )?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_containerd(args: ContainerdArgs) -> ExitCode {
    let agent = match agent(&args.mode) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let which = if args.all {
        containerd::Registries::All
    } else {
        containerd::Registries::Hosts(args.registries.clone())
    };
    let result = (|| -> Result<ExitCode, ConfigError> {
        if args.mode.restore {
            let restored = containerd::restore(&args.config_path)?;
            if restored.is_empty() {
                println!("nothing to restore under {}", args.config_path.display());
            }
            for (path, outcome) in restored {
                report(&path, &outcome);
            }
            return Ok(ExitCode::SUCCESS);
        }
        if !args.mode.check {
            let changes = containerd::changes(&args.config_path, &which, &agent)?;
            write_all(&changes, args.mode.print)?;
        }
        // Whether the files apply at all: the main config's config_path.
        let text = files::read(&args.containerd_config)?;
        let verdict = containerd::check(text.as_deref(), &args.config_path).map_err(|why| {
            ConfigError::Parse {
                path: args.containerd_config.display().to_string(),
                format: "TOML",
                why,
            }
        })?;
        let advice = verdict.advice(&args.config_path, &args.containerd_config);
        let mut ok = verdict.is_ok();
        if ok {
            println!("ok: {advice}");
        } else {
            println!("WARNING: {advice}");
        }
        if args.mode.check {
            let registries_given = args.all || !args.registries.is_empty();
            let missing = if registries_given {
                containerd::missing(&args.config_path, &which, &agent)?
            } else {
                Vec::new()
            };
            for path in &missing {
                println!("problem: {} does not send pulls to {agent}", path.display());
            }
            ok &= missing.is_empty();
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            });
        }
        Ok(ExitCode::SUCCESS)
    })();
    result.unwrap_or_else(|e| fail(&e.to_string(), 1))
}

pub fn run_docker(args: DockerArgs) -> ExitCode {
    let result = single_file(
        &args.daemon_json,
        &args.mode,
        "JSON",
        docker::merge,
        docker::check,
    );
    if !args.mode.print && !args.mode.check && !args.mode.restore && result.is_ok() {
        println!("next: reload Docker to apply it: systemctl reload docker (or kill -HUP $(pidof dockerd))");
    }
    if !args.mode.restore {
        println!("note: {}", docker::LIMITATION);
    }
    result.unwrap_or_else(|e| fail(&e.to_string(), 1))
}

pub fn run_registries(args: RegistriesArgs) -> ExitCode {
    let result = single_file(
        &args.file,
        &args.mode,
        "TOML",
        registries::merge,
        registries::check,
    );
    if !args.mode.print && !args.mode.check && !args.mode.restore && result.is_ok() {
        println!("next: Podman reads it at its next run; reload CRI-O: systemctl reload crio");
        println!("note: only Docker Hub is mirrored; other registries are pulled directly");
    }
    result.unwrap_or_else(|e| fail(&e.to_string(), 1))
}
