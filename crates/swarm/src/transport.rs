//! TCP + the configured security upgrade (with the swarm key proof) + yamux (tuned for bulk
//! transfer: [`crate::muxer`]).
//!
//! Only TCP: every node of a cluster reaches every other directly, so QUIC, relays and
//! websockets would add build time and attack surface for nothing. A DNS layer lets bootstrap
//! multiaddrs name hosts (`/dns4/…`); `dns:NAME:PORT` bootstraps are resolved by the node
//! itself so that every record of the name is dialled, not just the first.
//!
//! With a swarm key ([`crate::key`]) every connection proves it inside the security handshake
//! ([`crate::proof`]) before the muxer is negotiated; the whole exchange, handshake and proof
//! included, is bounded by [`UPGRADE_TIMEOUT`].
//!
//! Every dial takes a fresh local port ([`FreshPorts`]). libp2p would otherwise dial from the
//! listening port, which helps NAT traversal and nothing else here, and costs a lot: two
//! connections to the same peer would share one four-tuple, and a redial needs the tuple of
//! a connection that may still be closing: both fail with `EADDRINUSE` (seen in the admission
//! tests as bootstrap dials refused again and again for 30 s).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::{
    Boxed, DialOpts, ListenerId, PortUse, TransportError, TransportEvent,
};
use libp2p::core::upgrade::Version;
use libp2p::futures::{AsyncRead, AsyncWrite};
use libp2p::identity::Keypair;
use libp2p::{dns, noise, tcp, Multiaddr, PeerId, Transport};

use crate::config::Security;
use crate::key::SwarmKey;
use crate::{muxer, proof, tls};

/// The bound on the TCP connect + security handshake + swarm key proof + muxer negotiation
/// of one connection.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

pub type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// Builds the transport. The key and the security choice are made at run time, so each
/// combination boxes its own fully typed stack.
pub fn build(
    key: &Keypair,
    security: Security,
    swarm_key: Option<SwarmKey>,
) -> Result<BoxedTransport, String> {
    let tcp = || FreshPorts(tcp::tokio::Transport::new(tcp::Config::new().nodelay(true)));
    // Without a readable /etc/resolv.conf we still run; only `/dns*` multiaddrs fail.
    let base = match dns::tokio::Transport::system(tcp()) {
        Ok(t) => t.boxed(),
        Err(e) => {
            tracing::warn!(error = %e, "no system DNS configuration; /dns multiaddrs will not resolve");
            tcp().boxed()
        }
    };
    secure(base, key, security, swarm_key)
}

/// The security upgrade and the muxer on top of `base`.
fn secure<S>(
    base: Boxed<S>,
    key: &Keypair,
    security: Security,
    swarm_key: Option<SwarmKey>,
) -> Result<BoxedTransport, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let muxer = muxer::Config::new();
    let transport = match security {
        Security::Tls => {
            let tls = tls::Config::new(key)
                .map_err(|e| format!("TLS configuration: {e}"))?
                .with_swarm_key(swarm_key);
            base.upgrade(Version::V1Lazy)
                .authenticate(tls)
                .multiplex(muxer)
                .timeout(UPGRADE_TIMEOUT)
                .boxed()
        }
        Security::Noise => {
            let mut noise =
                noise::Config::new(key).map_err(|e| format!("noise configuration: {e}"))?;
            if let Some(swarm_key) = &swarm_key {
                noise = noise.with_prologue(proof::noise_prologue(swarm_key));
            }
            base.upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(muxer)
                .timeout(UPGRADE_TIMEOUT)
                .boxed()
        }
    };
    Ok(transport)
}

/// A transport whose dials never reuse the listening port (see the module doc).
struct FreshPorts<T>(T);

impl<T: Transport + Unpin> Transport for FreshPorts<T> {
    type Output = T::Output;
    type Error = T::Error;
    type ListenerUpgrade = T::ListenerUpgrade;
    type Dial = T::Dial;

    fn listen_on(
        &mut self,
        id: ListenerId,
        addr: Multiaddr,
    ) -> Result<(), TransportError<Self::Error>> {
        self.0.listen_on(id, addr)
    }

    fn remove_listener(&mut self, id: ListenerId) -> bool {
        self.0.remove_listener(id)
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        opts: DialOpts,
    ) -> Result<Self::Dial, TransportError<Self::Error>> {
        let opts = DialOpts {
            port_use: PortUse::New,
            ..opts
        };
        self.0.dial(addr, opts)
    }

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<TransportEvent<Self::ListenerUpgrade, Self::Error>> {
        Pin::new(&mut self.0).poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use libp2p::core::Endpoint;

    /// Dials leave from fresh ports even when libp2p asks for the listening one, so no dial
    /// can collide with another connection to the same peer or with one in `TIME_WAIT`.
    #[tokio::test]
    async fn dials_never_leave_from_the_listening_port() {
        let peer = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = peer.local_addr().unwrap().port();
        let peer_addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let mut t = FreshPorts(tcp::tokio::Transport::new(tcp::Config::new()));
        t.listen_on(ListenerId::next(), "/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let event = std::future::poll_fn(|cx| Pin::new(&mut t).poll(cx)).await;
        let TransportEvent::NewAddress { listen_addr, .. } = event else {
            panic!("the listener reports its address first")
        };
        let listen_port = listen_addr
            .iter()
            .find_map(|p| match p {
                libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
                _ => None,
            })
            .unwrap();
        let opts = DialOpts {
            role: Endpoint::Dialer,
            port_use: PortUse::Reuse,
        };
        for _ in 0..2 {
            let ours = t.dial(peer_addr.clone(), opts).unwrap().await.unwrap();
            assert_ne!(ours.0.local_addr().unwrap().port(), listen_port);
        }
    }
}
