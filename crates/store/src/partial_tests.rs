use super::*;
use bytes::Bytes;
use pollen_proto::{HashedPiece, PieceMap, MIN_PIECE_SIZE};
use std::os::unix::fs::FileExt;

fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| ((i * 131 + seed as usize) % 251) as u8)
        .collect()
}

fn setup(len: usize) -> (tempfile::TempDir, Store, Vec<u8>, PieceGeometry, Digest) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let data = blob(len, 1);
    let geometry = PieceGeometry::new(len as u64, MIN_PIECE_SIZE).unwrap();
    let digest = Digest::of(&data);
    (dir, store, data, geometry, digest)
}

fn read_all(b: &Blob) -> Vec<u8> {
    let mut buf = vec![0; b.size() as usize];
    b.file().read_exact_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn sequential_append_builds_the_map_and_completes() {
    let len = 5 * MIN_PIECE_SIZE as usize + 123;
    let (_d, store, data, geometry, digest) = setup(len);
    let mut p = store.partial(digest, geometry).unwrap();
    let mut off = 0;
    for (i, step) in [1usize, 70_000, 3, 200_000, 65_536]
        .iter()
        .cycle()
        .enumerate()
    {
        if off >= len {
            break;
        }
        let end = (off + step + i).min(len);
        p.append(&Bytes::copy_from_slice(&data[off..end])).unwrap();
        off = end;
    }
    let expected = PieceMap::of(digest, geometry, &data).unwrap();
    p.settle().unwrap();
    assert_eq!(p.map().slots(), expected.hashes());
    assert!(p.map().known().is_complete());
    assert!(p.have().is_complete());
    let b = p.commit().unwrap();
    assert_eq!(read_all(&b), data);
    assert_eq!(
        store.piece_map(&digest),
        Some(expected),
        "the map is kept with the blob"
    );
    assert!(store.contains(Kind::Blob, &digest));
    assert!(store.partials().is_empty());
}

#[test]
fn resumes_after_a_crash_without_refetching_checkpointed_pieces() {
    let len = 6 * MIN_PIECE_SIZE as usize;
    let (dir, store, data, geometry, digest) = setup(len);
    let mut p = store.partial(digest, geometry).unwrap();
    let half = 3 * MIN_PIECE_SIZE as usize + 1000;
    p.append(&Bytes::copy_from_slice(&data[..half])).unwrap();
    p.checkpoint().unwrap();
    drop(p); // a crash after the checkpoint
    drop(store);
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(store.partials(), vec![digest]);
    assert_eq!(store.partial_geometry(&digest), Some(geometry));
    let mut p = store.partial(digest, geometry).unwrap();
    assert_eq!(p.have().count_ones(), 3);
    let resume = p.append_offset() as usize;
    assert_eq!(
        resume,
        3 * MIN_PIECE_SIZE as usize,
        "resume at the first missing piece"
    );
    p.append(&Bytes::copy_from_slice(&data[resume..])).unwrap();
    assert_eq!(read_all(&p.commit().unwrap()), data);
}

#[test]
fn peer_pieces_are_verified_against_the_map() {
    let len = 4 * MIN_PIECE_SIZE as usize + 10;
    let (_d, store, data, geometry, digest) = setup(len);
    let map = PieceMap::of(digest, geometry, &data).unwrap();
    let mut p = store.partial(digest, geometry).unwrap();
    let piece = |i: u32| {
        let r = geometry.range_of(i).unwrap();
        &data[r.start as usize..r.end as usize]
    };
    // No hash known yet: nothing can be accepted.
    assert!(matches!(
        p.write_piece(&HashedPiece::new(2, Bytes::copy_from_slice(piece(2)))),
        Err(StoreError::PieceMismatch { index: 2 })
    ));
    p.adopt_hashes(0, &map.hashes()[..2]).unwrap();
    p.adopt_hashes(1, &map.hashes()[1..]).unwrap(); // overlapping, agreeing
    let mut bad = piece(3).to_vec();
    bad[7] ^= 0xff;
    assert!(matches!(
        p.write_piece(&HashedPiece::new(3, Bytes::copy_from_slice(&bad))),
        Err(StoreError::PieceMismatch { index: 3 })
    ));
    assert!(!p.have().get(3));
    for i in [4, 0, 3, 1, 2] {
        assert!(p
            .write_piece(&HashedPiece::new(i, Bytes::copy_from_slice(piece(i))))
            .unwrap());
    }
    assert!(
        !p.write_piece(&HashedPiece::new(1, Bytes::copy_from_slice(piece(1))))
            .unwrap(),
        "already present"
    );
    assert_eq!(p.contiguous(), len as u64);
    assert_eq!(read_all(&p.commit().unwrap()), data);
}

#[test]
fn conflicting_hashes_are_refused() {
    let len = 2 * MIN_PIECE_SIZE as usize;
    let (_d, store, data, geometry, digest) = setup(len);
    let map = PieceMap::of(digest, geometry, &data).unwrap();
    let mut p = store.partial(digest, geometry).unwrap();
    p.adopt_hashes(0, map.hashes()).unwrap();
    assert!(matches!(
        p.adopt_hashes(0, &[[9u8; 32]]),
        Err(StoreError::MapConflict(_))
    ));
    assert!(matches!(
        p.adopt_hashes(5, &[[9u8; 32]]),
        Err(StoreError::MapConflict(_))
    ));
}

#[test]
fn a_forged_map_never_completes_and_leaves_nothing() {
    let len = 3 * MIN_PIECE_SIZE as usize;
    let (_d, store, _data, geometry, digest) = setup(len);
    // A malicious peer's map and pieces: consistent with each other, not with the digest.
    let forged = blob(len, 99);
    let forged_map = PieceMap::of(Digest::of(&forged), geometry, &forged).unwrap();
    let mut p = store.partial(digest, geometry).unwrap();
    p.adopt_hashes(0, forged_map.hashes()).unwrap();
    for i in 0..geometry.count() {
        let r = geometry.range_of(i).unwrap();
        p.write_piece(&HashedPiece::new(
            i,
            Bytes::copy_from_slice(&forged[r.start as usize..r.end as usize]),
        ))
        .unwrap();
    }
    assert!(matches!(p.commit(), Err(StoreError::DigestMismatch { .. })));
    assert!(!store.contains(Kind::Blob, &digest));
    assert!(store.partials().is_empty());
}

#[test]
fn corrupted_pieces_on_disk_are_dropped_on_reopen() {
    let len = 3 * MIN_PIECE_SIZE as usize;
    let (dir, store, data, geometry, digest) = setup(len);
    let mut p = store.partial(digest, geometry).unwrap();
    p.append(&Bytes::copy_from_slice(
        &data[..2 * MIN_PIECE_SIZE as usize],
    ))
    .unwrap();
    p.checkpoint().unwrap();
    drop(p);
    let path = dir.path().join("partial").join(digest.hex()).join("data");
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.write_all_at(b"rot", MIN_PIECE_SIZE as u64 + 5).unwrap();
    let p = store.partial(digest, geometry).unwrap();
    assert!(p.have().get(0));
    assert!(
        !p.have().get(1),
        "a piece that no longer matches must be fetched again"
    );
    assert_eq!(p.append_offset(), MIN_PIECE_SIZE as u64);
}

#[test]
fn bad_or_foreign_state_starts_over() {
    let len = 2 * MIN_PIECE_SIZE as usize;
    let (dir, store, data, geometry, digest) = setup(len);
    let mut p = store.partial(digest, geometry).unwrap();
    p.append(&Bytes::copy_from_slice(&data[..MIN_PIECE_SIZE as usize]))
        .unwrap();
    p.checkpoint().unwrap();
    drop(p);
    // Another geometry for the same digest: the old state does not apply.
    let other = PieceGeometry::new(len as u64, 2 * MIN_PIECE_SIZE).unwrap();
    assert_eq!(store.partial(digest, other).unwrap().have().count_ones(), 0);
    let state = dir
        .path()
        .join("partial")
        .join(digest.hex())
        .join("state.json");
    std::fs::write(&state, b"{\"version\":1,\"garbage\":").unwrap();
    assert_eq!(
        store.partial(digest, geometry).unwrap().have().count_ones(),
        0
    );
}

#[test]
fn evicting_a_blob_removes_its_piece_map() {
    let len = MIN_PIECE_SIZE as usize;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), len as u64 + 10).unwrap();
    let data = blob(len, 3);
    let geometry = PieceGeometry::new(len as u64, MIN_PIECE_SIZE).unwrap();
    let digest = Digest::of(&data);
    let mut p = store.partial(digest, geometry).unwrap();
    p.append(&Bytes::from(data)).unwrap();
    drop(p.commit().unwrap());
    let sidecar = dir
        .path()
        .join("blobs/sha256")
        .join(format!("{}.pieces", digest.hex()));
    assert!(sidecar.exists());
    let other = vec![5u8; 20];
    let d2 = Digest::of(&other);
    let mut w = store.writer(Kind::Blob, d2, Some(20), None).unwrap();
    w.write(&Bytes::from(other)).unwrap();
    drop(w.commit().unwrap());
    assert!(!store.contains(Kind::Blob, &digest));
    assert!(
        !sidecar.exists(),
        "an evicted blob's piece map must go with it"
    );
    assert_eq!(store.piece_map(&digest), None);
}

