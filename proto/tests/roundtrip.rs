//! Every message survives encode/decode, sync and over an async stream, and the wire bytes of
//! a few messages are pinned so an accidental format change fails loudly.

use pollen_oci::Digest;
use pollen_proto::*;
use tokio::io::{duplex, AsyncWriteExt};

fn blob(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 13 % 241) as u8).collect()
}

/// A blob of 3 pieces and a bit (64 KiB pieces), its geometry and map.
fn sample() -> (Vec<u8>, PieceGeometry, PieceMap) {
    let data = blob(3 * MIN_PIECE_SIZE as usize + 1000);
    let g = PieceGeometry::choose(data.len() as u64, Some(MIN_PIECE_SIZE)).unwrap();
    let map = PieceMap::of(Digest::of(&data), g, &data).unwrap();
    (data, g, map)
}

fn all_requests() -> Vec<Request> {
    vec![
        Request::Interest {
            digest: Digest::of(b"layer"),
        },
        Request::GetPieceMap,
        Request::GetPiece { index: 0 },
        Request::GetPiece {
            index: MAX_PIECES - 1,
        },
        Request::Cancel { index: 300 },
        Request::NotInterested,
        Request::Holding { slots: 0 },
        Request::Holding { slots: u32::MAX },
    ]
}

fn all_replies() -> Vec<Reply> {
    let (_, g, map) = sample();
    let mut partial = Bitfield::new(&g);
    partial.set(1).unwrap();
    let big = PieceGeometry::choose(MAX_BLOB_SIZE, None).unwrap();
    let big_map = PieceMap::new(Digest::of(b"big"), big, vec![[7; 32]; MAX_PIECES as usize]);
    vec![
        Reply::Have {
            geometry: g,
            bitfield: partial,
            complete: false,
            map_id: None,
        },
        Reply::Have {
            geometry: g,
            bitfield: Bitfield::full(&g),
            complete: true,
            map_id: Some(map.id()),
        },
        Reply::Have {
            geometry: big,
            bitfield: Bitfield::full(&big),
            complete: true,
            map_id: Some(PieceMapId([1; 32])),
        },
        Reply::HaveMore {
            indices: vec![2, 3],
        },
        Reply::HaveMore {
            indices: (0..MAX_HAVE_MORE as u32).map(|i| i * 16).collect(),
        },
        Reply::PieceMap(map.clone()),
        // The largest reply there is: it must fit in MAX_REPLY_FRAME.
        Reply::PieceMap(big_map.unwrap()),
        Reply::PieceHashes {
            first: 0,
            hashes: vec![],
        },
        Reply::PieceHashes {
            first: 1,
            hashes: map.hashes()[1..].to_vec(),
        },
        Reply::Piece {
            index: 3,
            len: 1000,
        },
        Reply::Piece {
            index: MAX_PIECES - 1,
            len: MAX_PIECE_SIZE,
        },
        Reply::Choked,
        Reply::Unchoked,
        Reply::Error {
            code: ErrorCode::UnknownBlob,
            message: "no such blob".into(),
        },
        Reply::Error {
            code: ErrorCode::BadRequest,
            message: String::new(),
        },
        Reply::Error {
            code: ErrorCode::Busy,
            message: "é".repeat(MAX_ERROR_MESSAGE / 2),
        },
        Reply::Error {
            code: ErrorCode::Internal,
            message: "disk".into(),
        },
    ]
}

#[test]
fn every_message_round_trips() {
    for req in all_requests() {
        let frame = encode_request(&req).unwrap();
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        assert!(len <= MAX_REQUEST_FRAME as usize);
        assert_eq!(decode_request(&frame[4..]).unwrap(), req);
    }
    for reply in all_replies() {
        let frame = encode_reply(&reply).unwrap();
        let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
        assert_eq!(len, frame.len() - 4);
        assert!(len <= MAX_REPLY_FRAME as usize);
        assert_eq!(decode_reply(&frame[4..]).unwrap(), reply);
    }
}

