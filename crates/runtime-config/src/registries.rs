//! Podman and CRI-O (`containers-registries.conf(5)`, version 2 format): the agent merged as
//! the first mirror of Docker Hub's `[[registry]]` entry, everything else in the file kept
//! byte for byte (comments included).
//!
//! Like Docker, only Docker Hub is mirrored: a mirror here gets no hint of which registry an
//! image came from (containerd's `ns` parameter), and the agent treats such requests as
//! Docker Hub's.

use crate::{AgentUrl, DOCKER_HUB};
use toml_edit::{value, ArrayOfTables, DocumentMut, Item, Table};

/// The system-wide registries configuration.
pub const DEFAULT_REGISTRIES_CONF: &str = "/etc/containers/registries.conf";

/// `registries.conf` with the agent as Docker Hub's first mirror.
pub fn merge(existing: Option<&str>, agent: &AgentUrl) -> Result<String, String> {
    let mut doc = parse(existing)?;
    let registries = doc
        .entry("registry")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or("`registry` is not a list of [[registry]] tables")?;
    let found = registries.iter().position(is_hub);
    let hub = match found {
        Some(i) => i,
        None => {
            let mut t = Table::new();
            t["prefix"] = value(DOCKER_HUB);
            t["location"] = value(DOCKER_HUB);
            registries.push(t);
            registries.len() - 1
        }
    };
    let table = registries
        .get_mut(hub)
        .ok_or("the Docker Hub entry vanished")?;
    let mirrors = table
        .entry("mirror")
        .or_insert(Item::ArrayOfTables(ArrayOfTables::new()))
        .as_array_of_tables_mut()
        .ok_or("`registry.mirror` is not a list of [[registry.mirror]] tables")?;
    let mut ours = Table::new();
    ours["location"] = value(agent.authority.clone());
    if agent.insecure() {
        ours["insecure"] = value(true);
    }
    let others: Vec<Table> = mirrors
        .iter()
        .filter(|m| !is_agent(m, agent))
        .cloned()
        .collect();
    mirrors.clear();
    mirrors.push(ours);
    for m in others {
        mirrors.push(m);
    }
    Ok(doc.to_string())
}

/// What is wrong with `existing` for `agent`, if anything.
pub fn check(existing: Option<&str>, agent: &AgentUrl) -> Result<Vec<String>, String> {
    let doc = parse(existing)?;
    let hub = doc
        .get("registry")
        .and_then(Item::as_array_of_tables)
        .and_then(|r| r.iter().find(|t| is_hub(t)));
    let first = hub
        .and_then(|t| t.get("mirror"))
        .and_then(Item::as_array_of_tables)
        .and_then(|m| m.iter().next());
    Ok(match first {
        Some(m) if is_agent(m, agent) => {
            let insecure = m.get("insecure").and_then(Item::as_bool) == Some(true);
            if agent.insecure() && !insecure {
                vec![format!(
                    "the mirror {} lacks insecure = true: Podman refuses a plain-http mirror",
                    agent.authority
                )]
            } else {
                Vec::new()
            }
        }
        Some(_) => vec![format!(
            "{} is not Docker Hub's first mirror: Podman and CRI-O try the others first",
            agent.authority
        )],
        None => vec![format!(
            "Docker Hub has no mirror {}: Podman and CRI-O pull without the agent; run `pollen registries-config`",
            agent.authority
        )],
    })
}

fn parse(existing: Option<&str>) -> Result<DocumentMut, String> {
    let doc: DocumentMut = existing
        .unwrap_or("")
        .parse()
        .map_err(|e: toml_edit::TomlError| e.to_string())?;
    if doc.get("registries").is_some() {
        return Err("it is in the version 1 format ([registries.search] ...), which cannot \
                    have mirrors; convert it to [[registry]] tables (containers-registries.conf(5))"
            .into());
    }
    Ok(doc)
}

/// Docker Hub's entry: `prefix = "docker.io"`, or no prefix and `location = "docker.io"`.
fn is_hub(t: &Table) -> bool {
    let get = |k: &str| t.get(k).and_then(Item::as_str);
    match get("prefix") {
        Some(prefix) => prefix == DOCKER_HUB,
        None => get("location") == Some(DOCKER_HUB),
    }
}

fn is_agent(mirror: &Table, agent: &AgentUrl) -> bool {
    mirror.get("location").and_then(Item::as_str) == Some(agent.authority.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> AgentUrl {
        AgentUrl::parse("http://127.0.0.1:65001").unwrap()
    }

    /// Fedora's shipped file, shortened: comments, search list, short-name mode, one entry.
    const FEDORA: &str = r#"# For more information on this configuration file, see containers-registries.conf(5).
unqualified-search-registries = ["registry.fedoraproject.org", "registry.access.redhat.com", "docker.io"]

short-name-mode = "enforcing"

[[registry]]
prefix = "quay.io/internal"
location = "registry.internal:5000/quay"
insecure = true

[[registry]]
location = "docker.io"

[[registry.mirror]]
location = "mirror.gcr.io"
"#;

    #[test]
    fn the_agent_becomes_docker_hubs_first_mirror_and_the_rest_stays() {
        let out = merge(Some(FEDORA), &agent()).unwrap();
        assert!(out.starts_with("# For more information"), "comments kept");
        let v: toml::Table = out.parse().unwrap();
        assert_eq!(v["short-name-mode"].as_str(), Some("enforcing"));
        let regs = v["registry"].as_array().unwrap();
        assert_eq!(regs.len(), 2);
        assert_eq!(
            regs[0]["location"].as_str(),
            Some("registry.internal:5000/quay")
        );
        let mirrors = regs[1]["mirror"].as_array().unwrap();
        assert_eq!(mirrors[0]["location"].as_str(), Some("127.0.0.1:65001"));
        assert_eq!(mirrors[0]["insecure"].as_bool(), Some(true));
        assert_eq!(mirrors[1]["location"].as_str(), Some("mirror.gcr.io"));
        assert_eq!(merge(Some(&out), &agent()).unwrap(), out, "idempotent");
        assert!(check(Some(&out), &agent()).unwrap().is_empty());
        assert_eq!(check(Some(FEDORA), &agent()).unwrap().len(), 1);
    }

    #[test]
    fn no_file_an_empty_one_and_the_old_format() {
        let fresh = merge(None, &agent()).unwrap();
        let v: toml::Table = fresh.parse().unwrap();
        let hub = &v["registry"].as_array().unwrap()[0];
        assert_eq!(hub["prefix"].as_str(), Some("docker.io"));
        assert!(check(Some(&fresh), &agent()).unwrap().is_empty());
        assert_eq!(check(None, &agent()).unwrap().len(), 1);
        let v1 = "[registries.search]\nregistries = ['docker.io']\n";
        assert!(merge(Some(v1), &agent()).is_err());
        assert!(merge(Some("registry = 3"), &agent()).is_err());
        assert!(merge(Some("[[registry"), &agent()).is_err());
    }
}
