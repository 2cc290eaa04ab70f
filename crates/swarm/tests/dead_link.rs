//! A link that goes silent (a cable pulled, a link set down): TCP keeps such a connection
//! "open" for minutes, and every stream and query on it waits out its timeout. Pings must find
//! it and the node must close it. The silent link is a TCP proxy between two nodes that stops
//! forwarding (and accepting) while keeping its sockets open.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pollen_swarm::multiaddr::Protocol;
use pollen_swarm::{Bootstrap, Multiaddr, Node, SwarmConfig};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};

/// Below the idle-connection timeout (60 s), which would close the connection anyway, and
/// above what the short pings used here take to declare it dead: libp2p-ping lets the first
/// failure pass, and the second needs a new substream, whose negotiation has a fixed 10 s
/// timeout.
const DEADLINE: Duration = Duration::from_secs(30);

fn config() -> SwarmConfig {
    SwarmConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        bootstrap_interval: Duration::from_millis(500),
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_secs(1),
        ..SwarmConfig::default()
    }
}

struct Proxy {
    addr: SocketAddr,
    frozen: Arc<AtomicBool>,
    /// Client-side connections accepted before the freeze that the client has closed since.
    closed_after_freeze: Arc<AtomicUsize>,
}

/// Forwards `from` to `to` until `from` ends; while frozen, reads and drops.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, frozen: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) if !frozen.load(Ordering::Relaxed) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            Ok(_) => {}
        }
    }
}

async fn proxy_to(target: SocketAddr) -> Proxy {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let frozen = Arc::new(AtomicBool::new(false));
    let closed = Arc::new(AtomicUsize::new(0));
    let (f, c) = (frozen.clone(), closed.clone());
    tokio::spawn(async move {
        // Once frozen, no new connection is accepted: the listener goes (refused), so only the
        // connection made before can end, and only by the client's own decision.
        while !f.load(Ordering::Relaxed) {
            let Ok(Ok((client, _))) = timeout(Duration::from_millis(50), listener.accept()).await
            else {
                continue;
            };
            let Ok(server) = TcpStream::connect(target).await else {
                continue;
            };
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let (f1, f2, c1) = (f.clone(), f.clone(), c.clone());
            tokio::spawn(async move {
                pump(cr, sw, f1.clone()).await;
                if f1.load(Ordering::Relaxed) {
                    c1.fetch_add(1, Ordering::Relaxed);
                }
            });
            // The server's half: its end does not close the client's socket, so the client
            // sees silence, not a close.
            tokio::spawn(async move {
                pump(sr, cw, f2).await;
                std::future::pending::<()>().await;
            });
        }
    });
    Proxy {
        addr,
        frozen,
        closed_after_freeze: closed,
    }
}

async fn tcp_addr(node: &Node) -> SocketAddr {
    let addr: Multiaddr = node.listen_addrs().await.unwrap()[0].clone();
    let (mut ip, mut port) = (None, None);
    for p in addr.iter() {
        match p {
            Protocol::Ip4(a) => ip = Some(a),
            Protocol::Tcp(p) => port = Some(p),
            _ => {}
        }
    }
    SocketAddr::from((ip.unwrap(), port.unwrap()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_that_goes_silent_is_closed() {
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let a = Node::start(dir_a.path(), config()).await.unwrap();
    let proxy = proxy_to(tcp_addr(&a).await).await;
    let mut cfg = config();
    let via: Multiaddr = format!("/ip4/127.0.0.1/tcp/{}", proxy.addr.port())
        .parse()
        .unwrap();
    cfg.bootstrap = vec![Bootstrap::Addr(via)];
    let b = Node::start(dir_b.path(), cfg).await.unwrap();
    let until = Instant::now() + DEADLINE;
    while !b.connected_peers().await.unwrap().contains(&a.peer_id()) {
        assert!(
            Instant::now() < until,
            "b never connected to a through the proxy"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    proxy.frozen.store(true, Ordering::Relaxed);
    let until = Instant::now() + DEADLINE;
    while proxy.closed_after_freeze.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < until,
            "b kept a silent connection open for {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