#[test]
fn wire_bytes_are_pinned() {
    let frame = |r: &Request| encode_request(r).unwrap();
    assert_eq!(frame(&Request::GetPiece { index: 5 }), [2, 0, 0, 0, 2, 5]);
    assert_eq!(
        frame(&Request::Cancel { index: 300 }),
        [4, 0, 0, 0, 3, 0xfb, 0x2c, 0x01]
    );
    assert_eq!(frame(&Request::NotInterested), [1, 0, 0, 0, 4]);
    assert_eq!(frame(&Request::Holding { slots: 6 }), [2, 0, 0, 0, 5, 6]);
    let d = Digest::of(b"");
    let mut interest = vec![33, 0, 0, 0, 0];
    interest.extend_from_slice(d.as_bytes());
    assert_eq!(frame(&Request::Interest { digest: d }), interest);

    let frame = |r: &Reply| encode_reply(r).unwrap();
    assert_eq!(
        frame(&Reply::Piece {
            index: 1,
            len: 65_536
        }),
        [7, 0, 0, 0, 4, 1, 0xfc, 0, 0, 1, 0]
    );
    assert_eq!(frame(&Reply::Choked), [1, 0, 0, 0, 5]);
    assert_eq!(frame(&Reply::Unchoked), [1, 0, 0, 0, 6]);
    let g = PieceGeometry::new(100, MIN_PIECE_SIZE).unwrap();
    let have = Reply::Have {
        geometry: g,
        bitfield: Bitfield::full(&g),
        complete: true,
        map_id: Some(PieceMapId([9; 32])),
    };
    let mut expected = vec![0, 100, 0xfc, 0, 0, 1, 0, 1, 1, 0x80, 1, 1];
    expected.extend_from_slice(&[9; 32]);
    assert_eq!(frame(&have)[4..], expected[..]);
    let err = Reply::Error {
        code: ErrorCode::Busy,
        message: "hi".into(),
    };
    assert_eq!(frame(&err)[4..], [7, 2, 2, b'h', b'i']);
}

#[test]
fn map_id_is_pinned() {
    // The id is compared across agents of different builds: it must never drift.
    let g = PieceGeometry::new(1, MIN_PIECE_SIZE).unwrap();
    let map = PieceMap::of(Digest::of(b"x"), g, b"x").unwrap();
    let mut canonical = b"pollen piece map v1\0".to_vec();
    canonical.extend_from_slice(Digest::of(b"x").as_bytes());
    canonical.extend_from_slice(&1u64.to_le_bytes());
    canonical.extend_from_slice(&MIN_PIECE_SIZE.to_le_bytes());
    canonical.extend_from_slice(&1u32.to_le_bytes());
    // The piece hash is BLAKE3 (the whole-blob digest stays SHA-256).
    canonical.extend_from_slice(blake3::hash(b"x").as_bytes());
    assert_eq!(map.id().0, *Digest::of(&canonical).as_bytes());
}

#[test]
fn error_constructor_truncates_at_a_char_boundary() {
    let long = "ü".repeat(MAX_ERROR_MESSAGE);
    let Reply::Error { message, .. } = Reply::error(ErrorCode::Internal, long) else {
        panic!("not an error reply");
    };
    assert!(message.len() <= MAX_ERROR_MESSAGE && message.len() >= MAX_ERROR_MESSAGE - 1);
    assert!(message.chars().all(|c| c == 'ü'));
    let reply = Reply::error(ErrorCode::Busy, "short");
    assert_eq!(
        reply,
        Reply::Error {
            code: ErrorCode::Busy,
            message: "short".into()
        }
    );
    assert!(encode_reply(&Reply::error(ErrorCode::Internal, "x".repeat(10_000))).is_ok());
}

#[test]
fn sending_a_broken_message_is_a_local_error() {
    let long = Reply::Error {
        code: ErrorCode::Internal,
        message: "x".repeat(MAX_ERROR_MESSAGE + 1),
    };
    for bad in [
        long,
        Reply::HaveMore { indices: vec![] },
        Reply::Piece { index: 0, len: 0 },
        Reply::Piece {
            index: 0,
            len: MAX_PIECE_SIZE + 1,
        },
    ] {
        let err = encode_reply(&bad).unwrap_err();
        assert!(matches!(err, ProtoError::Encode(_)), "{bad:?}: {err}");
        assert!(!err.is_peer_fault());
    }
    let err = encode_request(&Request::GetPiece { index: MAX_PIECES }).unwrap_err();
    assert!(matches!(err, ProtoError::Encode(_)));
}

