//! Connection limits: how many connections the swarm holds in all, how many handshakes it
//! runs for strangers at once, and how many of each a single peer or a single remote address
//! may take.
//!
//! Totals and per-peer counts are libp2p's `connection_limits` behaviour; the per-address
//! limit is [`PerIp`] below. Both refuse a connection *before* its handshake starts where they
//! can (pending inbound), so a flood of idle TCP connections costs an accept and a close each,
//! never a handshake slot held for the whole upgrade timeout by one source.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};

use libp2p::core::multiaddr::Protocol;
use libp2p::core::transport::PortUse;
use libp2p::core::Endpoint;
use libp2p::swarm::{
    dummy, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{connection_limits, Multiaddr, PeerId};

/// Established connections in all, both directions. A node talks to the peers holding the
/// blobs it fetches and to those fetching from it; a thousand is far beyond a busy node of a
/// large cluster and well below the default file-descriptor limit.
pub const DEFAULT_MAX_CONNECTIONS: u32 = 1024;
/// Inbound connections still in their handshake (TLS or noise with the swarm key proof, yamux).
/// Handshakes take milliseconds inside a cluster; this many at once is a burst of starts.
pub const DEFAULT_MAX_PENDING_INCOMING: u32 = 128;
/// Established connections to one peer. Two nodes dialling each other at once end up with
/// two; more is a peer misbehaving.
pub const DEFAULT_MAX_CONNECTIONS_PER_PEER: u32 = 4;
/// Inbound handshakes from one remote address (an IPv6 /64 counts as one address). Far below
/// [`DEFAULT_MAX_PENDING_INCOMING`], so one host flooding the port with idle connections
/// cannot take the handshake slots the rest of the cluster needs.
pub const DEFAULT_MAX_PENDING_PER_IP: u32 = 16;
/// Inbound connections, pending and established, from one remote address. A node is one
/// agent with an address of its own; this leaves room for agents sharing a host (tests,
/// several agents behind one address) while capping what one host can hold.
pub const DEFAULT_MAX_CONNECTIONS_PER_IP: u32 = 64;

/// The limits, all counts of connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_connections: u32,
    pub max_pending_incoming: u32,
    pub max_connections_per_peer: u32,
    pub max_pending_per_ip: u32,
    pub max_connections_per_ip: u32,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_pending_incoming: DEFAULT_MAX_PENDING_INCOMING,
            max_connections_per_peer: DEFAULT_MAX_CONNECTIONS_PER_PEER,
            max_pending_per_ip: DEFAULT_MAX_PENDING_PER_IP,
            max_connections_per_ip: DEFAULT_MAX_CONNECTIONS_PER_IP,
        }
    }
}

impl Limits {
    /// For `agents` nodes that all connect from one address (`pollen demo`, tests on
    /// loopback): the per-address limits, meant for one node per address, grow with them.
    pub fn one_host(agents: usize) -> Limits {
        let defaults = Limits::default();
        let agents = u32::try_from(agents).unwrap_or(u32::MAX);
        let per_ip = agents
            .saturating_mul(defaults.max_connections_per_peer)
            .max(defaults.max_connections_per_ip);
        Limits {
            max_connections: defaults.max_connections.max(per_ip),
            max_pending_incoming: defaults.max_pending_incoming.max(agents),
            max_pending_per_ip: defaults.max_pending_incoming.max(agents),
            max_connections_per_ip: per_ip,
            ..defaults
        }
    }

    /// libp2p's behaviour for the totals and the per-peer limit.
    pub(crate) fn totals(&self) -> connection_limits::Behaviour {
        connection_limits::Behaviour::new(
            connection_limits::ConnectionLimits::default()
                .with_max_established(Some(self.max_connections))
                .with_max_pending_incoming(Some(self.max_pending_incoming))
                .with_max_established_per_peer(Some(self.max_connections_per_peer)),
        )
    }
}

/// Where a connection comes from, for counting: the IPv4 address, or the IPv6 /64 (one host
/// is routinely given a whole /64, so counting single IPv6 addresses would limit nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct Source(IpAddr);

impl Source {
    fn of(addr: &Multiaddr) -> Option<Source> {
        let ip = addr.iter().find_map(|p| match p {
            Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
            Protocol::Ip6(ip) => Some(match ip.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut segments = ip.segments();
                    segments[4..].fill(0);
                    IpAddr::V6(segments.into())
                }
            }),
            _ => None,
        })?;
        Some(Source(ip))
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Count {
    pending: u32,
    established: u32,
}

/// The per-address limit on inbound connections ([`Limits::max_pending_per_ip`],
/// [`Limits::max_connections_per_ip`]).
pub struct PerIp {
    max_pending: u32,
    max_total: u32,
    /// Inbound connections we counted, whether still pending.
    tracked: HashMap<ConnectionId, (Source, bool)>,
    counts: HashMap<Source, Count>,
}

impl PerIp {
    pub fn new(limits: &Limits) -> PerIp {
        PerIp {
            max_pending: limits.max_pending_per_ip,
            max_total: limits.max_connections_per_ip,
            tracked: HashMap::new(),
            counts: HashMap::new(),
        }
    }

