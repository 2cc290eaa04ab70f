//! How a blob is cut into pieces. Pure arithmetic, no I/O.

use crate::error::{GeometryError, Violation};
use crate::{MAX_PIECES, MAX_PIECE_SIZE, MIN_PIECE_SIZE};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Smallest piece size the automatic choice uses. A piece is forwarded only once it is whole
/// and verified, so each hop of a swarm delays it by a piece's time on the wire: with 4 MiB
/// pieces a 32 MiB blob spread over 8 nodes took 4.2 x the minimum distribution time, with
/// 256 KiB pieces 1.9 x (docs/tracker.md). Request round trips are hidden by pipelines sized
/// to each peer's rate.
pub(crate) const AUTO_MIN_PIECE_SIZE: u32 = 256 * 1024;

/// The automatic choice doubles the piece size until a blob has at most this many pieces, so
/// bitfields and piece maps of small blobs stay small (64 bytes and 16 KiB)...
pub(crate) const TARGET_PIECES: u64 = 512;

/// ...but stops at this size, and a bigger blob has more pieces instead (a 30 GiB layer has
/// 7,680: a 960-byte bitfield, a 240 KiB piece map). A piece is received, verified and
/// written whole, so a node's buffers per transfer are counted in pieces: with the piece size
/// growing with the blob, a 30 GiB layer meant 64 MiB pieces and a receiver's memory grew with
/// the blob (94 MiB at 4 GiB against 53 MiB at 1 GiB). Each hop of the swarm also waits for a
/// whole piece, so smaller pieces shorten the pipeline through the swarm as well.
pub(crate) const AUTO_MAX_PIECE_SIZE: u32 = 4 * 1024 * 1024;

/// A blob of `size` bytes cut into pieces of `piece_size` bytes; the last piece is shorter
/// when `size` is not a multiple. Piece `i` covers bytes `i * piece_size ..` of the blob.
///
/// Both peers must use the same geometry for a blob, since pieces are named by index: it is
/// sent in `Have`, and [`PieceGeometry::choose`] is deterministic so that agents which compute
/// it independently agree. Invariants (checked by every constructor and on decode):
/// `MIN_PIECE_SIZE <= piece_size <= MAX_PIECE_SIZE` and `count() <= MAX_PIECES`. An empty blob
/// has zero pieces (and is trivially complete).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "GeometryWire")]
pub struct PieceGeometry {
    size: u64,
    piece_size: u32,
}

/// The unvalidated wire form, checked by `TryFrom` on decode.
#[derive(Deserialize)]
struct GeometryWire {
    size: u64,
    piece_size: u32,
}

impl TryFrom<GeometryWire> for PieceGeometry {
    type Error = Violation;
    fn try_from(w: GeometryWire) -> Result<Self, Violation> {
        Ok(PieceGeometry::new(w.size, w.piece_size)?)
    }
}

impl PieceGeometry {
    /// A geometry with an explicit piece size, refused if it breaks the invariants.
    pub fn new(size: u64, piece_size: u32) -> Result<PieceGeometry, GeometryError> {
        if !(MIN_PIECE_SIZE..=MAX_PIECE_SIZE).contains(&piece_size) {
            return Err(GeometryError::PieceSizeOutOfRange { piece_size });
        }
        if size.div_ceil(u64::from(piece_size)) > u64::from(MAX_PIECES) {
            return Err(GeometryError::TooManyPieces { size, piece_size });
        }
        Ok(PieceGeometry { size, piece_size })
    }