#[test]
fn the_digest_is_computed_on_the_way_whatever_the_order() {
    let len = 6 * MIN_PIECE_SIZE as usize + 7;
    let (_d, store, data, geometry, digest) = setup(len);
    let map = PieceMap::of(digest, geometry, &data).unwrap();
    let piece = |i: u32| {
        let r = geometry.range_of(i).unwrap();
        Bytes::copy_from_slice(&data[r.start as usize..r.end as usize])
    };
    let mut p = store.partial(digest, geometry).unwrap();
    p.adopt_hashes(0, map.hashes()).unwrap();
    // Peers supply pieces 5 and 2 out of order; the upstream appends 3..5 after a seek; peers
    // then fill 0 and 1, and the upstream the last piece.
    p.write_piece(&HashedPiece::new(5, piece(5))).unwrap();
    p.write_piece(&HashedPiece::new(2, piece(2))).unwrap();
    assert_eq!(p.whole_pos, 0, "nothing contiguous yet");
    p.seek(3).unwrap();
    let r =
        geometry.range_of(3).unwrap().start as usize..geometry.range_of(4).unwrap().end as usize;
    p.append(&Bytes::copy_from_slice(&data[r])).unwrap();
    p.write_piece(&HashedPiece::new(0, piece(0))).unwrap();
    p.write_piece(&HashedPiece::new(1, piece(1))).unwrap();
    p.settle().unwrap();
    assert_eq!(
        p.whole_pos,
        geometry.range_of(5).unwrap().end,
        "the prefix 0..=5 is hashed"
    );
    p.seek(6).unwrap();
    let r = geometry.range_of(6).unwrap();
    p.append(&Bytes::copy_from_slice(&data[r.start as usize..]))
        .unwrap();
    p.settle().unwrap();
    assert_eq!(p.whole_pos, len as u64, "no second pass needed");
    let b = p.commit().unwrap();
    assert_eq!(read_all(&b), data);
}

