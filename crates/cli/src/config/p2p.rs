//! The swarm and peer settings: `--p2p`, who may join (`--swarm-key`, `--allow-peer`), where
//! the swarm listens and whom it dials, the piece
//! size and rate limits, and this node's roles (`--tracker`, `--seed`) and labels (`--zone`,
//! `--rack`, `--label`).

use super::{invalid, parse_size, pick, AgentArgs, ConfigError, FileConfig, OneOrMany, Size};
use serde::Deserialize;
use std::collections::BTreeMap;

/// Peer-to-peer on: the agent joins the swarm and shares pieces with the other agents.
pub const DEFAULT_P2P: bool = true;
/// Every interface, TCP port 65003 (like 65001 and 65002, above Linux's ephemeral range).
pub const DEFAULT_P2P_LISTEN: &str = pollen_swarm::config::DEFAULT_LISTEN;
/// mDNS is off: it is often blocked inside clusters, where `--bootstrap dns:...` is the way.
pub const DEFAULT_MDNS: bool = false;
/// Piece bytes per second to and from peers; 0 is unlimited.
pub const DEFAULT_UPLOAD_LIMIT: &str = "0";
pub const DEFAULT_DOWNLOAD_LIMIT: &str = "0";
pub const DEFAULT_MAX_UPLOAD_SESSIONS: usize = pollen_peer::DEFAULT_MAX_UPLOAD_SESSIONS;
/// Every agent coordinates the blobs that rendezvous hashing gives it (when peer-to-peer is
/// on): a cluster installed with no role flags fetches each blob from the upstream once.
pub const DEFAULT_TRACKER: bool = pollen_agent::DEFAULT_TRACKER;
/// How long after start a pull waits for the first peer (`--swarm-wait`).
pub const DEFAULT_SWARM_WAIT: &str = "5s";
/// A tracker gives another fetcher a part of a blob once each part is at least this large.
pub const DEFAULT_SPLIT_MIN: &str = "8MiB";
/// A tracker lets the registry send each byte once (`--upstream-budget`; docs/tracker.md says
/// why 1 and what more buys).
pub const DEFAULT_UPSTREAM_BUDGET: f64 = pollen_agent::DEFAULT_UPSTREAM_BUDGET;
/// Beyond this many copies a node might as well pull directly.
pub const MAX_UPSTREAM_BUDGET: f64 = 1000.0;
/// A node is a seed only when asked to (`--seed true`).
pub const DEFAULT_SEED: bool = false;
/// The smallest non-zero rate limit. Piece bodies are sent in 64 KiB chunks; much below one
/// chunk a second, a peer waiting for the next chunk times out (its stall deadline is 30s)
/// and the limit turns into failed sessions instead of slow ones.
pub const MIN_RATE_LIMIT: u64 = 64 * 1024;
/// More upload sessions than this would only hold streams and buffers for peers that are
/// better served by another node.
pub const MAX_UPLOAD_SESSIONS: usize = 1024;
/// Labels in all, `--zone` and `--rack` included (what a tracker accepts).
pub const MAX_LABELS: usize = pollen_proto::MAX_LABELS;
/// Longest label key or value in bytes.
pub const MAX_LABEL_LEN: usize = pollen_proto::MAX_LABEL_LEN;

/// The `labels` file key: a table (`labels = { team = "storage" }`) or `"KEY=VALUE"` strings.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub(super) enum FileLabels {
    Table(BTreeMap<String, String>),
    List(OneOrMany),
}

