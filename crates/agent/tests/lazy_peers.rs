//! Lazy ranges from peers: a range another node already read lazily comes from that node, not
//! from the registry; and what a member that lies about a range can and cannot do.

mod common;

use common::cluster::*;
use common::*;
use http::{Method, StatusCode};
use pollen_oci::Digest;
use pollen_testreg::{Fault, TestRegistry};

const LAYER: usize = 8 * PIECE;

/// The ranges a snapshotter reads first: the footer, a table of contents near the end, a
/// file near the start.
const RANGES: [(&str, usize, usize); 3] = [
    ("bytes=-47", LAYER - 47, LAYER),
    ("bytes=7340032-7345151", 7_340_032, 7_345_152),
    ("bytes=1000-1999", 1000, 2000),
];

async fn range(h: &Harness, digest: &str, spec: &str) -> Resp {
    h.send(Method::GET, &blob_path(h, digest), &[("range", spec)])
        .await
}

/// Has `h` verify the image's manifest, so it knows the layer's size.
async fn manifest(h: &Harness) {
    let r = h.get(&format!("/v2/app/manifests/v1{}", h.ns())).await;
    assert_eq!(r.status, StatusCode::OK);
}

/// Until `reader` can find `holder` offering its lazily read pieces of `digest`.
async fn offered(reader: &Harness, holder: &Harness, digest: &str) {
    let key = pollen_agent::lazy_key(&digest.parse::<Digest>().unwrap());
    let want = node(holder).peer_id();
    eventually("the lazily read pieces to be offered", || async {
        node(reader)
            .find_providers(&key)
            .await
            .is_ok_and(|p| p.contains(&want))
    })
    .await;
}

fn lazy_from(h: &Harness, source: &str) -> f64 {
    h.metric(&format!("pollen_lazy_ranges_total{{source=\"{source}\"}}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_range_another_node_read_comes_from_it_not_from_the_registry() {
    let reg = TestRegistry::start().await.unwrap();
    let a = member(&reg, agent_config(&reg), None).await;
    let b = member(&reg, agent_config(&reg), Some(&a)).await;
    let layer = random_bytes(LAYER, 81);
    let digest = reg
        .push_image("app", "v1", vec![layer.clone()])
        .layer_digests[0]
        .clone();
    manifest(&a).await;
    manifest(&b).await;
    reg.reset_stats();

    for (spec, from, to) in RANGES {
        let r = range(&a, &digest, spec).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{spec}");
        assert_eq!(r.bytes(), &layer.slice(from..to), "{spec}");
    }
    let sent = reg.stats().blob_bytes_sent;
    assert!(
        sent > 0 && sent < LAYER as u64 / 2,
        "A's ranges cost {sent} bytes"
    );
    assert_eq!(lazy_from(&a, "upstream"), 2.0, "two pieces' worth of reads");

    offered(&b, &a, &digest).await;
    for (spec, from, to) in RANGES {
        let r = range(&b, &digest, spec).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{spec}");
        assert_eq!(r.bytes(), &layer.slice(from..to), "{spec}");
    }
    assert_eq!(
        reg.stats().blob_bytes_sent,
        sent,
        "B's ranges came from A: the registry sent nothing more"
    );
    assert_eq!(lazy_from(&b, "upstream"), 0.0);
    assert!(lazy_from(&b, "peers") >= 1.0);

    // B's whole pull then checks what A sent against the digest, with the rest.
    let r = b.get(&blob_path(&b, &digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(sha256(r.bytes()), digest);
    assert!(reg.stats().blob_bytes_sent <= sent + LAYER as u64);
    assert_eq!(b.metric("pollen_peer_bans_total"), 0.0);
}

/// A member whose own upstream flips a byte reads a range lazily and offers the piece, with
/// the hash of what it got: it vouches for a wrong piece.
async fn liar(victim: &Harness, layer: &bytes::Bytes) -> (Harness, TestRegistry) {
    let evil = TestRegistry::start().await.unwrap();
    let digest = evil
        .push_image("app", "v1", vec![layer.clone()])
        .layer_digests[0]
        .clone();
    let mut cfg = agent_config(&evil);
    cfg.upstream
        .registries
        .insert(victim.reg.host(), vec![evil.url()]);
    let a = member(&evil, cfg, Some(victim)).await;
    manifest_as(&a, victim).await;
    evil.set_fault(Fault::Corrupt { offset: 1500 });
    let r = range(&a, &digest, "bytes=1000-1999").await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_ne!(
        r.bytes(),
        &layer.slice(1000..2000),
        "the liar holds a wrong piece"
    );
    offered(victim, &a, &digest).await;
    (a, evil)
}

/// `h` verifies the manifest of the image in `victim`'s registry (through its own routes).
async fn manifest_as(h: &Harness, victim: &Harness) {
    let r = h.get(&format!("/v2/app/manifests/v1{}", victim.ns())).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_members_wrong_range_is_caught_by_the_whole_pull_and_can_be_refused() {
    let reg = TestRegistry::start().await.unwrap();
    let b = member(&reg, agent_config(&reg), None).await;
    let mut cfg = agent_config(&reg);
    cfg.p2p.lazy_from_peers = false;
    let c = member(&reg, cfg, Some(&b)).await;
    let layer = random_bytes(LAYER, 82);
    let digest = reg
        .push_image("app", "v1", vec![layer.clone()])
        .layer_digests[0]
        .clone();
    manifest(&b).await;
    manifest(&c).await;
    let (_a, _evil) = liar(&b, &layer).await;

    // By default the range takes the word of the member, the only holder yet, for its piece
    // (docs/trust-model.md, "Ranges": snapshotters check each chunk against the digests the
    // manifest pins)...
    let r = range(&b, &digest, "bytes=1000-1999").await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(lazy_from(&b, "peers"), 1.0);
    assert_ne!(r.bytes(), &layer.slice(1000..2000));

    // ...and the whole pull checks it against the digest: the client streaming it never gets
    // a complete wrong body, the blob is stored right, and the member is banned for it.
    let r = b.get(&blob_path(&b, &digest)).await;
    if let (StatusCode::OK, Ok(body)) = (r.status, &r.body) {
        assert_eq!(sha256(body), digest, "a complete body is the right one");
    }
    b.wait_stored(&digest).await;
    assert_eq!(sha256(b.get(&blob_path(&b, &digest)).await.bytes()), digest);
    assert!(
        b.metric("pollen_peer_bans_total") >= 1.0,
        "the liar was banned"
    );

    // With --lazy-from-peers false the range is this node's upstream's own answer, whoever
    // offers the piece.
    let r = range(&c, &digest, "bytes=1000-1999").await;
    assert_eq!(r.bytes(), &layer.slice(1000..2000));
    assert_eq!(lazy_from(&c, "peers"), 0.0);
    assert_eq!(lazy_from(&c, "upstream"), 1.0);
}
