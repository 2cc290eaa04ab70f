//! TCP + the configured security upgrade + yamux (tuned for bulk transfer: [`crate::muxer`]).
//!
//! Only TCP: every node of a cluster reaches every other directly, so QUIC, relays and
//! websockets would add build time and attack surface for nothing. A DNS layer lets bootstrap
//! multiaddrs name hosts (`/dns4/…`); `dns:NAME:PORT` bootstraps are resolved by the node
//! itself so that every record of the name is dialled, not just the first.

use std::time::Duration;

use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::upgrade::Version;
use libp2p::identity::Keypair;
use libp2p::{dns, noise, tcp, PeerId, Transport};

use crate::config::Security;
use crate::{muxer, tls};

/// The bound on the TCP connect + security handshake + muxer negotiation of one connection.
pub const UPGRADE_TIMEOUT: Duration = Duration::from_secs(10);

pub type BoxedTransport = Boxed<(PeerId, StreamMuxerBox)>;

/// Builds the transport. The security choice is made at run time, so each arm boxes its
/// own fully typed stack.
pub fn build(key: &Keypair, security: Security) -> Result<BoxedTransport, String> {
    let tcp = tcp::tokio::Transport::new(tcp::Config::new().nodelay(true));
    let muxer = muxer::Config::new();
    // Without a readable /etc/resolv.conf we still run; only `/dns*` multiaddrs fail.
    let base = match dns::tokio::Transport::system(tcp) {
        Ok(t) => t.boxed(),
        Err(e) => {
            tracing::warn!(error = %e, "no system DNS configuration; /dns multiaddrs will not resolve");
            tcp::tokio::Transport::new(tcp::Config::new().nodelay(true)).boxed()
        }
    };
    let transport = match security {
        Security::Tls => {
            let tls = tls::Config::new(key).map_err(|e| format!("TLS configuration: {e}"))?;
            base.upgrade(Version::V1Lazy)
                .authenticate(tls)
                .multiplex(muxer.clone())
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
