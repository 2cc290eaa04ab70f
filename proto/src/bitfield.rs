//! Which pieces of a blob a peer has.

use crate::error::{ProtoError, Violation};
use crate::geometry::PieceGeometry;
use crate::MAX_PIECES;
use serde::{Deserialize, Serialize};

/// A set of piece indices `0..count`, one bit per piece, sent in `Have`.
///
/// Bit `i` is bit `7 - i % 8` of byte `i / 8` (most significant bit first, as in BitTorrent).
/// The encoding is canonical: exactly `ceil(count / 8)` bytes and the unused low bits of the
/// last byte zero. Decoding refuses anything else, so two equal sets always encode the same
/// and stray bits can never claim pieces past the end. `count <= MAX_PIECES` (8 KiB of bits).
/// `Default` is the set of no pieces at all (a blob whose geometry is not known yet).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "BitfieldWire")]
pub struct Bitfield {
    count: u32,
    bits: Vec<u8>,
}

/// The unvalidated wire form, checked by `TryFrom` on decode.
#[derive(Deserialize)]
struct BitfieldWire {
    count: u32,
    #[serde(deserialize_with = "bits")]
    bits: Vec<u8>,
}

/// At most the bytes of a `MAX_PIECES` bitfield.
fn bits<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    crate::serde_util::bounded_vec(d, byte_len(MAX_PIECES))
}

impl TryFrom<BitfieldWire> for Bitfield {
    type Error = Violation;
    fn try_from(w: BitfieldWire) -> Result<Self, Violation> {
        Ok(Bitfield::from_bytes(w.count, w.bits)?)
    }
}

fn byte_len(count: u32) -> usize {
    // count <= MAX_PIECES, so this is at most 8 KiB.
    count.div_ceil(8) as usize
}

impl Bitfield {
    /// An empty set for the pieces of `geometry` (an agent that has nothing yet).
    pub fn new(geometry: &PieceGeometry) -> Bitfield {
        let count = geometry.count();
        Bitfield {
            count,
            bits: vec![0; byte_len(count)],
        }
    }

    /// A full set for the pieces of `geometry` (a seed).
    pub fn full(geometry: &PieceGeometry) -> Bitfield {
        let mut b = Bitfield::new(geometry);
        b.bits.fill(0xff);
        b.clear_trailing_bits();
        b
    }

    /// Parses the canonical byte form, refusing a wrong length, stray trailing bits and a
    /// `count` above `MAX_PIECES`.
    pub fn from_bytes(count: u32, bits: Vec<u8>) -> Result<Bitfield, ProtoError> {
        if count > MAX_PIECES {
            return Err(ProtoError::invalid(format_args!(
                "bitfield of {count} pieces exceeds {MAX_PIECES}"
            )));
        }
        if bits.len() != byte_len(count) {
            return Err(ProtoError::invalid(format_args!(
                "bitfield of {count} pieces has {} bytes, expected {}",
                bits.len(),
                byte_len(count)
            )));
        }
        let b = Bitfield { count, bits };
        if b.trailing_mask() & b.bits.last().copied().unwrap_or(0) != 0 {
            return Err(ProtoError::invalid(
                "bitfield has bits set past its last piece",
            ));
        }
        Ok(b)
    }

    /// Bits of the last byte that lie past `count` (zero when `count` is a multiple of 8).
    fn trailing_mask(&self) -> u8 {
        match self.count % 8 {
            0 => 0,
            used => 0xff >> used,
        }
    }

    fn clear_trailing_bits(&mut self) {
        let mask = self.trailing_mask();
        if let Some(last) = self.bits.last_mut() {
            *last &= !mask;
        }
    }

    /// The canonical bytes (see the type's documentation).
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// How many pieces the set is about (not how many it holds: see [`Self::count_ones`]).
    pub fn count(&self) -> u32 {
        self.count
    }

    /// Whether piece `index` is in the set; false for an index past the end.
    #[inline]
    pub fn get(&self, index: u32) -> bool {
        if index >= self.count {
            return false;
        }
        let bit = 0x80u8 >> (index % 8);
        self.bits
            .get((index / 8) as usize)
            .is_some_and(|b| b & bit != 0)
    }

    /// Adds piece `index`; true if it was not there before. An index past the end is
    /// [`ProtoError::Invalid`], so an index a peer announced (`HaveMore`) can be passed
    /// straight in and a bad one blamed on the peer.
    #[inline]
    pub fn set(&mut self, index: u32) -> Result<bool, ProtoError> {
        let count = self.count;
        let byte = match self.bits.get_mut((index / 8) as usize) {
            Some(byte) if index < count => byte,
            _ => return Err(out_of_range(index, count)),
        };
        let bit = 0x80u8 >> (index % 8);
        let was_set = *byte & bit != 0;
        *byte |= bit;
        Ok(!was_set)
    }

    /// How many pieces are in the set.
    pub fn count_ones(&self) -> u32 {
        // Trailing bits are always zero, so every set bit is a piece.
        self.bits.iter().map(|b| b.count_ones()).sum()
    }

    /// True when every piece is in the set (also for an empty blob's zero pieces).
    pub fn is_complete(&self) -> bool {
        self.count_ones() == self.count
    }

    /// Indices in the set, in ascending order.
    pub fn iter_ones(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter_bits(0)
    }

