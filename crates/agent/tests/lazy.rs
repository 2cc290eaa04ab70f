//! Lazy pulling: a range of a blob that is not here is answered from the pieces that cover it,
//! fetched from the upstream by range and kept, not by fetching the whole blob first.

mod common;

use common::{random_bytes, sha256, Harness};
use http::{Method, StatusCode};

const LAYER: usize = 8 << 20;

/// An agent that verified the image's manifest (so it knows the layer's size), with the
/// registry's counters zeroed after it; the layer's digest and bytes.
async fn after_manifest() -> (Harness, String, bytes::Bytes) {
    let h = Harness::start().await;
    let layer = random_bytes(LAYER, 77);
    let img = h.reg.push_image("app", "v1", vec![layer.clone()]);
    let r = h.get(&format!("/v2/app/manifests/v1{}", h.ns())).await;
    assert_eq!(r.status, StatusCode::OK);
    h.reg.reset_stats();
    (h, img.layer_digests[0].clone(), layer)
}

async fn range(h: &Harness, digest: &str, spec: &str) -> common::Resp {
    let path = format!("/v2/app/blobs/{digest}{}", h.ns());
    h.send(Method::GET, &path, &[("range", spec)]).await
}

#[tokio::test]
async fn a_range_fetches_only_the_pieces_that_cover_it() {
    let (h, digest, layer) = after_manifest().await;
    // The footer and a table of contents near the end, as a snapshotter reads them first.
    for (spec, bytes) in [
        ("bytes=-47", layer.slice(LAYER - 47..)),
        ("bytes=7340032-7345151", layer.slice(7_340_032..7_345_152)),
        ("bytes=1000-1999", layer.slice(1000..2000)),
    ] {
        let r = range(&h, &digest, spec).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT, "{spec}");
        assert_eq!(r.bytes(), &bytes, "{spec}");
    }
    let sent = h.reg.stats().blob_bytes_sent;
    assert!(
        sent < LAYER as u64 / 10,
        "three small ranges cost {sent} bytes of an {LAYER}-byte layer"
    );
    let r = range(&h, &digest, "bytes=1500-2500").await;
    assert_eq!(r.bytes(), &layer.slice(1500..2501));
    assert_eq!(
        h.reg.stats().blob_bytes_sent,
        sent,
        "a range within pieces already here costs the upstream nothing"
    );
    assert!(
        !h.agent
            .store()
            .contains(pollen_store::Kind::Blob, &digest.parse().unwrap()),
        "no whole blob was fetched"
    );

    // The whole pull then fetches only the rest, and checks everything against the digest.
    let r = h.get(&format!("/v2/app/blobs/{digest}{}", h.ns())).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(sha256(r.bytes()), digest);
    let total = h.reg.stats().blob_bytes_sent;
    assert!(
        total <= LAYER as u64 + sent / 2,
        "the whole pull reused the pieces: {total} bytes for a {LAYER}-byte layer after {sent}"
    );
}

#[tokio::test]
async fn without_a_verified_manifest_a_range_waits_for_the_whole_blob() {
    let h = Harness::start().await;
    let layer = random_bytes(LAYER, 78);
    let digest = h.reg.add_blob("app", layer.clone());
    let r = range(&h, &digest, "bytes=1000-1999").await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes(), &layer.slice(1000..2000));
    h.wait_stored(&digest).await;
    assert!(
        h.reg.stats().blob_bytes_sent >= LAYER as u64,
        "no size to cut pieces by: the whole blob was fetched and verified first"
    );
}

#[tokio::test]
async fn bytes_a_lying_upstream_sent_for_a_range_never_make_a_blob() {
    let (h, digest, layer) = after_manifest().await;
    // The upstream flips byte 1500 in what it sends: the range carries it, as a direct range
    // request to that upstream would (a range has no digest to check).
    h.reg
        .set_fault(pollen_testreg::Fault::Corrupt { offset: 1500 });
    let r = range(&h, &digest, "bytes=1000-1999").await;
    assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
    assert_ne!(r.bytes(), &layer.slice(1000..2000));
    h.reg.set_fault(pollen_testreg::Fault::None);
    // The whole pull checks the kept pieces against the digest: the client streaming it never
    // gets a complete body with the flipped byte, and the fetch starts over from the upstream
    // alone, so the blob is stored right without another request.
    let path = format!("/v2/app/blobs/{digest}{}", h.ns());
    let r = h.get(&path).await;
    if let (StatusCode::OK, Ok(body)) = (r.status, &r.body) {
        assert_eq!(sha256(body), digest, "a complete body is the right one");
    }
    h.wait_stored(&digest).await;
    let r = h.get(&path).await;
    assert_eq!(sha256(r.bytes()), digest);
}

#[tokio::test]
async fn past_a_tenth_of_the_blob_ranges_go_the_whole_blobs_way() {
    let h = Harness::start().await;
    let size = 64 << 20;
    let layer = random_bytes(size, 79);
    let img = h.reg.push_image("app", "v1", vec![layer.clone()]);
    let digest = img.layer_digests[0].clone();
    h.get(&format!("/v2/app/manifests/v1{}", h.ns())).await;
    h.reg.reset_stats();
    // A snapshotter's background fetch reads the layer range by range.
    let chunk = 2 << 20;
    for i in 0..4 {
        let (from, to) = (i * 8 * chunk, i * 8 * chunk + chunk - 1);
        let r = range(&h, &digest, &format!("bytes={from}-{to}")).await;
        assert_eq!(r.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(r.bytes(), &layer.slice(from..to + 1));
    }
    // The fourth range was past the budget (6.4 MiB of 64): the whole blob was fetched, the
    // pieces already here reused.
    h.wait_stored(&digest).await;
    let sent = h.reg.stats().blob_bytes_sent;
    assert!(
        sent < size as u64 + (8 << 20),
        "{sent} bytes from the registry for a {size}-byte layer"
    );
}