/// The peer settings, and the swarm to start (`None` when peer-to-peer is off).
pub(super) fn resolve(
    args: &AgentArgs,
    file: &FileConfig,
) -> Result<(pollen_agent::P2pConfig, Option<pollen_swarm::SwarmConfig>), ConfigError> {
    let p2p_enabled = args.p2p.or(file.p2p).unwrap_or(DEFAULT_P2P);
    let default_listen = [DEFAULT_P2P_LISTEN.to_string()];
    let listen_addrs = if !args.p2p_listen.is_empty() {
        args.p2p_listen.as_slice()
    } else {
        file.p2p_listen
            .as_ref()
            .map_or(&default_listen[..], OneOrMany::as_slice)
    };
    let p2p_listen = listen_addrs
        .iter()
        .map(|a| parse_p2p_listen(a))
        .collect::<Result<Vec<_>, _>>()?;
    if p2p_listen.is_empty() && p2p_enabled {
        return Err(invalid(
            "p2p-listen",
            "no address given: give at least one, or turn peer-to-peer off with --p2p false",
        ));
    }
    let bootstrap_entries = if !args.bootstrap.is_empty() {
        args.bootstrap.as_slice()
    } else {
        file.bootstrap.as_ref().map_or(&[][..], OneOrMany::as_slice)
    };
    let bootstrap = bootstrap_entries
        .iter()
        .map(|b| parse_bootstrap(b))
        .collect::<Result<Vec<_>, _>>()?;
    let piece_size = args
        .piece_size
        .clone()
        .or(file.piece_size.as_ref().map(Size::to_text))
        .map(|s| parse_piece_size(&s))
        .transpose()?;
    let upload_limit = parse_rate(
        "upload-limit",
        &pick(
            args.upload_limit.clone(),
            file.upload_limit.as_ref().map(Size::to_text),
            DEFAULT_UPLOAD_LIMIT,
        ),
    )?;
    let download_limit = parse_rate(
        "download-limit",
        &pick(
            args.download_limit.clone(),
            file.download_limit.as_ref().map(Size::to_text),
            DEFAULT_DOWNLOAD_LIMIT,
        ),
    )?;
    let max_upload_sessions = args
        .max_upload_sessions
        .or(file.max_upload_sessions)
        .unwrap_or(DEFAULT_MAX_UPLOAD_SESSIONS);
    if max_upload_sessions > MAX_UPLOAD_SESSIONS {
        return Err(invalid(
            "max-upload-sessions",
            format!(
                "{max_upload_sessions} is more than {MAX_UPLOAD_SESSIONS}; peers are better served by other nodes than by a long queue here (0 serves no peers)"
            ),
        ));
    }
    let split_min = parse_size(
        "split-min",
        &pick(
            args.split_min.clone(),
            file.split_min.as_ref().map(Size::to_text),
            DEFAULT_SPLIT_MIN,
        ),
    )?;
    let upstream_budget = args
        .upstream_budget
        .or(file.upstream_budget)
        .unwrap_or(DEFAULT_UPSTREAM_BUDGET);
    if !(1.0..=MAX_UPSTREAM_BUDGET).contains(&upstream_budget) {
        return Err(invalid(
            "upstream-budget",
            format!(
                "{upstream_budget} is not a multiple of the blob's size from 1 to {MAX_UPSTREAM_BUDGET}; 1 sends each byte once"
            ),
        ));
    }
    // The default follows --p2p: only an explicit `--tracker true` with it off is an error.
    let tracker = args
        .tracker
        .or(file.tracker)
        .unwrap_or(DEFAULT_TRACKER && p2p_enabled);
    let swarm_wait = super::parse_duration(
        "swarm-wait",
        &pick(
            args.swarm_wait.clone(),
            file.swarm_wait.clone(),
            DEFAULT_SWARM_WAIT,
        ),
    )?;
    let seed = args.seed.or(file.seed).unwrap_or(DEFAULT_SEED);
    if !p2p_enabled && tracker {
        return Err(invalid(
            "tracker",
            "a tracker coordinates blobs among peers, and peer-to-peer is off (--p2p false); drop --tracker true, or turn peer-to-peer on",
        ));
    }
    if !p2p_enabled && seed {
        return Err(invalid(
            "seed",
            "a seed fetches blobs from the upstream for its peers, and peer-to-peer is off (--p2p false); drop --seed true, or turn peer-to-peer on",
        ));
    }
    let mut p2p = pollen_agent::P2pConfig {
        upload_limit,
        download_limit,
        max_upload_sessions,
        tracker,
        swarm_wait,
        split_min,
        upstream_budget,
        seed,
        lazy_from_peers: args
            .lazy_from_peers
            .or(file.lazy_from_peers)
            .unwrap_or(pollen_agent::DEFAULT_LAZY_FROM_PEERS),
        labels: labels(args, file)?,
        ..Default::default()
    };
    p2p.session.piece_size = piece_size;
    if !p2p_enabled {
        return Ok((p2p, None));
    }
    let (swarm_key, allow_peers) = admission(args, file, &p2p_listen)?;
    let swarm = pollen_swarm::SwarmConfig {
        listen: p2p_listen,
        bootstrap,
        mdns: args.mdns.or(file.mdns).unwrap_or(DEFAULT_MDNS),
        swarm_key,
        allow_peers,
        ..Default::default()
    };
    Ok((p2p, Some(swarm)))
}

