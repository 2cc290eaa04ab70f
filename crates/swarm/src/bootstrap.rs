//! Turning the configured bootstrap entries into dial targets.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

use crate::config::Bootstrap;

/// The bound on one name's resolution; a slow resolver delays only that name's targets.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Every dial target of `entries`: fixed addresses as given, and one `/ip4|ip6/…/tcp/PORT`
/// per A/AAAA record of each DNS name (a headless Service answers with every ready pod). A
/// name that does not resolve now is logged and skipped; the next round tries again.
pub async fn resolve(entries: &[Bootstrap]) -> Vec<Multiaddr> {
    let mut targets = Vec::new();
    for entry in entries {
        match entry {
            Bootstrap::Addr(addr) => targets.push(addr.clone()),
            Bootstrap::Dns { name, port } => {
                let lookup = tokio::net::lookup_host((name.as_str(), *port));
                match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
                    Ok(Ok(addrs)) => {
                        for addr in addrs {
                            let addr = socket_multiaddr(addr);
                            if !targets.contains(&addr) {
                                targets.push(addr);
                            }
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%entry, error = %e, "bootstrap name does not resolve")
                    }
                    Err(_) => tracing::warn!(%entry, "bootstrap name resolution timed out"),
                }
            }
        }
    }
    targets
}

fn socket_multiaddr(addr: SocketAddr) -> Multiaddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) => Protocol::Ip4(ip),
        IpAddr::V6(ip) => Protocol::Ip6(ip),
    };
    Multiaddr::empty().with(ip).with(Protocol::Tcp(addr.port()))
}

/// Splits a `/p2p/<id>` suffix off an address, if there is one.
pub fn split_peer_id(addr: &Multiaddr) -> (Multiaddr, Option<libp2p::PeerId>) {
    let mut addr = addr.clone();
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => {
            addr.pop();
            (addr, Some(peer))
        }
        _ => (addr, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn resolves_localhost_and_keeps_fixed_addresses() {
        let fixed: Multiaddr = "/ip4/10.1.2.3/tcp/65003".parse().unwrap();
        let entries = [
            Bootstrap::Addr(fixed.clone()),
            Bootstrap::Dns {
                name: "localhost".into(),
                port: 4242,
            },
        ];
        let targets = resolve(&entries).await;
        assert_eq!(targets[0], fixed);
        assert!(
            targets.contains(&"/ip4/127.0.0.1/tcp/4242".parse().unwrap()),
            "{targets:?}"
        );
    }

    #[test]
    fn splits_peer_id() {
        let peer = libp2p::PeerId::random();
        let with: Multiaddr = format!("/ip4/1.2.3.4/tcp/5/p2p/{peer}").parse().unwrap();
        let (addr, id) = split_peer_id(&with);
        assert_eq!(addr, "/ip4/1.2.3.4/tcp/5".parse().unwrap());
        assert_eq!(id, Some(peer));
        assert_eq!(split_peer_id(&addr), (addr.clone(), None));
    }
}
