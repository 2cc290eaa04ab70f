//! TCP + the private-network handshake + the configured security upgrade + yamux (tuned for
//! bulk transfer: [`crate::muxer`]).
//!
//! Only TCP: every node of a cluster reaches every other directly, so QUIC, relays and
//! websockets would add build time and attack surface for nothing. A DNS layer lets bootstrap
//! multiaddrs name hosts (`/dns4/…`); `dns:NAME:PORT` bootstraps are resolved by the node
//! itself so that every record of the name is dialled, not just the first.
//!
//! With a swarm key ([`crate::key`]) the raw socket is wrapped in libp2p's `pnet` before
//! anything else is said: a stranger's bytes never reach the TLS or noise parser, and the
//! whole exchange, handshake included, is bounded by [`UPGRADE_TIMEOUT`].

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::futures::{AsyncRead, AsyncWrite};
use libp2p::identity::Keypair;
use libp2p::pnet::PnetConfig;
use libp2p::{dns, noise, tcp, PeerId, Transport};

use crate::config::Security;
use crate::key::SwarmKey;
use crate::{muxer, tls};

/// The bound on the TCP connect + private-network nonces + security handshake + muxer
/// negotiation of one connection.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

pub type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// Builds the transport. The key and the security choice are made at run time, so each
/// combination boxes its own fully typed stack.
pub fn build(
    key: &Keypair,
    security: Security,
    swarm_key: Option<SwarmKey>,
) -> Result<BoxedTransport, String> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::new().nodelay(true));
    // Without a readable /etc/resolv.conf we still run; only `/dns*` multiaddrs fail.
    let base = match dns::tokio::Transport::system(tcp) {
        Ok(t) => t.boxed(),
        Err(e) => {
            tracing::warn!(error = %e, "no system DNS configuration; /dns multiaddrs will not resolve");
            tcp::tokio::Transport::new(tcp::Config::new().nodelay(true)).boxed()
        }
    };
    match swarm_key {
        Some(swarm_key) => {
            let pnet = PnetConfig::new(swarm_key.psk());
            let private = base
                .and_then(move |socket, _| pnet.handshake(socket))
                .boxed();
            secure(private, key, security)
        }
        None => secure(base, key, security),
    }
}

/// The security upgrade and the muxer on top of `base`.
fn secure<S>(base: Boxed<S>, key: &Keypair, security: Security) -> Result<BoxedTransport, String>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let muxer = muxer::Config::new();
    let transport = match security {
        Security::Tls => {
            let tls = tls::Config::new(key).map_err(|e| format!("TLS configuration: {e}"))?;
            base.upgrade(Version::V1Lazy)
                .authenticate(tls)
                .multiplex(muxer)
                .timeout(UPGRADE_TIMEOUT)
                .boxed()
        }
        Security::Noise => {
            let noise = noise::Config::new(key).map_err(|e| format!("noise configuration: {e}"))?;
            base.upgrade(Version::V1Lazy)
                .authenticate(noise)
                .multiplex(muxer)
                .timeout(UPGRADE_TIMEOUT)
                .boxed()
        }
    };
    Ok(transport)
}
