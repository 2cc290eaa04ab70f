//! Docker Engine: the agent merged into `registry-mirrors` of `daemon.json` (and, for an
//! `http://` agent, into `insecure-registries`), every other key kept as it was.
//!
//! Docker uses `registry-mirrors` for Docker Hub only: images from other registries are
//! pulled from those registries directly ([`LIMITATION`]).

use crate::AgentUrl;
use serde_json::{Map, Value};

/// Docker's daemon configuration file.
pub const DEFAULT_DAEMON_JSON: &str = "/etc/docker/daemon.json";

/// What every command that configures Docker says once.
pub const LIMITATION: &str = "Docker sends only Docker Hub pulls to registry mirrors: images \
from other registries (ghcr.io/..., registry.local:5000/...) are pulled from those registries \
directly, without the agent. To share them across nodes, run the workloads on containerd \
(`pollen containerd-config`) or Podman/CRI-O (`pollen registries-config`).";

const MIRRORS: &str = "registry-mirrors";
const INSECURE: &str = "insecure-registries";

/// `daemon.json` with the agent first among the mirrors. `existing`: the current file, if
/// any (empty or whitespace counts as `{}`).
pub fn merge(existing: Option<&str>, agent: &AgentUrl) -> Result<String, String> {
    let mut root = parse(existing)?;
    let url = agent.to_string();
    let mirrors = list(&mut root, MIRRORS)?;
    mirrors.retain(|m| !same_url(m, &url));
    mirrors.insert(0, Value::from(url));
    if agent.insecure() {
        let insecure = list(&mut root, INSECURE)?;
        if !insecure
            .iter()
            .any(|v| v.as_str() == Some(agent.authority.as_str()))
        {
            insecure.push(Value::from(agent.authority.clone()));
        }
    }
    let mut out = serde_json::to_string_pretty(&Value::Object(root)).map_err(|e| e.to_string())?;
    out.push('\n');
    Ok(out)
}

/// What is wrong with `existing` for `agent`, if anything.
pub fn check(existing: Option<&str>, agent: &AgentUrl) -> Result<Vec<String>, String> {
    let Some(text) = existing else {
        return Ok(vec![format!(
            "{DEFAULT_DAEMON_JSON} does not exist: Docker does not use the agent; run `pollen docker-config`"
        )]);
    };
    let root = parse(Some(text))?;
    let url = agent.to_string();
    let mut problems = Vec::new();
    let mirrors: Vec<&str> = root
        .get(MIRRORS)
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match mirrors
        .iter()
        .position(|m| same_url(&Value::from(*m), &url))
    {
        None => problems.push(format!("{MIRRORS} does not list {url}")),
        Some(0) => {}
        Some(_) => problems.push(format!(
            "{url} is not the first of {MIRRORS}: Docker tries the others first"
        )),
    }
    let insecure_listed = root
        .get(INSECURE)
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|v| v.as_str() == Some(agent.authority.as_str()))
        });
    if agent.insecure() && !insecure_listed {
        problems.push(format!(
            "{INSECURE} does not list {}: Docker refuses a plain-http mirror",
            agent.authority
        ));
    }
    Ok(problems)
}

fn parse(existing: Option<&str>) -> Result<Map<String, Value>, String> {
    match existing.map(str::trim) {
        None | Some("") => Ok(Map::new()),
        Some(text) => match serde_json::from_str::<Value>(text) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(_) => Err("the top level is not a JSON object".into()),
            Err(e) => Err(e.to_string()),
        },
    }
}

fn list<'a>(root: &'a mut Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, String> {
    root.entry(key)
        .or_insert_with(|| Value::Array(Vec::new()))
        .as_array_mut()
        .ok_or_else(|| format!("\"{key}\" is not a list"))
}

/// Mirrors compare without a trailing slash (`http://x:1/` is `http://x:1`).
fn same_url(v: &Value, url: &str) -> bool {
    v.as_str()
        .is_some_and(|s| s.trim_end_matches('/') == url.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentUrl {
        AgentUrl::parse("http://127.0.0.1:65001").unwrap()
    }

    /// A daemon.json as found on real hosts: log options, storage driver, an existing mirror.
    const REAL: &str = r#"{
  "log-driver": "json-file",
  "log-opts": { "max-size": "10m", "max-file": "3" },
  "storage-driver": "overlay2",
  "registry-mirrors": ["https://mirror.gcr.io"],
  "features": { "buildkit": true }
}"#;

    #[test]
    fn merging_keeps_every_other_key_and_puts_the_agent_first() {
        let out = merge(Some(REAL), &agent()).unwrap();
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["log-opts"]["max-size"], "10m");
        assert_eq!(v["storage-driver"], "overlay2");
        assert_eq!(v["features"]["buildkit"], true);
        assert_eq!(
            v["registry-mirrors"],
            serde_json::json!(["http://127.0.0.1:65001", "https://mirror.gcr.io"])
        );
        assert_eq!(
            v["insecure-registries"],
            serde_json::json!(["127.0.0.1:65001"])
        );
        assert_eq!(merge(Some(&out), &agent()).unwrap(), out, "idempotent");
        let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "log-driver",
                "log-opts",
                "storage-driver",
                "registry-mirrors",
                "features",
                "insecure-registries"
            ],
            "the file's order kept, new keys last"
        );
        assert!(check(Some(&out), &agent()).unwrap().is_empty());
        let problems = check(Some(REAL), &agent()).unwrap();
        assert_eq!(problems.len(), 2, "{problems:?}");
    }

    #[test]
    fn missing_empty_and_broken_files() {
        let fresh = merge(None, &agent()).unwrap();
        assert!(check(Some(&fresh), &agent()).unwrap().is_empty());
        assert_eq!(merge(Some("  \n"), &agent()).unwrap(), fresh);
        assert!(merge(Some("{\"registry-mirrors\": \"x\"}"), &agent()).is_err());
        assert!(merge(Some("[1]"), &agent()).is_err());
        assert!(merge(Some("{ not json"), &agent()).is_err());
        assert_eq!(check(None, &agent()).unwrap().len(), 1);
        let https = AgentUrl::parse("https://node.local:65001").unwrap();
        let v: Value = serde_json::from_str(&merge(None, &https).unwrap()).unwrap();
        assert!(
            v.get("insecure-registries").is_none(),
            "https needs no exception"
        );
        let moved = r#"{"registry-mirrors": ["https://mirror.gcr.io", "http://127.0.0.1:65001/"]}"#;
        let v: Value = serde_json::from_str(&merge(Some(moved), &agent()).unwrap()).unwrap();
        assert_eq!(
            v["registry-mirrors"],
            serde_json::json!(["http://127.0.0.1:65001", "https://mirror.gcr.io"]),
            "moved to the front, not listed twice"
        );
    }
}
