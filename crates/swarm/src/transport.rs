//! TCP + the private-network handshake + the configured security upgrade + yamux (tuned for
//! bulk transfer: [`crate::muxer`]).
//!
//! Only TCP: every node of a cluster reaches every other directly, so QUIC, relays and
//! websockets would add build time and attack surface for nothing. A DNS layer lets bootstrap
//! multiaddrs name hosts (`/dns4/…`); `dns:NAME:PORT` bootstraps are resolved by the node
//! itself so that every record of the name is dialled, not just the first.
//!
//! With a swarm key ([`crate::key`]) every connection proves it inside the security handshake
//! ([`crate::proof`]) before the muxer is negotiated; the whole exchange, handshake and proof
//! included, is bounded by [`UPGRADE_TIMEOUT`].

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::futures::{AsyncRead, AsyncWrite};
use libp2p::identity::Keypair;
use libp2p::{dns, noise, tcp, PeerId, Transport};

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
    let tcp = tcp::tokio::Transport::new(tcp::Config::new().nodelay(true));
    // Without a readable /etc/resolv.conf we still run; only `/dns*` multiaddrs fail.
    let base = match dns::tokio::Transport::system(tcp) {
        Ok(t) => t.boxed(),
        Err(e) => {
            tracing::warn!(error = %e, "no system DNS configuration; /dns multiaddrs will not resolve");
            tcp::tokio::Transport::new(tcp::Config::new().nodelay(true)).boxed()
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