#[test]
fn a_range_fetched_apart_fills_the_map_out_of_order_and_survives_a_restart() {
    let ps = MIN_PIECE_SIZE as usize;
    let len = 6 * ps;
    let (_d, store, data, geometry, digest) = setup(len);
    let map = PieceMap::of(digest, geometry, &data).unwrap();
    let mut p = store.partial(digest, geometry).unwrap();
    // This node fetches pieces 3..5 from the upstream; another fetcher vouches for 0..2.
    p.seek(3).unwrap();
    p.append(&Bytes::copy_from_slice(&data[3 * ps..5 * ps]))
        .unwrap();
    p.adopt_hashes(0, &map.hashes()[..2]).unwrap();
    let piece = HashedPiece::new(1, Bytes::copy_from_slice(&data[ps..2 * ps]));
    assert!(p.write_piece(&piece).unwrap());
    p.checkpoint().unwrap();
    let known: Vec<u32> = p.map().known().iter_ones().collect();
    assert_eq!(known, vec![0, 1, 3, 4]);
    assert_eq!(p.produced().iter_ones().collect::<Vec<_>>(), vec![3, 4]);
    drop(p);

    let mut p = store.partial(digest, geometry).unwrap();
    assert_eq!(p.map().known().iter_ones().collect::<Vec<_>>(), known);
    assert_eq!(p.have().iter_ones().collect::<Vec<_>>(), vec![1, 3, 4]);
    assert_eq!(
        p.produced().iter_ones().collect::<Vec<_>>(),
        vec![3, 4],
        "still vouched for after a restart"
    );
    // The rest from the upstream completes it.
    p.seek(0).unwrap();
    p.append(&Bytes::copy_from_slice(&data[..ps])).unwrap();
    p.seek(2).unwrap();
    p.append(&Bytes::copy_from_slice(&data[2 * ps..3 * ps]))
        .unwrap();
    p.seek(5).unwrap();
    p.append(&Bytes::copy_from_slice(&data[5 * ps..])).unwrap();
    p.settle().unwrap();
    assert!(p.have().is_complete() && p.map().known().is_complete());
    assert_eq!(read_all(&p.commit().unwrap()), data);
}

