//! Hostile input: everything a peer can send must end in an error that blames the peer (or an
//! I/O error for a cut stream), never a panic and never an allocation the peer chose.
//!
//! Invalid-but-well-formed messages are built with `Evil*` enums that mirror the wire layout
//! (same variant order, same field order) without the validation, encoded with the documented
//! bincode configuration.

use pollen_oci::Digest;
use pollen_proto::*;
use serde::Serialize;

mod common;
use common::Rng;

/// The documented wire configuration (PROTOCOL.md): little endian, varint, no limit needed to
/// encode.
fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let config = bincode::config::standard()
        .with_little_endian()
        .with_variable_int_encoding();
    bincode::serde::encode_to_vec(msg, config).unwrap()
}

// Every variant is there to keep the tags aligned with the real enums, used or not.
#[allow(dead_code)]
#[derive(Serialize)]
enum EvilReply {
    Have {
        geometry: (u64, u32),
        bitfield: (u32, Vec<u8>),
        complete: bool,
        map: Option<[u8; 32]>,
    },
    HaveMore {
        indices: Vec<u32>,
    },
    PieceMap {
        digest: [u8; 32],
        geometry: (u64, u32),
        hashes: Vec<[u8; 32]>,
    },
    PieceHashes {
        first: u32,
        hashes: Vec<[u8; 32]>,
    },
    Piece {
        index: u32,
        len: u32,
    },
    Choked,
    Unchoked,
    Error {
        code: u32,
        message: String,
    },
}

#[allow(dead_code)]
#[derive(Serialize)]
enum EvilRequest {
    Interest { digest: [u8; 32] },
    GetPieceMap,
    GetPiece { index: u32 },
    Cancel { index: u32 },
    NotInterested,
    Holding { slots: u32 },
    Extra,
}

fn invalid_reply(evil: &EvilReply) -> String {
    match decode_reply(&encode(evil)) {
        Err(ProtoError::Invalid(msg)) => msg,
        other => panic!("expected Invalid, got {other:?}"),
    }
}

const PS: u32 = MIN_PIECE_SIZE;

#[test]
fn the_mirror_encodes_like_the_real_thing() {
    let g = PieceGeometry::new(100, PS).unwrap();
    let real = Reply::Have {
        geometry: g,
        bitfield: Bitfield::full(&g),
        complete: true,
        map_id: Some(PieceMapId([3; 32])),
    };
    let evil = EvilReply::Have {
        geometry: (100, PS),
        bitfield: (1, vec![0x80]),
        complete: true,
        map: Some([3; 32]),
    };
    assert_eq!(encode_reply(&real).unwrap()[4..], encode(&evil)[..]);
    assert_eq!(decode_reply(&encode(&evil)).unwrap(), real);
}

#[test]
fn bitfields_with_wrong_length_or_stray_bits() {
    let have = |count: u32, bits: Vec<u8>| EvilReply::Have {
        geometry: (u64::from(count) * u64::from(PS), PS),
        bitfield: (count, bits),
        complete: false,
        map: None,
    };
    assert!(decode_reply(&encode(&have(11, vec![0xff, 0xe0]))).is_ok());
    invalid_reply(&have(11, vec![0xff]));
    invalid_reply(&have(11, vec![0xff, 0xe0, 0]));
    invalid_reply(&have(11, vec![0xff, 0xf0]));
    invalid_reply(&have(9, vec![0, 0x01]));
    invalid_reply(&have(0, vec![0]));
    // The bitfield is fine on its own but does not match the geometry.
    let mismatch = EvilReply::Have {
        geometry: (3 * u64::from(PS), PS),
        bitfield: (4, vec![0]),
        complete: false,
        map: None,
    };
    assert!(invalid_reply(&mismatch).contains("geometry"));
    // "complete" needs every piece and a map id.
    let lying = EvilReply::Have {
        geometry: (3 * u64::from(PS), PS),
        bitfield: (3, vec![0xc0]),
        complete: true,
        map: Some([0; 32]),
    };
    invalid_reply(&lying);
    let no_map = EvilReply::Have {
        geometry: (3 * u64::from(PS), PS),
        bitfield: (3, vec![0xe0]),
        complete: true,
        map: None,
    };
    invalid_reply(&no_map);
}

