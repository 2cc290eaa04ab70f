//! What a node listens on, whom it dials first, and how long its announcements live.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use libp2p::{Multiaddr, PeerId};

use crate::key::SwarmKey;
use crate::limits::Limits;

/// The swarm's TCP port. Like the mirror (65001) and metrics (65002) ports it sits above Linux's
/// ephemeral range (32768–60999), so an outgoing connection never holds it.
pub const DEFAULT_LISTEN: &str = "/ip4/0.0.0.0/tcp/65003";

/// How long other nodes keep naming us as a provider of a blob after our last announcement.
/// A node that dies (or drops a blob) stops being named within about this long.
pub const DEFAULT_PROVIDER_TTL: Duration = Duration::from_secs(60);

/// How long a connection with no open stream stays up. Long enough that a burst of piece
/// requests to the same peer reuses one connection (one handshake), short enough that a node
/// does not hold sockets to every peer it ever talked to.
pub const DEFAULT_IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(60);

/// The bound on a provider lookup (and on every Kademlia query). Inside a cluster a lookup
/// takes milliseconds; peers that do not answer within this are treated as absent.
pub const DEFAULT_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often bootstrap DNS names are resolved again and unconnected bootstrap targets
/// re-dialled: a Kubernetes headless Service gains and loses pods all the time.
pub const DEFAULT_BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(30);

/// How often each connection is pinged. TCP alone notices a dead link only when its
/// retransmissions give up (minutes): a link that went down and came back left connections
/// that looked open while every stream and query on them waited out its timeout (the link-cut
/// e2e, tests/e2e/netfaults.sh). Pings find them; the event loop closes them, and the nodes
/// dial afresh.
pub const DEFAULT_PING_INTERVAL: Duration = Duration::from_secs(5);

/// How long a ping may take before it fails. Generous: a ping queues behind piece data on a
/// busy connection, and closing a live one costs a transfer. libp2p-ping closes nothing on
/// the first failure and opens a new substream for the next ping (its negotiation times out
/// after a fixed 10 s), so a dead connection is closed about 2 × interval + timeout + 10 s
/// (30 s) after it died.
pub const DEFAULT_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The security upgrade chosen by measurement (`docs/transport.md`): TLS 1.3 with AES-GCM
/// carried one stream at ~1.2 GB/s on the 2-core test machine, noise (ChaCha20-Poly1305) at
/// ~0.5 GB/s with nearly twice the CPU per byte.
pub const DEFAULT_SECURITY: Security = Security::Tls;

/// The authenticated encryption of every connection. Every node of a cluster must use the
/// same one: there is no fallback, so a mismatch fails loudly at the first dial instead of
/// silently running the slower cipher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Security {
    /// TLS 1.3 with libp2p certificates (`/tls/1.0.0`), AES-GCM preferred.
    Tls,
    /// Noise XX with X25519 and ChaCha20-Poly1305 (`/noise`).
    Noise,
}

impl FromStr for Security {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Security, ConfigError> {
        match s {
            "tls" => Ok(Security::Tls),
            "noise" => Ok(Security::Noise),
            other => Err(ConfigError(format!(
                "unknown security {other:?} (expected \"tls\" or \"noise\")"
            ))),
        }
    }
}

impl fmt::Display for Security {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Security::Tls => "tls",
            Security::Noise => "noise",
        })
    }
}

/// A node to dial at start and again every [`SwarmConfig::bootstrap_interval`] while we are
/// not connected to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bootstrap {
    /// A fixed address, with or without a `/p2p/<peer id>` suffix.
    Addr(Multiaddr),
    /// A DNS name resolved by the system resolver; every A/AAAA record is a dial target. This
    /// is how a Kubernetes headless Service names all agent pods at once. Written
    /// `dns:NAME:PORT`.
    Dns { name: String, port: u16 },
}

impl FromStr for Bootstrap {
    type Err = ConfigError;

    /// `dns:NAME:PORT` or a multiaddr (`/ip4/10.0.0.7/tcp/65003[/p2p/12D3…]`).
    fn from_str(s: &str) -> Result<Bootstrap, ConfigError> {
        if let Some(rest) = s.strip_prefix("dns:") {
            let (name, port) = rest
                .rsplit_once(':')
                .ok_or_else(|| ConfigError(format!("{s:?}: expected dns:NAME:PORT")))?;
            let port: u16 = port
                .parse()
                .map_err(|_| ConfigError(format!("{s:?}: bad port {port:?}")))?;
            let valid_name = !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_');
            if !valid_name || port == 0 {
                return Err(ConfigError(format!("{s:?}: expected dns:NAME:PORT")));
            }
            return Ok(Bootstrap::Dns {
                name: name.to_owned(),
                port,
            });
        }
        s.parse::<Multiaddr>()
            .map(Bootstrap::Addr)
            .map_err(|e| ConfigError(format!("{s:?}: not dns:NAME:PORT nor a multiaddr: {e}")))
    }
}

