//! Piece hashes passed on by a peer that did not produce them (`Reply::SignedHashes`,
//! `/pollen/pieces/3`): taken when their producer's signature checks, refused with the peer
//! banned when it does not. The relay here holds every piece of the blob but produced no hash
//! of it, and the producer it names is no node of the swarm: without signed hashes the puller
//! could take nothing from it.

mod common;

use common::cluster::*;
use common::*;
use pollen_proto::{hash_claim, Bitfield, PieceGeometry, PieceMap, Signature};
use pollen_swarm::{Bootstrap, Node, Signer, SwarmConfig};
use pollen_testreg::TestRegistry;
use std::sync::Arc;
use std::time::Duration;

/// A peer serving a blob's real bytes and its hashes, each signed by `producer`, or not quite
/// (`forge`: one bit of every signature flipped).
struct Relay {
    digest: pollen_oci::Digest,
    data: bytes::Bytes,
    geometry: PieceGeometry,
    producer: Signer,
    forge: bool,
}

impl pollen_peer::PieceSource for Relay {
    fn blob(&self, digest: &pollen_oci::Digest) -> Option<pollen_peer::BlobView> {
        if *digest != self.digest {
            return None;
        }
        let g = self.geometry;
        let map = PieceMap::of(self.digest, g, &self.data).unwrap();
        let proofs = pollen_peer::Proofs::new(g.count());
        for (index, hash) in (0u32..).zip(map.hashes()) {
            let mut signature = self
                .producer
                .sign(&hash_claim(&self.digest, &g, index, hash))
                .unwrap();
            if self.forge {
                signature[0] ^= 1;
            }
            let proof = pollen_peer::Proof {
                producer: self.producer.id(),
                signature: Signature(signature),
            };
            assert!(proofs.add(index, proof));
        }
        let state = pollen_peer::PieceState {
            have: Bitfield::full(&g),
            hashes: map.hashes().into(),
            vouched: Bitfield::new(&g),
            proofs: Some(Arc::new(proofs)),
            proven: Bitfield::full(&g),
            complete: false,
            map_id: None,
        };
        let (tx, rx) = tokio::sync::watch::channel(state);
        std::mem::forget(tx); // the relay's state never changes
        Some(pollen_peer::BlobView::new(
            g,
            rx,
            Arc::new(Reader(self.data.clone(), g)),
        ))
    }
}

struct Reader(bytes::Bytes, PieceGeometry);

impl pollen_peer::PieceReader for Reader {
    fn read_piece(&self, index: u32) -> pollen_peer::PieceFuture<'_> {
        let r = self.1.range_of(index).unwrap();
        let piece = self.0.slice(r.start as usize..r.end as usize);
        Box::pin(async move { Ok(piece) })
    }
}

/// Starts the relay as a plain swarm node beside `b`, announcing the blob, serving
/// `/pollen/pieces/3` streams until the returned task is aborted.
async fn start_relay(
    b: &Harness,
    relay: Relay,
    dir: &std::path::Path,
) -> (Node, tokio::task::JoinHandle<()>) {
    let d = relay.digest;
    let node_b = node(b);
    let relay_node = Node::start(
        dir,
        SwarmConfig {
            listen: vec!["/ip4/127.0.0.1/tcp/0".parse().unwrap()],
            bootstrap: vec![Bootstrap::Addr(
                node_b.listen_addrs().await.unwrap()[0].clone(),
            )],
            bootstrap_interval: Duration::from_millis(500),
            ..SwarmConfig::default()
        },
    )
    .await
    .unwrap();
    let source: Arc<dyn pollen_peer::PieceSource> = Arc::new(relay);
    let mut incoming = relay_node.incoming_streams().unwrap();
    let serving = tokio::spawn(async move {
        let limits = Arc::new(pollen_peer::UploadLimits::default());
        while let Some((_, stream)) = incoming.next().await {
            let (source, limits) = (source.clone(), limits.clone());
            tokio::spawn(async move {
                use tokio_util::compat::FuturesAsyncReadCompatExt;
                let cfg = pollen_peer::SessionConfig::default();
                let _ = pollen_peer::serve(stream.compat(), source, limits, &cfg).await;
            });
        }
    });
    let id = relay_node.peer_id();
    eventually("the relay to be known", || async {
        node_b.stats().routing_table_peers > 0
            && node_b.connected_peers().await.unwrap().contains(&id)
    })
    .await;
    relay_node.provide(&d).await.unwrap();
    eventually("the relay to be a provider", || async {
        node_b.find_providers(&d).await.unwrap().contains(&id)
    })
    .await;
    (relay_node, serving)
}

async fn pull_beside_a_relay(forge: bool) -> (Harness, bytes::Bytes) {
    let reg = TestRegistry::start().await.unwrap();
    let b = member(&reg, agent_config(&reg), None).await;
    let layer = random_bytes(6 * PIECE, 17);
    let digest = reg.add_blob("app", layer.clone());
    let relay = Relay {
        digest: digest.parse().unwrap(),
        data: layer.clone(),
        geometry: PieceGeometry::new(layer.len() as u64, PIECE as u32).unwrap(),
        producer: Signer::generate(),
        forge,
    };
    let dir = tempfile::tempdir().unwrap();
    let (_relay_node, serving) = start_relay(&b, relay, dir.path()).await;
    let r = b.get(&blob_path(&b, &digest)).await;
    assert_eq!(r.bytes(), &layer);
    b.wait_stored(&digest).await;
    serving.abort();
    (b, layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hashes_a_peer_passes_on_with_their_producers_signature_are_taken() {
    let (b, layer) = pull_beside_a_relay(false).await;
    // Every piece came from the relay, checked against hashes it did not produce.
    assert_eq!(b.metric("pollen_upstream_bytes_total"), 0.0);
    assert_eq!(
        b.metric("pollen_peer_bytes_received_total"),
        layer.len() as f64
    );
    assert_eq!(b.metric("pollen_peer_bans_total"), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_passing_on_forged_signatures_is_banned_and_none_of_its_hashes_taken() {
    let (b, layer) = pull_beside_a_relay(true).await;
    assert!(b.metric("pollen_peer_bans_total") >= 1.0);
    assert_eq!(b.metric("pollen_peer_bytes_received_total"), 0.0);
    assert_eq!(b.metric("pollen_upstream_bytes_total"), layer.len() as f64);
}
