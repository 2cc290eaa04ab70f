//! containerd: one `hosts.toml` per registry (or `_default` for all) under the directory
//! containerd's CRI plugin reads (`config_path`), pointing at the agent with the registry
//! itself kept as the fallback, and a check of containerd's main config, whose `config_path`
//! is what makes those files apply at all.

use crate::files::{self, Change, Outcome};
use crate::{AgentUrl, ConfigError};
use std::path::{Path, PathBuf};

/// Where hosts.toml files go unless `--config-path` says otherwise.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/containerd/certs.d";
/// containerd's main configuration file.
pub const DEFAULT_MAIN_CONFIG: &str = "/etc/containerd/config.toml";
/// How long containerd waits to connect to the agent before it goes to the registry
/// itself: the agent is local, so a second means it is down.
pub const DIAL_TIMEOUT: &str = "1s";
/// The directory containerd uses for registries without one of their own.
pub const DEFAULT_HOST_DIR: &str = "_default";
/// The first line of every file this module writes.
pub const MARKER: &str = "# Written by `pollen containerd-config`";

/// Which registries go through the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Registries {
    /// Every registry (containerd's `_default` host directory).
    All,
    /// These hosts (`docker.io`, `ghcr.io`, `registry.local:5000`; `http://HOST` for a
    /// registry that speaks plain HTTP, so the fallback reaches it).
    Hosts(Vec<String>),
}

/// The `hosts.toml` for `host` (`None`: `_default`). The agent is tried first for pulls and
/// resolves; when it cannot be reached within [`DIAL_TIMEOUT`] containerd falls back to
/// `server`, the registry itself (for `_default`, containerd's own default: the host).
pub fn hosts_toml(host: Option<&str>, agent: &AgentUrl) -> String {
    let mut out = format!(
        "{MARKER}: pulls go through the local Pollen agent,\n\
         # and straight to the registry when the agent does not answer.\n\
         # `pollen containerd-config --restore` puts back what was here before.\n"
    );
    if let Some(host) = host {
        out.push_str(&format!("server = \"{}\"\n", origin(host)));
    }
    out.push('\n');
    out.push_str(&agent_table(agent));
    out
}

/// The agent's `[host."…"]` table: pulls and resolves, and a short dial timeout so containerd
/// goes on to the next host quickly when the agent is down.
fn agent_table(agent: &AgentUrl) -> String {
    format!(
        "[host.\"{agent}\"]\n  capabilities = [\"pull\", \"resolve\"]\n  dial_timeout = \"{DIAL_TIMEOUT}\"\n"
    )
}

/// The hosts.toml for `host` over the node's own file `original` (what was there before
/// Pollen): the agent's table goes before the node's first table, so containerd (which tries
/// hosts in file order) asks the agent first, and everything the node had (its `server`, its
/// mirrors, certificates and headers) stays and is tried next. A file that would not parse
/// that way (one that names the agent already, or is not valid TOML) is replaced whole; the
/// original is backed up either way.
pub fn hosts_toml_over(original: Option<&str>, host: Option<&str>, agent: &AgentUrl) -> String {
    let Some(original) = original.filter(|o| !o.trim().is_empty()) else {
        return hosts_toml(host, agent);
    };
    let mut cut = original.len();
    let mut offset = 0;
    for line in original.split_inclusive('\n') {
        if line.trim_start().starts_with('[') {
            cut = offset;
            break;
        }
        offset += line.len();
    }
    let (top, tables) = original.split_at(cut);
    let mut out = format!(
        "{MARKER}: pulls go through the local Pollen agent first;\n\
         # what follows its table is this node's own configuration, tried next.\n\
         # `pollen containerd-config --restore` puts back the original.\n"
    );
    out.push_str(top);
    if !top.is_empty() && !top.ends_with('\n') {
        out.push('\n');
    }
    out.push('\n');
    out.push_str(&agent_table(agent));
    out.push('\n');
    out.push_str(tables);
    // In file order (toml_edit keeps it): the agent must be the first host.
    let names_agent = out.parse::<toml_edit::DocumentMut>().is_ok_and(|doc| {
        doc.get("host")
            .and_then(|h| h.as_table_like())
            .and_then(|h| h.iter().next())
            .is_some_and(|(first, _)| first == agent.to_string())
    });
    if names_agent {
        out
    } else {
        hosts_toml(host, agent)
    }
}

