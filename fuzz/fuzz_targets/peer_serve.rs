//! STATEFUL: the uploader (`pollen_peer::serve`) driven by a fuzzed downloader over an
//! in-memory duplex stream, with the `testing` in-memory piece source changing under it.
//!
//! Two downloaders share a node with one upload slot (so the choke, queue and `Busy` paths
//! run). Each input is a sequence of actions: a request (well formed, to get deep) or raw
//! bytes on either stream, the source gaining pieces or hashes, completing, failing reads or
//! forgetting the blob, time passing, a downloader closing its side. Tokio's clock is paused,
//! so every deadline of the session fires at once when nothing else can run, and the input
//! cannot hang: at the end both sessions must be over within a virtual deadline.
//!
//! What must hold whatever the downloader does: every byte the uploader sends is a valid
//! reply stream, and every piece body it sends is exactly the piece its map says.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pollen_fuzz::Input;
use pollen_oci::Digest;
use pollen_peer::testing::{MemoryBlob, MemorySource};
use pollen_peer::{serve, SessionConfig, UploadLimits};
use pollen_proto::{
    read_piece_body, read_reply, write_request, PieceGeometry, PieceMap, Reply, Request,
    MIN_PIECE_SIZE,
};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};

/// Two pieces (a full one and a short one), and a one-piece blob.
fn blobs() -> &'static (Bytes, Bytes) {
    static B: OnceLock<(Bytes, Bytes)> = OnceLock::new();
    B.get_or_init(|| {
        let big: Vec<u8> = (0..MIN_PIECE_SIZE as usize + 700)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        (
            Bytes::from(big),
            Bytes::from_static(b"a small blob, one short piece"),
        )
    })
}

/// Reads everything the uploader sends, checking it; ends at EOF or on the first error (a
/// stream the uploader broke off is fine, garbage is not).
async fn downloader_reads(mut r: ReadHalf<DuplexStream>, maps: Arc<Vec<PieceMap>>) {
    let mut digest: Option<Digest> = None;
    loop {
        let reply = match read_reply(&mut r).await {
            Ok(Some(reply)) => reply,
            Ok(None) => return,
            Err(e) => {
                assert!(!e.is_peer_fault(), "the uploader sent garbage: {e}");
                return;
            }
        };
        match reply {
            Reply::Have { geometry, .. } => {
                let map = maps.iter().find(|m| *m.geometry() == geometry);
                digest = Some(*map.expect("Have with a geometry of no blob").digest());
            }
            Reply::Piece { index, len } => {
                let map = maps
                    .iter()
                    .find(|m| Some(*m.digest()) == digest)
                    .expect("a piece before Have");
                let expected = map.geometry().len_of(index).expect("a piece past the blob");
                assert_eq!(
                    len, expected,
                    "piece {index} announced with the wrong length"
                );
                match read_piece_body(&mut r, len, expected).await {
                    Ok(body) => assert!(
                        map.verify_piece(index, &body),
                        "piece {index} is not the blob's"
                    ),
                    Err(e) => {
                        assert!(!e.is_peer_fault(), "{e}");
                        return;
                    }
                }
            }
            Reply::PieceMap(m) => assert!(maps.iter().any(|k| *k == m), "a map of no blob"),
            Reply::PieceHashes { first, hashes } => {
                let map = maps
                    .iter()
                    .find(|m| Some(*m.digest()) == digest)
                    .expect("hashes before Have");
                for (i, h) in (first..).zip(&hashes) {
                    assert_eq!(map.hashes().get(i as usize), Some(h), "a wrong hash");
                }
            }
            _ => {}
        }
    }
}

fn request(input: &mut Input, digests: &[Digest; 2]) -> Request {
    match input.u8() % 6 {
        0 => Request::Interest {
            digest: digests[usize::from(input.u8() % 2)],
        },
        1 => Request::Interest {
            digest: Digest::of(input.bytes(2)),
        },
        2 => Request::GetPieceMap,
        3 => Request::GetPiece {
            index: u32::from(input.u8() % 4),
        },
        4 => Request::Cancel {
            index: u32::from(input.u8() % 4),
        },
        _ => Request::NotInterested,
    }
}

async fn run(data: &[u8]) {
    let mut input = Input(data);
    let (big, small) = blobs();
    let source = MemorySource::new();
    let geometry = |b: &Bytes| PieceGeometry::new(b.len() as u64, MIN_PIECE_SIZE).unwrap();
    let held: [Arc<MemoryBlob>; 2] = [
        source.add_empty(big.clone(), geometry(big)),
        source.add_complete(small.clone(), geometry(small)),
    ];
    let digests = [held[0].digest(), held[1].digest()];
    let maps = Arc::new(vec![held[0].map().clone(), held[1].map().clone()]);
    let limits = Arc::new(UploadLimits::new(1, u64::from(input.u8() % 2) * 1_000_000));
    let cfg = SessionConfig {
        stall_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(20),
        slot_timeout: Duration::from_secs(10),
        piece_size: Some(MIN_PIECE_SIZE),
        ..SessionConfig::default()
    };
    let mut writers: Vec<Option<WriteHalf<DuplexStream>>> = Vec::new();
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let (client, server) = tokio::io::duplex(1 << 16);
        let (r, w) = tokio::io::split(client);
        writers.push(Some(w));
        let src = source.clone();
        let (limits, cfg) = (limits.clone(), cfg.clone());
        tasks.push(tokio::spawn(async move {
            let _ = serve(server, src, limits, &cfg).await;
        }));
        tasks.push(tokio::spawn(downloader_reads(r, maps.clone())));
    }
    while !input.is_empty() {
        let op = input.u8();
        let which = usize::from(op >> 7);
        match op % 8 {
            0..=2 => {
                let req = request(&mut input, &digests);
                if let Some(w) = writers[which].as_mut() {
                    let _ =
                        tokio::time::timeout(Duration::from_secs(1), write_request(w, &req)).await;
                }
            }
            3 => {
                let n = usize::from(input.u8() % 64);
                let raw = input.bytes(n);
                if let Some(w) = writers[which].as_mut() {
                    let _ = tokio::time::timeout(Duration::from_secs(1), w.write_all(raw)).await;
                }
            }
            4 => {
                let blob = &held[usize::from(input.u8() % 2)];
                match input.u8() % 7 {
                    0 => blob.fetch(u32::from(input.u8() % 3)),
                    1 => blob.add_piece(u32::from(input.u8() % 3)),
                    2 => blob.set_map_id(Some(blob.map().id())),
                    3 => blob.complete(),
                    4 => blob.fail_reads(true),
                    5 => blob.fail_reads(false),
                    _ => source.remove(&blob.digest()),
                }
            }
            5 => tokio::time::sleep(Duration::from_millis(u64::from(input.u16()))).await,
            6 => {
                if let Some(mut w) = writers[which].take() {
                    let _ = w.shutdown().await;
                }
            }
            _ => tokio::task::yield_now().await,
        }
    }
    for w in writers.iter_mut() {
        if let Some(mut w) = w.take() {
            let _ = w.shutdown().await;
        }
    }
    // Every session ends once the downloaders are gone: EOF, or a deadline at the latest.
    let all = futures_join(tasks);
    tokio::time::timeout(Duration::from_secs(600), all)
        .await
        .expect("a session outlived every deadline");
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        if let Err(e) = t.await {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
        .block_on(run(data));
});
