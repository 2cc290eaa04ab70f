//! Piece geometries, bitfields and piece maps built from peer-supplied numbers: a `Have`'s
//! geometry and bitfield, `HaveMore` indices, `PieceHashes` ranges inserted into a growing map,
//! and pieces checked against it. Invariants, not just "no panic".
#![no_main]

use libfuzzer_sys::fuzz_target;
use pollen_fuzz::Input;
use pollen_oci::Digest;
use pollen_proto::{Bitfield, PartialPieceMap, PieceGeometry, PieceMap, MIN_PIECE_SIZE};

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let size = match input.u8() % 4 {
        0 => input.u64(),
        1 => u64::from(input.u32()),
        _ => u64::from(input.u16()) * 1024 + u64::from(input.u16()),
    };
    let piece_size = match input.u8() % 3 {
        0 => input.u32(),
        _ => MIN_PIECE_SIZE << (input.u8() % 11),
    };
    let Ok(geometry) = PieceGeometry::new(size, piece_size) else {
        return;
    };
    let count = geometry.count();
    assert_eq!(
        u64::from(count),
        size.div_ceil(u64::from(piece_size)),
        "{geometry:?}"
    );
    let digest = Digest::of(&size.to_le_bytes());
    let mut map = PartialPieceMap::new(digest, geometry);
    let mut bits = Bitfield::new(&geometry);
    while !input.is_empty() {
        match input.u8() % 6 {
            0 => {
                let index = input.u32() % count.saturating_add(2).max(1);
                match geometry.range_of(index) {
                    Some(r) => {
                        assert!(index < count && r.end <= size && r.start < r.end);
                        assert_eq!(geometry.index_at(r.start), Some(index));
                        assert_eq!(Some(r.end - r.start), geometry.len_of(index).map(u64::from));
                    }
                    None => assert!(index >= count),
                }
            }
            1 => {
                let offset = input.u64() % size.saturating_add(2).max(1);
                match geometry.index_at(offset) {
                    Some(i) => assert!(geometry.range_of(i).is_some_and(|r| r.contains(&offset))),
                    None => assert!(offset >= size),
                }
            }
            2 => {
                let n = usize::from(input.u16());
                let claimed = input.u32();
                let bytes = input.bytes(n).to_vec();
                if let Ok(b) = Bitfield::from_bytes(claimed, bytes) {
                    assert_eq!(b.count(), claimed);
                    assert!(b.count_ones() <= b.count());
                    assert!(b.iter_ones().all(|i| i < claimed && b.get(i)));
                    assert!(!b.get(claimed));
                    assert_eq!(
                        b.iter_missing().count() as u64 + u64::from(b.count_ones()),
                        u64::from(claimed)
                    );
                }
            }
            3 => {
                let index = input.u32() % count.saturating_add(2).max(1);
                let was = bits.get(index);
                match bits.set(index) {
                    Ok(newly) => assert!(index < count && newly != was && bits.get(index)),
                    Err(_) => assert!(index >= count),
                }
            }
            4 => {
                let first = input.u32() % count.saturating_add(2).max(1);
                let n = usize::from(input.u8() % 8);
                let hashes: Vec<[u8; 32]> = (0..n).map(|_| [input.u8(); 32]).collect();
                let before = map.known().count_ones();
                match map.insert(first, &hashes) {
                    Ok(()) => {
                        for (i, h) in (first..).zip(&hashes) {
                            assert_eq!(map.hash(i), Some(h));
                        }
                    }
                    Err(_) => assert_eq!(map.known().count_ones(), before),
                }
            }
            _ => {
                let index = input.u32() % count.saturating_add(2).max(1);
                let len = usize::from(input.u16());
                let body = input.bytes(len);
                if map.verify_piece(index, body) {
                    assert_eq!(geometry.len_of(index).map(|l| l as usize), Some(body.len()));
                }
            }
        }
    }
    if let Ok(full) = map.finish() {
        assert_eq!(full.hashes().len() as u64, u64::from(count));
        assert!(PieceMap::new(digest, geometry, full.hashes().to_vec()).is_ok());
    }
});
