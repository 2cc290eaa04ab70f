//! The protocols every node runs, and how each is configured.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{allow_block_list, connection_limits, identify, kad, mdns, ping, StreamProtocol};

use crate::config::SwarmConfig;
use crate::limits::PerIp;
use crate::store::ProviderStore;

/// Pollen's own Kademlia protocol id: a Pollen DHT never merges with IPFS or any other libp2p
/// network that happens to be reachable, and its records mean "holds this blob".
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/pollen/kad/1.0.0");

/// Sent in identify; peers with another value are not added to the routing table.
pub const IDENTIFY_PROTOCOL: &str = "/pollen/1";

/// How often identify re-sends our addresses to connected peers (it also pushes changes at
/// once). Addresses rarely change; this is only a backstop.
const IDENTIFY_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Admission first: the connection limits and the allow-list refuse a connection before any
/// protocol sees it (the swarm key has already refused strangers in the transport).
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub per_ip: PerIp,
    pub limits: connection_limits::Behaviour,
    pub allow: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    pub identify: identify::Behaviour,
    pub kad: kad::Behaviour<ProviderStore>,
    pub mdns: Toggle<mdns::tokio::Behaviour>,
    pub ping: ping::Behaviour,
    pub stream: libp2p_stream::Behaviour,
}

impl Behaviour {
    pub fn new(key: &Keypair, config: &SwarmConfig) -> std::io::Result<Behaviour> {
        let peer_id = key.public().to_peer_id();

        let identify = identify::Behaviour::new(
            identify::Config::new(IDENTIFY_PROTOCOL.to_owned(), key.public())
                .with_agent_version(format!("pollen/{}", env!("CARGO_PKG_VERSION")))
                .with_interval(IDENTIFY_INTERVAL)
                .with_push_listen_addr_updates(true),
        );

        let mut kad_config = kad::Config::new(KAD_PROTOCOL);
        // A dead node must stop being named as a provider within about `provider_ttl`, so
        // records live that long and live nodes re-announce twice per lifetime (one lost
        // announcement does not make a live node disappear).
        let ttl = config.provider_ttl.max(Duration::from_secs(1));
        kad_config
            .set_provider_record_ttl(Some(ttl))
            .set_provider_publication_interval(Some(ttl / 2))
            .set_query_timeout(config.lookup_timeout)
            // Value records are unused; do not replicate or republish them.
            .set_record_ttl(Some(ttl))
            .set_replication_interval(None)
            .set_publication_interval(None);
        let mut kad = kad::Behaviour::with_config(peer_id, ProviderStore::new(peer_id), kad_config);
        // Every agent answers DHT queries. libp2p's default (client mode until an external
        // address is confirmed) would leave a cluster of private pod addresses with no servers.
        kad.set_mode(Some(kad::Mode::Server));

        let mdns = if config.mdns {
            Some(mdns::tokio::Behaviour::new(
                mdns::Config::default(),
                peer_id,
            )?)
        } else {
            None
        };

        let allow = (!config.allow_peers.is_empty()).then(|| {
            let mut allow =
                allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
            for peer in &config.allow_peers {
                allow.allow_peer(*peer);
            }
            allow
        });

        Ok(Behaviour {
            per_ip: PerIp::new(&config.limits),
            limits: config.limits.totals(),
            allow: allow.into(),
            identify,
            kad,
            mdns: mdns.into(),
            ping: ping::Behaviour::new(
                ping::Config::new()
                    .with_interval(config.ping_interval)
                    .with_timeout(config.ping_timeout),
            ),
            stream: libp2p_stream::Behaviour::new(),
        })
    }
}