    /// Indices not in the set, in ascending order: the pieces still to fetch.
    pub fn iter_missing(&self) -> impl Iterator<Item = u32> + '_ {
        self.iter_bits(0xff)
    }

    /// Indices whose bit is the opposite of `flip`'s (0: set bits, 0xff: clear ones), a byte
    /// at a time: a nearly full or nearly empty set of 65,536 pieces is skipped in 8,192
    /// steps, and the picker asks for the first missing piece on every request.
    fn iter_bits(&self, flip: u8) -> impl Iterator<Item = u32> + '_ {
        let count = self.count;
        self.bits
            .iter()
            .enumerate()
            .filter_map(move |(at, b)| {
                Some((u32::try_from(at).ok()?, b ^ flip)).filter(|x| x.1 != 0)
            })
            .flat_map(|(at, mut b)| {
                std::iter::from_fn(move || {
                    let bit = (b != 0).then(|| b.leading_zeros())?;
                    b &= !(0x80u8 >> bit);
                    Some(at.saturating_mul(8).saturating_add(bit))
                })
            })
            .take_while(move |i| *i < count)
    }
}

/// The error for a piece index past the end: kept out of line, so the hot [`Bitfield::set`]
/// inlines to a few instructions.
#[cold]
fn out_of_range(index: u32, count: u32) -> ProtoError {
    ProtoError::invalid(format_args!("piece index {index} out of range 0..{count}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MIN_PIECE_SIZE;

    fn geometry(pieces: u32) -> PieceGeometry {
        PieceGeometry::new(
            u64::from(pieces) * u64::from(MIN_PIECE_SIZE),
            MIN_PIECE_SIZE,
        )
        .unwrap()
    }

    #[test]
    fn set_get_count() {
        let mut b = Bitfield::new(&geometry(11));
        assert_eq!(b.as_bytes().len(), 2);
        assert_eq!(b.count_ones(), 0);
        assert!(!b.is_complete());
        assert!(b.set(0).unwrap(), "newly set");
        assert!(!b.set(0).unwrap(), "already set");
        assert!(b.set(10).unwrap());
        assert!(b.set(11).is_err());
        assert!(b.set(u32::MAX).is_err());
        assert!(b.get(0) && b.get(10) && !b.get(5) && !b.get(11) && !b.get(u32::MAX));
        assert_eq!(b.as_bytes(), &[0x80, 0x20]);
        assert_eq!(b.count_ones(), 2);
        assert_eq!(b.iter_ones().collect::<Vec<_>>(), vec![0, 10]);
        assert_eq!(b.iter_missing().count(), 9);
        for i in 0..11 {
            b.set(i).unwrap();
        }
        assert!(b.is_complete());
        assert_eq!(b, Bitfield::full(&geometry(11)));
        assert_eq!(b.iter_missing().next(), None);
    }

    /// The byte-at-a-time iterators against `get`, bit by bit, on patterns that fill, empty
    /// and split bytes, with counts on and off byte edges.
    #[test]
    fn iterators_agree_with_get() {
        for count in [1, 7, 8, 9, 16, 17, 40] {
            for pattern in [
                0u64,
                u64::MAX,
                0x5555_5555_5555,
                0xff00_f0f0_0ff1,
                0x8000_0001,
            ] {
                let mut b = Bitfield::new(&geometry(count));
                for i in (0..count).filter(|i| pattern >> i & 1 == 1) {
                    b.set(i).unwrap();
                }
                let ones: Vec<u32> = (0..count).filter(|&i| b.get(i)).collect();
                let missing: Vec<u32> = (0..count).filter(|&i| !b.get(i)).collect();
                assert_eq!(
                    b.iter_ones().collect::<Vec<_>>(),
                    ones,
                    "{count} {pattern:x}"
                );
                assert_eq!(
                    b.iter_missing().collect::<Vec<_>>(),
                    missing,
                    "{count} {pattern:x}"
                );
            }
        }
    }

    #[test]
    fn empty_and_byte_aligned() {
        let b = Bitfield::new(&geometry(0));
        assert!(b.as_bytes().is_empty() && b.is_complete());
        let full = Bitfield::full(&geometry(16));
        assert_eq!(full.as_bytes(), &[0xff, 0xff]);
        assert_eq!(full.count_ones(), 16);
        let full = Bitfield::full(&geometry(9));
        assert_eq!(full.as_bytes(), &[0xff, 0x80]);
    }

    #[test]
    fn strict_decoding() {
        assert!(Bitfield::from_bytes(11, vec![0xff, 0xe0]).is_ok());
        // Wrong lengths.
        assert!(Bitfield::from_bytes(11, vec![0xff]).is_err());
        assert!(Bitfield::from_bytes(11, vec![0xff, 0, 0]).is_err());
        assert!(Bitfield::from_bytes(0, vec![0]).is_err());
        // A stray bit past piece 10.
        assert!(Bitfield::from_bytes(11, vec![0, 0x10]).is_err());
        assert!(Bitfield::from_bytes(9, vec![0, 0x01]).is_err());
        assert!(Bitfield::from_bytes(16, vec![0xff, 0xff]).is_ok());
        // Too many pieces, even with a consistent length.
        let n = MAX_PIECES + 8;
        assert!(Bitfield::from_bytes(n, vec![0; byte_len(n)]).is_err());
        let max = Bitfield::from_bytes(MAX_PIECES, vec![0; byte_len(MAX_PIECES)]).unwrap();
        assert_eq!(max.count(), MAX_PIECES);
    }
}
