//! Who may join the swarm, played by the attacker: agents without the swarm key (or with the
//! wrong one), a keyed agent missing from the allow-list, and a host flooding the p2p port with
//! idle connections. Real agents on loopback; every wait polls state under a deadline.

mod common;

use common::cluster::*;
use common::*;
use http::StatusCode;
use pollen_agent::AgentConfig;
use pollen_swarm::limits::DEFAULT_MAX_PENDING_PER_IP;
use pollen_swarm::{Bootstrap, Multiaddr, Node, PeerId, SwarmConfig, SwarmKey};
use pollen_testreg::TestRegistry;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpSocket, TcpStream};

/// A member of the test cluster's private swarm (`test_swarm_key`), connected to `to`.
async fn member(reg: &TestRegistry, cfg: AgentConfig, to: Option<&Harness>) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    member_keyed(reg, cfg, to, dir, 1 << 30, Some(test_swarm_key())).await
}

async fn member_in(
    reg: &TestRegistry,
    cfg: AgentConfig,
    to: Option<&Harness>,
    dir: tempfile::TempDir,
) -> Harness {
    member_keyed(reg, cfg, to, dir, 1 << 30, Some(test_swarm_key())).await
}

/// A member holding a blob of `size` bytes, and the blob.
async fn seeded(reg: &TestRegistry, size: usize, seed: u64) -> (Harness, bytes::Bytes, String) {
    let a = member(reg, agent_config(reg), None).await;
    let (layer, digest) = seed_blob(reg, &a, size, seed).await;
    (a, layer, digest)
}

/// An agent with its own swarm settings, bootstrapped to `to` without waiting to connect
/// (strangers never do).
async fn agent_with(
    reg: &TestRegistry,
    cfg: AgentConfig,
    swarm_key: Option<SwarmKey>,
    allow_peers: Vec<PeerId>,
    to: Option<&Harness>,
    dir: tempfile::TempDir,
) -> Harness {
    let mut swarm = SwarmConfig {
        listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
        provider_ttl: Duration::from_secs(4),
        lookup_timeout: Duration::from_secs(2),
        bootstrap_interval: Duration::from_millis(500),
        swarm_key,
        allow_peers,
        ..SwarmConfig::default()
    };
    if let Some(first) = to {
        swarm.bootstrap = vec![Bootstrap::Addr(p2p_addr(first).await)];
    }
    let n = Node::start(dir.path(), swarm).await.expect("swarm starts");
    Harness::with_swarm(reg.clone(), cfg, dir, 1 << 30, Some(n)).await
}

async fn p2p_addr(h: &Harness) -> Multiaddr {
    node(h).listen_addrs().await.unwrap()[0].clone()
}

fn peer_of(dir: &tempfile::TempDir) -> PeerId {
    pollen_swarm::identity::load_or_create(dir.path())
        .unwrap()
        .public()
        .to_peer_id()
}

async fn peers_of(h: &Harness) -> Vec<PeerId> {
    node(h).connected_peers().await.unwrap()
}

