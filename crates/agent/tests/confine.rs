//! A hostile peer against a real agent: preheats naming hosts the agent is not configured
//! for (a port scan of the agent's network), and one peer trying to take every upload slot.

mod common;

use common::cluster::*;
use common::*;
use pollen_agent::Node;
use pollen_proto::{
    read_preheat_reply, read_reply, write_preheat_request, write_request, PreheatReply,
    PreheatRequest, Reply, Request, PREHEAT_PROTOCOL,
};
use pollen_swarm::{Bootstrap, SwarmConfig};
use pollen_testreg::TestRegistry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::compat::FuturesAsyncReadCompatExt;

/// A bare swarm node (no agent behind it) connected to `victim`: the attacker's.
async fn attacker(victim: &Harness) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let n = Node::start(
        dir.path(),
        SwarmConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![Bootstrap::Addr(
                node(victim).listen_addrs().await.unwrap()[0].clone(),
            )],
            bootstrap_interval: Duration::from_millis(500),
            ..SwarmConfig::default()
        },
    )
    .await
    .unwrap();
    let want = node(victim).peer_id();
    eventually("the attacker to connect", || async {
        n.connected_peers().await.unwrap().contains(&want)
    })
    .await;
    (n, dir)
}

/// Asks `victim` to preheat a blob of `registry`/x/y; its final answer.
async fn preheat(from: &Node, victim: &Harness, registry: Option<String>) -> (bool, String) {
    let stream = from
        .open_stream_on(node(victim).peer_id(), PREHEAT_PROTOCOL)
        .await
        .unwrap();
    let (mut r, mut w) = tokio::io::split(stream.compat());
    let req = PreheatRequest::Fetch {
        registry,
        name: "x/y".into(),
        digest: pollen_oci::Digest::of(b"nothing"),
    };
    write_preheat_request(&mut w, &req).await.unwrap();
    loop {
        match tokio::time::timeout(DEADLINE, read_preheat_reply(&mut r)).await {
            Ok(Ok(Some(PreheatReply::Done { ok, message }))) => return (ok, message),
            Ok(Ok(Some(PreheatReply::Progress { .. }))) => continue,
            other => panic!("no answer to the preheat: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_preheat_reaches_only_configured_registries_and_learns_nothing() {
    let reg = TestRegistry::start().await.unwrap();
    let mut cfg = agent_config(&reg);
    // The agent's own clients may name any registry; its peers still may not.
    cfg.upstream.allow_unlisted_registries = true;
    let victim = member(&reg, cfg, None).await;
    let (evil, _dir) = attacker(&victim).await;

    // A port on the victim's network, counting every connection it gets.
    let scanned = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = scanned.local_addr().unwrap().port();
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    let listening = tokio::spawn(async move {
        while scanned.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    for registry in [
        format!("127.0.0.1:{port}"),
        "127.0.0.1:22".to_string(),
        "169.254.169.254".to_string(),
        "unconfigured.example".to_string(),
    ] {
        let (ok, message) = preheat(&evil, &victim, Some(registry.clone())).await;
        assert!(!ok, "{registry}");
        assert_eq!(
            message, "refused: not a registry this node fetches from",
            "{registry}"
        );
    }
    // Every answer came after the decision: had a connection been tried, it would have been
    // accepted by now.
    assert_eq!(accepts.load(Ordering::SeqCst), 0, "no connection attempted");
    assert_eq!(reg.stats().requests, 0);

    // The control: a configured registry is fetched from; its failure is not told to the peer.
    let (ok, message) = preheat(&evil, &victim, Some(reg.host())).await;
    assert!(!ok);
    assert_eq!(message, "the fetch failed on this node");
    assert!(
        reg.stats().requests > 0,
        "the configured registry was asked"
    );
    listening.abort();
}

/// Opens a pieces session for `digest` on `victim`; whether it was unchoked at once.
async fn session(
    from: &Node,
    victim: &Harness,
    digest: pollen_oci::Digest,
) -> (bool, pollen_swarm::Stream) {
    let stream = from.open_stream(node(victim).peer_id()).await.unwrap();
    let mut io = stream.compat();
    write_request(&mut io, &Request::Interest { digest })
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(DEADLINE, read_reply(&mut io)).await {
            Ok(Ok(Some(Reply::Unchoked))) => return (true, io.into_inner()),
            Ok(Ok(Some(Reply::Choked))) => return (false, io.into_inner()),
            Ok(Ok(Some(_))) => continue,
            other => panic!("no choke state for the session: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_peer_cannot_take_every_upload_slot() {
    let reg = TestRegistry::start().await.unwrap();
    let mut cfg = agent_config(&reg);
    cfg.p2p.max_upload_sessions = 4;
    let victim = member(&reg, cfg, None).await;
    let (_layer, digest) = seed_blob(&reg, &victim, 2 * PIECE, 21).await;
    let d: pollen_oci::Digest = digest.parse().unwrap();

    let (greedy, _d1) = attacker(&victim).await;
    let mut held = Vec::new();
    let mut unchoked = 0;
    for _ in 0..6 {
        let (u, s) = session(&greedy, &victim, d).await;
        unchoked += usize::from(u);
        held.push(s);
    }
    assert_eq!(unchoked, 2, "one peer gets half the 4 slots, the rest wait");

    // Another peer is served at once, while the greedy one keeps its 6 sessions open.
    let (other, _d2) = attacker(&victim).await;
    let (u, _s) = session(&other, &victim, d).await;
    assert!(u, "a second peer gets a slot");
    let (u, _s2) = session(&other, &victim, d).await;
    assert!(u, "and its own share");
    drop(held);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_peer_gets_a_bounded_number_of_sessions_and_preheats() {
    let reg = TestRegistry::start().await.unwrap();
    let mut cfg = agent_config(&reg);
    // Slots for everyone: only the per-peer caps limit here.
    cfg.p2p.max_upload_sessions = 64;
    // The preheats below hang upstream for the whole test.
    cfg.upstream.response_timeout = Duration::from_secs(600);
    let victim = member(&reg, cfg, None).await;
    let (_layer, digest) = seed_blob(&reg, &victim, PIECE, 22).await;
    let d: pollen_oci::Digest = digest.parse().unwrap();
    let (greedy, _dir) = attacker(&victim).await;

    // Sessions: 16 served, the 17th closed without an answer.
    let mut held = Vec::new();
    for _ in 0..16 {
        held.push(session(&greedy, &victim, d).await.1);
    }
    let stream = greedy.open_stream(node(&victim).peer_id()).await.unwrap();
    let mut io = stream.compat();
    let _ = write_request(&mut io, &Request::Interest { digest: d }).await;
    let answer = tokio::time::timeout(DEADLINE, read_reply(&mut io))
        .await
        .expect("closed in time");
    assert!(
        !matches!(answer, Ok(Some(Reply::Have { .. }))),
        "a 17th session was served: {answer:?}"
    );
    drop(held);

    // Preheats: fetches that hang upstream; 8 run, the 9th is refused as busy.
    reg.set_response_delay(Duration::from_secs(600));
    let mut running = Vec::new();
    for i in 0..8u8 {
        let stream = greedy
            .open_stream_on(node(&victim).peer_id(), PREHEAT_PROTOCOL)
            .await
            .unwrap();
        let (mut r, mut w) = tokio::io::split(stream.compat());
        let req = PreheatRequest::Fetch {
            registry: Some(reg.host()),
            name: "app".into(),
            digest: pollen_oci::Digest::of(&[i]),
        };
        write_preheat_request(&mut w, &req).await.unwrap();
        let first = tokio::time::timeout(DEADLINE, read_preheat_reply(&mut r)).await;
        assert!(
            matches!(first, Ok(Ok(Some(PreheatReply::Progress { .. })))),
            "preheat {i} runs: {first:?}"
        );
        running.push((r, w));
    }
    let (ok, message) = preheat(&greedy, &victim, Some(reg.host())).await;
    assert!(!ok);
    assert!(message.starts_with("busy"), "{message}");
    drop(running);
}