#[test]
fn geometries_out_of_range() {
    for (size, ps) in [
        (10, 0),
        (10, PS - 1),
        (10, MAX_PIECE_SIZE + 1),
        (u64::MAX, MAX_PIECE_SIZE),
    ] {
        let evil = EvilReply::Have {
            geometry: (size, ps),
            bitfield: (0, vec![]),
            complete: false,
            map: None,
        };
        invalid_reply(&evil);
    }
}

#[test]
fn piece_map_hash_count_must_match_geometry() {
    let map = |n: usize| EvilReply::PieceMap {
        digest: [1; 32],
        geometry: (3 * u64::from(PS) + 1, PS),
        hashes: vec![[2; 32]; n],
    };
    assert!(decode_reply(&encode(&map(4))).is_ok());
    for n in [0, 3, 5] {
        assert!(invalid_reply(&map(n)).contains("hashes"), "{n}");
    }
}

#[test]
fn other_replies_out_of_bounds() {
    invalid_reply(&EvilReply::HaveMore { indices: vec![] });
    invalid_reply(&EvilReply::HaveMore {
        indices: vec![1; MAX_HAVE_MORE + 1],
    });
    invalid_reply(&EvilReply::HaveMore {
        indices: vec![1, MAX_PIECES],
    });
    invalid_reply(&EvilReply::PieceHashes {
        first: MAX_PIECES,
        hashes: vec![[0; 32]],
    });
    invalid_reply(&EvilReply::PieceHashes {
        first: u32::MAX,
        hashes: vec![[0; 32]],
    });
    invalid_reply(&EvilReply::Piece { index: 0, len: 0 });
    invalid_reply(&EvilReply::Piece {
        index: 0,
        len: MAX_PIECE_SIZE + 1,
    });
    invalid_reply(&EvilReply::Piece {
        index: MAX_PIECES,
        len: 1,
    });
    invalid_reply(&EvilReply::Error {
        code: 0,
        message: "x".repeat(MAX_ERROR_MESSAGE + 1),
    });
    // Unknown error code, unknown variant, bad UTF-8, trailing bytes: undecodable.
    let decode_err = |bytes: &[u8]| match decode_reply(bytes) {
        Err(e @ ProtoError::Decode(_)) => assert!(e.is_peer_fault()),
        other => panic!("expected Decode, got {other:?}"),
    };
    decode_err(&encode(&EvilReply::Error {
        code: 4,
        message: String::new(),
    }));
    decode_err(&[8]);
    decode_err(&[0xfb, 0xff, 0xff]);
    decode_err(&[7, 0, 2, 0xff, 0xfe]);
    decode_err(&[5, 0]);
    decode_err(&[]);
}

#[test]
fn requests_out_of_bounds() {
    for evil in [
        EvilRequest::GetPiece { index: MAX_PIECES },
        EvilRequest::Cancel { index: u32::MAX },
    ] {
        assert!(matches!(
            decode_request(&encode(&evil)),
            Err(ProtoError::Invalid(_))
        ));
    }
    assert!(matches!(
        decode_request(&encode(&EvilRequest::Extra)),
        Err(ProtoError::Decode(_))
    ));
    assert!(decode_request(&encode(&EvilRequest::Interest { digest: [0; 32] })).is_ok());
    let mut interest = encode(&EvilRequest::Interest { digest: [0; 32] });
    interest.pop();
    assert!(matches!(
        decode_request(&interest),
        Err(ProtoError::Decode(_))
    ));
    // A payload bigger than any request is refused by size alone.
    let big = vec![0u8; MAX_REQUEST_FRAME as usize + 1];
    assert!(matches!(
        decode_request(&big),
        Err(ProtoError::FrameTooLarge { .. })
    ));
}

