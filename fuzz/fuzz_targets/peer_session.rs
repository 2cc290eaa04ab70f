//! STATEFUL: the downloader (`pollen_peer::Session`) against a fuzzed uploader over an
//! in-memory duplex stream. The uploader's side is the input: well-formed replies (to get
//! deep), raw bytes, piece headers with bodies, pauses, an early close. The downloader reacts
//! as the agent does: asks for the map, requests what is announced once unchoked, cancels now
//! and then. Tokio's clock is paused, so deadlines fire at once and nothing hangs; the session
//! must be over within a virtual deadline after the uploader closes.
//!
//! What must hold whatever the uploader sends: every event is consistent with the session
//! (piece lengths from the geometry, indices inside it, the map of the right blob).
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen_fuzz::Input;
use pollen_oci::Digest;
use pollen_peer::{Event, Session, SessionConfig};
use pollen_proto::{
    write_piece_header, write_reply, Bitfield, ErrorCode, PieceGeometry, PieceMap, Reply,
    MIN_PIECE_SIZE,
};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

/// The longest the fuzzed uploader goes on (virtual time); the session then has
/// `SESSION_DEADLINE` in all to end.
const UPLOADER_TIME: Duration = Duration::from_secs(600);
const SESSION_DEADLINE: Duration = Duration::from_secs(3600);

fn cfg() -> SessionConfig {
    SessionConfig {
        stall_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(20),
        slot_timeout: Duration::from_secs(10),
        piece_size: Some(MIN_PIECE_SIZE),
        ..SessionConfig::default()
    }
}

fn geometry(input: &mut Input) -> PieceGeometry {
    let size = match input.u8() % 4 {
        0 => u64::from(input.u16()),
        1 => u64::from(MIN_PIECE_SIZE) * u64::from(input.u8() % 5) + u64::from(input.u8()),
        2 => input.u64(),
        _ => u64::from(MIN_PIECE_SIZE) + 700,
    };
    let piece_size = if input.u8() % 8 == 0 {
        input.u32()
    } else {
        MIN_PIECE_SIZE
    };
    PieceGeometry::new(size, piece_size)
        .unwrap_or_else(|_| PieceGeometry::new(700, MIN_PIECE_SIZE).unwrap())
}

fn reply(input: &mut Input, digest: Digest, g: PieceGeometry) -> Reply {
    match input.u8() % 9 {
        0 | 1 => {
            let g = if input.u8() % 4 == 0 {
                geometry(input)
            } else {
                g
            };
            let mut bits = Bitfield::new(&g);
            for _ in 0..input.u8() % 4 {
                let _ = bits.set(u32::from(input.u8() % 4));
            }
            Reply::Have {
                geometry: g,
                bitfield: bits,
                complete: input.u8() % 2 == 0,
                map_id: None,
            }
        }
        2 => Reply::HaveMore {
            indices: (0..1 + input.u8() % 3)
                .map(|_| u32::from(input.u8() % 5))
                .collect(),
        },
        3 => {
            let d = if input.u8() % 2 == 0 {
                digest
            } else {
                Digest::of(b"x")
            };
            let hashes = vec![[input.u8(); 32]; g.count() as usize];
            PieceMap::new(d, g, hashes)
                .map(Reply::PieceMap)
                .unwrap_or(Reply::Choked)
        }
        4 if input.u8() % 2 == 0 => Reply::PieceHashes {
            first: u32::from(input.u8() % 4),
            hashes: vec![[input.u8(); 32]; usize::from(input.u8() % 4)],
        },
        4 => Reply::SignedHashes {
            producer: vec![input.u8(); usize::from(input.u8() % 70)],
            first: u32::from(input.u8() % 4),
            hashes: vec![[input.u8(); 32]; usize::from(input.u8() % 4)],
            signatures: vec![
                pollen_proto::Signature([input.u8(); 64]);
                usize::from(input.u8() % 4)
            ],
        },
        5 => Reply::Choked,
        6 | 7 => Reply::Unchoked,
        _ => Reply::Error {
            code: ErrorCode::Busy,
            message: "busy".into(),
        },
    }
}