    /// The geometry every agent uses for a blob of `size` bytes, or the override's (a cluster
    /// must then set the same override everywhere).
    ///
    /// The automatic piece size is the smallest power of two from 256 KiB to 4 MiB that gives
    /// at most 512 pieces; a blob over 2 GiB keeps 4 MiB pieces and has more, up to
    /// `MAX_PIECES` (256 GiB), and only past that do pieces grow again (to 64 MiB, i.e. 4 TiB).
    /// A blob smaller than 256 KiB is one piece of exactly its size (the piece size stays
    /// 256 KiB, so the rule has no special case and `piece_size > 0`).
    pub fn choose(
        size: u64,
        piece_size_override: Option<u32>,
    ) -> Result<PieceGeometry, GeometryError> {
        if let Some(piece_size) = piece_size_override {
            return PieceGeometry::new(size, piece_size);
        }
        let pieces = |piece_size: u32| size.div_ceil(u64::from(piece_size));
        let mut piece_size = AUTO_MIN_PIECE_SIZE;
        while piece_size < AUTO_MAX_PIECE_SIZE && pieces(piece_size) > TARGET_PIECES {
            piece_size *= 2;
        }
        while piece_size < MAX_PIECE_SIZE && pieces(piece_size) > u64::from(MAX_PIECES) {
            piece_size *= 2;
        }
        PieceGeometry::new(size, piece_size)
    }

    /// The blob's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The size of every piece but the last.
    pub fn piece_size(&self) -> u32 {
        self.piece_size
    }

    /// Number of pieces (0 for an empty blob).
    pub fn count(&self) -> u32 {
        // Fits: the constructors guarantee count <= MAX_PIECES.
        u32::try_from(self.size.div_ceil(u64::from(self.piece_size))).unwrap_or(u32::MAX)
    }

    /// Byte offset where piece `index` starts, or `None` if there is no such piece.
    pub fn offset_of(&self, index: u32) -> Option<u64> {
        (index < self.count()).then(|| u64::from(index) * u64::from(self.piece_size))
    }

    /// Length of piece `index` (the last one may be shorter), or `None` if there is no such
    /// piece. This is the only length a `Piece` body for `index` may have.
    pub fn len_of(&self, index: u32) -> Option<u32> {
        let start = self.offset_of(index)?;
        let len = (self.size - start).min(u64::from(self.piece_size));
        u32::try_from(len).ok()
    }

    /// The blob bytes piece `index` covers, or `None` if there is no such piece.
    pub fn range_of(&self, index: u32) -> Option<Range<u64>> {
        let start = self.offset_of(index)?;
        let len = self.len_of(index)?;
        Some(start..start + u64::from(len))
    }

