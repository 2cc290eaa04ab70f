//! The handle the agent holds: cheap to clone, every call bounded by a deadline.
//!
//! The libp2p `Swarm` is not `Sync` and must be polled continuously, so it lives in one tokio
//! task ([`crate::event_loop`]) and the handle talks to it over a channel, each request
//! carrying a oneshot for its answer (the shape of rust-libp2p's file-sharing example).
//! Streams do not go through that task: libp2p-stream's `Control` opens and accepts them
//! directly, so a busy event loop never delays piece traffic.

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use libp2p::kad::RecordKey;
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use pollen_oci::Digest;
use tokio::sync::{mpsc, oneshot};

use crate::behaviour::Behaviour;
use crate::config::SwarmConfig;
use crate::error::Error;
use crate::event_loop::{Command, EventLoop};
use crate::identity;
use crate::stats::{Counters, Stats};
use crate::transport;

/// The bound on a request to the event loop that needs no network round trip.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// The bound on opening a stream: dialling (if not connected), the handshake and protocol
/// negotiation.
pub const OPEN_STREAM_TIMEOUT: Duration = Duration::from_secs(10);

/// The bound on binding the listen addresses at start.
const LISTEN_TIMEOUT: Duration = Duration::from_secs(5);

/// Commands waiting for the event loop; a full queue makes callers wait (bounded by their
/// deadlines), not the loop.
const COMMAND_QUEUE: usize = 256;

/// Streams of the pieces protocol opened by other nodes.
pub struct IncomingStreams(libp2p_stream::IncomingStreams);

impl IncomingStreams {
    /// The next stream and the (authenticated) peer that opened it; `None` once the swarm
    /// has stopped. Streams that arrive while nobody calls this are dropped by libp2p-stream,
    /// so the accepting task should hand each stream off and come straight back.
    pub async fn next(&mut self) -> Option<(PeerId, Stream)> {
        use libp2p::futures::StreamExt;
        self.0.next().await
    }
}

/// A running swarm. Clones share it; it stops on [`Node::shutdown`] or when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Node {
    commands: mpsc::Sender<Command>,
    control: libp2p_stream::Control,
    peer_id: PeerId,
    signer: crate::signing::Signer,
    counters: Arc<Counters>,
    lookup_deadline: Duration,
    /// (connected peers, routing-table peers), on every change.
    connected: tokio::sync::watch::Receiver<(usize, usize)>,
    /// Bootstrap entries or mDNS: this node has a way to find peers by itself.
    discovers: bool,
}

impl Node {
    /// Loads (or creates) the node key under `data_dir`, starts listening and dials the
    /// bootstrap peers. Returns once every listen address is bound.
    /// Without a swarm key every listen address must be loopback ([`Error::NoSwarmKey`]).
    pub async fn start(data_dir: &Path, config: SwarmConfig) -> Result<Node, Error> {
        if config.swarm_key.is_none() {
            if let Some(addr) = config.listen.iter().find(|a| !is_loopback_listen(a)) {
                return Err(Error::NoSwarmKey { addr: addr.clone() });
            }
        }
        let key = identity::load_or_create(data_dir)?;
        let peer_id = key.public().to_peer_id();
        let signer = crate::signing::Signer::new(key.clone());
        let transport =
            transport::build(&key, config.security, config.swarm_key).map_err(Error::Transport)?;
        let behaviour = Behaviour::new(&key, &config).map_err(Error::Setup)?;
        let swarm_config = libp2p::swarm::Config::with_tokio_executor()
            .with_idle_connection_timeout(config.idle_connection_timeout);
        let mut swarm = libp2p::Swarm::new(transport, behaviour, peer_id, swarm_config);
        let control = swarm.behaviour().stream.new_control();

        let mut listeners = Vec::new();
        for addr in &config.listen {
            let id = swarm.listen_on(addr.clone()).map_err(|e| Error::Listen {
                addr: addr.clone(),
                reason: e.to_string(),
            })?;
            listeners.push((id, addr.clone()));
        }

        let config_key = config.swarm_key.as_ref().map(|k| k.fingerprint());
        let counters = Arc::new(Counters::default());
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let lookup_deadline = config.lookup_timeout + COMMAND_TIMEOUT;
        let (connected_tx, connected) = tokio::sync::watch::channel((0, 0));
        let discovers = config.mdns || !config.bootstrap.is_empty();
        let mut event_loop = EventLoop::new(swarm, rx, config, counters.clone(), connected_tx);
        tokio::time::timeout(LISTEN_TIMEOUT, event_loop.wait_listening(listeners))
            .await
            .map_err(|_| Error::Timeout {
                what: "binding the listen addresses",
                after: LISTEN_TIMEOUT,
            })??;
        tokio::spawn(event_loop.run());
        match &config_key {
            Some(fingerprint) => {
                tracing::info!(%peer_id, swarm_key = %fingerprint, "swarm started (swarm key required)")
            }
            None => tracing::info!(%peer_id, "swarm started without a swarm key (loopback only)"),
        }
        Ok(Node {
            commands: tx,
            control,
            peer_id,
            signer,
            counters,
            lookup_deadline,
            connected,
            discovers,
        })
    }

