//! Every preheat message a peer can send: the request to fetch a blob and the progress and
//! result replies, read from framed streams; what is accepted writes back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen_fuzz::block_on;
use pollen_proto::{
    read_preheat_reply, read_preheat_request, write_preheat_reply, write_preheat_request,
};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    block_on(async {
        let mut r = rest;
        if mode % 2 == 0 {
            while let Ok(Some(req)) = read_preheat_request(&mut r).await {
                let mut buf = Vec::new();
                write_preheat_request(&mut buf, &req)
                    .await
                    .expect("it encodes");
                let back = read_preheat_request(&mut &buf[..]).await;
                assert_eq!(back.ok().flatten(), Some(req));
            }
        } else {
            while let Ok(Some(reply)) = read_preheat_reply(&mut r).await {
                let mut buf = Vec::new();
                write_preheat_reply(&mut buf, &reply)
                    .await
                    .expect("it encodes");
                let back = read_preheat_reply(&mut &buf[..]).await;
                assert_eq!(back.ok().flatten(), Some(reply));
            }
        }
    })
});