/// Who may join: the swarm key (`--swarm-key`) and the allow-list (`--allow-peer`). Without a
/// key every listen address must be loopback, or anyone reaching the port could join.
fn admission(
    args: &AgentArgs,
    file: &FileConfig,
    listen: &[pollen_swarm::Multiaddr],
) -> Result<(Option<pollen_swarm::SwarmKey>, Vec<pollen_swarm::PeerId>), ConfigError> {
    let swarm_key = args
        .swarm_key
        .as_ref()
        .or(file.swarm_key.as_ref())
        .map(|path| pollen_swarm::SwarmKey::load(path))
        .transpose()
        .map_err(|e| invalid("swarm-key", e.to_string()))?;
    if swarm_key.is_none() {
        if let Some(addr) = listen.iter().find(|a| !pollen_swarm::is_loopback_listen(a)) {
            return Err(invalid(
                "swarm-key",
                format!(
                    "peer-to-peer is on without a swarm key, so anyone reaching {addr} could join the swarm; run `pollen swarm-key > /etc/pollen/swarm.key` once, give that file to every agent with --swarm-key /etc/pollen/swarm.key, or run without peers with --p2p false (a keyless swarm may listen on 127.0.0.1 only)"
                ),
            ));
        }
    }
    let entries = if !args.allow_peer.is_empty() {
        args.allow_peer.as_slice()
    } else {
        file.allow_peer
            .as_ref()
            .map_or(&[][..], OneOrMany::as_slice)
    };
    let allow_peers = entries
        .iter()
        .map(|p| parse_peer_id(p))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((swarm_key, allow_peers))
}

/// An `--allow-peer` entry: a PeerId such as `12D3KooW…`.
pub fn parse_peer_id(s: &str) -> Result<pollen_swarm::PeerId, ConfigError> {
    s.trim().parse().map_err(|e| {
        invalid(
            "allow-peer",
            format!("{s:?} is not a PeerId ({e}); give one as `pollen status` shows it, e.g. 12D3KooW..."),
        )
    })
}

/// `zone` (`--zone`), `rack` (`--rack`), then the `--label`s in the order given. `--label`s
/// (from the flag or the environment) replace the file's `labels` as a whole.
fn labels(args: &AgentArgs, file: &FileConfig) -> Result<Vec<(String, String)>, ConfigError> {
    let mut labels = Vec::new();
    for (key, value) in [
        ("zone", args.zone.as_ref().or(file.zone.as_ref())),
        ("rack", args.rack.as_ref().or(file.rack.as_ref())),
    ] {
        let Some(value) = value else { continue };
        let value = value.trim();
        if value.is_empty() {
            return Err(invalid(
                key,
                format!("the name is empty; give one such as {key}-1, or leave --{key} out"),
            ));
        }
        check_label_part(key, "name", value)?;
        labels.push((key.to_string(), value.to_string()));
    }
    let more = if !args.labels.is_empty() {
        args.labels
            .iter()
            .map(|l| parse_label(l))
            .collect::<Result<Vec<_>, _>>()?
    } else {
        match &file.labels {
            None => Vec::new(),
            Some(FileLabels::List(list)) => list
                .as_slice()
                .iter()
                .map(|l| parse_label(l))
                .collect::<Result<_, _>>()?,
            Some(FileLabels::Table(table)) => {
                let mut pairs = Vec::new();
                for (k, v) in table {
                    pairs.push(check_label(k, v)?);
                }
                pairs
            }
        }
    };
    for (key, value) in more {
        if labels.iter().any(|(k, _)| *k == key) {
            let why = if key == "zone" || key == "rack" {
                format!(" (--{key} sets the label {key})")
            } else {
                String::new()
            };
            return Err(invalid(
                "label",
                format!("the key {key:?} is given twice{why}; give each key once"),
            ));
        }
        labels.push((key, value));
    }
    if labels.len() > MAX_LABELS {
        return Err(invalid(
            "label",
            format!(
                "{} labels given, at most {MAX_LABELS} (--zone and --rack count as labels); keep the ones trackers should match peers on",
                labels.len()
            ),
        ));
    }
    Ok(labels)
}

/// A `--label` entry: `KEY=VALUE`.
pub fn parse_label(s: &str) -> Result<(String, String), ConfigError> {
    let (key, value) = s.split_once('=').ok_or_else(|| {
        invalid(
            "label",
            format!("{s:?} should look like KEY=VALUE, e.g. team=storage"),
        )
    })?;
    check_label(key, value)
}

fn check_label(key: &str, value: &str) -> Result<(String, String), ConfigError> {
    let (key, value) = (key.trim(), value.trim());
    if key.is_empty() {
        return Err(invalid(
            "label",
            format!("\"={value}\" has an empty key; give KEY=VALUE, e.g. team=storage"),
        ));
    }
    check_label_part("label", "key", key)?;
    check_label_part("label", "value", value)?;
    Ok((key.to_string(), value.to_string()))
}

