//! The task that owns the `Swarm`: it polls the network, answers the handle's commands and
//! keeps the node connected (bootstrap re-dials, identify → routing table, mDNS).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio::time::Instant;

use libp2p::core::transport::ListenerId;
use libp2p::futures::StreamExt;
use libp2p::kad::{self, GetProvidersOk, QueryId, QueryResult, RecordKey};
use libp2p::multiaddr::Protocol;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{identify, mdns, ping, Multiaddr, PeerId, Swarm};
use tokio::sync::{mpsc, oneshot};

use crate::behaviour::{Behaviour, BehaviourEvent, IDENTIFY_PROTOCOL};
use crate::bootstrap;
use crate::config::SwarmConfig;
use crate::error::Error;
use crate::stats::Counters;
use pollen_core::retry::Bootstrap;

/// Providers dialled ahead of time per lookup: enough to start a download from several
/// peers, few enough that a popular blob does not make us dial half the cluster.
const MAX_PROVIDER_DIALS: usize = 16;

pub(crate) enum Command {
    ListenAddrs {
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Provide {
        key: RecordKey,
        reply: oneshot::Sender<Result<(), Error>>,
    },
    Unprovide {
        key: RecordKey,
        reply: oneshot::Sender<()>,
    },
    FindProviders {
        key: RecordKey,
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    ConnectedPeers {
        reply: oneshot::Sender<Vec<PeerId>>,
    },
    AddAddress {
        peer: PeerId,
        addr: Multiaddr,
        reply: oneshot::Sender<()>,
    },
    /// Closes every connection to `peer`: it stopped answering on them (a link that went
    /// down and came back leaves TCP connections that look open for a long while).
    Disconnect {
        peer: PeerId,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A provider lookup in flight: what it found so far and who waits for it.
struct Lookup {
    providers: HashSet<PeerId>,
    dialled: usize,
    reply: oneshot::Sender<Vec<PeerId>>,
}

pub(crate) struct EventLoop {
    swarm: Swarm<Behaviour>,
    commands: mpsc::Receiver<Command>,
    config: SwarmConfig,
    counters: Arc<Counters>,
    lookups: HashMap<QueryId, Lookup>,
    /// The remote address of every open connection, to tell loopback peers (tests, a single
    /// host) from real ones when taking their identify addresses.
    remotes: HashMap<ConnectionId, Multiaddr>,
    bootstrap: BootstrapState,
    /// When the next bootstrap round runs, and how that moves when a target is missing.
    next_round: tokio::time::Instant,
    redial: Bootstrap,
    /// (connected peers, routing-table peers), for those who wait for the first one.
    connected: tokio::sync::watch::Sender<(usize, usize)>,
    resolved_tx: mpsc::Sender<Vec<Multiaddr>>,
    resolved_rx: mpsc::Receiver<Vec<Multiaddr>>,
}

/// What the bootstrap rounds remember between runs, so that a target we are connected to is
/// not dialled again every round (bootstrap addresses usually carry no PeerId).
#[derive(Default)]
struct BootstrapState {
    /// The PeerId last found at each bootstrap address.
    peer_at: HashMap<Multiaddr, PeerId>,
    /// Dials in flight, by connection.
    dialling: HashMap<ConnectionId, Multiaddr>,
    /// Addresses that turned out to be this node (a headless Service lists every pod,
    /// including ours).
    own: HashSet<Multiaddr>,
    /// A resolution task is running; rounds do not pile up behind a slow resolver.
    resolving: bool,
    /// This round found a target missing (refused, timed out, no address).
    missed: bool,
}

impl EventLoop {
    pub fn new(
        swarm: Swarm<Behaviour>,
        commands: mpsc::Receiver<Command>,
        config: SwarmConfig,
        counters: Arc<Counters>,
        connected: tokio::sync::watch::Sender<(usize, usize)>,
    ) -> EventLoop {
        let (resolved_tx, resolved_rx) = mpsc::channel(1);
        EventLoop {
            next_round: tokio::time::Instant::now(),
            redial: Bootstrap::new(config.bootstrap_interval),
            connected,
            swarm,
            commands,
            config,
            counters,
            lookups: HashMap::new(),
            remotes: HashMap::new(),
            bootstrap: BootstrapState::default(),
            resolved_tx,
            resolved_rx,
        }
    }

    /// Drives the swarm until every listener has an address (or one fails), so that the
    /// node's addresses are known when `Node::start` returns.
    pub async fn wait_listening(
        &mut self,
        listeners: Vec<(ListenerId, Multiaddr)>,
    ) -> Result<(), Error> {
        let mut pending: HashMap<ListenerId, Multiaddr> = listeners.into_iter().collect();
        while !pending.is_empty() {
            let event = self.swarm.select_next_some().await;
            match &event {
                SwarmEvent::NewListenAddr { listener_id, .. } => {
                    pending.remove(listener_id);
                }
                SwarmEvent::ListenerClosed {
                    listener_id,
                    reason,
                    ..
                } if pending.contains_key(listener_id) => {
                    return Err(Error::Listen {
                        addr: pending.remove(listener_id).expect("checked"),
                        reason: format!("listener closed: {reason:?}"),
                    });
                }
                SwarmEvent::ListenerError { listener_id, error }
                    if pending.contains_key(listener_id) =>
                {
                    return Err(Error::Listen {
                        addr: pending.remove(listener_id).expect("checked"),
                        reason: error.to_string(),
                    });
                }
                _ => {}
            }
            self.on_swarm_event(event);
        }
        Ok(())
    }

    pub async fn run(mut self) {
        let sweep_every = self
            .config
            .provider_ttl
            .max(std::time::Duration::from_secs(1));
        let mut sweep_tick = tokio::time::interval(sweep_every);
        sweep_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);

        let shutdown = loop {
            tokio::select! {
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    None => break None,
                    Some(Command::Shutdown { reply }) => break Some(reply),
                    Some(command) => self.on_command(command),
                },
                () = tokio::time::sleep_until(self.next_round) => self.start_bootstrap_round(),
                Some(targets) = self.resolved_rx.recv() => self.dial_bootstrap(targets),
                _ = sweep_tick.tick() => {
                    let removed = self.swarm.behaviour_mut().kad.store_mut().sweep(Instant::now().into_std());
                    if removed > 0 {
                        tracing::debug!(removed, "dropped expired provider records");
                    }
                }
            }
        };
        tracing::info!(peer_id = %self.swarm.local_peer_id(), "swarm stopping");
        // Dropping the swarm closes every connection and listener.
        drop(self.swarm);
        if let Some(reply) = shutdown {
            let _ = reply.send(());
        }
    }

    fn on_command(&mut self, command: Command) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        match command {
            Command::ListenAddrs { reply } => {
                let _ = reply.send(self.swarm.listeners().cloned().collect());
            }
            Command::Provide { key, reply } => {
                let result = kad
                    .start_providing(key)
                    .map(|_| ())
                    .map_err(|e| Error::Provide(e.to_string()));
                self.update_counters();
                let _ = reply.send(result);
            }
            Command::Unprovide { key, reply } => {
                kad.stop_providing(&key);
                self.update_counters();
                let _ = reply.send(());
            }
            Command::FindProviders { key, reply } => {
                let id = kad.get_providers(key);
                let lookup = Lookup {
                    providers: HashSet::new(),
                    dialled: 0,
                    reply,
                };
                self.lookups.insert(id, lookup);
            }
            Command::Disconnect { peer } => {
                if self.swarm.disconnect_peer_id(peer).is_ok() {
                    tracing::debug!(%peer, "closed the connections to a peer that stopped answering");
                }
            }
            Command::ConnectedPeers { reply } => {
                let _ = reply.send(self.swarm.connected_peers().copied().collect());
            }
            Command::AddAddress { peer, addr, reply } => {
                kad.add_address(&peer, addr);
                let _ = reply.send(());
            }
            Command::Shutdown { .. } => unreachable!("handled by the loop"),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(event)) => self.on_identify(event),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(event)) => self.on_kad(event),
            SwarmEvent::Behaviour(BehaviourEvent::Mdns(event)) => self.on_mdns(event),
            SwarmEvent::Behaviour(BehaviourEvent::Stream(())) => {}
            SwarmEvent::Behaviour(BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result: Err(error),
            })) => {
                // A dead connection (config.rs, DEFAULT_PING_INTERVAL): close it, so streams and
                // queries stop waiting on it; a closed last connection starts a bootstrap
                // round at once.
                tracing::debug!(%peer, %error, "ping failed; closing the connection");
                self.swarm.close_connection(connection);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(_)) => {}
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                ..
            } => {
                tracing::debug!(peer = %peer_id, remote = %endpoint.get_remote_address(), "connected");
                self.remotes
                    .insert(connection_id, endpoint.get_remote_address().clone());
                if let Some(addr) = self.bootstrap.dialling.remove(&connection_id) {
                    self.bootstrap.peer_at.insert(addr, peer_id);
                    if self.bootstrap.dialling.is_empty() && !self.bootstrap.missed {
                        let wait = self.redial.settled();
                        self.next_round = tokio::time::Instant::now() + wait;
                    }
                }
                self.update_counters();
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                cause,
                ..
            } => {
                tracing::debug!(peer = %peer_id, ?cause, "connection closed");
                self.remotes.remove(&connection_id);
                if self.swarm.connected_peers().next().is_none()
                    && !self.config.bootstrap.is_empty()
                {
                    // Alone again (the peers restarted, a partition): look for them at once.
                    self.next_round = tokio::time::Instant::now() + self.redial.lost_all();
                }
                self.update_counters();
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                if let Some(addr) = self.bootstrap.dialling.remove(&connection_id) {
                    if let DialError::LocalPeerId { .. } = error {
                        tracing::debug!(%addr, "bootstrap address is this node");
                        self.bootstrap.own.insert(addr);
                    } else {
                        self.retry_soon();
                        tracing::info!(%addr, %error, "bootstrap dial failed; retrying");
                    }
                } else {
                    tracing::debug!(peer = ?peer_id, %error, "dial failed");
                }
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                tracing::info!(%address, "listening");
            }
            SwarmEvent::ListenerError { error, .. } => {
                tracing::warn!(%error, "listener error");
            }
            _ => {}
        }
    }

    fn on_identify(&mut self, event: identify::Event) {
        let identify::Event::Received {
            connection_id,
            peer_id,
            info,
        } = event
        else {
            return;
        };
        if info.protocol_version != IDENTIFY_PROTOCOL {
            tracing::debug!(peer = %peer_id, version = %info.protocol_version, "not a Pollen peer");
            return;
        }
        let via_loopback = self.remotes.get(&connection_id).is_some_and(is_loopback);
        for addr in info.listen_addrs {
            // A peer's loopback addresses name our own host unless the peer is on it.
            if is_unspecified(&addr) || (is_loopback(&addr) && !via_loopback) {
                continue;
            }
            self.swarm.behaviour_mut().kad.add_address(&peer_id, addr);
        }
    }

    fn on_kad(&mut self, event: kad::Event) {
        match event {
            kad::Event::OutboundQueryProgressed {
                id,
                result: QueryResult::GetProviders(result),
                step,
                ..
            } => {
                let local = *self.swarm.local_peer_id();
                if let Some(lookup) = self.lookups.get_mut(&id) {
                    match result {
                        Ok(GetProvidersOk::FoundProviders { providers, .. }) => {
                            for peer in providers {
                                if peer == local || !lookup.providers.insert(peer) {
                                    continue;
                                }
                                if lookup.dialled < MAX_PROVIDER_DIALS
                                    && !self.swarm.is_connected(&peer)
                                {
                                    lookup.dialled += 1;
                                    // Kademlia supplies the addresses it learnt in this query.
                                    let opts = DialOpts::peer_id(peer)
                                        .condition(PeerCondition::DisconnectedAndNotDialing)
                                        .build();
                                    let _ = self.swarm.dial(opts);
                                }
                            }
                        }
                        Ok(GetProvidersOk::FinishedWithNoAdditionalRecord { .. }) => {}
                        Err(e) => tracing::debug!(error = %e, "provider lookup ended early"),
                    }
                    if step.last {
                        let lookup = self.lookups.remove(&id).expect("present");
                        let _ = lookup.reply.send(lookup.providers.into_iter().collect());
                    }
                }
            }
            kad::Event::OutboundQueryProgressed {
                result: QueryResult::StartProviding(Err(e)) | QueryResult::RepublishProvider(Err(e)),
                ..
            } => tracing::debug!(error = %e, "provider announcement incomplete"),
            kad::Event::RoutingUpdated { .. } => self.update_counters(),
            _ => {}
        }
    }

    fn on_mdns(&mut self, event: mdns::Event) {
        if let mdns::Event::Discovered(found) = event {
            for (peer, addr) in found {
                tracing::debug!(%peer, %addr, "found by mDNS");
                self.swarm
                    .behaviour_mut()
                    .kad
                    .add_address(&peer, addr.clone());
                let opts = DialOpts::peer_id(peer)
                    .addresses(vec![addr])
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                let _ = self.swarm.dial(opts);
            }
        }
    }

    /// Resolves the bootstrap entries off the loop; the targets come back on `resolved_rx`.
    fn start_bootstrap_round(&mut self) {
        self.next_round = tokio::time::Instant::now() + self.config.bootstrap_interval;
        if self.config.bootstrap.is_empty() || self.bootstrap.resolving {
            return;
        }
        self.bootstrap.missed = false;
        self.bootstrap.resolving = true;
        let entries = self.config.bootstrap.clone();
        let tx = self.resolved_tx.clone();
        tokio::spawn(async move {
            let _ = tx.send(bootstrap::resolve(&entries).await).await;
        });
    }

    /// Dials every bootstrap target we are not connected (or connecting) to.
    fn dial_bootstrap(&mut self, targets: Vec<Multiaddr>) {
        self.bootstrap.resolving = false;
        let listening: HashSet<Multiaddr> = self.swarm.listeners().cloned().collect();
        let mut current = HashSet::new();
        for target in targets {
            let (addr, peer) = bootstrap::split_peer_id(&target);
            current.insert(addr.clone());
            if listening.contains(&addr) || self.bootstrap.own.contains(&addr) {
                continue;
            }
            let known = peer.or_else(|| self.bootstrap.peer_at.get(&addr).copied());
            if known.is_some_and(|p| self.swarm.is_connected(&p))
                || self.bootstrap.dialling.values().any(|a| *a == addr)
            {
                continue;
            }
            let opts = match peer {
                Some(peer) => {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                    DialOpts::peer_id(peer)
                        .addresses(vec![addr.clone()])
                        .condition(PeerCondition::DisconnectedAndNotDialing)
                        .build()
                }
                // The pod behind an address may have been replaced: dial without a PeerId.
                None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
            };
            let connection = opts.connection_id();
            match self.swarm.dial(opts) {
                Ok(()) => {
                    tracing::debug!(%addr, "dialling bootstrap target");
                    self.bootstrap.dialling.insert(connection, addr);
                }
                Err(e) => tracing::debug!(%addr, error = %e, "bootstrap dial not started"),
            }
        }
        // Forget addresses the names no longer list (pods come and go).
        self.bootstrap.peer_at.retain(|a, _| current.contains(a));
        self.bootstrap.own.retain(|a| current.contains(a));
        if current.is_empty() {
            // The names have no address yet (a Service with no ready endpoint).
            self.retry_soon();
        } else if self.bootstrap.dialling.is_empty() && !self.bootstrap.missed {
            self.next_round = tokio::time::Instant::now() + self.redial.settled();
        }
    }

    /// A bootstrap target is missing: the next round comes after the backoff, not the steady
    /// interval.
    fn retry_soon(&mut self) {
        self.bootstrap.missed = true;
        let at = tokio::time::Instant::now() + self.redial.missing(jitter());
        self.next_round = self.next_round.min(at);
    }

    /// Sends this node's provider records again once the routing table has its first peer:
    /// announced while it had none (it started before its bootstrap peers, or identify had
    /// not run yet), they reached nobody, and Kademlia republishes only every
    /// half `provider_ttl`. The tracker role's record is among them, so without this a
    /// tracker that started first stayed unknown for up to 30 s.
    fn announce_again(&mut self) {
        let kad = &mut self.swarm.behaviour_mut().kad;
        let keys: Vec<RecordKey> = kad.store_mut().provided_keys();
        for key in keys {
            if let Err(e) = kad.start_providing(key) {
                tracing::debug!(error = %e, "announcing again failed");
            }
        }
    }

    fn update_counters(&mut self) {
        let connected = self.swarm.connected_peers().count();
        let kad = &mut self.swarm.behaviour_mut().kad;
        let routing: usize = kad.kbuckets().map(|b| b.num_entries()).sum();
        let provided = kad.store_mut().provided_count();
        let c = &self.counters;
        c.connected_peers.store(connected, Ordering::Relaxed);
        c.routing_table_peers.store(routing, Ordering::Relaxed);
        c.provided_blobs.store(provided, Ordering::Relaxed);
        let now = (connected, routing);
        if routing > 0 && self.connected.borrow().1 == 0 {
            // The first peer Kademlia can send records to.
            self.announce_again();
        }
        self.connected
            .send_if_modified(|n| std::mem::replace(n, now) != now);
    }
}

/// A random fraction in 0.0–1.0 (for spreading retries; not for anything secret).
fn jitter() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    (RandomState::new().hash_one(0u8) % 1000) as f64 / 1000.0
}

fn is_loopback(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_loopback(),
        Some(Protocol::Ip6(ip)) => ip.is_loopback(),
        Some(Protocol::Dns(name) | Protocol::Dns4(name) | Protocol::Dns6(name)) => {
            name == "localhost"
        }
        _ => false,
    }
}

fn is_unspecified(addr: &Multiaddr) -> bool {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => ip.is_unspecified(),
        Some(Protocol::Ip6(ip)) => ip.is_unspecified(),
        _ => false,
    }
}
