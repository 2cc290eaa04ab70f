use super::*;
use bytes::Bytes;
use std::os::unix::fs::FileExt;

fn put(store: &Store, data: &[u8]) -> Digest {
    let d = Digest::of(data);
    let mut w = store
        .writer(Kind::Blob, d, Some(data.len() as u64), None)
        .unwrap();
    w.write(&Bytes::copy_from_slice(data)).unwrap();
    w.commit().unwrap();
    d
}

fn read_all(b: &Blob) -> Vec<u8> {
    let mut buf = vec![0; b.size() as usize];
    b.file().read_exact_at(&mut buf, 0).unwrap();
    buf
}

#[test]
fn commit_then_read_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let d = put(&store, b"layer bytes");
    assert_eq!(
        read_all(&store.get(Kind::Blob, &d).unwrap()),
        b"layer bytes"
    );
    drop(store);
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(
        read_all(&store.get(Kind::Blob, &d).unwrap()),
        b"layer bytes"
    );
    assert_eq!(store.usage().bytes, 11);
}

#[test]
fn mismatch_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let d = Digest::of(b"good");
    let mut w = store.writer(Kind::Blob, d, Some(4), None).unwrap();
    w.write(&Bytes::copy_from_slice(b"evil")).unwrap();
    assert!(matches!(w.commit(), Err(StoreError::DigestMismatch { .. })));
    assert!(store.get(Kind::Blob, &d).is_none());
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    assert_eq!(
        fs::read_dir(dir.path().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );
}

#[test]
fn size_limits_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let d = Digest::of(b"abc");
    let mut w = store.writer(Kind::Blob, d, Some(3), None).unwrap();
    assert!(matches!(
        w.write(&Bytes::copy_from_slice(b"abcd")),
        Err(StoreError::TooLarge { .. })
    ));
    let mut w = store.writer(Kind::Blob, d, Some(3), None).unwrap();
    w.write(&Bytes::copy_from_slice(b"ab")).unwrap();
    assert!(matches!(w.commit(), Err(StoreError::Incomplete { .. })));
}

#[test]
fn interrupted_write_leaves_nothing_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let d = Digest::of(b"partial");
    let mut w = store.writer(Kind::Blob, d, None, None).unwrap();
    w.write(&Bytes::copy_from_slice(b"part")).unwrap();
    std::mem::forget(w); // a crash: no Drop, no commit
    drop(store);
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    assert!(store.get(Kind::Blob, &d).is_none());
    assert_eq!(store.usage().entries, 0);
    assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
}

#[test]
fn lru_eviction_skips_pinned() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 30).unwrap();
    let a = put(&store, &[1u8; 10]);
    let b = put(&store, &[2u8; 10]);
    let pinned_a = store.get(Kind::Blob, &a).unwrap(); // a is in use, and now most recent
    let _ = store.get(Kind::Blob, &b); // b used after a; the handle is dropped at once
    let c = put(&store, &[3u8; 10]);
    // Over quota: unpinned entries go, least recently used first, down to the low watermark
    // (90 %: 27 bytes with d's 10 counted), so b and then c.
    let d = put(&store, &[4u8; 10]);
    assert!(store.contains(Kind::Blob, &a), "pinned entry was evicted");
    assert!(!store.contains(Kind::Blob, &b), "LRU entry kept");
    assert!(
        !store.contains(Kind::Blob, &c),
        "evicted down to the low watermark"
    );
    assert!(store.contains(Kind::Blob, &d));
    assert_eq!(read_all(&pinned_a), vec![1u8; 10]);
    assert_eq!(store.usage().evictions, 2);
    assert!(store.usage().bytes <= 27);
}