/// A label key or value: at most `MAX_LABEL_LEN` bytes of `[A-Za-z0-9._-]`.
fn check_label_part(flag: &'static str, what: &str, s: &str) -> Result<(), ConfigError> {
    if s.len() > MAX_LABEL_LEN {
        return Err(invalid(
            flag,
            format!(
                "the {what} {:?}... is {} bytes, longer than {MAX_LABEL_LEN}",
                s.chars().take(16).collect::<String>(),
                s.len()
            ),
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(invalid(
            flag,
            format!(
                "the {what} {s:?} has {c:?}; use only letters, digits, '.', '_' and '-' (A-Z, a-z, 0-9)"
            ),
        ));
    }
    Ok(())
}

/// A rate in bytes per second: `100MiB` (or `100MiB/s`); `0` is unlimited.
pub fn parse_rate(key: &'static str, s: &str) -> Result<u64, ConfigError> {
    let trimmed = s.trim();
    let bytes = trimmed.strip_suffix("/s").unwrap_or(trimmed);
    let rate = bytes.trim().parse::<bytesize::ByteSize>().map_err(|e| {
        invalid(
            key,
            format!("{s:?} is not a rate like 100MiB (bytes per second; 0 = unlimited): {e}"),
        )
    })?;
    let rate = rate.as_u64();
    if rate != 0 && rate < MIN_RATE_LIMIT {
        return Err(invalid(
            key,
            format!(
                "{s:?} is below the smallest limit, 64KiB per second (peers would time out waiting for the next chunk); give at least 64KiB, or 0 for unlimited"
            ),
        ));
    }
    Ok(rate)
}

/// The piece size override: a size from `MIN_PIECE_SIZE` to `MAX_PIECE_SIZE`.
pub fn parse_piece_size(s: &str) -> Result<u32, ConfigError> {
    let bytes = parse_size("piece-size", s)?;
    let (min, max) = (pollen_proto::MIN_PIECE_SIZE, pollen_proto::MAX_PIECE_SIZE);
    match u32::try_from(bytes) {
        Ok(n) if (min..=max).contains(&n) => Ok(n),
        _ => Err(invalid(
            "piece-size",
            format!(
                "{s:?} is outside 64KiB..=64MiB; give a size in that range (the same on every agent), or leave it out for the automatic size"
            ),
        )),
    }
}

/// A swarm listen address: `/ip4/ADDR/tcp/PORT` or `/ip6/ADDR/tcp/PORT` (port 0 picks a free
/// one). The swarm's transport is TCP only, so anything else could never be bound.
pub fn parse_p2p_listen(s: &str) -> Result<pollen_swarm::Multiaddr, ConfigError> {
    let hint = "give /ip4/ADDR/tcp/PORT or /ip6/ADDR/tcp/PORT, e.g. /ip4/0.0.0.0/tcp/65003";
    let addr: pollen_swarm::Multiaddr = s.trim().parse().map_err(|e| {
        invalid(
            "p2p-listen",
            format!("{s:?} is not a multiaddr ({e}); {hint}"),
        )
    })?;
    let text = addr.to_string();
    let parts: Vec<&str> = text.split('/').collect();
    match parts.as_slice() {
        ["", "ip4" | "ip6", _, "tcp", _] => Ok(addr),
        _ => Err(invalid(
            "p2p-listen",
            format!("{s:?} cannot be listened on; {hint}"),
        )),
    }
}

/// A bootstrap entry: a multiaddr or `dns:NAME:PORT`.
pub fn parse_bootstrap(s: &str) -> Result<pollen_swarm::Bootstrap, ConfigError> {
    s.trim().parse().map_err(|e| {
        invalid(
            "bootstrap",
            format!("{e}; give a multiaddr like /ip4/10.0.0.7/tcp/65003 or dns:NAME:PORT like dns:pollen.kube-system.svc.cluster.local:65003"),
        )
    })
}

/// The roles for the start-up log line, as `pollen status` names them.
pub fn roles(p2p: &pollen_agent::P2pConfig) -> Vec<&'static str> {
    [(p2p.tracker, "tracker"), (p2p.seed, "seed")]
        .into_iter()
        .filter_map(|(on, name)| on.then_some(name))
        .collect()
}

/// The labels for the start-up log line: `zone=z1`, ...
pub fn label_strings(p2p: &pollen_agent::P2pConfig) -> Vec<String> {
    p2p.labels.iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// A swarm key file (mode 600) for the configuration tests, made once per test process.
#[cfg(test)]
pub(crate) fn test_swarm_key_file() -> std::path::PathBuf {
    use std::os::unix::fs::OpenOptionsExt;
    use std::sync::OnceLock;
    static PATH: OnceLock<std::path::PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let path =
            std::env::temp_dir().join(format!("pollen-test-{}.swarm.key", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .unwrap();
        let key = pollen_swarm::SwarmKey::generate().unwrap();
        std::io::Write::write_all(&mut f, key.to_key_file().as_bytes()).unwrap();
        path
    })
    .clone()
}

#[cfg(test)]
#[path = "p2p_tests.rs"]
mod tests;
