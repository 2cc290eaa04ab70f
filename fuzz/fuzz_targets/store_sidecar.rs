//! A complete blob's `.pieces` sidecar as the store reads it back at start (the wire frame
//! of its piece map): refused unless it is the map of the blob it sits beside.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen_oci::Digest;
use pollen_store::fuzzing::parse_piece_map;

fuzz_target!(|data: &[u8]| {
    // The digest the file sits beside: the one the frame names (bytes 6..38 of a well-formed
    // frame: prefix, tag, digest), so a valid frame gets past that check.
    let named = data
        .get(5..37)
        .map(|b| b.iter().map(|x| format!("{x:02x}")).collect::<String>())
        .and_then(|h| Digest::from_hex(&h).ok())
        .unwrap_or_else(|| Digest::of(b""));
    for digest in [named, Digest::of(b"")] {
        if let Some(map) = parse_piece_map(data, &digest) {
            assert_eq!(*map.digest(), digest);
            assert_eq!(map.hashes().len() as u64, u64::from(map.geometry().count()));
        }
    }
});
