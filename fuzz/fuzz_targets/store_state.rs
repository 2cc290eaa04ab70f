//! What the store reads back at start: a partial download's `state.json` (geometry, piece
//! hashes, pieces present, pieces produced) and a complete blob's `.pieces` sidecar. A
//! damaged or hostile file must be refused or yield a state that keeps every invariant.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen_store::fuzzing::parse_state;

fuzz_target!(|data: &[u8]| {
    if let Some((map, have, produced)) = parse_state(data) {
        let count = map.geometry().count();
        assert_eq!(have.count(), count);
        assert_eq!(produced.count(), count);
        assert_eq!(map.known().count(), count);
        for i in map.known().iter_ones() {
            assert!(map.hash(i).is_some());
        }
    }
});
