//! Every tracker message a peer can send (join, progress, resolve, sized, time; assignments
//! and peer lists back), decoded and read from framed streams.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen_fuzz::block_on;
use pollen_proto::{
    decode_tracker_reply, decode_tracker_request, encode_tracker_reply, encode_tracker_request,
    read_tracker_reply, read_tracker_request,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => {
            if let Ok(req) = decode_tracker_request(rest) {
                let again = encode_tracker_request(&req).expect("a decoded request encodes");
                assert_eq!(
                    decode_tracker_request(again.get(4..).unwrap_or_default()).ok(),
                    Some(req)
                );
            }
        }
        1 => {
            if let Ok(reply) = decode_tracker_reply(rest) {
                let again = encode_tracker_reply(&reply).expect("a decoded reply encodes");
                assert_eq!(
                    decode_tracker_reply(again.get(4..).unwrap_or_default()).ok(),
                    Some(reply)
                );
            }
        }
        2 => block_on(async {
            let mut r = rest;
            while let Ok(Some(_)) = read_tracker_request(&mut r).await {}
        }),
        _ => block_on(async {
            let mut r = rest;
            while let Ok(Some(_)) = read_tracker_reply(&mut r).await {}
        }),
    }
});