/// The fuzzed uploader: the rest of the input, then it closes.
async fn uploader(data: Vec<u8>, mut s: DuplexStream, digest: Digest, g: PieceGeometry) {
    let mut input = Input(&data);
    let mut sink = [0u8; 512];
    // However many pauses the input asks for, the uploader stops after this long (virtual).
    let until = tokio::time::Instant::now() + UPLOADER_TIME;
    while !input.is_empty() && tokio::time::Instant::now() < until {
        let step = Duration::from_secs(1);
        let res = match input.u8() % 6 {
            0..=2 => {
                let r = reply(&mut input, digest, g);
                tokio::time::timeout(step, write_reply(&mut s, &r))
                    .await
                    .ok()
                    .map(|r| r.is_ok())
            }
            3 => {
                let n = usize::from(input.u8() % 48);
                let raw = input.bytes(n);
                tokio::time::timeout(step, s.write_all(raw))
                    .await
                    .ok()
                    .map(|r| r.is_ok())
            }
            4 => {
                let index = u32::from(input.u8() % 4);
                let len = match input.u8() % 4 {
                    0 => u32::from(input.u16()),
                    _ => g.len_of(index).unwrap_or(1),
                };
                let body = vec![input.u8(); len.min(1 << 17) as usize];
                tokio::time::timeout(step, async {
                    write_piece_header(&mut s, index, len).await?;
                    s.write_all(&body).await?;
                    Ok::<(), pollen_proto::ProtoError>(())
                })
                .await
                .ok()
                .map(|r| r.is_ok())
            }
            _ => {
                // Time passes; what the downloader sent is read meanwhile.
                let wait = Duration::from_millis(u64::from(input.u16()) * 4);
                // The downloader gone (end of stream or an error): stop, as an uploader would.
                let gone = tokio::time::timeout(wait, async {
                    while let Ok(n) = s.read(&mut sink).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
                Some(gone.is_err())
            }
        };
        if res == Some(false) {
            break;
        }
    }
    let _ = s.shutdown().await;
    // Keep reading what the downloader says until it closes too.
    while let Ok(n) = s.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
}

/// The downloader, reacting as the agent does; checks every event.
async fn downloader(s: DuplexStream, digest: Digest, cancel_mask: u8) {
    let Ok((mut session, have)) = Session::open(s, digest, &cfg()).await else {
        return;
    };
    let g = have.geometry;
    let _ = session.request_map();
    let mut turn = 0u32;
    loop {
        let event = match session.next_event().await {
            Ok(e) => e,
            Err(_) => return,
        };
        turn += 1;
        match event {
            Event::Piece { index, bytes } => {
                assert_eq!(
                    g.len_of(index).map(|l| l as usize),
                    Some(bytes.len()),
                    "piece {index} of the wrong length"
                );
            }
            Event::Map(m) => {
                assert_eq!(*m.digest(), digest);
                assert_eq!(*m.geometry(), g);
            }
            Event::Hashes { first, hashes } => {
                assert!(u64::from(first) + hashes.len() as u64 <= u64::from(g.count()));
            }
            Event::SignedHashes {
                producer,
                first,
                hashes,
                signatures,
            } => {
                assert!(u64::from(first) + hashes.len() as u64 <= u64::from(g.count()));
                assert_eq!(
                    hashes.len(),
                    signatures.len(),
                    "validated as many as hashes"
                );
                assert!(!producer.is_empty() && producer.len() <= pollen_proto::MAX_PRODUCER_ID);
            }
            Event::HaveMore(indices) => assert!(indices.iter().all(|&i| i < g.count())),
            Event::Have(h) => assert_eq!(h.geometry, g, "the geometry changed"),
            Event::Choked { .. } | Event::Unchoked => {}
        }
        if !session.is_choked() {
            let wanted: Vec<u32> = session.peer_has().iter_ones().take(8).collect();
            for i in wanted {
                let _ = session.request(i);
            }
        }
        if cancel_mask & (1 << (turn % 8)) != 0 {
            session.cancel(turn % 4);
        }
    }
}

async fn run(data: &[u8]) {
    let mut input = Input(data);
    let digest = Digest::of(&[input.u8() % 2]);
    let g = geometry(&mut input);
    let cancel_mask = input.u8();
    let (a, b) = tokio::io::duplex(1 << 16);
    let up = tokio::spawn(uploader(input.rest().to_vec(), b, digest, g));
    let down = tokio::spawn(downloader(a, digest, cancel_mask));
    let both = async {
        for t in [down, up] {
            if let Err(e) = t.await {
                if e.is_panic() {
                    std::panic::resume_unwind(e.into_panic());
                }
            }
        }
    };
    tokio::time::timeout(SESSION_DEADLINE, both)
        .await
        .expect("the session outlived every deadline");
}

fuzz_target!(|data: &[u8]| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("a runtime")
        .block_on(run(data));
});
