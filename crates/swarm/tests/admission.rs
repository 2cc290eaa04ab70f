//! Admission at the swarm layer: a node without a key listens on loopback only, and nodes with
//! different keys (or none) never connect. The agent-level attacks (fetching a blob, acting as
//! tracker, the allow-list, a connection flood) are in `crates/agent/tests/admission.rs`.

use std::time::Duration;

use libp2p::futures::AsyncReadExt;
use pollen_swarm::{Bootstrap, Error, Node, SwarmConfig, SwarmKey};
use tempfile::TempDir;
use tokio::time::{timeout, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

fn config(listen: &str, swarm_key: Option<SwarmKey>) -> SwarmConfig {
    SwarmConfig {
        listen: vec![listen.parse().unwrap()],
        bootstrap_interval: Duration::from_millis(200),
        swarm_key,
        ..SwarmConfig::default()
    }
}

async fn start(dir: &TempDir, config: SwarmConfig) -> Result<Node, Error> {
    timeout(DEADLINE, Node::start(dir.path(), config))
        .await
        .expect("start within the deadline")
}

#[tokio::test]
async fn without_a_key_a_node_listens_on_loopback_only() {
    let dir = TempDir::new().unwrap();
    for addr in ["/ip4/0.0.0.0/tcp/0", "/ip4/10.1.2.3/tcp/0", "/ip6/::/tcp/0"] {
        match start(&dir, config(addr, None)).await {
            Err(Error::NoSwarmKey { addr: refused }) => assert_eq!(refused.to_string(), addr),
            Err(e) => panic!("{addr}: {e}"),
            Ok(_) => panic!("{addr}: a keyless node listens beyond loopback"),
        }
    }
    let mut two = config("/ip4/127.0.0.1/tcp/0", None);
    two.listen.push("/ip4/0.0.0.0/tcp/0".parse().unwrap());
    assert!(matches!(
        start(&dir, two).await,
        Err(Error::NoSwarmKey { .. })
    ));
    let e = start(&dir, config("/ip4/0.0.0.0/tcp/0", None))
        .await
        .err()
        .unwrap();
    assert!(e.to_string().contains("pollen swarm-key"), "{e}");

    let node = start(&dir, config("/ip4/127.0.0.9/tcp/0", None))
        .await
        .unwrap();
    node.shutdown().await.unwrap();
    let key = SwarmKey::generate().unwrap();
    let node = start(&dir, config("/ip4/0.0.0.0/tcp/0", Some(key)))
        .await
        .unwrap();
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn only_nodes_with_the_same_key_connect() {
    let (key, other) = (SwarmKey::generate().unwrap(), SwarmKey::generate().unwrap());
    let dirs: Vec<TempDir> = (0..4).map(|_| TempDir::new().unwrap()).collect();
    let a = start(&dirs[0], config("/ip4/127.0.0.1/tcp/0", Some(key)))
        .await
        .unwrap();
    let a_addr = a.listen_addrs().await.unwrap()[0].clone();
    let joining = |key| {
        let mut c = config("/ip4/127.0.0.1/tcp/0", key);
        c.bootstrap = vec![Bootstrap::Addr(a_addr.clone())];
        c
    };
    let wrong = start(&dirs[1], joining(Some(other))).await.unwrap();
    let keyless = start(&dirs[2], joining(None)).await.unwrap();
    let member = start(&dirs[3], joining(Some(key))).await.unwrap();

    let deadline = Instant::now() + DEADLINE;
    while !a
        .connected_peers()
        .await
        .unwrap()
        .contains(&member.peer_id())
    {
        assert!(Instant::now() < deadline, "the member never connected");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for stranger in [&wrong, &keyless] {
        stranger
            .add_address(a.peer_id(), a_addr.clone())
            .await
            .unwrap();
        // A keyless dialer checks no proof, so it may believe for a moment that it opened a
        // stream (its muxer negotiation is optimistic); the keyed node hangs up after the TLS
        // handshake, and not one byte of any protocol reaches the stranger.
        if let Ok(mut stream) = stranger.open_stream(a.peer_id()).await {
            let mut buf = [0u8; 1];
            let read = timeout(DEADLINE, stream.read(&mut buf)).await;
            assert!(matches!(read, Ok(Ok(0)) | Ok(Err(_))), "{read:?}");
        }
        let deadline = Instant::now() + DEADLINE;
        while stranger
            .connected_peers()
            .await
            .unwrap()
            .contains(&a.peer_id())
        {
            assert!(Instant::now() < deadline, "the stranger stayed connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(!a
            .connected_peers()
            .await
            .unwrap()
            .contains(&stranger.peer_id()));
    }
}