impl fmt::Display for Bootstrap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Bootstrap::Addr(addr) => write!(f, "{addr}"),
            Bootstrap::Dns { name, port } => write!(f, "dns:{name}:{port}"),
        }
    }
}

/// A configuration value that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// Everything the swarm needs besides the node's key (which lives in the data dir).
#[derive(Debug, Clone)]
pub struct SwarmConfig {
    /// Addresses to listen on; `/tcp/0` picks a free port (tests).
    pub listen: Vec<Multiaddr>,
    /// Nodes to dial at start and whenever we are not connected to them.
    pub bootstrap: Vec<Bootstrap>,
    /// Find peers on the local link with mDNS (useful without Kubernetes; often blocked
    /// inside clusters, where `bootstrap` with a headless Service is the way).
    pub mdns: bool,
    /// Lifetime of our provider records at other nodes; we re-announce every half of it.
    pub provider_ttl: Duration,
    /// The security upgrade; must match on every node.
    pub security: Security,
    /// How long a connection without open streams is kept.
    pub idle_connection_timeout: Duration,
    /// The bound on `find_providers` and every other Kademlia query.
    pub lookup_timeout: Duration,
    /// How often bootstrap names are re-resolved and missing bootstrap peers re-dialled.
    pub bootstrap_interval: Duration,
    /// The swarm's key, proved on every connection; without one the node may listen on loopback only
    /// ([`crate::Node::start`] refuses anything else).
    pub swarm_key: Option<SwarmKey>,
    /// When not empty, the only peers we keep a connection with (besides the key).
    pub allow_peers: Vec<PeerId>,
    /// Connection limits: totals, per peer and per remote address.
    pub limits: Limits,
    /// How often each connection is pinged ([`DEFAULT_PING_INTERVAL`]).
    pub ping_interval: Duration,
    /// A ping unanswered this long closes its connection ([`DEFAULT_PING_TIMEOUT`]).
    pub ping_timeout: Duration,
}

impl Default for SwarmConfig {
    fn default() -> SwarmConfig {
        SwarmConfig {
            listen: vec![DEFAULT_LISTEN.parse().expect("valid default multiaddr")],
            bootstrap: Vec::new(),
            mdns: false,
            provider_ttl: DEFAULT_PROVIDER_TTL,
            security: DEFAULT_SECURITY,
            idle_connection_timeout: DEFAULT_IDLE_CONNECTION_TIMEOUT,
            lookup_timeout: DEFAULT_LOOKUP_TIMEOUT,
            bootstrap_interval: DEFAULT_BOOTSTRAP_INTERVAL,
            swarm_key: None,
            allow_peers: Vec::new(),
            limits: Limits::default(),
            ping_interval: DEFAULT_PING_INTERVAL,
            ping_timeout: DEFAULT_PING_TIMEOUT,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bootstrap_forms() {
        assert_eq!(
            "dns:pollen.kube-system.svc.cluster.local:65003".parse::<Bootstrap>(),
            Ok(Bootstrap::Dns {
                name: "pollen.kube-system.svc.cluster.local".into(),
                port: 65003
            })
        );
        let addr = "/ip4/10.0.0.7/tcp/65003".parse::<Bootstrap>().unwrap();
        assert_eq!(
            addr,
            Bootstrap::Addr("/ip4/10.0.0.7/tcp/65003".parse().unwrap())
        );
        assert_eq!(addr.to_string(), "/ip4/10.0.0.7/tcp/65003");
        assert_eq!(
            "dns:localhost:7".parse::<Bootstrap>().unwrap().to_string(),
            "dns:localhost:7"
        );
        for bad in [
            "dns:",
            "dns:host",
            "dns::1",
            "dns:host:0",
            "dns:host:x",
            "dns:a/b:1",
            "host:1",
        ] {
            assert!(bad.parse::<Bootstrap>().is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_security() {
        assert_eq!("tls".parse(), Ok(Security::Tls));
        assert_eq!("noise".parse(), Ok(Security::Noise));
        assert!("TLS".parse::<Security>().is_err());
        assert_eq!(Security::Noise.to_string(), "noise");
    }

    #[test]
    fn defaults() {
        let c = SwarmConfig::default();
        assert_eq!(c.listen, vec![DEFAULT_LISTEN.parse::<Multiaddr>().unwrap()]);
        assert_eq!(c.provider_ttl, Duration::from_secs(60));
        assert!(!c.mdns && c.bootstrap.is_empty());
    }
}