/// Stores `n` blobs of `len` bytes (seeds 100..), returning their digests.
fn fill(store: &Store, n: u8, len: usize) -> Vec<Digest> {
    (0..n)
        .map(|i| {
            let data = blob(len, 100 + i);
            let digest = Digest::of(&data);
            let mut w = store.writer(Kind::Blob, digest, None, None).unwrap();
            w.write(&Bytes::from(data)).unwrap();
            w.commit().unwrap();
            digest
        })
        .collect()
}

#[test]
fn a_claimed_size_reserves_nothing_and_is_never_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let quota = 8 * MIN_PIECE_SIZE as u64;
    let store = Store::open(dir.path(), quota).unwrap();
    let cached = fill(&store, 4, MIN_PIECE_SIZE as usize);
    let before = store.usage();
    // A peer claims 4 TiB for a digest: the partial opens, evicts nothing, reserves nothing.
    let digest = Digest::of(b"a blob a peer lies about");
    let huge = PieceGeometry::choose(4 << 40, None).unwrap();
    let mut p = store.partial_with(digest, huge, false).unwrap();
    assert!(cached.iter().all(|d| store.contains(Kind::Blob, d)));
    assert_eq!(store.usage().bytes, before.bytes, "nothing reserved");
    assert_eq!(store.usage().evictions, 0);
    p.checkpoint().unwrap();
    assert_eq!(
        store.partial_geometry(&digest),
        None,
        "the claim is not recorded"
    );
    assert!(!dir
        .path()
        .join("partial")
        .join(digest.hex())
        .join("state.json")
        .exists());
    drop(p);
    drop(store);
    // After a restart the unconfirmed partial is gone: the digest starts clean.
    let store = Store::open(dir.path(), quota).unwrap();
    assert!(store.partials().is_empty());
    assert_eq!(store.usage().bytes, before.bytes);
}

