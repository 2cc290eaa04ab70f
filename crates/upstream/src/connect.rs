//! Where upstream connections may go. A registry's redirect or token realm is a URL chosen by
//! whoever answers, including an unlisted registry a pod names: followed blindly, it reaches
//! the node's loopback services, the cloud metadata endpoint or the agent's own listeners
//! (request forgery). So every connection resolves its host here and refuses loopback,
//! link-local (with cloud metadata), unspecified addresses and this node's own listeners,
//! except for hosts the operator configured as mirrors (a local registry on 127.0.0.1 is the
//! operator's choice). Checking the resolved address at connect time also defeats a DNS name
//! that points at 127.0.0.1 or changes between a check and the connection.

use http::Uri;
use hyper_util::rt::TokioIo;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::time::timeout;

use crate::scope::default_port;
use crate::UpstreamConfig;

/// Addresses of one name tried before giving up; bounds the time a hostile name can cost.
const MAX_ADDRS_TRIED: usize = 4;
/// Cloud metadata services outside the link-local ranges (AWS over IPv6, Alibaba Cloud).
const METADATA: [IpAddr; 2] = [
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
];

/// Whether an address is one no registry's answer may send us to.
pub(crate) fn forbidden(ip: IpAddr) -> bool {
    if METADATA.contains(&ip) {
        return true;
    }
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address a gateway connects to.
            let nat64 = s[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
            let embedded = Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32);
            v6.is_loopback()
                || v6.is_unspecified()
                || (s[0] & 0xffc0) == 0xfe80
                || (nat64 && forbidden(IpAddr::V4(embedded)))
        }
    }
}

/// The connection policy of one [`crate::Upstream`], built from its configuration.
pub(crate) struct Policy {
    /// Hosts of configured mirrors: they may be on loopback (the operator's choice).
    configured: HashSet<String>,
    own: Vec<SocketAddr>,
    overrides: HashMap<String, Vec<IpAddr>>,
    connect_timeout: Duration,
}

/// `uri.host()` without IPv6 brackets, lower case.
fn bare_host(uri: &Uri) -> Option<String> {
    let h = uri.host()?;
    Some(
        h.trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase(),
    )
}

impl Policy {
    pub fn new(cfg: &UpstreamConfig) -> Policy {
        let mirrors = cfg
            .default_mirrors
            .iter()
            .chain(cfg.registries.values().flatten());
        let configured = mirrors
            .filter_map(|m| m.parse::<Uri>().ok())
            .filter_map(|u| bare_host(&u))
            .collect();
        let overrides = cfg
            .resolve_overrides
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
            .collect();
        Policy {
            configured,
            own: cfg.own_listeners.clone(),
            overrides,
            connect_timeout: cfg.connect_timeout,
        }
    }

    fn own_listener(&self, addr: SocketAddr) -> bool {
        let addr_ip = addr.ip().to_canonical();
        self.own.iter().any(|l| {
            l.port() == addr.port() && (l.ip().is_unspecified() || l.ip().to_canonical() == addr_ip)
        })
    }

    /// Every address `host` names: itself when it is an address, else a lookup with the
    /// connect deadline.
    async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if let Some(ips) = self.overrides.get(host) {
            return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        }
        let found = timeout(self.connect_timeout, tokio::net::lookup_host((host, port)))
            .await
            .map_err(|_| {
                format!(
                    "resolving {host}: no answer within {:?}",
                    self.connect_timeout
                )
            })?
            .map_err(|e| format!("resolving {host}: {e}"))?;
        Ok(found.collect())
    }

    /// Whether a connection to `host` may use `addr`.
    fn allowed(&self, host: &str, addr: SocketAddr) -> bool {
        !self.own_listener(addr) && (self.configured.contains(host) || !forbidden(addr.ip()))
    }

    /// Checks a hop to `target` (a redirect or a token realm) that `origin` asked for. Same
    /// host: as the origin's own connection. Another host may not be on a forbidden address
    /// even when that host is itself a configured mirror: the exemption belongs to requests
    /// the operator's configuration starts, not to a hop a registry chose.
    pub async fn check_hop(&self, origin: &Uri, target: &Uri) -> Result<(), String> {
        let host = bare_host(target).ok_or_else(|| format!("{target}: no host"))?;
        if bare_host(origin).as_deref() == Some(host.as_str()) {
            return Ok(());
        }
        if !(self.configured.contains(&host) || host.parse::<IpAddr>().is_ok()) {
            // Checked at connect time, on the addresses actually used.
            return Ok(());
        }
        let port = target.port_u16().unwrap_or(default_port(target));
        let addrs = self.resolve(&host, port).await?;
        match addrs
            .iter()
            .find(|a| forbidden(a.ip()) || self.own_listener(**a))
        {
            Some(a) => Err(refusal(target, *a)),
            None => Ok(()),
        }
    }

    /// Opens a TCP connection for `uri` to an allowed address of its host.
    async fn connect(&self, uri: &Uri) -> Result<TcpStream, String> {
        let host = bare_host(uri).ok_or_else(|| format!("{uri}: no host"))?;
        let port = uri.port_u16().unwrap_or(default_port(uri));
        let addrs = self.resolve(&host, port).await?;
        let allowed: Vec<SocketAddr> = addrs
            .iter()
            .copied()
            .filter(|a| self.allowed(&host, *a))
            .collect();
        if allowed.is_empty() {
            return Err(match addrs.first() {
                Some(a) => refusal(uri, *a),
                None => format!("{host} has no address"),
            });
        }
        let mut last = String::new();
        for addr in allowed.into_iter().take(MAX_ADDRS_TRIED) {
            match timeout(self.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(tcp)) => {
                    let _ = tcp.set_nodelay(true);
                    return Ok(tcp);
                }
                Ok(Err(e)) => last = format!("connecting to {addr}: {e}"),
                Err(_) => last = format!("connecting to {addr}: timed out"),
            }
        }
        Err(last)
    }
}

