//! Runtime configuration: the files that make a container runtime use the local Pollen agent
//! as its registry mirror, written so that nothing silently fails to apply.
//!
//! - [`containerd`]: `hosts.toml` files under containerd's `config_path`, and a check of
//!   containerd's main config (an unset `config_path` is the classic silent failure).
//! - [`docker`]: `registry-mirrors` (and `insecure-registries`) merged into `daemon.json`.
//! - [`registries`]: a mirror entry merged into `registries.conf` (Podman, CRI-O).
//!
//! Every writer works the same way ([`files`]): it computes the new contents from the old
//! ones (pure functions, unit-tested on real-world files), writes atomically, and keeps the
//! original beside it once (`FILE.pollen-backup`, or `FILE.pollen-absent` when there was no
//! file) so that `--restore` puts back exactly what was there. Running a writer twice changes
//! nothing the second time.

pub mod containerd;
pub mod docker;
pub mod files;
pub mod registries;

/// Why a configuration could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("{path} is not valid {format}: {why}; fix or move it, then run again")]
    Parse {
        path: String,
        format: &'static str,
        why: String,
    },
    #[error("{0}")]
    Invalid(String),
}

impl ConfigError {
    pub(crate) fn io(path: &std::path::Path, error: std::io::Error) -> ConfigError {
        ConfigError::Io {
            path: path.display().to_string(),
            error,
        }
    }
}

/// The agent's address as a runtime needs it: `http://127.0.0.1:65001` split into its scheme
/// and `host:port`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentUrl {
    /// `http` or `https`.
    pub scheme: String,
    /// `host:port`.
    pub authority: String,
}

impl AgentUrl {
    /// Parses `http://HOST:PORT` or `https://HOST:PORT` (a trailing `/` is allowed; no path).
    pub fn parse(url: &str) -> Result<AgentUrl, ConfigError> {
        let bad = |why: &str| {
            ConfigError::Invalid(format!(
                "--agent {url:?}: {why}; give the agent's address like http://127.0.0.1:65001"
            ))
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(|| bad("no scheme"))?;
        if scheme != "http" && scheme != "https" {
            return Err(bad("the scheme must be http or https"));
        }
        let authority = rest.strip_suffix('/').unwrap_or(rest);
        if authority.is_empty()
            || authority.contains('/')
            || authority.chars().any(|c| c.is_whitespace() || c == '"')
        {
            return Err(bad("expected HOST:PORT after the scheme, with no path"));
        }
        Ok(AgentUrl {
            scheme: scheme.to_string(),
            authority: authority.to_string(),
        })
    }

    pub fn insecure(&self) -> bool {
        self.scheme == "http"
    }
}

impl std::fmt::Display for AgentUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}://{}", self.scheme, self.authority)
    }
}

/// The host names of Docker Hub: Docker and the `registries.conf` writer only mirror these.
pub const DOCKER_HUB: &str = "docker.io";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_urls() {
        let a = AgentUrl::parse("http://127.0.0.1:65001/").unwrap();
        assert_eq!(a.authority, "127.0.0.1:65001");
        assert!(a.insecure());
        assert_eq!(a.to_string(), "http://127.0.0.1:65001");
        assert!(!AgentUrl::parse("https://node:443").unwrap().insecure());
        for bad in [
            "127.0.0.1:65001",
            "ftp://x:1",
            "http://",
            "http://x:1/v2",
            "http://a b",
        ] {
            assert!(AgentUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