#[test]
fn inner_lengths_cannot_claim_more_than_the_frame() {
    // An Error whose string claims 2^60 bytes: refused by the decode limit, not allocated.
    let mut bytes = vec![7, 0, 0xfd];
    bytes.extend_from_slice(&(1u64 << 60).to_le_bytes());
    assert!(matches!(decode_reply(&bytes), Err(ProtoError::Decode(_))));
    // A HaveMore claiming u64::MAX indices, with none following: refused by its own bound
    // before anything is allocated.
    let mut bytes = vec![1, 0xfd];
    bytes.extend_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(decode_reply(&bytes), Err(ProtoError::Invalid(_))));
    // Declared within the bound but the elements are missing.
    assert!(matches!(
        decode_reply(&[1, 3, 1]),
        Err(ProtoError::Decode(_))
    ));
    // A piece map whose hash vector claims 2^32 entries.
    let mut bytes = encode(&EvilReply::PieceMap {
        digest: [0; 32],
        geometry: (0, PS),
        hashes: vec![],
    });
    bytes.pop();
    bytes.push(0xfd);
    bytes.extend_from_slice(&(1u64 << 32).to_le_bytes());
    assert!(decode_reply(&bytes).unwrap_err().is_peer_fault());
}

fn valid_payloads() -> Vec<Vec<u8>> {
    let g = PieceGeometry::new(5 * u64::from(PS) + 3, PS).unwrap();
    let map = PieceMap::new(Digest::of(b"z"), g, vec![[5; 32]; 6]).unwrap();
    let mut some = Bitfield::new(&g);
    some.set(2).unwrap();
    let replies = [
        Reply::Have {
            geometry: g,
            bitfield: some,
            complete: false,
            map_id: Some(map.id()),
        },
        Reply::HaveMore {
            indices: vec![1, 4, 300],
        },
        Reply::PieceMap(map),
        Reply::PieceHashes {
            first: 2,
            hashes: vec![[1; 32]; 2],
        },
        Reply::Piece { index: 4, len: 3 },
        Reply::Error {
            code: ErrorCode::Busy,
            message: "later".into(),
        },
    ];
    let requests = [
        Request::Interest {
            digest: Digest::of(b"z"),
        },
        Request::GetPiece {
            index: 70_000 - 10_000,
        },
        Request::Cancel { index: 3 },
    ];
    let mut out: Vec<Vec<u8>> = replies
        .iter()
        .map(|r| encode_reply(r).unwrap()[4..].to_vec())
        .collect();
    out.extend(
        requests
            .iter()
            .map(|r| encode_request(r).unwrap()[4..].to_vec()),
    );
    out
}

#[test]
fn garbage_never_panics() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let seeds = valid_payloads();
    let (mut ok, mut refused) = (0, 0);
    for case in 0..20_000 {
        let bytes: Vec<u8> = if case % 2 == 0 {
            // Pure noise, short and long.
            let len = if case % 10 == 0 {
                rng.below(5000)
            } else {
                rng.below(64)
            };
            (0..len).map(|_| rng.next() as u8).collect()
        } else {
            // A valid message with a few bytes flipped, cut or appended: reaches deeper.
            let mut b = seeds[rng.below(seeds.len())].clone();
            for _ in 0..1 + rng.below(4) {
                match rng.below(4) {
                    0 | 1 if !b.is_empty() => {
                        let i = rng.below(b.len());
                        b[i] ^= 1 << rng.below(8);
                    }
                    2 if !b.is_empty() => b.truncate(rng.below(b.len())),
                    _ => b.push(rng.next() as u8),
                }
            }
            b
        };
        for result in [
            decode_reply(&bytes).map(drop),
            decode_request(&bytes).map(drop),
        ] {
            match result {
                Ok(()) => ok += 1,
                Err(e) => {
                    assert!(e.is_peer_fault(), "case {case}: {e}");
                    refused += 1;
                }
            }
        }
    }
    assert!(refused > 30_000, "{ok} accepted, {refused} refused");
}
