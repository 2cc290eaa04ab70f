//! Agents on loopback sharing pieces over libp2p, with the in-process test registry as the
//! upstream. Every wait polls state (a node's peers, an agent's status or metrics) under a
//! deadline; nothing sleeps to synchronise.

mod common;

use common::cluster::*;
use common::*;
use http::StatusCode;
use pollen_agent::Node;
use pollen_swarm::{Bootstrap, SwarmConfig};
use pollen_testreg::{Fault, TestRegistry};
use std::os::unix::fs::FileExt;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_supplies_a_blob_while_the_upstream_is_down() {
    let reg = TestRegistry::start().await.unwrap();
    let (a, layer, digest) = seeded(&reg, 5 * PIECE + 123, 1).await;
    let b = member(&reg, agent_config(&reg), Some(&a)).await;
    upstream_down(&reg);

    let r = b.get(&blob_path(&b, &digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
    b.wait_stored(&digest).await;
    assert_eq!(sources(&b), (layer.len() as f64, 0.0), "every byte from A");
    assert_eq!(
        reg.stats().blob_get_count(&digest),
        1,
        "only A went upstream"
    );
    a.agent.refresh_peer_metrics();
    assert_eq!(a.metric("pollen_peer_bytes_sent_total"), layer.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn piece_size_edges_travel_between_peers() {
    let reg = TestRegistry::start().await.unwrap();
    let a = member(&reg, agent_config(&reg), None).await;
    let b = member(&reg, agent_config(&reg), Some(&a)).await;
    // Smaller than one piece, an exact multiple, one byte over, and a single byte.
    let sizes = [100 << 10, 3 * PIECE, 3 * PIECE + 1, 1];
    let mut blobs = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let layer = random_bytes(*size, 10 + i as u64);
        let digest = reg.add_blob("app", layer.clone());
        let r = a.get(&blob_path(&a, &digest)).await;
        assert_eq!(r.bytes(), &layer);
        a.wait_stored(&digest).await;
        blobs.push((layer, digest));
    }
    upstream_down(&reg);
    for (layer, digest) in &blobs {
        let r = b.get(&blob_path(&b, digest)).await;
        assert_eq!(r.status, StatusCode::OK, "{} bytes", layer.len());
        assert_eq!(r.bytes(), layer, "{} bytes", layer.len());
        b.wait_stored(digest).await;
    }
    let total: usize = sizes.iter().sum();
    assert_eq!(sources(&b), (total as f64, 0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn four_agents_pull_one_large_blob_at_once() {
    let reg = TestRegistry::start().await.unwrap();
    let a = member(&reg, agent_config(&reg), None).await;
    let mut others = Vec::new();
    for _ in 0..3 {
        others.push(member(&reg, agent_config(&reg), Some(&a)).await);
    }
    let layer = random_bytes(24 * PIECE, 3);
    let digest = reg.add_blob("app", layer.clone());
    // A slow upstream (about 25 MB/s), so the others join while A is still fetching.
    reg.set_fault(Fault::Slow {
        chunk: 256 << 10,
        delay: Duration::from_millis(10),
    });
    let first = get_on_each([&a], |h| blob_path(h, &digest)).remove(0);
    eventually("A to have its first piece", || async {
        status(&a)
            .await
            .blobs_in_flight
            .iter()
            .any(|b| b.pieces_present > 0)
    })
    .await;
    let pulls = get_on_each(others.iter(), |h| blob_path(h, &digest));
    let r = first.await.unwrap();
    assert_eq!(r.bytes(), &layer);
    let mut from_peers = 0.0;
    for (h, pull) in others.iter().zip(pulls) {
        let r = pull.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.bytes(), &layer, "correct bytes on every agent");
        h.wait_stored(&digest).await;
        from_peers += sources(h).0;
    }
    let upstream = reg.stats().blob_bytes_sent as f64;
    assert!(from_peers > 0.0, "the late agents took pieces from peers");
    assert!(
        upstream < 2.0 * layer.len() as f64,
        "peers spared the upstream: {upstream} bytes sent for a {} byte blob to 4 agents",
        layer.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_serving_bad_bytes_is_banned_and_the_pull_still_succeeds() {
    let reg = TestRegistry::start().await.unwrap();
    let (a, layer, digest) = seeded(&reg, 6 * PIECE, 4).await;
    // A's disk goes bad under piece 1: A still serves it, with the right map.
    let path = a
        .dir
        .path()
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.write_all_at(b"garbage!", PIECE as u64 + 17).unwrap();
    drop(file);

    let b = member(&reg, agent_config(&reg), Some(&a)).await;
    let r = b.get(&blob_path(&b, &digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer, "the client still gets the right bytes");
    b.wait_stored(&digest).await;
    assert!(b.metric("pollen_piece_verification_failures_total") >= 1.0);
    assert!(b.metric("pollen_peer_bans_total") >= 1.0);
    let st = status(&b).await;
    assert!(st.banned_peers >= 1, "A is banned for the blob");
    let (peers, upstream) = sources(&b);
    assert!(
        upstream >= PIECE as f64,
        "the bad piece came from the upstream"
    );
    assert!(peers + upstream >= layer.len() as f64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_killed_mid_transfer_leaves_the_rest_to_the_upstream() {
    let reg = TestRegistry::start().await.unwrap();
    let (a, layer, digest) = seeded(&reg, 16 * PIECE, 5).await;
    let mut cfg = agent_config(&reg);
    cfg.p2p.download_limit = 4 << 20;
    let b = member(&reg, cfg, Some(&a)).await;
    let pull = get_on_each([&b], |h| blob_path(h, &digest)).remove(0);
    eventually("B to get pieces from A", || async {
        sources(&b).0 >= 2.0 * PIECE as f64
    })
    .await;
    a.agent.shutdown(Duration::from_secs(5)).await;
    let r = pull.await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
    b.wait_stored(&digest).await;
    let (peers, upstream) = sources(&b);
    assert!(peers >= 2.0 * PIECE as f64);
    assert!(
        upstream > 0.0 && upstream < layer.len() as f64,
        "{upstream}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restarted_agent_resumes_a_peer_download_where_it_stopped() {
    let reg = TestRegistry::start().await.unwrap();
    let (a, layer, digest) = seeded(&reg, 16 * PIECE, 6).await;
    let mut cfg = agent_config(&reg);
    cfg.p2p.download_limit = 4 << 20;
    let b = member(&reg, cfg, Some(&a)).await;
    let pull = get_on_each([&b], |h| blob_path(h, &digest)).remove(0);
    eventually("B to store a few pieces", || async {
        status(&b)
            .await
            .blobs_in_flight
            .iter()
            .any(|s| s.pieces_present >= 3)
    })
    .await;
    b.agent.shutdown(Duration::from_secs(10)).await;
    let cut = pull.await.unwrap();
    assert!(
        cut.body.is_err(),
        "the interrupted response must not look complete"
    );
    let (_, dir) = b.stop();

    // Same data dir (same PeerId), no download limit, the upstream down: only A can help.
    upstream_down(&reg);
    let b = member_in(&reg, agent_config(&reg), Some(&a), dir).await;
    let r = b.get(&blob_path(&b, &digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
    b.wait_stored(&digest).await;
    let (peers, upstream) = sources(&b);
    assert_eq!(upstream, 0.0);
    assert!(
        peers <= (layer.len() - 3 * PIECE) as f64,
        "verified pieces were fetched again: {peers} bytes after the restart"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_whole_image_by_digest_comes_from_a_peer_while_the_upstream_is_down() {
    let reg = TestRegistry::start().await.unwrap();
    let a = member(&reg, agent_config(&reg), None).await;
    let b = member(&reg, agent_config(&reg), Some(&a)).await;
    let layers = vec![random_bytes(3 * PIECE + 5, 7), random_bytes(1000, 8)];
    let image = reg.push_image("app", "v1", layers.clone());
    let manifest_path =
        |h: &Harness| format!("/v2/app/manifests/{}{}", image.manifest_digest, h.ns());
    // A pulls the image the way a runtime does: manifest by tag, then config and layers.
    let tag = a.get(&format!("/v2/app/manifests/v1{}", a.ns())).await;
    assert_eq!(tag.status, StatusCode::OK);
    let content_type = tag.header("content-type").to_string();
    for d in image.layer_digests.iter().chain([&image.config_digest]) {
        assert_eq!(a.get(&blob_path(&a, d)).await.status, StatusCode::OK);
        a.wait_stored(d).await;
    }
    upstream_down(&reg);

    let m = b.get(&manifest_path(&b)).await;
    assert_eq!(m.status, StatusCode::OK);
    assert_eq!(m.bytes(), &image.manifest);
    assert_eq!(m.header("content-type"), content_type);
    for (d, layer) in image.layer_digests.iter().zip(&layers) {
        let r = b.get(&blob_path(&b, d)).await;
        assert_eq!(r.bytes(), layer);
    }
    assert_eq!(b.metric("pollen_upstream_bytes_total"), 0.0);
    assert_eq!(b.metric("pollen_upstream_requests_total"), 0.0);
}

/// A peer that claims a blob and serves other bytes with a piece map made to match them.
struct Forger {
    digest: pollen_oci::Digest,
    data: bytes::Bytes,
    geometry: pollen_proto::PieceGeometry,
}

impl pollen_peer::PieceSource for Forger {
    fn blob(&self, digest: &pollen_oci::Digest) -> Option<pollen_peer::BlobView> {
        (*digest == self.digest).then(|| {
            let map = pollen_proto::PieceMap::of(self.digest, self.geometry, &self.data).unwrap();
            let state = pollen_peer::PieceState::complete(&self.geometry, map.hashes().into());
            let (tx, rx) = tokio::sync::watch::channel(state);
            std::mem::forget(tx); // the forger never changes its story
            pollen_peer::BlobView::new(
                self.geometry,
                rx,
                std::sync::Arc::new(ForgedReader(self.data.clone(), self.geometry)),
            )
        })
    }
}

struct ForgedReader(bytes::Bytes, pollen_proto::PieceGeometry);

impl pollen_peer::PieceReader for ForgedReader {
    fn read_piece(&self, index: u32) -> pollen_peer::PieceFuture<'_> {
        let r = self.1.range_of(index).unwrap();
        let piece = self.0.slice(r.start as usize..r.end as usize);
        Box::pin(async move { Ok(piece) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forged_piece_map_fails_the_digest_and_its_peer_is_banned() {
    let reg = TestRegistry::start().await.unwrap();
    let b = member(&reg, agent_config(&reg), None).await;
    let layer = random_bytes(4 * PIECE, 9);
    let digest = reg.add_blob("app", layer.clone());
    let d: pollen_oci::Digest = digest.parse().unwrap();

    // The forger: a plain swarm node announcing the digest, serving other bytes.
    let dir = tempfile::tempdir().unwrap();
    let evil = Node::start(
        dir.path(),
        SwarmConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![Bootstrap::Addr(
                node(&b).listen_addrs().await.unwrap()[0].clone(),
            )],
            bootstrap_interval: Duration::from_millis(500),
            ..SwarmConfig::default()
        },
    )
    .await
    .unwrap();
    let source: std::sync::Arc<dyn pollen_peer::PieceSource> = std::sync::Arc::new(Forger {
        digest: d,
        data: random_bytes(layer.len(), 99),
        geometry: pollen_proto::PieceGeometry::new(layer.len() as u64, PIECE as u32).unwrap(),
    });
    let mut incoming = evil.incoming_streams().unwrap();
    let serving = tokio::spawn(async move {
        let limits = std::sync::Arc::new(pollen_peer::UploadLimits::default());
        while let Some((_, stream)) = incoming.next().await {
            let (source, limits) = (source.clone(), limits.clone());
            tokio::spawn(async move {
                use tokio_util::compat::FuturesAsyncReadCompatExt;
                let cfg = pollen_peer::SessionConfig::default();
                let _ = pollen_peer::serve(stream.compat(), source, limits, &cfg).await;
            });
        }
    });
    let evil_id = evil.peer_id();
    eventually("the forger to be known", || async {
        node(&b).stats().routing_table_peers > 0
            && node(&b).connected_peers().await.unwrap().contains(&evil_id)
    })
    .await;
    evil.provide(&d).await.unwrap();
    eventually("the forger to be a provider", || async {
        node(&b)
            .find_providers(&d)
            .await
            .unwrap()
            .contains(&evil_id)
    })
    .await;

    // The first client follows the forged download; it must never get a complete body.
    let r = b.get(&blob_path(&b, &digest)).await;
    if let Ok(body) = &r.body {
        assert_eq!(body, &layer, "a body that completes must be the real blob");
    }
    // The blob ends up right, from the upstream, and the forger is banned for it.
    let r = b.get(&blob_path(&b, &digest)).await;
    assert_eq!(r.bytes(), &layer);
    b.wait_stored(&digest).await;
    assert!(b.metric("pollen_peer_bans_total") >= 1.0);
    assert!(b.metric("pollen_peer_bytes_received_total") >= layer.len() as f64);
    assert_eq!(b.metric("pollen_upstream_bytes_total"), layer.len() as f64);
    serving.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_reads_the_blob_while_its_pieces_arrive_from_peers() {
    use http_body_util::BodyExt;
    let reg = TestRegistry::start().await.unwrap();
    let (a, layer, digest) = seeded(&reg, 16 * PIECE, 11).await;
    let mut cfg = agent_config(&reg);
    cfg.p2p.download_limit = 8 << 20;
    let b = member(&reg, cfg, Some(&a)).await;
    upstream_down(&reg);
    let (code, mut body) = b.client().open(&blob_path(&b, &digest)).await;
    assert_eq!(code, StatusCode::OK);
    let mut got = Vec::new();
    let mut seen_partial = false;
    while let Some(frame) = tokio::time::timeout(DEADLINE, body.frame())
        .await
        .expect("the body keeps moving")
    {
        if let Ok(data) = frame.unwrap().into_data() {
            got.extend_from_slice(&data);
        }
        if !seen_partial && got.len() >= PIECE {
            // Bytes are here; the blob is not: the client is streaming behind the download.
            let st = status(&b).await;
            let blob = st.blobs_in_flight.iter().find(|s| s.digest == digest);
            seen_partial = blob.is_some_and(|s| s.pieces_present < s.pieces);
            assert!(
                seen_partial,
                "the first MiB came only after the whole blob: {st:?}"
            );
        }
    }
    assert!(seen_partial);
    assert_eq!(got, layer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn content_fetched_with_a_clients_credentials_is_not_shared() {
    let reg = TestRegistry::start().await.unwrap();
    let a = member(&reg, agent_config(&reg), None).await;
    let b = member(&reg, agent_config(&reg), Some(&a)).await;
    let layer = random_bytes(2 * PIECE, 12);
    let digest = reg.add_blob("app", layer.clone());
    let r = a
        .send(
            http::Method::GET,
            &blob_path(&a, &digest),
            &[("authorization", "Bearer pod-secret")],
        )
        .await;
    assert_eq!(r.bytes(), &layer);
    a.wait_stored(&digest).await;
    // The control: a blob A fetched without client credentials is shared.
    let public = random_bytes(PIECE, 13);
    let public_digest = reg.add_blob("app", public.clone());
    assert_eq!(a.get(&blob_path(&a, &public_digest)).await.bytes(), &public);
    a.wait_stored(&public_digest).await;
    upstream_down(&reg);
    assert_eq!(b.get(&blob_path(&b, &public_digest)).await.bytes(), &public);

    let r = b.get(&blob_path(&b, &digest)).await;
    assert_ne!(
        r.status,
        StatusCode::OK,
        "a private blob reached another node"
    );
    assert_eq!(b.metric("pollen_peer_bytes_received_total"), PIECE as f64);
    // Restarted, A still keeps it to itself.
    let (_, dir) = a.stop();
    let a = member_in(&reg, agent_config(&reg), Some(&b), dir).await;
    assert!(a
        .agent
        .store()
        .contains(pollen_store::Kind::Blob, &digest.parse().unwrap()));
    let r = b.get(&blob_path(&b, &digest)).await;
    assert_ne!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evicted_blob_stops_being_announced() {
    let reg = TestRegistry::start().await.unwrap();
    // Room for one 3 MiB blob: fetching the second evicts the first.
    let a = member_with(
        &reg,
        agent_config(&reg),
        None,
        tempfile::tempdir().unwrap(),
        5 << 20,
    )
    .await;
    let b = member(&reg, agent_config(&reg), Some(&a)).await;
    let (x, y) = (random_bytes(3 * PIECE, 20), random_bytes(3 * PIECE, 21));
    let (dx, dy) = (
        reg.add_blob("app", x.clone()),
        reg.add_blob("app", y.clone()),
    );
    let a_id = node(&a).peer_id();
    let d: pollen_oci::Digest = dx.parse().unwrap();
    assert_eq!(a.get(&blob_path(&a, &dx)).await.bytes(), &x);
    a.wait_stored(&dx).await;
    eventually("A to be named for X", || async {
        node(&b).find_providers(&d).await.unwrap().contains(&a_id)
    })
    .await;
    assert_eq!(a.get(&blob_path(&a, &dy)).await.bytes(), &y);
    a.wait_stored(&dy).await;
    assert!(
        !a.agent.store().contains(pollen_store::Kind::Blob, &d),
        "X was evicted"
    );
    // Withdrawn at A's next reconcile; records held elsewhere expire with the (test) TTL.
    eventually("A to stop being named for X", || async {
        !node(&b).find_providers(&d).await.unwrap().contains(&a_id)
    })
    .await;
}
