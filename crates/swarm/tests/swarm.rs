//! Nodes on loopback: discovery, provider records, streams, identity. Every wait polls the
//! node's state (or awaits an event) under a deadline; nothing sleeps to synchronise.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use libp2p::futures::{AsyncReadExt, AsyncWriteExt};
use pollen_oci::Digest;
use pollen_proto::{ErrorCode, Reply, Request};
use pollen_swarm::{
    Bootstrap, Error, IdentityError, Multiaddr, Node, PeerId, Security, SwarmConfig,
};
use tempfile::TempDir;
use tokio::time::{timeout, Instant};
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// The bound on any one condition in these tests; loopback makes each take milliseconds.
const DEADLINE: Duration = Duration::from_secs(20);
/// Short provider TTL so that records of dead or silent providers expire within a test.
const TEST_PROVIDER_TTL: Duration = Duration::from_secs(2);

fn config(security: Security) -> SwarmConfig {
    SwarmConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        provider_ttl: TEST_PROVIDER_TTL,
        lookup_timeout: Duration::from_secs(5),
        bootstrap_interval: Duration::from_millis(500),
        security,
        ..SwarmConfig::default()
    }
}

async fn start(dir: &Path, config: SwarmConfig) -> Node {
    timeout(DEADLINE, Node::start(dir, config))
        .await
        .expect("start within the deadline")
        .expect("node starts")
}

/// A node bootstrapped to nothing, and one bootstrapped to it.
async fn pair(security: Security) -> (Node, Node, TempDir, TempDir) {
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let a = start(dir_a.path(), config(security)).await;
    let mut cfg = config(security);
    cfg.bootstrap = vec![Bootstrap::Addr(first_addr(&a).await)];
    let b = start(dir_b.path(), cfg).await;
    eventually("the pair to connect", || async {
        connected(&a, &b).await && connected(&b, &a).await
    })
    .await;
    (a, b, dir_a, dir_b)
}

async fn first_addr(node: &Node) -> Multiaddr {
    node.listen_addrs().await.unwrap()[0].clone()
}

async fn connected(node: &Node, to: &Node) -> bool {
    node.connected_peers()
        .await
        .unwrap()
        .contains(&to.peer_id())
}

