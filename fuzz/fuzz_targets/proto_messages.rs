//! Every piece-protocol message a peer can send: request and reply payloads (bincode), and
//! the framed streams they arrive on, piece bodies included.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen_fuzz::block_on;
use pollen_proto::{
    decode_reply, decode_request, encode_reply, encode_request, read_piece_body, read_reply,
    read_request, Reply, MAX_PIECE_SIZE,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(req) = decode_request(rest) {
                let again = encode_request(&req).expect("a decoded request encodes");
                assert_eq!(
                    decode_request(again.get(4..).unwrap_or_default()).ok(),
                    Some(req)
                );
            }
        }
        1 => {
            if let Ok(reply) = decode_reply(rest) {
                let again = encode_reply(&reply).expect("a decoded reply encodes");
                assert_eq!(
                    decode_reply(again.get(4..).unwrap_or_default()).ok(),
                    Some(reply)
                );
            }
        }
        2 => block_on(async {
            let mut r = rest;
            while let Ok(Some(_)) = read_request(&mut r).await {}
        }),
        _ => block_on(async {
            let mut r = rest;
            while let Ok(Some(reply)) = read_reply(&mut r).await {
                if let Reply::Piece { len, .. } = reply {
                    // What the geometry would expect: the same length, or another one.
                    let expected = if len <= 1 << 20 {
                        len
                    } else {
                        len % MAX_PIECE_SIZE
                    };
                    match read_piece_body(&mut r, len, expected).await {
                        Ok(body) => assert_eq!(body.len() as u64, u64::from(len)),
                        Err(_) => break,
                    }
                }
            }
        }),
    }
});
