//! The mirror's `Range` parser: a client's header against an object of a given size. Whatever
//! it answers must be a range inside the object.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen_agent::fuzzing::{parse_range, Range};

fuzz_target!(|data: &[u8]| {
    let Some((size, header)) = data.split_first_chunk::<8>() else {
        return;
    };
    // Small sizes most of the time, where the edge cases are; any u64 now and then.
    let size = match size[0] % 4 {
        0 => u64::from_le_bytes(*size),
        _ => u64::from(size[1]),
    };
    let header = std::str::from_utf8(header).ok();
    match parse_range(header, size) {
        Range::Full | Range::Unsatisfiable => {}
        Range::Partial { start, end } => {
            assert!(start <= end, "{start}-{end}");
            assert!(end < size, "{end} past {size}");
        }
    }
});