/// Polls `check` until it holds, failing the test after [`DEADLINE`].
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + DEADLINE;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn providers(node: &Node, digest: &Digest) -> Vec<PeerId> {
    node.find_providers(digest).await.expect("lookup answers")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_address_connects_and_identifies() {
    let (a, b, _da, _db) = pair(Security::Tls).await;
    // `a` only accepted `b`'s connection: it can route to `b` only with the listen address
    // that identify told it.
    eventually("identify to fill both routing tables", || async {
        a.stats().routing_table_peers == 1 && b.stats().routing_table_peers == 1
    })
    .await;
    assert_eq!(a.stats().connected_peers, 1);
    assert_eq!(b.stats().connected_peers, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_is_found_and_unprovide_withdraws_it() {
    let (a, b, _da, _db) = pair(Security::Tls).await;
    let blob = Digest::of(b"layer one");
    let other = Digest::of(b"nobody has this");
    a.provide(&blob).await.unwrap();
    assert_eq!(a.stats().provided_blobs, 1);

    eventually("b to find a as provider", || async {
        providers(&b, &blob).await == vec![a.peer_id()]
    })
    .await;
    assert!(providers(&b, &other).await.is_empty());
    // A node is never its own provider in the answer.
    assert!(providers(&a, &blob).await.is_empty());

    a.unprovide(&blob).await.unwrap();
    assert_eq!(a.stats().provided_blobs, 0);
    let since = Instant::now();
    eventually("the withdrawn record to expire", || async {
        providers(&b, &blob).await.is_empty()
    })
    .await;
    // Gone within about the TTL, not the lookup timeout or longer.
    assert!(
        since.elapsed() < TEST_PROVIDER_TTL * 4,
        "{:?}",
        since.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_node_is_no_longer_found() {
    let (a, b, _da, _db) = pair(Security::Tls).await;
    let blob = Digest::of(b"layer two");
    a.provide(&blob).await.unwrap();
    eventually("b to find a", || async {
        providers(&b, &blob).await == vec![a.peer_id()]
    })
    .await;
    a.shutdown().await.unwrap();
    assert!(matches!(a.provide(&blob).await, Err(Error::Stopped)));
    eventually("a's record to expire at b", || async {
        providers(&b, &blob).await.is_empty()
    })
    .await;
}

/// A pieces-protocol exchange (framed by `pollen-proto`) and then a bulk transfer larger than
/// yamux's frames and initial window, echoed back.
async fn stream_round_trip(security: Security) {
    let (a, b, _da, _db) = pair(security).await;
    let mut incoming = b.incoming_streams().unwrap();
    assert!(matches!(b.incoming_streams(), Err(Error::AlreadyAccepting)));
    let blob = Digest::of(b"asked for");
    let a_id = a.peer_id();
    let server = tokio::spawn(async move {
        let (peer, stream) = incoming.next().await.expect("a stream");
        assert_eq!(peer, a_id);
        let mut stream = stream.compat();
        let request = pollen_proto::read_request(&mut stream).await.unwrap();
        assert_eq!(request, Some(Request::Interest { digest: blob }));
        let reply = Reply::Error {
            code: ErrorCode::UnknownBlob,
            message: "not here".into(),
        };
        pollen_proto::write_reply(&mut stream, &reply)
            .await
            .unwrap();
        // Then echo raw bytes until the other side closes.
        let mut stream = stream.into_inner();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            stream.write_all(&buf[..n]).await.unwrap();
        }
        stream.close().await.unwrap();
    });

    let exchange = async {
        let stream = a.open_stream(b.peer_id()).await.unwrap();
        let mut stream = stream.compat();
        pollen_proto::write_request(&mut stream, &Request::Interest { digest: blob })
            .await
            .unwrap();
        let reply = pollen_proto::read_reply(&mut stream)
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(
            reply,
            Reply::Error {
                code: ErrorCode::UnknownBlob,
                ..
            }
        ));

        let payload: Vec<u8> = (0..3 * 1024 * 1024 + 17)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let (mut reader, mut writer) = stream.into_inner().split();
        let send = async {
            writer.write_all(&payload).await.unwrap();
            writer.close().await.unwrap();
        };
        let mut echoed = Vec::new();
        let receive = reader.read_to_end(&mut echoed);
        let ((), received) = tokio::join!(send, receive);
        received.unwrap();
        assert!(
            echoed == payload,
            "echo differs ({} bytes back)",
            echoed.len()
        );
    };
    timeout(DEADLINE, exchange)
        .await
        .expect("exchange within the deadline");
    timeout(DEADLINE, server).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_round_trip_tls() {
    stream_round_trip(Security::Tls).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_round_trip_noise() {
    stream_round_trip(Security::Noise).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_to_a_peer_known_only_by_address() {
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let a = start(dir_a.path(), config(Security::Tls)).await;
    let b = start(dir_b.path(), config(Security::Tls)).await;
    let mut incoming = b.incoming_streams().unwrap();
    a.add_address(b.peer_id(), first_addr(&b).await)
        .await
        .unwrap();
    // `open_stream` dials on its own.
    let mut stream = a.open_stream(b.peer_id()).await.unwrap();
    stream.write_all(b"ping").await.unwrap();
    stream.close().await.unwrap();
    let (peer, mut accepted) = timeout(DEADLINE, incoming.next()).await.unwrap().unwrap();
    assert_eq!(peer, a.peer_id());
    let mut got = Vec::new();
    timeout(DEADLINE, accepted.read_to_end(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_id_survives_restart() {
    let dir = TempDir::new().unwrap();
    let first = start(dir.path(), config(Security::Tls)).await;
    let id = first.peer_id();
    first.shutdown().await.unwrap();
    let second = start(dir.path(), config(Security::Tls)).await;
    assert_eq!(second.peer_id(), id);
    assert!(dir.path().join("p2p/key").is_file());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_key_file_is_an_error() {
    let dir = TempDir::new().unwrap();
    std::fs::create_dir_all(dir.path().join("p2p")).unwrap();
    std::fs::write(dir.path().join("p2p/key"), b"\x08\x01garbage").unwrap();
    let result = Node::start(dir.path(), config(Security::Tls)).await;
    match result {
        Err(Error::Identity(IdentityError::Corrupt { path, .. })) => {
            assert!(path.ends_with("p2p/key"));
        }
        Err(other) => panic!("wrong error: {other}"),
        Ok(_) => panic!("a corrupt key must not start a node"),
    }
    // The file is left for the operator.
    assert_eq!(
        std::fs::read(dir.path().join("p2p/key")).unwrap(),
        b"\x08\x01garbage"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_bootstrap_resolves_and_connects() {
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let a = start(dir_a.path(), config(Security::Tls)).await;
    let port = first_addr(&a)
        .await
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let mut cfg = config(Security::Tls);
    cfg.bootstrap = vec![format!("dns:localhost:{port}").parse().unwrap()];
    let b = start(dir_b.path(), cfg).await;
    eventually("b to connect to a through the name", || async {
        connected(&b, &a).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_peer_is_redialled_after_a_restart() {
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let a = start(dir_a.path(), config(Security::Tls)).await;
    let addr = first_addr(&a).await;
    let id = a.peer_id();
    let mut cfg = config(Security::Tls);
    cfg.bootstrap = vec![Bootstrap::Addr(addr.clone())];
    let b = start(dir_b.path(), cfg).await;
    eventually("first connection", || async { connected(&b, &a).await }).await;

    a.shutdown().await.unwrap();
    eventually("b to notice", || async {
        !b.connected_peers().await.unwrap().contains(&id)
    })
    .await;
    // Same data dir and port: the same node comes back, and b's bootstrap round finds it.
    let mut cfg = config(Security::Tls);
    cfg.listen = vec![addr];
    let a = start(dir_a.path(), cfg).await;
    assert_eq!(a.peer_id(), id);
    eventually("b to re-dial a", || async { connected(&b, &a).await }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mismatched_security_does_not_connect() {
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    let a = start(dir_a.path(), config(Security::Tls)).await;
    let b = start(dir_b.path(), config(Security::Noise)).await;
    b.add_address(a.peer_id(), first_addr(&a).await)
        .await
        .unwrap();
    match b.open_stream(a.peer_id()).await {
        Err(Error::OpenStream { .. }) => {}
        Err(other) => panic!("expected a failed dial, got {other}"),
        Ok(_) => panic!("TLS and noise nodes must not connect"),
    }
}

/// Zero configuration on a flat LAN: two nodes with mDNS and no bootstrap find each other.
/// Needs a multicast-capable interface; where the host has none (some sandboxes), the test says
/// so and passes without asserting, since nothing in the code is exercised there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mdns_finds_peers_without_bootstrap() {
    let (dir_a, dir_b) = (TempDir::new().unwrap(), TempDir::new().unwrap());
    // Every interface: a swarm key is needed beyond loopback.
    let key = pollen_swarm::SwarmKey::generate().unwrap();
    let mdns = |_| SwarmConfig {
        listen: vec!["/ip4/0.0.0.0/tcp/0".parse().unwrap()],
        mdns: true,
        swarm_key: Some(key),
        ..config(Security::Tls)
    };
    let a = start(dir_a.path(), mdns(())).await;
    let b = start(dir_b.path(), mdns(())).await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        if connected(&a, &b).await || connected(&b, &a).await {
            return;
        }
        if Instant::now() >= deadline {
            // 224.0.0.251 as /proc/net/igmp writes it: joined means mDNS had a working socket.
            let multicast =
                std::fs::read_to_string("/proc/net/igmp").is_ok_and(|t| t.contains("FB0000E0"));
            assert!(
                !multicast,
                "mDNS joined its multicast group but the nodes never met"
            );
            eprintln!("no mDNS multicast on this host; skipped");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
