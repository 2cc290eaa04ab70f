//! What an upstream answers when it wants credentials: `WWW-Authenticate` challenges and the
//! token endpoint's JSON body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::time::{Duration, Instant};

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = std::str::from_utf8(data) {
        let _ = pollen_upstream::fuzzing::parse_challenge(h);
    }
    let now = Instant::now();
    if let Some(expires) = pollen_upstream::fuzzing::parse_token(data, now) {
        assert!(expires > now);
        assert!(expires <= now + Duration::from_secs(24 * 3600));
    }
});