#[test]
fn entries_unused_for_too_long_go_unless_in_use_and_use_survives_a_restart() {
    use std::time::{Duration, SystemTime};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let (old, read, held) = (
        put(&store, &[1u8; 10]),
        put(&store, &[2u8; 10]),
        put(&store, &[3u8; 10]),
    );
    drop(store);
    // Two hours pass without a read: the files' mtimes say so.
    let two_hours_ago = SystemTime::now() - Duration::from_secs(7200);
    for d in [&old, &read, &held] {
        let path = dir.path().join("blobs/sha256").join(d.hex());
        let f = fs::File::options().write(true).open(path).unwrap();
        f.set_modified(two_hours_ago).unwrap();
    }
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let _ = store.get(Kind::Blob, &read); // read now
    let handle = store.get(Kind::Blob, &held).unwrap(); // read now, and still being read
    assert_eq!(store.evict_unused_for(Duration::from_secs(3600)), 1);
    assert!(!store.contains(Kind::Blob, &old), "unused for two hours");
    drop(store);
    // The reads touched the files: after a restart they are still recent.
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    assert_eq!(store.evict_unused_for(Duration::from_secs(3600)), 0);
    // Everything is old an hour from now, but what is being read stays.
    let held_again = store.get(Kind::Blob, &held).unwrap();
    drop(handle);
    let later = SystemTime::now() + Duration::from_secs(3600);
    assert_eq!(store.evict_unused_before(later), 1);
    assert!(store.contains(Kind::Blob, &held), "in use: never evicted");
    drop(held_again);
    assert_eq!(store.evict_unused_before(later), 1);
    assert_eq!(store.usage().entries, 0);
}

#[test]
fn manifests_keep_media_type() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let body = br#"{"schemaVersion":2}"#;
    let d = Digest::of(body);
    let mt = "application/vnd.oci.image.manifest.v1+json".to_string();
    let mut w = store
        .writer(Kind::Manifest, d, None, Some(mt.clone()))
        .unwrap();
    w.write(&Bytes::copy_from_slice(body)).unwrap();
    w.commit().unwrap();
    drop(store);
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let m = store.get(Kind::Manifest, &d).unwrap();
    assert_eq!(m.media_type(), Some(mt.as_str()));
    assert!(store.get(Kind::Blob, &d).is_none());
}

#[test]
fn foreign_files_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("blobs/sha256")).unwrap();
    fs::write(dir.path().join("blobs/sha256/README"), b"not ours").unwrap();
    let store = Store::open(dir.path(), 1).unwrap();
    assert_eq!(store.usage().entries, 0);
    assert!(dir.path().join("blobs/sha256/README").exists());
}

#[test]
fn object_over_quota_is_served_then_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 5).unwrap();
    let data = [7u8; 10];
    let d = Digest::of(&data);
    let mut w = store.writer(Kind::Blob, d, Some(10), None).unwrap();
    w.write(&Bytes::copy_from_slice(&data)).unwrap();
    let blob = w.commit().unwrap();
    assert_eq!(read_all(&blob), data);
    drop(blob);
    assert!(!store.contains(Kind::Blob, &d));
    assert_eq!(store.usage().bytes, 0);
}

#[test]
fn large_objects_hash_on_a_thread_with_the_same_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 30).unwrap();
    let data: Vec<u8> = (0..(6u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    let d = Digest::of(&data);
    let mut w = store
        .writer(Kind::Blob, d, Some(data.len() as u64), None)
        .unwrap();
    for chunk in data.chunks(100_000) {
        w.write(&Bytes::copy_from_slice(chunk)).unwrap();
    }
    assert_eq!(read_all(&w.commit().unwrap()), data);

    let mut bad = data.clone();
    bad[5 << 20] ^= 1;
    let d2 = Digest::of(&data[1..]);
    let mut w = store
        .writer(Kind::Blob, d2, Some(bad.len() as u64), None)
        .unwrap();
    w.write(&Bytes::from(bad)).unwrap();
    assert!(matches!(w.commit(), Err(StoreError::DigestMismatch { .. })));
    assert!(!store.contains(Kind::Blob, &d2));
}

#[test]
fn concurrent_commits_of_one_manifest_both_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 1 << 20).unwrap();
    let body = Bytes::from_static(br#"{"schemaVersion":2,"layers":[]}"#);
    let d = Digest::of(&body);
    let mt = Some("application/vnd.oci.image.manifest.v1+json".to_string());
    let writers: Vec<_> = (0..4)
        .map(|_| {
            let mut w = store.writer(Kind::Manifest, d, None, mt.clone()).unwrap();
            w.write(&body).unwrap();
            w
        })
        .collect();
    let handles: Vec<_> = writers
        .into_iter()
        .map(|w| std::thread::spawn(move || w.commit().map(|b| b.size())))
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap().unwrap(), body.len() as u64);
    }
    assert_eq!(store.usage().entries, 1);
    assert_eq!(store.usage().bytes, body.len() as u64);
}