/// `stranger` dials `victim` directly and tries to open a pieces stream: it must fail.
async fn cannot_open_a_stream(stranger: &Harness, victim: &Harness) {
    let (s, v) = (node(stranger), node(victim));
    s.add_address(v.peer_id(), p2p_addr(victim).await)
        .await
        .unwrap();
    assert!(
        s.open_stream(v.peer_id()).await.is_err(),
        "a stranger opened a stream"
    );
    assert!(!peers_of(victim).await.contains(&s.peer_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_swarm_key_an_agent_cannot_connect_or_fetch_a_blob() {
    let reg = TestRegistry::start().await.unwrap();
    let (a, layer, digest) = seeded(&reg, 3 * PIECE + 7, 21).await;
    let wrong_key = SwarmKey::generate().unwrap();
    let wrong = agent_with(
        &reg,
        agent_config(&reg),
        Some(wrong_key),
        vec![],
        Some(&a),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let keyless = agent_with(
        &reg,
        agent_config(&reg),
        None,
        vec![],
        Some(&a),
        tempfile::tempdir().unwrap(),
    )
    .await;
    upstream_down(&reg);

    for stranger in [&wrong, &keyless] {
        cannot_open_a_stream(stranger, &a).await;
        let r = stranger.get(&blob_path(stranger, &digest)).await;
        assert_ne!(r.status, StatusCode::OK, "a stranger got the blob");
        assert_eq!(sources(stranger), (0.0, 0.0));
        assert!(!peers_of(&a).await.contains(&node(stranger).peer_id()));
    }
    // With a key, each side checks the other's proof inside the handshake, so neither ever
    // counts the connection. The keyless agent negotiates its muxer optimistically and so may
    // count A for the moment until A hangs up; what A holds is what matters, checked above.
    assert!(peers_of(&wrong).await.is_empty());
    a.agent.refresh_peer_metrics();
    assert_eq!(a.metric("pollen_peer_bytes_sent_total"), 0.0);

    // The same pull from a member with the key works: the strangers' failure is admission.
    let b = member(&reg, agent_config(&reg), Some(&a)).await;
    let r = b.get(&blob_path(&b, &digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
    assert!(!peers_of(&a).await.contains(&node(&wrong).peer_id()));
    assert!(!peers_of(&a).await.contains(&node(&keyless).peer_id()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn without_the_swarm_key_an_agent_cannot_act_as_tracker() {
    let reg = TestRegistry::start().await.unwrap();
    let victim = member(&reg, agent_config(&reg), None).await;
    let mut tracker_cfg = agent_config(&reg);
    tracker_cfg.p2p.tracker = true;
    let key = SwarmKey::generate().unwrap();
    let stranger = agent_with(
        &reg,
        tracker_cfg.clone(),
        Some(key),
        vec![],
        Some(&victim),
        tempfile::tempdir().unwrap(),
    )
    .await;
    // A real tracker joins after the stranger: once the victim names it, it has had every
    // chance to learn of the stranger too.
    let tracker = member(&reg, tracker_cfg, Some(&victim)).await;
    let (t, s) = (
        node(&tracker).peer_id().to_string(),
        node(&stranger).peer_id().to_string(),
    );
    eventually("the victim to find the real tracker", || async {
        status(&victim).await.trackers.contains(&t)
    })
    .await;
    let st = status(&victim).await;
    assert!(
        !st.trackers.contains(&s),
        "the stranger is a tracker: {st:?}"
    );
    assert!(!st.peers.contains(&s));
    cannot_open_a_stream(&stranger, &victim).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_allow_listed_swarm_refuses_a_keyed_peer_not_on_the_list() {
    let reg = TestRegistry::start().await.unwrap();
    let key = test_swarm_key();
    let b_dir = tempfile::tempdir().unwrap();
    let b_id = peer_of(&b_dir);
    let a = agent_with(
        &reg,
        agent_config(&reg),
        Some(key),
        vec![b_id],
        None,
        tempfile::tempdir().unwrap(),
    )
    .await;
    let layer = random_bytes(2 * PIECE + 5, 22);
    let digest = reg.add_blob("app", layer.clone());
    assert_eq!(a.get(&blob_path(&a, &digest)).await.status, StatusCode::OK);
    a.wait_stored(&digest).await;

    // Keyed but not listed: refused after the handshake, so no stream and no blob.
    let c = agent_with(
        &reg,
        agent_config(&reg),
        Some(key),
        vec![],
        Some(&a),
        tempfile::tempdir().unwrap(),
    )
    .await;
    let b = member_in(&reg, agent_config(&reg), Some(&a), b_dir).await;
    upstream_down(&reg);
    cannot_open_a_stream(&c, &a).await;
    let r = c.get(&blob_path(&c, &digest)).await;
    assert_ne!(r.status, StatusCode::OK, "an unlisted peer got the blob");
    assert_eq!(sources(&c), (0.0, 0.0));

    let r = b.get(&blob_path(&b, &digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
    assert_eq!(sources(&b), (layer.len() as f64, 0.0), "every byte from A");
    assert!(!peers_of(&a).await.contains(&node(&c).peer_id()));
}

/// An idle TCP connection to `to` from `from`.
async fn idle_connection(from: [u8; 4], to: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from((from, 0))).unwrap();
    socket.connect(to).await.unwrap()
}

/// Whether the agent kept the connection for a handshake (it answers the multistream-select
/// header that begins one) or closed it at once.
async fn kept(conn: &mut TcpStream) -> bool {
    use tokio::io::AsyncWriteExt;
    if conn.write_all(b"\x13/multistream/1.0.0\n").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 64];
    match tokio::time::timeout(DEADLINE, conn.read(&mut buf)).await {
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
        Err(_) => panic!("the agent neither answered nor closed an idle connection"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_connection_flood_is_capped_and_members_still_fetch() {
    const FLOOD: usize = 300;
    let reg = TestRegistry::start().await.unwrap();
    let (a, layer, digest) = seeded(&reg, 3 * PIECE + 1, 23).await;
    let addr = p2p_addr(&a).await;
    let port = addr
        .iter()
        .find_map(|p| match p {
            pollen_swarm::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .unwrap();
    let target = SocketAddr::from(([127, 0, 0, 1], port));

    // One host (127.0.0.2) opens hundreds of connections and says nothing.
    let mut flood = Vec::with_capacity(FLOOD);
    for _ in 0..FLOOD {
        flood.push(idle_connection([127, 0, 0, 2], target).await);
    }
    let mut held = 0;
    for conn in &mut flood {
        held += usize::from(kept(conn).await);
    }
    assert!(
        held <= DEFAULT_MAX_PENDING_PER_IP as usize,
        "{held} idle connections from one address are held"
    );
    assert!(held > 0, "the agent accepted no connection at all");

    // The flood goes on while a member joins and fetches.
    let flooder = tokio::spawn(async move {
        loop {
            let conn = idle_connection([127, 0, 0, 2], target).await;
            flood.push(conn);
            if flood.len() > FLOOD {
                flood.remove(0);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let b = member(&reg, agent_config(&reg), Some(&a)).await;
    upstream_down(&reg);
    let r = b.get(&blob_path(&b, &digest)).await;
    flooder.abort();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
    assert_eq!(sources(&b), (layer.len() as f64, 0.0), "every byte from A");
}
