//! Agent settings: flags over environment (`POLLEN_...`) over the TOML file over defaults.
//! The swarm and peer settings are resolved in [`p2p`], the listener for other sites in
//! [`sites`].

mod p2p;
mod sites;

pub use p2p::*;

use clap::Args;
use serde::Deserialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Where the runtime reaches the mirror. Outside Linux's ephemeral port range, so it never
/// collides with an outgoing connection's port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:65001";
/// Prometheus metrics, `/status` (what `pollen status` reads), `/healthz`, `/readyz`.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:65002";
/// The control socket (preheat, doctor, the full status) when running as root; other users
/// get `$XDG_RUNTIME_DIR/pollen/control.sock`. Only its owner may connect (mode 0600).
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/pollen/control.sock";
/// `--control-socket off`: no control socket (preheat and doctor are then unavailable).
pub const CONTROL_SOCKET_OFF: &str = "off";
/// The data dir when running as root; other users get `~/.local/share/pollen`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/pollen";
/// Docker Hub, which Docker Engine means when it sends no `ns`.
pub const DEFAULT_UPSTREAM: &str = pollen_upstream::DOCKER_HUB_URL;
pub const DEFAULT_CACHE_SIZE: &str = "20GiB";
/// Largest blob fetched or accepted from a peer (the agent's own default).
pub const DEFAULT_MAX_BLOB_SIZE: &str = "64GiB";
pub const DEFAULT_TAG_TTL: &str = "10s";
/// At SIGTERM, responses in progress get this long to finish (under Kubernetes' 30 s).
pub const DEFAULT_DRAIN_TIMEOUT: &str = "20s";
/// Cached objects not pulled for a month go (the agent's own default).
pub const DEFAULT_CACHE_MAX_AGE: &str = "30days";
pub const DEFAULT_CONNECT_TIMEOUT: &str = "5s";
pub const DEFAULT_RESPONSE_TIMEOUT: &str = "30s";
pub const DEFAULT_IDLE_TIMEOUT: &str = "30s";