    /// This node's identity, derived from its key.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id
    }

    /// Signs claims with this node's key (`crate::signing`).
    pub fn signer(&self) -> crate::signing::Signer {
        self.signer.clone()
    }

    /// The addresses we are listening on (a `0.0.0.0` listener shows up once per interface).
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, Error> {
        self.ask("listen_addrs", COMMAND_TIMEOUT, |reply| {
            Command::ListenAddrs { reply }
        })
        .await
    }

    /// Announces that this node holds the blob. The record is stored at once and sent to the
    /// closest nodes in the background, then re-sent every half `provider_ttl` until
    /// [`Node::unprovide`].
    pub async fn provide(&self, digest: &Digest) -> Result<(), Error> {
        let key = record_key(digest);
        self.ask("provide", COMMAND_TIMEOUT, |reply| Command::Provide {
            key,
            reply,
        })
        .await?
    }

    /// Stops announcing the blob. Kademlia cannot recall records already held by other
    /// nodes: they expire within `provider_ttl`, and until then a downloader asking us gets
    /// `UnknownBlob`.
    pub async fn unprovide(&self, digest: &Digest) -> Result<(), Error> {
        let key = record_key(digest);
        self.ask("unprovide", COMMAND_TIMEOUT, |reply| Command::Unprovide {
            key,
            reply,
        })
        .await
    }

    /// The other nodes currently announcing the blob (never this node), after one Kademlia
    /// lookup bounded by `lookup_timeout`. Providers we are not connected to are dialled in
    /// the background, so the `open_stream` that usually follows finds a connection.
    pub async fn find_providers(&self, digest: &Digest) -> Result<Vec<PeerId>, Error> {
        let key = record_key(digest);
        self.ask("find_providers", self.lookup_deadline, |reply| {
            Command::FindProviders { key, reply }
        })
        .await
    }

    /// Peers we have a connection to right now.
    pub async fn connected_peers(&self) -> Result<Vec<PeerId>, Error> {
        self.ask("connected_peers", COMMAND_TIMEOUT, |reply| {
            Command::ConnectedPeers { reply }
        })
        .await
    }

    /// Tells the routing table where `peer` can be reached (for peers learnt outside libp2p).
    pub async fn add_address(&self, peer: PeerId, addr: Multiaddr) -> Result<(), Error> {
        self.ask("add_address", COMMAND_TIMEOUT, |reply| {
            Command::AddAddress { peer, addr, reply }
        })
        .await
    }

    /// Opens a stream of the pieces protocol to `peer`, dialling it if needed. The stream is
    /// a `futures` `AsyncRead + AsyncWrite`; `pollen-proto` reads it through
    /// `tokio_util::compat`.
    pub async fn open_stream(&self, peer: PeerId) -> Result<Stream, Error> {
        self.open_stream_on(peer, pollen_proto::PROTOCOL).await
    }

    /// Opens a stream of another Pollen protocol (the tracker's) to `peer`.
    pub async fn open_stream_on(
        &self,
        peer: PeerId,
        protocol: &'static str,
    ) -> Result<Stream, Error> {
        let mut control = self.control.clone();
        let protocol = StreamProtocol::new(protocol);
        match tokio::time::timeout(OPEN_STREAM_TIMEOUT, control.open_stream(peer, protocol)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(source)) => Err(Error::OpenStream { peer, source }),
            Err(_) => {
                self.drop_connections(peer);
                Err(Error::Timeout {
                    what: "opening a stream",
                    after: OPEN_STREAM_TIMEOUT,
                })
            }
        }
    }

    /// Closes every connection to `peer`, so the next stream to it dials afresh. For a peer
    /// that did not open a stream in time: after a link goes down and comes back, TCP keeps
    /// the old connections "open" while their retransmissions back off (tens of seconds), and
    /// every stream opened on them waits out its timeout. Best effort: if the swarm is busy
    /// or stopped, nothing happens.
    pub fn drop_connections(&self, peer: PeerId) {
        let _ = self.commands.try_send(Command::Disconnect { peer });
    }

    /// Starts accepting pieces streams from other nodes. Only one caller may accept at a
    /// time; dropping the returned value stops accepting (peers then fail to negotiate the
    /// protocol).
    pub fn incoming_streams(&self) -> Result<IncomingStreams, Error> {
        self.incoming_streams_on(pollen_proto::PROTOCOL)
    }

    /// Starts accepting streams of another Pollen protocol (a tracker accepts the tracker's).
    pub fn incoming_streams_on(&self, protocol: &'static str) -> Result<IncomingStreams, Error> {
        self.control
            .clone()
            .accept(StreamProtocol::new(protocol))
            .map(IncomingStreams)
            .map_err(|_| Error::AlreadyAccepting)
    }

    /// Connected to at least one peer that is in the routing table (identify has run, so a
    /// lookup has someone to ask).
    pub fn joined(&self) -> bool {
        is_joined(&self.connected.borrow())
    }

    /// Waits until [`Node::joined`], or `deadline`; says whether it is. A node that starts
    /// before its bootstrap peers uses this not to go alone. A node with no way to find peers
    /// (no bootstrap entry, no mDNS) does not wait.
    pub async fn wait_connected(&self, deadline: tokio::time::Instant) -> bool {
        if !self.discovers {
            return self.joined();
        }
        let mut changes = self.connected.clone();
        let joined = tokio::time::timeout_at(deadline, changes.wait_for(is_joined)).await;
        matches!(joined, Ok(Ok(_)))
    }

    /// A receiver that sees every change in the numbers of connected and routing-table peers.
    pub fn connected_changes(&self) -> tokio::sync::watch::Receiver<(usize, usize)> {
        self.connected.clone()
    }

    /// Counters for status and metrics.
    pub fn stats(&self) -> Stats {
        Stats {
            connected_peers: self.counters.connected_peers.load(Ordering::Relaxed),
            routing_table_peers: self.counters.routing_table_peers.load(Ordering::Relaxed),
            provided_blobs: self.counters.provided_blobs.load(Ordering::Relaxed),
        }
    }

    /// Stops the swarm and closes every connection; returns once it has. Other clones of
    /// this handle then get [`Error::Stopped`].
    pub async fn shutdown(&self) -> Result<(), Error> {
        self.ask("shutdown", COMMAND_TIMEOUT, |reply| Command::Shutdown {
            reply,
        })
        .await
    }

    async fn ask<T>(
        &self,
        what: &'static str,
        deadline: Duration,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, Error> {
        let (reply, answer) = oneshot::channel();
        let exchange = async {
            self.commands
                .send(command(reply))
                .await
                .map_err(|_| Error::Stopped)?;
            answer.await.map_err(|_| Error::Stopped)
        };
        tokio::time::timeout(deadline, exchange)
            .await
            .map_err(|_| Error::Timeout {
                what,
                after: deadline,
            })?
    }
}

/// Whether a listen address can only be reached from this host: `127.0.0.0/8` or `::1`.
/// (connected peers, routing-table peers) says the node has joined the swarm.
fn is_joined((connected, routing): &(usize, usize)) -> bool {
    *connected > 0 && *routing > 0
}

pub fn is_loopback_listen(addr: &Multiaddr) -> bool {
    use libp2p::core::multiaddr::Protocol;
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        _ => false,
    }
}

/// Provider records are keyed by the 32 bytes of the blob's sha256 digest.
fn record_key(digest: &Digest) -> RecordKey {
    RecordKey::new(digest.as_bytes())
}
