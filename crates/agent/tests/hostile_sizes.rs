//! Attacks on a blob's size and on ranged reads: a peer or an upstream claiming a size it
//! cannot prove, and an upstream sending wrong bytes under a client's short `Range`. Real
//! agents on loopback, the in-process registry with fault injection; every wait polls state
//! under a deadline.

mod common;

use common::cluster::*;
use common::*;
use http::{Method, StatusCode};
use pollen_oci::Digest;
use pollen_testreg::{Fault, TestRegistry};
use std::time::Duration;

/// Blobs already in the victim's cache; it must keep every one of them.
const CACHED: u64 = 4;

/// Fills `h`'s cache with [`CACHED`] blobs of one piece each; their digests.
async fn fill_cache(h: &Harness) -> Vec<String> {
    let mut digests = Vec::new();
    for i in 0..CACHED {
        let layer = random_bytes(PIECE, 500 + i);
        let digest = h.reg.add_blob("app", layer.clone());
        let r = h.get(&blob_path(h, &digest)).await;
        assert_eq!(r.bytes(), &layer);
        h.wait_stored(&digest).await;
        digests.push(digest);
    }
    digests
}

/// Every blob of `cached` is still served from `h`'s cache.
async fn assert_cache_intact(h: &Harness, cached: &[String]) {
    let upstream_before = h.reg.stats().total_blob_gets();
    for d in cached {
        let r = h.get(&blob_path(h, d)).await;
        assert_eq!(r.status, StatusCode::OK, "{d} still served");
    }
    assert_eq!(
        h.reg.stats().total_blob_gets(),
        upstream_before,
        "every cached blob came from the cache"
    );
    assert_eq!(h.metric("pollen_cache_evictions_total"), 0.0);
}

/// A real agent whose own upstream (another registry, mapped to the victim's registry host)
/// claims `claim` bytes for `layer` and then hangs: it announces the blob and answers
/// sessions with a `Have` of that size.
async fn liar(
    victim: &Harness,
    layer: &bytes::Bytes,
    claim: u64,
    piece_size: Option<u32>,
) -> (Harness, TestRegistry) {
    let evil = TestRegistry::start().await.unwrap();
    let digest = evil.add_blob("app", layer.clone());
    evil.set_fault(Fault::ClaimSize { size: claim });
    let mut cfg = agent_config(&evil);
    cfg.upstream
        .registries
        .insert(victim.reg.host(), vec![evil.url()]);
    cfg.upstream.idle_timeout = Duration::from_secs(120);
    cfg.max_blob_size = u64::MAX;
    // A hostile agent does not look at its disk before it claims a size.
    cfg.disk_room_check = false;
    cfg.p2p.session.piece_size = piece_size;
    let a = member(&evil, cfg, Some(victim)).await;
    // Its fetch hangs after the headers: it provides the blob with the claimed size.
    let (client, path) = (a.client(), blob_path(victim, &digest));
    tokio::spawn(async move { client.get(&path).await });
    let d: Digest = digest.parse().unwrap();
    let want = node(&a).peer_id();
    eventually("the liar to provide the blob", || async {
        node(victim)
            .find_providers(&d)
            .await
            .is_ok_and(|p| p.contains(&want))
    })
    .await;
    (a, evil)
}