/// `pollen agent` flags. Each is optional here so that "not given" can fall through to the
/// environment, then the config file, then the default.
#[derive(Args, Clone, Debug, Default)]
pub struct AgentArgs {
    /// TOML config file; its keys are the flag names with '_' for '-'.
    #[arg(long, env = "POLLEN_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address the registry mirror listens on [default: 127.0.0.1:65001]
    #[arg(long, env = "POLLEN_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// Address other sites reach this agent on as their upstream: the mirror API over TLS, only to clients that authenticate (needs --serve-tls-cert, --serve-tls-key and --serve-tokens or --serve-client-ca; docs/sites.md) [default: none]
    #[arg(long, env = "POLLEN_SERVE_LISTEN", value_name = "ADDR")]
    pub serve_listen: Option<SocketAddr>,
    /// PEM certificate chain of --serve-listen [default: none]
    #[arg(long, env = "POLLEN_SERVE_TLS_CERT", value_name = "FILE")]
    pub serve_tls_cert: Option<PathBuf>,
    /// PEM private key of --serve-listen's certificate [default: none]
    #[arg(long, env = "POLLEN_SERVE_TLS_KEY", value_name = "FILE")]
    pub serve_tls_key: Option<PathBuf>,
    /// File of tokens other sites may authenticate with on --serve-listen, one per line, at least 16 characters, not readable by other users; a site sends one as `Bearer` or as its Basic password [default: none]
    #[arg(long, env = "POLLEN_SERVE_TOKENS", value_name = "FILE")]
    pub serve_tokens: Option<PathBuf>,
    /// PEM CA certificates: a site showing a client certificate they signed may use --serve-listen [default: none]
    #[arg(long, env = "POLLEN_SERVE_CLIENT_CA", value_name = "FILE")]
    pub serve_client_ca: Option<PathBuf>,
    /// Where the cache lives; it survives restarts [default: /var/lib/pollen, or ~/.local/share/pollen when not root]
    #[arg(long, env = "POLLEN_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Upstream for requests without `ns` (Docker Engine, meaning Docker Hub); repeat for an ordered mirror list [default: https://registry-1.docker.io]
    #[arg(
        long,
        env = "POLLEN_UPSTREAM",
        value_name = "URL",
        value_delimiter = ';'
    )]
    pub upstream: Vec<String>,
    /// Ordered upstream list for requests whose `ns` is HOST, tried in turn (repeatable; `;` separates entries in the environment variable)
    #[arg(
        long = "registry",
        env = "POLLEN_REGISTRY",
        value_name = "HOST=URL[,URL...]",
        value_delimiter = ';'
    )]
    pub registries: Vec<String>,
    /// PEM file of root certificates to trust for upstream registries besides the built-in Mozilla roots: a private CA, or /etc/ssl/certs/ca-certificates.crt for the system's (repeatable; `;` separates entries in the environment variable) [default: none]
    #[arg(
        long = "ca-file",
        env = "POLLEN_CA_FILE",
        value_name = "FILE",
        value_delimiter = ';'
    )]
    pub ca_files: Vec<PathBuf>,
    /// Disk space the cache may use, e.g. 20GiB [default: 20GiB]
    #[arg(long, env = "POLLEN_CACHE_SIZE", value_name = "BYTES")]
    pub cache_size: Option<String>,
    /// Largest blob this node fetches; an upstream or peer claiming a bigger size is refused [default: 64GiB]
    #[arg(long, env = "POLLEN_MAX_BLOB_SIZE", value_name = "BYTES")]
    pub max_blob_size: Option<String>,
    /// Address for /metrics, /status (read by `pollen status`), /healthz and /readyz [default: 127.0.0.1:65002]
    #[arg(long, env = "POLLEN_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<SocketAddr>,
    /// Unix socket for `pollen status`, `pollen preheat` and `pollen doctor`: the full status, preheats and health checks, for the socket's owner only (mode 0600); `off` for none [default: /run/pollen/control.sock as root, else $XDG_RUNTIME_DIR/pollen/control.sock]
    #[arg(long, env = "POLLEN_CONTROL_SOCKET", value_name = "PATH")]
    pub control_socket: Option<PathBuf>,
    /// Client connections the mirror keeps open at most; at the cap the oldest is asked to close [default: 1024]
    #[arg(long, env = "POLLEN_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Connections the admin port (--metrics-listen) keeps open at most, and the control socket as many [default: 64]
    #[arg(long, env = "POLLEN_MAX_ADMIN_CONNECTIONS", value_name = "N")]
    pub max_admin_connections: Option<usize>,
    /// Log line format [default: text]
    #[arg(long, env = "POLLEN_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Delete cached blobs and manifests not pulled on this node for this long, e.g. 30d; 0 = only when the cache size needs the room [default: 30d]
    #[arg(long, env = "POLLEN_CACHE_MAX_AGE", value_name = "DURATION")]
    pub cache_max_age: Option<String>,
    /// At SIGTERM, how long the responses in progress may take to finish before downloads are checkpointed and the agent leaves the swarm [default: 20s]
    #[arg(long, env = "POLLEN_DRAIN_TIMEOUT", value_name = "DURATION")]
    pub drain_timeout: Option<String>,
    /// How long a tag's resolution is reused before asking the upstream again [default: 10s]
    #[arg(long, env = "POLLEN_TAG_TTL", value_name = "DURATION")]
    pub tag_ttl: Option<String>,
    /// Deadline for connecting to an upstream [default: 5s]
    #[arg(long, env = "POLLEN_CONNECT_TIMEOUT", value_name = "DURATION")]
    pub connect_timeout: Option<String>,
    /// Deadline for an upstream's response headers [default: 30s]
    #[arg(long, env = "POLLEN_RESPONSE_TIMEOUT", value_name = "DURATION")]
    pub response_timeout: Option<String>,
    /// Longest silence in an upstream transfer before it is retried elsewhere [default: 30s]
    #[arg(long, env = "POLLEN_IDLE_TIMEOUT", value_name = "DURATION")]
    pub idle_timeout: Option<String>,
    /// Share pieces with the other agents; false runs a single-node mirror with no swarm (no peers, nothing listens for them) [default: true]
    #[arg(long, env = "POLLEN_P2P", value_name = "true|false")]
    pub p2p: Option<bool>,
    /// Address the swarm listens on for peers, /ip4/ADDR/tcp/PORT or /ip6/ADDR/tcp/PORT (repeatable; `;` separates entries in the environment variable) [default: /ip4/0.0.0.0/tcp/65003]
    #[arg(
        long,
        env = "POLLEN_P2P_LISTEN",
        value_name = "MULTIADDR",
        value_delimiter = ';'
    )]
    pub p2p_listen: Vec<String>,
    /// Peer to dial at start and whenever not connected: a multiaddr, or dns:NAME:PORT for every address of a name such as a Kubernetes headless Service (repeatable; `;` separates entries in the environment variable) [default: none]
    #[arg(
        long,
        env = "POLLEN_BOOTSTRAP",
        value_name = "MULTIADDR|dns:NAME:PORT",
        value_delimiter = ';'
    )]
    pub bootstrap: Vec<String>,
    /// Find peers on the local network with mDNS [default: false]
    #[arg(long, env = "POLLEN_MDNS", value_name = "true|false")]
    pub mdns: Option<bool>,
    /// The cluster's swarm key file (make one with `pollen swarm-key`; the same on every agent, not readable by other users): only agents holding it can connect. Without it the swarm listens on loopback only [default: none]
    #[arg(long, env = "POLLEN_SWARM_KEY", value_name = "FILE")]
    pub swarm_key: Option<PathBuf>,
    /// Only these peers may connect, besides holding the swarm key: a PeerId as `pollen status` shows it (repeatable; `;` separates entries in the environment variable) [default: any peer with the key]
    #[arg(
        long,
        env = "POLLEN_ALLOW_PEER",
        value_name = "PEERID",
        value_delimiter = ';'
    )]
    pub allow_peer: Vec<String>,
    /// Piece size override, 64KiB to 64MiB; every agent of a cluster must use the same [default: automatic, 256KiB to 4MiB by blob size; past 2GiB more pieces, not bigger]
    #[arg(long, env = "POLLEN_PIECE_SIZE", value_name = "BYTES")]
    pub piece_size: Option<String>,
    /// Piece bytes sent to peers per second, all peers together, e.g. 100MiB; 0 = unlimited [default: 0]
    #[arg(long, env = "POLLEN_UPLOAD_LIMIT", value_name = "BYTES")]
    pub upload_limit: Option<String>,
    /// Piece bytes received from peers per second, all downloads together, e.g. 100MiB; 0 = unlimited [default: 0]
    #[arg(long, env = "POLLEN_DOWNLOAD_LIMIT", value_name = "BYTES")]
    pub download_limit: Option<String>,
    /// Peers served at once; more wait for a slot, then are told to look elsewhere; 0 = serve no peers [default: 8]
    #[arg(long, env = "POLLEN_MAX_UPLOAD_SESSIONS", value_name = "N")]
    pub max_upload_sessions: Option<usize>,
    /// Coordinate the blobs that rendezvous hashing gives this agent: tell each member which peers to ask and which one fetches from the upstream; on every agent by default, so a cluster fetches each blob once without any role flags [default: true, false with --p2p false]
    #[arg(long, env = "POLLEN_TRACKER", value_name = "true|false")]
    pub tracker: Option<bool>,
    /// For how long after start a pull on an agent that has no peer yet waits for the swarm (its bootstrap peers may start a moment later) instead of fetching alone from the upstream; 0s = never wait [default: 5s]
    #[arg(long, env = "POLLEN_SWARM_WAIT", value_name = "DURATION")]
    pub swarm_wait: Option<String>,
    /// On a tracker: the smallest part of a large blob given to one more fetcher, so new bytes enter the swarm through several nodes' uploads (at most 4); 0 = one fetcher per blob [default: 8MiB]
    #[arg(long, env = "POLLEN_SPLIT_MIN", value_name = "BYTES")]
    pub split_min: Option<String>,
    /// On a tracker: the most the registry may send of a large blob, in copies of it, while its fetchers get pieces much faster than the others get them from peers (a fast in-region registry); e.g. 4 lets about three nodes pull a blob directly besides the split fetch; 1 = each byte once [default: 1]
    #[arg(long, env = "POLLEN_UPSTREAM_BUDGET", value_name = "MULTIPLE")]
    pub upstream_budget: Option<f64>,
    /// Preferred by trackers for fetching from the upstream; typically a node with a good uplink and a large cache [default: false]
    #[arg(long, env = "POLLEN_SEED", value_name = "true|false")]
    pub seed: Option<bool>,
    /// A lazy range (a snapshotter reading a layer before it is here) takes its pieces from a peer that holds them before the registry is asked; the peer vouches for their hashes, the whole blob's digest checks them later; false: only this node's upstream answers ranges [default: true]
    #[arg(long, env = "POLLEN_LAZY_FROM_PEERS", value_name = "true|false")]
    pub lazy_from_peers: Option<bool>,
    /// This node's zone, the label `zone`: trackers name peers in the same zone first [default: none]
    #[arg(long, env = "POLLEN_ZONE", value_name = "NAME")]
    pub zone: Option<String>,
    /// This node's rack, the label `rack`: trackers name peers in the same rack first, and downloads take from other racks only what the rack lacks, each piece brought in once (docs/tracker.md, "Racks"); for the naming alone use --label [default: none]
    #[arg(long, env = "POLLEN_RACK", value_name = "NAME")]
    pub rack: Option<String>,
    /// More labels for trackers to match peers on, letters, digits and ._- only; at most 8 with --zone and --rack (repeatable; `;` separates entries in the environment variable) [default: none]
    #[arg(
        long = "label",
        env = "POLLEN_LABEL",
        value_name = "KEY=VALUE",
        value_delimiter = ';'
    )]
    pub labels: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The config file. Unknown keys are an error: a typo must not be silently ignored.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    listen: Option<SocketAddr>,
    serve_listen: Option<SocketAddr>,
    serve_tls_cert: Option<PathBuf>,
    serve_tls_key: Option<PathBuf>,
    serve_tokens: Option<PathBuf>,
    serve_client_ca: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    upstream: Option<OneOrMany>,
    /// `[registries]` table: host = ["url", ...]
    #[serde(default)]
    registries: HashMap<String, OneOrMany>,
    cache_size: Option<Size>,
    max_blob_size: Option<Size>,
    metrics_listen: Option<SocketAddr>,
    control_socket: Option<PathBuf>,
    max_connections: Option<usize>,
    max_admin_connections: Option<usize>,
    log_format: Option<LogFormat>,
    tag_ttl: Option<String>,
    drain_timeout: Option<String>,
    cache_max_age: Option<String>,
    connect_timeout: Option<String>,
    response_timeout: Option<String>,
    idle_timeout: Option<String>,
    p2p: Option<bool>,
    p2p_listen: Option<OneOrMany>,
    bootstrap: Option<OneOrMany>,
    mdns: Option<bool>,
    swarm_key: Option<PathBuf>,
    allow_peer: Option<OneOrMany>,
    piece_size: Option<Size>,
    upload_limit: Option<Size>,
    download_limit: Option<Size>,
    max_upload_sessions: Option<usize>,
    split_min: Option<Size>,
    upstream_budget: Option<f64>,
    tracker: Option<bool>,
    swarm_wait: Option<String>,
    seed: Option<bool>,
    lazy_from_peers: Option<bool>,
    zone: Option<String>,
    rack: Option<String>,
    /// `labels = { team = "storage" }`, or `"KEY=VALUE"` strings.
    labels: Option<FileLabels>,
    /// PEM files of extra root certificates (`--ca-file`).
    ca_files: Option<Vec<PathBuf>>,
    /// Refuse `ns` hosts that have no `[registries]` entry (default: allowed, fetched over https).
    allow_unlisted_registries: Option<bool>,
    #[serde(default)]
    credentials: Vec<FileCredentials>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }

    fn as_slice(&self) -> &[String] {
        match self {
            OneOrMany::One(s) => std::slice::from_ref(s),
            OneOrMany::Many(v) => v,
        }
    }
}