    fn forget(&mut self, id: ConnectionId) {
        let Some((source, established)) = self.tracked.remove(&id) else {
            return;
        };
        let Some(count) = self.counts.get_mut(&source) else {
            return;
        };
        if established {
            count.established = count.established.saturating_sub(1);
        } else {
            count.pending = count.pending.saturating_sub(1);
        }
        if count.pending == 0 && count.established == 0 {
            self.counts.remove(&source);
        }
    }
}

/// Why [`PerIp`] refused a connection (shown in the swarm's debug log).
#[derive(Debug, thiserror::Error)]
#[error("too many {what} connections from {from} (limit {limit})")]
struct TooMany {
    what: &'static str,
    from: IpAddr,
    limit: u32,
}

impl NetworkBehaviour for PerIp {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        id: ConnectionId,
        _local: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(source) = Source::of(remote) else {
            return Ok(());
        };
        let count = self.counts.get(&source).copied().unwrap_or_default();
        let refuse = |what, limit| {
            ConnectionDenied::new(TooMany {
                what,
                from: source.0,
                limit,
            })
        };
        if count.pending >= self.max_pending {
            return Err(refuse("pending", self.max_pending));
        }
        if count.pending.saturating_add(count.established) >= self.max_total {
            return Err(refuse("inbound", self.max_total));
        }
        self.counts.entry(source).or_default().pending += 1;
        self.tracked.insert(id, (source, false));
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        _peer: PeerId,
        _local: &Multiaddr,
        _remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        // Pending becomes established; the total per source is unchanged, so nothing to refuse.
        if let Some((source, established)) = self.tracked.get_mut(&id) {
            if !*established {
                *established = true;
                if let Some(count) = self.counts.get_mut(source) {
                    count.pending = count.pending.saturating_sub(1);
                    count.established = count.established.saturating_add(1);
                }
            }
        }
        Ok(dummy::ConnectionHandler)
    }

    fn handle_established_outbound_connection(
        &mut self,
        _id: ConnectionId,
        _peer: PeerId,
        _addr: &Multiaddr,
        _role: Endpoint,
        _port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ListenFailure(failure) => self.forget(failure.connection_id),
            FromSwarm::ConnectionClosed(closed) => self.forget(closed.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _peer: PeerId,
        _id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Multiaddr {
        s.parse().unwrap()
    }

    #[test]
    fn counts_per_source_and_forgets_closed_connections() {
        let limits = Limits {
            max_pending_per_ip: 2,
            max_connections_per_ip: 3,
            ..Limits::default()
        };
        let mut per_ip = PerIp::new(&limits);
        let local = addr("/ip4/127.0.0.1/tcp/1");
        let a = addr("/ip4/10.0.0.1/tcp/5000");
        let b = addr("/ip4/10.0.0.2/tcp/5000");
        let id = |n| ConnectionId::new_unchecked(n);
        assert!(per_ip
            .handle_pending_inbound_connection(id(1), &local, &a)
            .is_ok());
        assert!(per_ip
            .handle_pending_inbound_connection(id(2), &local, &a)
            .is_ok());
        // Two pending from `a`: a third waits for one to finish; `b` is not affected.
        assert!(per_ip
            .handle_pending_inbound_connection(id(3), &local, &a)
            .is_err());
        assert!(per_ip
            .handle_pending_inbound_connection(id(4), &local, &b)
            .is_ok());
        let peer = PeerId::random();
        assert!(per_ip
            .handle_established_inbound_connection(id(1), peer, &local, &a)
            .is_ok());
        assert!(per_ip
            .handle_established_inbound_connection(id(2), peer, &local, &a)
            .is_ok());
        assert!(per_ip
            .handle_pending_inbound_connection(id(5), &local, &a)
            .is_ok());
        // Three from `a` in all now.
        assert!(per_ip
            .handle_pending_inbound_connection(id(6), &local, &a)
            .is_err());
        per_ip.forget(id(1));
        assert!(per_ip
            .handle_pending_inbound_connection(id(6), &local, &a)
            .is_ok());
        for n in [2, 4, 5, 6] {
            per_ip.forget(id(n));
        }
        assert!(per_ip.counts.is_empty() && per_ip.tracked.is_empty());
    }

    #[test]
    fn an_ipv6_slash_64_is_one_source() {
        let one = Source::of(&addr("/ip6/2001:db8::1/tcp/1")).unwrap();
        let same = Source::of(&addr("/ip6/2001:db8::ffff:1/tcp/1")).unwrap();
        let other = Source::of(&addr("/ip6/2001:db8:0:1::1/tcp/1")).unwrap();
        assert_eq!(one, same);
        assert_ne!(one, other);
        let mapped = Source::of(&addr("/ip6/::ffff:10.0.0.1/tcp/1")).unwrap();
        assert_eq!(mapped, Source::of(&addr("/ip4/10.0.0.1/tcp/1")).unwrap());
        assert_eq!(Source::of(&addr("/dns4/example.com/tcp/1")), None);
    }
}
