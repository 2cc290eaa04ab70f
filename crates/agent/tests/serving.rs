//! Which agents serve a blob they are still downloading (`pollen_core::upload::serves_partial`):
//! the one fetching it from the upstream from its first request, before it has a byte, and any
//! other only once it holds a piece. Played by a plain swarm node that opens pieces sessions
//! to the agents itself. Every wait polls state under a deadline.

mod common;

use common::cluster::*;
use common::*;
use pollen_agent::Node;
use pollen_peer::{Session, SessionConfig, SessionError};
use pollen_proto::ErrorCode;
use pollen_swarm::{Bootstrap, PeerId, SwarmConfig};
use pollen_testreg::{Fault, TestRegistry};
use std::time::Duration;

/// Opens a pieces session from `from` to `to` about `digest`: the uploader's first answer.
async fn ask(
    from: &Node,
    to: PeerId,
    digest: pollen_oci::Digest,
) -> Result<pollen_peer::Have, SessionError> {
    use tokio_util::compat::FuturesAsyncReadCompatExt;
    let stream = from.open_stream(to).await.expect("a pieces stream");
    let cfg = SessionConfig {
        piece_size: Some(PIECE as u32),
        ..SessionConfig::default()
    };
    Session::open(stream.compat(), digest, &cfg)
        .await
        .map(|(_, have)| have)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_blob_in_flight_is_served_by_its_fetcher_at_once_and_by_others_once_they_hold_a_piece() {
    let reg = TestRegistry::start().await.unwrap();
    let mut cfg = agent_config(&reg);
    // Long enough that the downloader keeps waiting for peers (not the upstream) throughout.
    cfg.p2p.peer_stall = Duration::from_secs(120);
    // A hung response is resumed after this; three resumes in a row fail the fetch.
    cfg.upstream.idle_timeout = Duration::from_secs(5);
    let mut tracker_cfg = cfg.clone();
    tracker_cfg.p2p.tracker = true;
    let a = member(&reg, tracker_cfg, None).await;
    let b = member(&reg, cfg, Some(&a)).await;
    let layer = random_bytes(4 * PIECE, 11);
    let image = reg.push_image("app", "v1", vec![layer.clone()]);
    let digest = image.layer_digests[0].clone();
    let d: pollen_oci::Digest = digest.parse().unwrap();
    // Both pull the manifest, so both know the layer's size before they ask for it.
    for h in [&a, &b] {
        let m = h.get(&format!("/v2/app/manifests/v1{}", h.ns())).await;
        assert_eq!(m.status, http::StatusCode::OK);
    }

    // The registry sends headers and then nothing: A fetches and holds no piece.
    reg.set_fault(Fault::Hang);
    let a_pull = tokio::spawn({
        let (client, path) = (a.client(), blob_path(&a, &digest));
        async move { client.get(&path).await }
    });
    eventually("A to ask the registry for the layer", || async {
        reg.stats().blob_get_count(&digest) >= 1
    })
    .await;
    let b_pull = tokio::spawn({
        let (client, path) = (b.client(), blob_path(&b, &digest));
        async move { client.get(&path).await }
    });

    let dir = tempfile::tempdir().unwrap();
    let probe = Node::start(
        dir.path(),
        SwarmConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![
                Bootstrap::Addr(node(&a).listen_addrs().await.unwrap()[0].clone()),
                Bootstrap::Addr(node(&b).listen_addrs().await.unwrap()[0].clone()),
            ],
            bootstrap_interval: Duration::from_millis(500),
            ..SwarmConfig::default()
        },
    )
    .await
    .unwrap();
    let (a_id, b_id) = (node(&a).peer_id(), node(&b).peer_id());
    eventually("the probe to be connected to both agents", || async {
        let peers = probe.connected_peers().await.unwrap_or_default();
        peers.contains(&a_id) && peers.contains(&b_id)
    })
    .await;
    // B has opened the blob at the manifest's size and waits for A's pieces.
    eventually("B to open the blob", || async {
        status(&b)
            .await
            .blobs_in_flight
            .iter()
            .any(|x| x.digest == digest && x.size == Some(layer.len() as u64))
    })
    .await;

    let have = ask(&probe, a_id, d)
        .await
        .expect("the fetcher serves at once");
    assert_eq!(have.bitfield.count_ones(), 0, "A has no piece yet");
    assert_eq!(have.geometry.size(), layer.len() as u64);
    match ask(&probe, b_id, d).await {
        Err(SessionError::Refused(ErrorCode::UnknownBlob)) => {}
        other => panic!("B holds nothing and fetches nothing: {other:?}"),
    }
    // Nor does B announce it (the fetcher would wait for it as a holder); A does.
    eventually("A to be found as a provider", || async {
        probe
            .find_providers(&d)
            .await
            .unwrap_or_default()
            .contains(&a_id)
    })
    .await;
    let providers = probe.find_providers(&d).await.unwrap_or_default();
    assert!(!providers.contains(&b_id), "B has nothing to offer yet");

    // The registry answers again: A's pull resumes, B gets pieces from A and serves them.
    reg.set_fault(Fault::None);
    eventually("B to serve once it holds a piece", || async {
        ask(&probe, b_id, d)
            .await
            .is_ok_and(|have| have.bitfield.count_ones() > 0)
    })
    .await;
    for pull in [a_pull, b_pull] {
        let r = pull.await.unwrap();
        assert_eq!(r.bytes(), &layer);
    }
}