/// The registry's own address, containerd's `server`: Docker Hub's API lives elsewhere.
fn origin(registry: &str) -> String {
    let (scheme, host) = split_scheme(registry);
    match host {
        "docker.io" | "index.docker.io" | "registry-1.docker.io" => {
            "https://registry-1.docker.io".into()
        }
        _ => format!("{scheme}://{host}"),
    }
}

/// `http://HOST` -> (`http`, `HOST`); a bare host is HTTPS.
fn split_scheme(registry: &str) -> (&str, &str) {
    match registry.split_once("://") {
        Some((scheme @ ("http" | "https"), host)) => (scheme, host.trim_end_matches('/')),
        _ => ("https", registry),
    }
}

/// A registry host as a directory name: `name[:port]`, nothing that could leave the directory.
fn host_dir(registry: &str) -> Result<&str, ConfigError> {
    let (_, host) = split_scheme(registry);
    let ok = !host.is_empty()
        && host.len() <= 253
        && host != "."
        && host != ".."
        && host != DEFAULT_HOST_DIR
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'))
        && !host.starts_with('-');
    if ok {
        Ok(host)
    } else {
        Err(ConfigError::Invalid(format!(
            "--registry {registry:?} is not a registry host like docker.io or registry.local:5000"
        )))
    }
}

fn hosts_file(config_path: &Path, dir: &str) -> PathBuf {
    config_path.join(dir).join("hosts.toml")
}

/// The files to write for `registries`.
pub fn changes(
    config_path: &Path,
    registries: &Registries,
    agent: &AgentUrl,
) -> Result<Vec<Change>, ConfigError> {
    let change = |dir: &str, host: Option<&str>| -> Result<Change, ConfigError> {
        let path = hosts_file(config_path, dir);
        let original = files::original(&path)?;
        Ok(Change {
            contents: hosts_toml_over(original.as_deref(), host, agent),
            path,
        })
    };
    match registries {
        // `_default`, and every registry the node configured itself: containerd reads a
        // registry's own directory instead of `_default`, so leaving one alone would send
        // that registry's pulls around the agent.
        Registries::All => {
            let mut out = vec![change(DEFAULT_HOST_DIR, None)?];
            for dir in own_host_dirs(config_path)? {
                out.push(change(&dir, Some(&dir))?);
            }
            Ok(out)
        }
        Registries::Hosts(hosts) => hosts
            .iter()
            .map(|h| change(host_dir(h)?, Some(h)))
            .collect(),
    }
}

/// The registry directories under `config_path` with a hosts.toml the node had before
/// Pollen (not those Pollen created), sorted.
fn own_host_dirs(config_path: &Path) -> Result<Vec<String>, ConfigError> {
    let entries = match std::fs::read_dir(config_path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ConfigError::io(config_path, e)),
    };
    let mut out = Vec::new();
    for entry in entries.filter_map(Result::ok) {
        let Ok(name) = entry.file_name().into_string() else {
            continue;
        };
        if host_dir(&name).is_err() || !entry.path().is_dir() {
            continue;
        }
        if files::original(&hosts_file(config_path, &name))?.is_some() {
            out.push(name);
        }
    }
    out.sort();
    Ok(out)
}

/// Puts back every hosts.toml Pollen changed under `config_path`, whichever registries they
/// were for; removes the host directories it created if they are left empty.
pub fn restore(config_path: &Path) -> Result<Vec<(PathBuf, Outcome)>, ConfigError> {
    let entries = match std::fs::read_dir(config_path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(ConfigError::io(config_path, e)),
    };
    let mut out = Vec::new();
    let mut dirs: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let file = dir.join("hosts.toml");
        let outcome = files::restore(&file)?;
        if outcome == Outcome::Removed {
            let _ = std::fs::remove_dir(&dir); // only if empty: certificates stay
        }
        if outcome != Outcome::Untouched {
            out.push((file, outcome));
        }
    }
    Ok(out)
}

