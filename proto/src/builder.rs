//! Building a piece map from a blob's bytes as they stream in from the upstream.

use crate::geometry::PieceGeometry;
use crate::piecemap::{PieceHasher, PieceMap};
use pollen_oci::Digest;

/// Why a builder could not produce a map: the bytes fed did not add up to the geometry's size.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    /// More bytes than the blob's size were fed (nothing of the offending chunk was taken).
    #[error("more than {size} bytes fed to the piece map builder")]
    TooManyBytes { size: u64 },
    /// `finish` was called before the whole blob was fed.
    #[error("piece map builder got {got} of {size} bytes")]
    TooFewBytes { got: u64, size: u64 },
}

/// Computes a [`PieceMap`] in one pass over the blob, fed in chunks of any size (as the
/// upstream delivers them). The result does not depend on how the bytes were chunked.
///
/// The node fetching from the upstream runs this next to the whole-blob hash. While it runs,
/// [`Self::hashes`] gives the hashes of the pieces completed so far, which that node sends to
/// peers as `PieceHashes`. The builder does not check the blob's digest: publish the finished
/// map as complete only after the blob itself passed its digest check.
#[derive(Clone)]
pub struct PieceMapBuilder {
    digest: Digest,
    geometry: PieceGeometry,
    hasher: PieceHasher,
    /// Bytes of the current (unfinished) piece hashed so far.
    in_piece: u64,
    /// Bytes fed in total.
    fed: u64,
    hashes: Vec<[u8; 32]>,
}

impl PieceMapBuilder {
    /// A builder for the blob `digest`, cut by `geometry`.
    pub fn new(digest: Digest, geometry: PieceGeometry) -> PieceMapBuilder {
        PieceMapBuilder {
            digest,
            geometry,
            hasher: PieceHasher::new(),
            in_piece: 0,
            fed: 0,
            // count() <= MAX_PIECES: at most 2 MiB.
            hashes: Vec::with_capacity(geometry.count() as usize),
        }
    }

    /// Feeds the next bytes of the blob. A chunk that would run past the blob's size is refused
    /// whole, leaving the builder as it was.
    pub fn update(&mut self, chunk: &[u8]) -> Result<(), BuildError> {
        let size = self.geometry.size();
        let len = chunk.len() as u64;
        if self.fed.checked_add(len).is_none_or(|end| end > size) {
            return Err(BuildError::TooManyBytes { size });
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            // fed < size here, so the current piece exists.
            let Some(piece_len) = self.geometry.len_of(self.known()) else {
                return Err(BuildError::TooManyBytes { size });
            };
            let need = u64::from(piece_len) - self.in_piece;
            let take = usize::try_from(need).unwrap_or(usize::MAX).min(rest.len());
            let (now, later) = rest.split_at(take);
            self.hasher.update(now);
            self.in_piece += now.len() as u64;
            self.fed += now.len() as u64;
            rest = later;
            if self.in_piece == u64::from(piece_len) {
                let done = std::mem::take(&mut self.hasher).finish();
                self.hashes.push(done);
                self.in_piece = 0;
            }
        }
        Ok(())
    }

    /// Number of pieces completed so far.
    pub fn known(&self) -> u32 {
        // At most geometry.count() <= MAX_PIECES.
        u32::try_from(self.hashes.len()).unwrap_or(u32::MAX)
    }

    /// Hashes of the pieces completed so far, in order.
    pub fn hashes(&self) -> &[[u8; 32]] {
        &self.hashes
    }

    /// Bytes fed so far.
    pub fn bytes_fed(&self) -> u64 {
        self.fed
    }

    /// The map, once exactly the blob's size has been fed.
    pub fn finish(self) -> Result<PieceMap, BuildError> {
        let size = self.geometry.size();
        if self.fed != size {
            return Err(BuildError::TooFewBytes {
                got: self.fed,
                size,
            });
        }
        // One hash per piece by construction; `new` re-checks rather than trusting that.
        PieceMap::new(self.digest, self.geometry, self.hashes).map_err(|_| {
            BuildError::TooFewBytes {
                got: self.fed,
                size,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MIN_PIECE_SIZE;

    /// xorshift64*: deterministic chunk sizes without a dependency.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state >> 12;
        *state ^= *state << 25;
        *state ^= *state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    #[test]
    fn same_map_whatever_the_chunking() {
        let ps = MIN_PIECE_SIZE as usize;
        for size in [0, 1, ps - 1, ps, ps + 1, 3 * ps, 3 * ps + 12_345] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
            let g = PieceGeometry::new(size as u64, MIN_PIECE_SIZE).unwrap();
            let digest = Digest::of(&data);
            let expected = PieceMap::of(digest, g, &data).unwrap();

            let mut whole = PieceMapBuilder::new(digest, g);
            whole.update(&data).unwrap();
            assert_eq!(whole.finish().unwrap(), expected);

            for chunk in [1, 7, 4096, ps - 1, ps, ps + 1] {
                let mut b = PieceMapBuilder::new(digest, g);
                for c in data.chunks(chunk) {
                    b.update(c).unwrap();
                }
                assert_eq!(b.finish().unwrap(), expected, "size {size} chunk {chunk}");
            }

            let mut state = 0x9e37_79b9_7f4a_7c15 ^ size as u64;
            let mut b = PieceMapBuilder::new(digest, g);
            let mut rest = &data[..];
            while !rest.is_empty() {
                let n = (next(&mut state) % (2 * ps as u64)) as usize;
                let (now, later) = rest.split_at(n.min(rest.len()));
                b.update(now).unwrap();
                b.update(&[]).unwrap();
                assert_eq!(b.hashes(), &expected.hashes()[..b.known() as usize]);
                rest = later;
            }
            assert_eq!(b.finish().unwrap(), expected, "size {size} random chunks");
        }
    }

    #[test]
    fn wrong_amounts_are_refused() {
        let g = PieceGeometry::new(10, MIN_PIECE_SIZE).unwrap();
        let d = Digest::of(b"0123456789");
        let mut b = PieceMapBuilder::new(d, g);
        b.update(b"01234").unwrap();
        assert_eq!(
            b.update(b"0123456"),
            Err(BuildError::TooManyBytes { size: 10 })
        );
        assert_eq!(b.bytes_fed(), 5);
        assert_eq!(
            b.clone().finish(),
            Err(BuildError::TooFewBytes { got: 5, size: 10 })
        );
        b.update(b"56789").unwrap();
        assert_eq!(b.known(), 1);
        let map = b.finish().unwrap();
        assert!(map.verify_piece(0, b"0123456789"));
    }
}