/// `piece_size`: both agents' (automatic, `None`, as deployed, lets a peer claim terabytes).
async fn peer_claim_attack(claim: u64, piece_size: Option<u32>) {
    let reg = TestRegistry::start().await.unwrap();
    let mut cfg = agent_config(&reg);
    cfg.p2p.session.piece_size = piece_size;
    let b = member_with(
        &reg,
        cfg,
        None,
        tempfile::tempdir().unwrap(),
        (CACHED + 4) * PIECE as u64,
    )
    .await;
    let cached = fill_cache(&b).await;
    let layer = random_bytes(3 * PIECE + 17, 77);
    let digest = reg.add_blob("app", layer.clone());
    let (_a, _evil) = liar(&b, &layer, claim, piece_size).await;

    let r = b.get(&blob_path(&b, &digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer, "the blob pulls right from the upstream");
    b.wait_stored(&digest).await;
    assert!(
        b.metric("pollen_peer_bans_total") >= 1.0,
        "the liar was caught"
    );
    assert_eq!(b.metric("pollen_peer_bytes_received_total"), 0.0);
    assert_cache_intact(&b, &cached).await;
    let usage = status(&b).await;
    assert!(usage.cache_bytes <= usage.cache_quota, "nothing reserved");
    // After a restart the digest is still served (no wrong geometry was recorded).
    let (reg, dir) = b.stop();
    assert!(!dir.path().join("partial").join(&digest[7..]).exists());
    let cfg = config_for(&reg);
    let b = Harness::with_dir(reg, cfg, dir, 1 << 30).await;
    let r = b.get(&blob_path(&b, &digest)).await;
    assert_eq!(r.bytes(), &layer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_claiming_four_tib_is_a_peer_fault_and_the_cache_stays() {
    peer_claim_attack(4 << 40, None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_claiming_a_plausible_wrong_size_is_not_believed() {
    peer_claim_attack(2 << 30, Some(PIECE as u32)).await;
}

#[tokio::test]
async fn an_upstream_claiming_a_huge_size_is_refused_and_nothing_is_kept() {
    let reg = TestRegistry::start().await.unwrap();
    let cfg = config_for(&reg);
    let quota = (CACHED + 2) * PIECE as u64;
    let h = Harness::with_dir(reg, cfg.clone(), tempfile::tempdir().unwrap(), quota).await;
    let cached = fill_cache(&h).await;
    let layer = random_bytes(2 * PIECE, 9);
    let digest = h.reg.add_blob("app", layer.clone());
    h.reg.set_fault(Fault::ClaimSize { size: 4 << 40 });

    // One anonymous request.
    let r = h.get(&blob_path(&h, &digest)).await;
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let body = String::from_utf8_lossy(r.bytes()).to_string();
    assert!(body.contains("--max-blob-size"), "{body}");
    h.reg.set_fault(Fault::None);
    assert_cache_intact(&h, &cached).await;
    assert!(!h.dir.path().join("partial").join(&digest[7..]).exists());

    // After a restart the digest pulls right.
    let (reg, dir) = h.stop();
    let h = Harness::with_dir(reg, cfg, dir, quota).await;
    let r = h.get(&blob_path(&h, &digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes(), &layer);
}

#[tokio::test]
async fn a_short_range_gets_only_verified_bytes() {
    let h = Harness::start().await;
    let layer = random_bytes(3 * PIECE, 31);
    let digest = h.reg.add_blob("app", layer.clone());
    // A hostile upstream: the blob's byte 100 is wrong, and it comes slowly, so the range
    // request below arrives while the fetch is in flight.
    h.reg.set_fault(Fault::Corrupt { offset: 100 });
    let path = blob_path(&h, &digest);
    let full = {
        let client = h.client();
        let path = path.clone();
        tokio::spawn(async move { client.get(&path).await })
    };
    let r = h
        .send(Method::GET, &path, &[("range", "bytes=0-1023")])
        .await;
    match (&r.status, &r.body) {
        (&StatusCode::PARTIAL_CONTENT, Ok(body)) => {
            assert_eq!(body, &layer.slice(0..1024), "only true bytes")
        }
        (&StatusCode::PARTIAL_CONTENT, Err(_)) => {} // cut off before any wrong byte
        (status, _) => assert!(!status.is_success(), "{status}"),
    }
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "the digest failed");
    let full = full.await.unwrap();
    assert!(full.body.is_err() || full.status != StatusCode::OK);

    // With an honest upstream the same range is served, exactly.
    h.reg.set_fault(Fault::Slow {
        chunk: 64 << 10,
        delay: Duration::from_millis(5),
    });
    let r = h
        .send(Method::GET, &path, &[("range", "bytes=1000-1999")])
        .await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes(), &layer.slice(1000..2000));
    assert_eq!(
        r.header("content-range"),
        format!("bytes 1000-1999/{}", layer.len())
    );
}

#[tokio::test]
async fn a_partial_whose_size_the_upstream_contradicts_is_deleted() {
    let reg = TestRegistry::start().await.unwrap();
    let layer = random_bytes(2 * PIECE + 3, 41);
    let digest = reg.add_blob("app", layer.clone());
    let d: Digest = digest.parse().unwrap();
    // A partial recorded with another size (an older version took a peer's word for it).
    let dir = tempfile::tempdir().unwrap();
    {
        let store = pollen_store::Store::open(dir.path(), 1 << 30).unwrap();
        let wrong = pollen_proto::PieceGeometry::choose(5 * PIECE as u64, None).unwrap();
        let mut p = store.partial(d, wrong).unwrap();
        p.append(&random_bytes(PIECE, 1)).unwrap();
        p.checkpoint().unwrap();
        assert_eq!(store.partial_geometry(&d), Some(wrong));
    }
    let cfg = config_for(&reg);
    let h = Harness::with_dir(reg, cfg, dir, 1 << 30).await;
    let r = h.get(&blob_path(&h, &digest)).await;
    assert_eq!(r.status, StatusCode::OK);
    h.wait_stored(&digest).await;
    assert_eq!(h.get(&blob_path(&h, &digest)).await.bytes(), &layer);
    assert!(!h.dir.path().join("partial").join(&digest[7..]).exists());
    assert_eq!(h.agent.store().partial_geometry(&d), None);
}