/// A whole session over an in-memory stream: the order of PROTOCOL.md, pieces pipelined, one
/// piece written by header + raw body as an uploader streaming from disk would.
#[tokio::test]
async fn session_over_a_stream() {
    let (data, g, map) = sample();
    let (mut down, mut up) = duplex(64 * 1024);
    let digest = *map.digest();

    let uploader = {
        let data = data.clone();
        let map = map.clone();
        tokio::spawn(async move {
            let mut requests = Vec::new();
            while let Some(req) = read_request(&mut up).await.unwrap() {
                match &req {
                    Request::Interest { .. } => {
                        let have = Reply::Have {
                            geometry: g,
                            bitfield: Bitfield::full(&g),
                            complete: true,
                            map_id: Some(map.id()),
                        };
                        write_reply(&mut up, &have).await.unwrap();
                        write_reply(&mut up, &Reply::Unchoked).await.unwrap();
                    }
                    Request::GetPieceMap => {
                        write_reply(&mut up, &Reply::PieceMap(map.clone()))
                            .await
                            .unwrap();
                    }
                    Request::GetPiece { index } => {
                        let r = g.range_of(*index).unwrap();
                        let body = &data[r.start as usize..r.end as usize];
                        if *index == 0 {
                            write_piece_header(&mut up, 0, body.len() as u32)
                                .await
                                .unwrap();
                            up.write_all(body).await.unwrap();
                            up.flush().await.unwrap();
                        } else {
                            write_piece(&mut up, *index, body).await.unwrap();
                        }
                    }
                    Request::Cancel { .. } | Request::Holding { .. } => {}
                    Request::NotInterested => break,
                }
                requests.push(req);
            }
            requests
        })
    };

    write_request(&mut down, &Request::Interest { digest })
        .await
        .unwrap();
    let Some(Reply::Have {
        geometry,
        bitfield,
        complete,
        map_id,
    }) = read_reply(&mut down).await.unwrap()
    else {
        panic!("expected Have");
    };
    assert!(complete && bitfield.is_complete());
    assert_eq!(geometry, g);
    assert_eq!(read_reply(&mut down).await.unwrap(), Some(Reply::Unchoked));

    write_request(&mut down, &Request::GetPieceMap)
        .await
        .unwrap();
    let Some(Reply::PieceMap(got)) = read_reply(&mut down).await.unwrap() else {
        panic!("expected PieceMap");
    };
    assert_eq!(Some(got.id()), map_id);
    assert_eq!(got.digest(), &digest);

    let mut have = Bitfield::new(&geometry);
    let mut assembled = vec![0u8; data.len()];
    let wanted: Vec<u32> = have.iter_missing().collect();
    for &index in &wanted {
        write_request(&mut down, &Request::GetPiece { index })
            .await
            .unwrap();
    }
    for _ in &wanted {
        let Some(Reply::Piece { index, len }) = read_reply(&mut down).await.unwrap() else {
            panic!("expected Piece");
        };
        let expected = geometry.len_of(index).unwrap();
        let body = read_piece_body(&mut down, len, expected).await.unwrap();
        assert!(got.verify_piece(index, &body));
        let r = geometry.range_of(index).unwrap();
        assembled[r.start as usize..r.end as usize].copy_from_slice(&body);
        assert!(have.set(index).unwrap());
    }
    assert!(have.is_complete());
    assert_eq!(Digest::of(&assembled), digest);

    write_request(&mut down, &Request::Cancel { index: 0 })
        .await
        .unwrap();
    write_request(&mut down, &Request::NotInterested)
        .await
        .unwrap();
    let seen = uploader.await.unwrap();
    assert_eq!(seen.len(), 2 + wanted.len() + 1);
    // The uploader dropped its end: a clean end of stream between frames.
    assert_eq!(read_reply(&mut down).await.unwrap(), None);
}

#[tokio::test]
async fn every_message_round_trips_over_a_stream() {
    let (mut a, mut b) = duplex(4096);
    let writer = tokio::spawn(async move {
        for req in all_requests() {
            write_request(&mut a, &req).await.unwrap();
        }
        for reply in all_replies() {
            write_reply(&mut a, &reply).await.unwrap();
        }
    });
    for req in all_requests() {
        assert_eq!(read_request(&mut b).await.unwrap(), Some(req));
    }
    for reply in all_replies() {
        assert_eq!(read_reply(&mut b).await.unwrap(), Some(reply));
    }
    writer.await.unwrap();
    assert_eq!(read_reply(&mut b).await.unwrap(), None);
}
