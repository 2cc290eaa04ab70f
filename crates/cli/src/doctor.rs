//! `pollen doctor`: everything that decides whether pulls on this node go through Pollen and
//! work, in one table with a verdict per line; exits 1 when something is broken. The agent's
//! own checks come from its control socket (`/doctor`); the runtimes' configuration files are
//! read here, on the host.

use crate::runtime::DEFAULT_AGENT;
use crate::status::{admin_get, client_setup};
use pollen_agent::doctor::{Check, Verdict};
use pollen_runtime_config::{containerd, docker, files, registries, AgentUrl};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    /// The agent's control socket [default: /run/pollen/control.sock as root, else $XDG_RUNTIME_DIR/pollen/control.sock]
    #[arg(long, env = "POLLEN_CONTROL_SOCKET", value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// The agent's address as the runtimes are configured to reach it [default: http://127.0.0.1:65001]
    #[arg(long, value_name = "URL", default_value = DEFAULT_AGENT, hide_default_value = true)]
    agent: String,
    /// Where containerd looks for hosts.toml files
    #[arg(long, value_name = "DIR", default_value = containerd::DEFAULT_CONFIG_PATH)]
    config_path: PathBuf,
    /// containerd's main configuration
    #[arg(long, value_name = "FILE", default_value = containerd::DEFAULT_MAIN_CONFIG)]
    containerd_config: PathBuf,
    /// Docker's daemon configuration
    #[arg(long, value_name = "FILE", default_value = docker::DEFAULT_DAEMON_JSON)]
    daemon_json: PathBuf,
    /// The registries configuration of Podman and CRI-O
    #[arg(long, value_name = "FILE", default_value = registries::DEFAULT_REGISTRIES_CONF)]
    registries_conf: PathBuf,
    /// Print the checks as JSON
    #[arg(long)]
    json: bool,
}

fn line(name: &str, verdict: Verdict, detail: impl Into<String>) -> Check {
    Check {
        name: name.to_string(),
        verdict,
        detail: detail.into(),
    }
}

pub fn run(args: DoctorArgs) -> ExitCode {
    let agent = match AgentUrl::parse(&args.agent) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pollen: {e}");
            return ExitCode::from(2);
        }
    };
    let (addr, runtime) = match client_setup(None, args.control_socket.as_deref()) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let mut checks = match runtime.block_on(admin_get(&addr, "/doctor")) {
        Ok(body) => serde_json::from_str::<Vec<Check>>(&body).unwrap_or_else(|e| {
            vec![line(
                "agent",
                Verdict::Fail,
                format!("{addr} answered /doctor with something else ({e}): an older agent?"),
            )]
        }),
        Err(e) => vec![line("agent", Verdict::Fail, e)],
    };
    checks.extend(runtimes(&args, &agent));
    let failed = checks.iter().any(|c| c.verdict == Verdict::Fail);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&checks).unwrap_or_default()
        );
    } else {
        print!("{}", table(&checks));
        println!(
            "{}",
            if failed {
                "verdict: BROKEN (fix the FAIL lines above)"
            } else {
                "verdict: ok"
            }
        );
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// The checks as aligned text, one line each.
pub fn table(checks: &[Check]) -> String {
    let width = checks
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0)
        .max(5);
    let mut out = format!("{:width$}  {:7}  DETAIL\n", "CHECK", "VERDICT");
    for c in checks {
        let verdict = match c.verdict {
            Verdict::Ok => "ok",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        };
        out.push_str(&format!("{:width$}  {verdict:7}  {}\n", c.name, c.detail));
    }
    out
}

/// The runtimes installed on this host (their configuration directory exists), each checked
/// for whether its pulls go to the agent. A runtime that is not set up is a warning: the
/// node may not use it.
fn runtimes(args: &DoctorArgs, agent: &AgentUrl) -> Vec<Check> {
    let mut out = Vec::new();
    let installed = |p: &Path| p.parent().is_some_and(Path::exists);
    if installed(&args.containerd_config) || args.config_path.exists() {
        out.extend(containerd_checks(args, agent));
    }
    if installed(&args.daemon_json) {
        out.push(single_file(
            "docker",
            &args.daemon_json,
            agent,
            docker::check,
        ));
    }
    if installed(&args.registries_conf) {
        out.push(single_file(
            "podman/cri-o",
            &args.registries_conf,
            agent,
            registries::check,
        ));
    }
    if out.is_empty() {
        out.push(line(
            "runtimes",
            Verdict::Warn,
            "no containerd, Docker or Podman/CRI-O configuration found on this host",
        ));
    }
    out
}

fn containerd_checks(args: &DoctorArgs, agent: &AgentUrl) -> Vec<Check> {
    let main = match files::read(&args.containerd_config) {
        Ok(t) => t,
        Err(e) => return vec![line("containerd", Verdict::Fail, e.to_string())],
    };
    let config = match containerd::check(main.as_deref(), &args.config_path) {
        Ok(v) => {
            let verdict = if v.is_ok() {
                Verdict::Ok
            } else {
                Verdict::Fail
            };
            line(
                "containerd config_path",
                verdict,
                v.advice(&args.config_path, &args.containerd_config),
            )
        }
        Err(e) => line(
            "containerd config_path",
            Verdict::Fail,
            format!(
                "{} is not valid TOML: {e}",
                args.containerd_config.display()
            ),
        ),
    };
    // Either every registry (`_default` and the node's own directories) or Docker Hub's own
    // directory points at the agent.
    let off_all = containerd::missing(&args.config_path, &containerd::Registries::All, agent);
    let any = off_all.as_ref().is_ok_and(|m| m.is_empty())
        || containerd::missing(
            &args.config_path,
            &containerd::Registries::Hosts(vec!["docker.io".into()]),
            agent,
        )
        .is_ok_and(|m| m.is_empty());
    let hosts = if any {
        line(
            "containerd hosts.toml",
            Verdict::Ok,
            format!("{} sends pulls to {agent}", args.config_path.display()),
        )
    } else {
        let off: Vec<String> = off_all
            .unwrap_or_default()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        line(
            "containerd hosts.toml",
            Verdict::Fail,
            format!(
                "pulls do not all go to {agent} ({} not pointing at it; a registry's own hosts.toml overrides _default): run `pollen containerd-config --all`",
                off.join(", ")
            ),
        )
    };
    vec![config, hosts]
}

fn single_file(
    name: &str,
    path: &Path,
    agent: &AgentUrl,
    check: impl Fn(Option<&str>, &AgentUrl) -> Result<Vec<String>, String>,
) -> Check {
    let text = match files::read(path) {
        Ok(t) => t,
        Err(e) => return line(name, Verdict::Fail, e.to_string()),
    };
    match check(text.as_deref(), agent) {
        Ok(problems) if problems.is_empty() => line(
            name,
            Verdict::Ok,
            format!("{} sends pulls to {agent}", path.display()),
        ),
        Ok(problems) => line(name, Verdict::Warn, problems.join("; ")),
        Err(e) => line(
            name,
            Verdict::Fail,
            format!("{} cannot be read: {e}", path.display()),
        ),
    }
}