fn refusal(target: &Uri, addr: SocketAddr) -> String {
    format!(
        "refused to connect to {target} at {addr}: loopback, link-local, metadata, unspecified \
         and this node's own listeners are reachable only as configured mirrors"
    )
}

/// The TCP connector of the upstream client: every connection goes through [`Policy`].
#[derive(Clone)]
pub(crate) struct GuardedConnector {
    pub policy: Arc<Policy>,
}

impl tower_service::Service<Uri> for GuardedConnector {
    type Response = TokioIo<TcpStream>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            match policy.connect(&uri).await {
                Ok(tcp) => Ok(TokioIo::new(tcp)),
                Err(e) => Err(std::io::Error::other(e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forbidden_addresses() {
        for bad in [
            "127.0.0.1",
            "127.5.6.7",
            "0.0.0.0",
            "169.254.169.254",
            "169.254.1.1",
            "::1",
            "::",
            "fe80::1",
            "febf::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "fd00:ec2::254",
            "100.100.100.200",
            "255.255.255.255",
        ] {
            assert!(forbidden(bad.parse().unwrap()), "{bad}");
        }
        for ok in [
            "10.0.0.1",
            "192.168.1.1",
            "8.8.8.8",
            "2001:db8::1",
            "fec0::1",
            "64:ff9b::808:808",
        ] {
            assert!(!forbidden(ok.parse().unwrap()), "{ok}");
        }
    }

    #[tokio::test]
    async fn hops_and_own_listeners() {
        let mut cfg = UpstreamConfig {
            default_mirrors: vec!["http://127.0.0.1:5000".into()],
            own_listeners: vec!["0.0.0.0:65001".parse().unwrap()],
            ..Default::default()
        };
        cfg.registries
            .insert("r".into(), vec!["https://reg.test".into()]);
        cfg.resolve_overrides
            .insert("reg.test".into(), vec!["127.0.0.1".parse().unwrap()]);
        let p = Policy::new(&cfg);
        let u = |s: &str| s.parse::<Uri>().unwrap();
        let local = u("http://127.0.0.1:5000/v2/");
        let named = u("https://reg.test/v2/");
        // Same host as the configured loopback mirror: the operator's choice.
        assert!(p
            .check_hop(&local, &u("http://127.0.0.1:9000/x"))
            .await
            .is_ok());
        assert!(p
            .check_hop(&named, &u("https://reg.test:9000/x"))
            .await
            .is_ok());
        // From elsewhere, never, even to another configured mirror's loopback host.
        assert!(p
            .check_hop(&named, &u("http://127.0.0.1:5000/x"))
            .await
            .is_err());
        assert!(p.check_hop(&local, &u("https://reg.test/x")).await.is_err());
        assert!(p
            .check_hop(&named, &u("http://169.254.169.254/"))
            .await
            .is_err());
        assert!(p.check_hop(&named, &u("http://[::1]:80/")).await.is_err());
        // Own listeners, even on a configured host.
        assert!(!p.allowed("127.0.0.1", "127.0.0.1:65001".parse().unwrap()));
        assert!(p.allowed("127.0.0.1", "127.0.0.1:5000".parse().unwrap()));
        assert!(!p.allowed("evil.test", "127.0.0.1:5000".parse().unwrap()));
        assert!(p.allowed("evil.test", "10.1.2.3:443".parse().unwrap()));
    }
}