    /// The piece holding byte `offset`, or `None` past the end of the blob. Used to map a
    /// client's `Range` request onto pieces.
    pub fn index_at(&self, offset: u64) -> Option<u32> {
        if offset >= self.size {
            return None;
        }
        u32::try_from(offset / u64::from(self.piece_size)).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    #[test]
    fn empty_blob_has_no_pieces() {
        let g = PieceGeometry::choose(0, None).unwrap();
        assert_eq!(g.count(), 0);
        assert!(g.piece_size() > 0);
        assert_eq!(g.len_of(0), None);
        assert_eq!(g.offset_of(0), None);
        assert_eq!(g.index_at(0), None);
    }

    #[test]
    fn small_blob_is_one_short_piece() {
        let g = PieceGeometry::choose(1000, None).unwrap();
        assert_eq!(g.piece_size(), 256 * 1024);
        assert_eq!(g.count(), 1);
        assert_eq!(g.len_of(0), Some(1000));
        assert_eq!(g.range_of(0), Some(0..1000));
        assert_eq!(g.len_of(1), None);
        assert_eq!(g.index_at(999), Some(0));
        assert_eq!(g.index_at(1000), None);
    }

    #[test]
    fn exact_multiple_and_one_byte_over() {
        let ps = 256 * 1024;
        let g = PieceGeometry::choose(3 * ps, None).unwrap();
        assert_eq!(g.count(), 3);
        assert_eq!(g.len_of(2), Some(ps as u32));
        assert_eq!(g.len_of(3), None);

        let g = PieceGeometry::choose(3 * ps + 1, None).unwrap();
        assert_eq!(g.count(), 4);
        assert_eq!(g.len_of(2), Some(ps as u32));
        assert_eq!(g.len_of(3), Some(1));
        assert_eq!(g.offset_of(3), Some(3 * ps));
        assert_eq!(g.index_at(3 * ps), Some(3));
        assert_eq!(g.index_at(3 * ps - 1), Some(2));
    }

    #[test]
    fn automatic_piece_size_grows_to_keep_512_pieces() {
        assert_eq!(
            PieceGeometry::choose(128 * MIB, None).unwrap().piece_size(),
            256 * 1024
        );
        assert_eq!(
            PieceGeometry::choose(2048 * MIB, None)
                .unwrap()
                .piece_size(),
            4 * MIB as u32
        );
        for size in [1, 5 * MIB, 700 * MIB, 2048 * MIB] {
            let g = PieceGeometry::choose(size, None).unwrap();
            assert!(g.piece_size().is_power_of_two());
            assert!(g.count() <= 512, "{size}: {}", g.count());
        }
    }

    #[test]
    fn past_2_gib_blobs_get_more_4_mib_pieces_not_bigger_ones() {
        let g = PieceGeometry::choose(2048 * MIB + 1, None).unwrap();
        assert_eq!((g.piece_size(), g.count()), (4 * MIB as u32, 513));
        let g = PieceGeometry::choose(30 * 1024 * MIB, None).unwrap();
        assert_eq!((g.piece_size(), g.count()), (4 * MIB as u32, 7_680));
        let g = PieceGeometry::choose(256 * 1024 * MIB, None).unwrap();
        assert_eq!((g.piece_size(), g.count()), (4 * MIB as u32, MAX_PIECES));
        let g = PieceGeometry::choose(256 * 1024 * MIB + 1, None).unwrap();
        assert_eq!(g.piece_size(), 8 * MIB as u32);
    }

    #[test]
    fn huge_blobs_are_capped_at_max_pieces() {
        let g = PieceGeometry::choose(100 * 1024 * MIB, None).unwrap();
        assert_eq!((g.piece_size(), g.count()), (4 * MIB as u32, 25_600));
        let g = PieceGeometry::choose(crate::MAX_BLOB_SIZE, None).unwrap();
        assert_eq!(g.count(), MAX_PIECES);
        assert_eq!(g.len_of(MAX_PIECES - 1), Some(MAX_PIECE_SIZE));
        assert_eq!(
            PieceGeometry::choose(crate::MAX_BLOB_SIZE + 1, None),
            Err(GeometryError::TooManyPieces {
                size: crate::MAX_BLOB_SIZE + 1,
                piece_size: MAX_PIECE_SIZE
            })
        );
        let g = PieceGeometry::new(u64::MAX, MAX_PIECE_SIZE);
        assert!(matches!(g, Err(GeometryError::TooManyPieces { .. })));
    }

    #[test]
    fn overrides_are_range_checked() {
        let g = PieceGeometry::choose(1_000_000, Some(MIN_PIECE_SIZE)).unwrap();
        assert_eq!(g.count(), 16);
        assert_eq!(g.len_of(15), Some(1_000_000 - 15 * 65_536));
        for bad in [0, 1, MIN_PIECE_SIZE - 1, MAX_PIECE_SIZE + 1, u32::MAX] {
            assert_eq!(
                PieceGeometry::choose(10, Some(bad)),
                Err(GeometryError::PieceSizeOutOfRange { piece_size: bad })
            );
        }
        // A small override on a big blob would exceed MAX_PIECES.
        let too_big = u64::from(MIN_PIECE_SIZE) * u64::from(MAX_PIECES) + 1;
        assert!(matches!(
            PieceGeometry::choose(too_big, Some(MIN_PIECE_SIZE)),
            Err(GeometryError::TooManyPieces { .. })
        ));
    }

    #[test]
    fn pieces_tile_the_blob() {
        let g = PieceGeometry::new(10 * 65_536 + 17, MIN_PIECE_SIZE).unwrap();
        let mut next = 0;
        for i in 0..g.count() {
            let r = g.range_of(i).unwrap();
            assert_eq!(r.start, next);
            assert_eq!(g.index_at(r.start), Some(i));
            assert_eq!(g.index_at(r.end - 1), Some(i));
            next = r.end;
        }
        assert_eq!(next, g.size());
        assert_eq!(g.offset_of(u32::MAX), None);
        assert_eq!(g.index_at(u64::MAX), None);
    }
}