/// A size in the config file: `"16MiB"`, or a plain number of bytes (`upload_limit = 0`).
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum Size {
    Bytes(u64),
    Text(String),
}

impl Size {
    fn to_text(&self) -> String {
        match self {
            Size::Bytes(n) => n.to_string(),
            Size::Text(s) => s.clone(),
        }
    }
}

/// `[[credentials]]`: Basic credentials for one registry host, sent only to that host and to
/// the token realms bound to it (its own host, `realms`, auth.docker.io for Docker Hub).
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct FileCredentials {
    host: String,
    username: String,
    password: Option<String>,
    /// Read the password from a file (a mounted Secret), so it is not in the config.
    password_file: Option<PathBuf>,
    /// Token realm hosts (`host[:port]`) on another host than the registry that may receive
    /// these credentials, e.g. `["gitlab.com"]` for registry.gitlab.com [default: none].
    #[serde(default)]
    realms: Vec<String>,
}

/// The resolved settings the agent runs with.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub metrics_listen: SocketAddr,
    /// `None`: no control socket (`--control-socket off`, or no default for this user).
    pub control_socket: Option<PathBuf>,
    pub data_dir: PathBuf,
    pub cache_size: u64,
    pub log_format: LogFormat,
    pub agent: pollen_agent::AgentConfig,
    /// The swarm to start; `None` when peer-to-peer is off (`--p2p false`).
    pub swarm: Option<pollen_swarm::SwarmConfig>,
    /// The listener for other sites (`--serve-listen`), if any.
    pub sites: Option<(SocketAddr, pollen_agent::SiteServing)>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("config file {0}: {1}")]
    Parse(PathBuf, String),
    #[error("{key}: {msg}")]
    Invalid { key: &'static str, msg: String },
}