/// What containerd's main config says about `config_path`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// `config_path` includes the directory: the hosts.toml files apply.
    Applies,
    /// No main config file: containerd 2.x reads `/etc/containerd/certs.d` by default, 1.x
    /// ignores hosts.toml for Kubernetes pulls.
    NoConfig,
    /// `config_path` is not set: the CRI plugin ignores hosts.toml (the silent failure).
    NotSet,
    /// `config_path` points elsewhere.
    Elsewhere(String),
    /// The old `registry.mirrors` tables are set: containerd refuses them together with
    /// `config_path`, or uses them instead.
    LegacyMirrors,
}

impl Verdict {
    pub fn is_ok(&self) -> bool {
        *self == Verdict::Applies
    }

    /// What the user should do, in a sentence or two.
    pub fn advice(&self, config_path: &Path, main_config: &Path) -> String {
        let dir = config_path.display();
        let main = main_config.display();
        let section = "[plugins.\"io.containerd.grpc.v1.cri\".registry] (containerd 1.x, version = 2) \
                       or [plugins.\"io.containerd.cri.v1.images\".registry] (containerd 2.x, version = 3)";
        match self {
            Verdict::Applies => format!("{main} sets config_path to include {dir}: the hosts.toml files apply"),
            Verdict::NoConfig => format!(
                "{main} does not exist: containerd 2.x reads {DEFAULT_CONFIG_PATH} by default, but containerd 1.x ignores hosts.toml for Kubernetes pulls; create it with config_path = \"{dir}\" under {section} and restart containerd"
            ),
            Verdict::NotSet => format!(
                "{main} does not set config_path, so Kubernetes pulls ignore the hosts.toml files; add config_path = \"{dir}\" under {section} and restart containerd"
            ),
            Verdict::Elsewhere(other) => format!(
                "{main} sets config_path = \"{other}\", not {dir}: run again with --config-path {other}, or change config_path and restart containerd"
            ),
            Verdict::LegacyMirrors => format!(
                "{main} still has registry.mirrors tables: containerd does not use hosts.toml beside them; move mirrors to hosts.toml files and set config_path = \"{dir}\""
            ),
        }
    }
}

/// Checks containerd's main config (`text`, `None` if the file does not exist) for whether
/// hosts.toml files under `config_path` are used by Kubernetes pulls.
pub fn check(text: Option<&str>, config_path: &Path) -> Result<Verdict, String> {
    let Some(text) = text else {
        return Ok(Verdict::NoConfig);
    };
    let doc: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let plugins = doc.get("plugins").and_then(|p| p.as_table());
    // containerd 2.x (version 3), 1.x (version 2), and the version-1 layout.
    let registry = [
        "io.containerd.cri.v1.images",
        "io.containerd.grpc.v1.cri",
        "cri",
    ]
    .iter()
    .filter_map(|name| plugins?.get(*name)?.get("registry")?.as_table())
    .next();
    let Some(registry) = registry else {
        return Ok(Verdict::NotSet);
    };
    if registry
        .get("mirrors")
        .and_then(|m| m.as_table())
        .is_some_and(|m| !m.is_empty())
    {
        return Ok(Verdict::LegacyMirrors);
    }
    let set = registry
        .get("config_path")
        .and_then(|v| v.as_str())
        .unwrap_or("");
    if set.is_empty() {
        return Ok(Verdict::NotSet);
    }
    let ours = normalise(config_path);
    if set.split(':').any(|p| normalise(Path::new(p)) == ours) {
        Ok(Verdict::Applies)
    } else {
        Ok(Verdict::Elsewhere(set.to_string()))
    }
}

fn normalise(p: &Path) -> PathBuf {
    p.components().collect()
}

/// Whether the hosts.toml Pollen would write for each of `registries` is in place.
pub fn missing(
    config_path: &Path,
    registries: &Registries,
    agent: &AgentUrl,
) -> Result<Vec<PathBuf>, ConfigError> {
    let mut out = Vec::new();
    for change in changes(config_path, registries, agent)? {
        if files::read(&change.path)?.as_deref() != Some(change.contents.as_str()) {
            out.push(change.path);
        }
    }
    Ok(out)
}

#[cfg(test)]
#[path = "containerd_tests.rs"]
mod tests;
