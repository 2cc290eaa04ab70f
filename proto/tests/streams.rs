//! Hostile streams: the async readers refuse oversized lengths before reading or allocating,
//! report cut streams as I/O errors, check piece lengths against the geometry, and never panic
//! on garbage.

use pollen_proto::*;
use std::time::Duration;
use tokio::io::{duplex, AsyncWriteExt};

mod common;
use common::Rng;

const PS: u32 = MIN_PIECE_SIZE;

#[tokio::test]
async fn four_gib_length_prefix_is_refused_before_reading() {
    let (mut peer, mut me) = duplex(64);
    // Only the prefix: if the reader tried to read (or allocate) the payload it would hang.
    peer.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    let read = tokio::time::timeout(Duration::from_secs(5), read_reply(&mut me)).await;
    let err = read.expect("must not wait for the payload").unwrap_err();
    assert!(
        matches!(
            err,
            ProtoError::FrameTooLarge {
                len: 4_294_967_295,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.is_peer_fault());

    // Just over each direction's limit, too.
    peer.write_all(&(MAX_REPLY_FRAME + 1).to_le_bytes())
        .await
        .unwrap();
    assert!(matches!(
        read_reply(&mut me).await,
        Err(ProtoError::FrameTooLarge { .. })
    ));
    peer.write_all(&(MAX_REQUEST_FRAME + 1).to_le_bytes())
        .await
        .unwrap();
    assert!(matches!(
        read_request(&mut me).await,
        Err(ProtoError::FrameTooLarge { .. })
    ));
}

#[tokio::test]
async fn truncated_frames_are_io_errors() {
    let frame = encode_reply(&Reply::HaveMore {
        indices: vec![1, 2, 3],
    })
    .unwrap();
    for cut in 1..frame.len() {
        let (mut peer, mut me) = duplex(1024);
        peer.write_all(&frame[..cut]).await.unwrap();
        drop(peer);
        match read_reply(&mut me).await {
            Err(ProtoError::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof),
            other => panic!("cut at {cut}: {other:?}"),
        }
    }
    // Nothing at all is a clean end.
    let (peer, mut me) = duplex(16);
    drop(peer);
    assert!(read_request(&mut me).await.unwrap().is_none());
}

#[tokio::test]
async fn piece_bodies_are_checked_against_the_geometry() {
    let g = PieceGeometry::new(2 * u64::from(PS) + 10, PS).unwrap();
    let (mut peer, mut me) = duplex(256 * 1024);
    // The peer announces 11 bytes for the last piece, which is 10.
    write_piece(&mut peer, 2, &[0; 11]).await.unwrap();
    let Some(Reply::Piece { index, len }) = read_reply(&mut me).await.unwrap() else {
        panic!("expected a Piece header");
    };
    let expected = g.len_of(index).unwrap();
    let err = read_piece_body(&mut me, len, expected).await.unwrap_err();
    assert!(
        matches!(err, ProtoError::Invalid(_)) && err.is_peer_fault(),
        "{err}"
    );

    let err = read_piece_body(&mut me, MAX_PIECE_SIZE + 1, MAX_PIECE_SIZE + 1)
        .await
        .unwrap_err();
    assert!(matches!(err, ProtoError::FrameTooLarge { .. }));

    // The right length, but the stream ends early.
    let (mut peer, mut me) = duplex(256 * 1024);
    write_piece_header(&mut peer, 0, PS).await.unwrap();
    peer.write_all(&[1; 100]).await.unwrap();
    drop(peer);
    let Some(Reply::Piece { len, .. }) = read_reply(&mut me).await.unwrap() else {
        panic!("expected a Piece header");
    };
    let err = read_piece_body(&mut me, len, PS).await.unwrap_err();
    assert!(matches!(err, ProtoError::Io(_)) && !err.is_peer_fault());
}

#[tokio::test]
async fn garbage_streams_never_panic() {
    let mut rng = Rng(42);
    for _ in 0..500 {
        let len = rng.below(300);
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if bytes.len() >= 4 && rng.below(2) == 0 {
            // A plausible small length prefix, so the payload gets decoded.
            let n = rng.below(bytes.len() - 3) as u32;
            bytes[..4].copy_from_slice(&n.to_le_bytes());
        }
        let (mut peer, mut me) = duplex(1024);
        peer.write_all(&bytes).await.unwrap();
        drop(peer);
        loop {
            match read_reply(&mut me).await {
                Ok(Some(Reply::Piece { len, .. })) => {
                    if read_piece_body(&mut me, len, len).await.is_err() {
                        break;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
    }
}