fn invalid(key: &'static str, msg: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        msg: msg.into(),
    }
}

/// The flag (or its environment variable), else the file's value, else the default.
fn pick(flag: Option<String>, file: Option<String>, default: &str) -> String {
    flag.or(file).unwrap_or_else(|| default.to_string())
}

impl Settings {
    pub fn resolve(args: AgentArgs) -> Result<Settings, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read(path.clone(), e))?;
                if text.len() > 1 << 20 {
                    return Err(ConfigError::Parse(path.clone(), "larger than 1 MiB".into()));
                }
                toml::from_str::<FileConfig>(&text)
                    .map_err(|e| ConfigError::Parse(path.clone(), e.to_string()))?
            }
            None => FileConfig::default(),
        };
        // Resolved before the fields below are moved out; its error is reported in its turn.
        let peer_settings = p2p::resolve(&args, &file);
        let cache_size = parse_size(
            "cache-size",
            &pick(
                args.cache_size,
                file.cache_size.as_ref().map(Size::to_text),
                DEFAULT_CACHE_SIZE,
            ),
        )?;
        let max_blob_size = parse_size(
            "max-blob-size",
            &pick(
                args.max_blob_size,
                file.max_blob_size.as_ref().map(Size::to_text),
                DEFAULT_MAX_BLOB_SIZE,
            ),
        )?;
        let duration = |key, flag: Option<String>, file: Option<String>, default| {
            parse_duration(key, &pick(flag, file, default))
        };
        let tag_ttl = duration("tag-ttl", args.tag_ttl, file.tag_ttl, DEFAULT_TAG_TTL)?;
        let cache_max_age = duration(
            "cache-max-age",
            args.cache_max_age,
            file.cache_max_age,
            DEFAULT_CACHE_MAX_AGE,
        )?;
        let drain_timeout = duration(
            "drain-timeout",
            args.drain_timeout,
            file.drain_timeout,
            DEFAULT_DRAIN_TIMEOUT,
        )?;
        let connect_timeout = duration(
            "connect-timeout",
            args.connect_timeout,
            file.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        )?;
        let response_timeout = duration(
            "response-timeout",
            args.response_timeout,
            file.response_timeout,
            DEFAULT_RESPONSE_TIMEOUT,
        )?;
        let idle_timeout = duration(
            "idle-timeout",
            args.idle_timeout,
            file.idle_timeout,
            DEFAULT_IDLE_TIMEOUT,
        )?;

        let (p2p, swarm) = peer_settings?;

        let default_mirrors = if !args.upstream.is_empty() {
            args.upstream
        } else {
            file.upstream
                .map(OneOrMany::into_vec)
                .unwrap_or_else(|| vec![DEFAULT_UPSTREAM.to_string()])
        };
        for url in &default_mirrors {
            check_url("upstream", url)?;
        }
        let mut registries: HashMap<String, Vec<String>> = file
            .registries
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.into_vec()))
            .collect();
        for entry in &args.registries {
            let (host, urls) = parse_registry_flag(entry)?;
            registries.insert(host, urls);
        }
        for (host, urls) in &registries {
            if urls.is_empty() {
                return Err(invalid(
                    "registry",
                    format!("{host} has an empty upstream list"),
                ));
            }
            for url in urls {
                check_url("registry", url)?;
            }
        }
        let mut credentials = HashMap::new();
        let mut realms = HashMap::new();
        for c in file.credentials {
            let host = c.host.to_ascii_lowercase();
            if let Some(bad) = c
                .realms
                .iter()
                .find(|r| r.is_empty() || r.contains(['/', '@', '?', '#']))
            {
                return Err(invalid(
                    "credentials",
                    format!("{host}: realms entry {bad:?} is not a host[:port]"),
                ));
            }
            if !c.realms.is_empty() {
                let bound = c
                    .realms
                    .iter()
                    .map(|r| r.to_ascii_lowercase())
                    .collect::<Vec<_>>();
                realms.insert(host.clone(), bound);
            }
            let password = match (c.password, c.password_file) {
                (Some(p), None) => p,
                (None, Some(f)) => std::fs::read_to_string(&f)
                    .map_err(|e| ConfigError::Read(f.clone(), e))?
                    .trim_end_matches(['\r', '\n'])
                    .to_string(),
                _ => {
                    return Err(invalid(
                        "credentials",
                        format!("{}: give exactly one of password and password_file", c.host),
                    ))
                }
            };
            credentials.insert(
                host,
                pollen_upstream::Credentials {
                    username: c.username,
                    password,
                },
            );
        }
        let ca_files = if args.ca_files.is_empty() {
            file.ca_files.unwrap_or_default()
        } else {
            args.ca_files
        };
        let mut extra_roots = Vec::new();
        for path in &ca_files {
            extra_roots
                .extend(pollen_upstream::load_roots(path).map_err(|e| invalid("ca-file", e))?);
        }
        let listen = args
            .listen
            .or(file.listen)
            .unwrap_or_else(|| parse_addr(DEFAULT_LISTEN));
        let metrics_listen = args
            .metrics_listen
            .or(file.metrics_listen)
            .unwrap_or_else(|| parse_addr(DEFAULT_METRICS_LISTEN));
        let sites = sites::resolve(sites::SiteKeys {
            listen: args.serve_listen.or(file.serve_listen),
            cert: args.serve_tls_cert.or(file.serve_tls_cert),
            key: args.serve_tls_key.or(file.serve_tls_key),
            tokens: args.serve_tokens.or(file.serve_tokens),
            client_ca: args.serve_client_ca.or(file.serve_client_ca),
        })?;
        let mut own_listeners = vec![listen, metrics_listen];
        own_listeners.extend(sites.as_ref().map(|(addr, _)| *addr));
        let upstream = pollen_upstream::UpstreamConfig {
            default_mirrors,
            extra_roots,
            registries,
            credentials,
            realms,
            // A redirect or token realm must never reach the agent itself.
            own_listeners,
            allow_unlisted_registries: file.allow_unlisted_registries.unwrap_or(true),
            connect_timeout,
            response_timeout,
            idle_timeout,
            ..Default::default()
        };
        Ok(Settings {
            listen,
            metrics_listen,
            control_socket: match args.control_socket.or(file.control_socket) {
                Some(p) if p.as_os_str() == CONTROL_SOCKET_OFF => None,
                Some(p) => Some(p),
                None => default_control_socket(),
            },
            data_dir: args
                .data_dir
                .or(file.data_dir)
                .unwrap_or_else(default_data_dir),
            cache_size,
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
            agent: pollen_agent::AgentConfig {
                upstream,
                tag_ttl,
                p2p,
                drain_timeout,
                cache_max_age,
                max_connections: args
                    .max_connections
                    .or(file.max_connections)
                    .unwrap_or(pollen_agent::DEFAULT_MAX_CONNECTIONS),
                max_admin_connections: args
                    .max_admin_connections
                    .or(file.max_admin_connections)
                    .unwrap_or(pollen_agent::DEFAULT_MAX_ADMIN_CONNECTIONS),
                max_blob_size,
                ..Default::default()
            },
            swarm,
            sites,
        })
    }
}