#[test]
fn a_confirmed_partial_is_recorded_once_confirmed() {
    let len = 3 * MIN_PIECE_SIZE as usize;
    let (dir, store, data, geometry, digest) = setup(len);
    let mut p = store.partial_with(digest, geometry, false).unwrap();
    p.append(&Bytes::copy_from_slice(&data[..MIN_PIECE_SIZE as usize]))
        .unwrap();
    p.checkpoint().unwrap();
    assert_eq!(store.partial_geometry(&digest), None);
    p.confirm();
    p.checkpoint().unwrap();
    assert_eq!(store.partial_geometry(&digest), Some(geometry));
    drop(p);
    drop(store);
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    assert_eq!(store.partials(), vec![digest]);
    assert!(
        store.usage().bytes >= MIN_PIECE_SIZE as u64,
        "counted after a restart"
    );
}

#[test]
fn partial_bytes_count_toward_the_quota_as_they_land() {
    let dir = tempfile::tempdir().unwrap();
    let piece = MIN_PIECE_SIZE as usize;
    let store = Store::open(dir.path(), 4 * piece as u64).unwrap();
    let cached = fill(&store, 3, piece);
    let data = blob(3 * piece, 7);
    let digest = Digest::of(&data);
    let geometry = PieceGeometry::new(data.len() as u64, MIN_PIECE_SIZE).unwrap();
    let mut p = store.partial(digest, geometry).unwrap();
    assert_eq!(
        store.usage().bytes,
        3 * piece as u64,
        "opening reserves nothing"
    );
    p.append(&Bytes::copy_from_slice(&data[..2 * piece]))
        .unwrap();
    p.settle().unwrap();
    // 3 blobs + 2 pieces > the quota: least recently used blobs made room.
    let usage = store.usage();
    assert!(usage.bytes <= usage.quota, "{usage:?}");
    assert!(usage.evictions >= 1);
    assert!(!store.contains(Kind::Blob, &cached[0]), "the oldest went");
    p.append(&Bytes::copy_from_slice(&data[2 * piece..]))
        .unwrap();
    let b = p.commit().unwrap();
    assert_eq!(b.size(), data.len() as u64);
    assert!(store.usage().bytes <= store.usage().quota + piece as u64);
    drop(b);
    // The partial's share was handed to the blob, not counted twice.
    let blobs: u64 = store
        .digests()
        .iter()
        .filter_map(|d| store.get(Kind::Blob, d).map(|b| b.size()))
        .sum();
    assert_eq!(store.usage().bytes, blobs);
}

#[test]
fn an_abandoned_partial_ages_out_and_a_failed_one_is_deleted() {
    let len = 3 * MIN_PIECE_SIZE as usize;
    let (dir, store, data, geometry, digest) = setup(len);
    let mut p = store.partial(digest, geometry).unwrap();
    p.append(&Bytes::copy_from_slice(&data[..MIN_PIECE_SIZE as usize]))
        .unwrap();
    p.checkpoint().unwrap();
    assert_eq!(
        store.evict_unused_before(std::time::SystemTime::now() + Duration::from_secs(60)),
        0,
        "an open partial is in use"
    );
    drop(p); // the fetch failed and left it for a retry nobody makes
    assert_eq!(store.usage().bytes, MIN_PIECE_SIZE as u64);
    let n = store.evict_unused_before(std::time::SystemTime::now() + Duration::from_secs(60));
    assert_eq!(n, 1);
    assert!(store.partials().is_empty());
    assert!(!dir.path().join("partial").join(digest.hex()).exists());
    assert_eq!(store.usage().bytes, 0);
    // One abandoned (a size mismatch) leaves nothing and no quota share behind.
    let mut p = store.partial(digest, geometry).unwrap();
    p.append(&Bytes::copy_from_slice(&data[..MIN_PIECE_SIZE as usize]))
        .unwrap();
    p.settle().unwrap();
    p.abandon();
    assert!(store.partials().is_empty());
    assert_eq!(store.usage().bytes, 0);
    assert!(
        store.digests().is_empty(),
        "partials are never announced as stored"
    );
}