fn parse_addr(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}

/// `HOST=URL[,URL...]`
fn parse_registry_flag(s: &str) -> Result<(String, Vec<String>), ConfigError> {
    let (host, urls) = s.split_once('=').ok_or_else(|| {
        invalid(
            "registry",
            format!("{s:?} should look like HOST=URL[,URL...]"),
        )
    })?;
    let host = host.trim().to_ascii_lowercase();
    if host.is_empty() || host.contains('/') {
        return Err(invalid(
            "registry",
            format!("{s:?}: HOST is a registry host[:port], without scheme or path"),
        ));
    }
    let urls: Vec<String> = urls
        .split(',')
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty())
        .collect();
    Ok((host, urls))
}

fn check_url(key: &'static str, url: &str) -> Result<(), ConfigError> {
    let ok = url.parse::<http::Uri>().ok().is_some_and(|u| {
        matches!(u.scheme_str(), Some("http" | "https"))
            && u.authority().is_some()
            && u.query().is_none()
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            key,
            format!("{url:?} is not an http:// or https:// URL"),
        ))
    }
}

pub fn parse_size(key: &'static str, s: &str) -> Result<u64, ConfigError> {
    s.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| invalid(key, format!("{s:?} is not a size like 20GiB or 500MB: {e}")))
}

pub fn parse_duration(key: &'static str, s: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(s.trim())
        .map_err(|e| invalid(key, format!("{s:?} is not a duration like 30s or 5m: {e}")))
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
    })
}

/// The control socket when none is given: the system path for root, the user's runtime dir
/// otherwise; `None` when there is no runtime dir (the agent then runs without one).
pub fn default_control_socket() -> Option<PathBuf> {
    if is_root() {
        return Some(PathBuf::from(DEFAULT_CONTROL_SOCKET));
    }
    std::env::var_os("XDG_RUNTIME_DIR")
        .filter(|d| !d.is_empty())
        .map(|d| PathBuf::from(d).join("pollen/control.sock"))
}

/// Where the cache goes when no data dir is given: the system path for root, the user's data
/// dir otherwise, so `pollen agent` with no flags starts for anyone.
pub fn default_data_dir() -> PathBuf {
    if is_root() {
        return PathBuf::from(DEFAULT_DATA_DIR);
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .map(|d| d.join("pollen"))
        .unwrap_or_else(|| PathBuf::from("pollen-data"))
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
