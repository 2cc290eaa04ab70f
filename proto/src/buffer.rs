//! Piece buffers: page-aligned and recycled.
//!
//! Aligned, so the store can write a piece to disk with `O_DIRECT` straight from the memory it
//! was received into (no copy into the page cache, which on the receiver cost more CPU than
//! decrypting and hashing together: `benches/README.md`, part 8). Recycled, so a piece needs
//! neither a fresh allocation (page faults on every new page) nor zeroing: a buffer that held
//! an earlier piece is initialised memory already, and is simply overwritten.
//!
//! The pool is process-wide (like the allocator it stands in for) and bounded in bytes; a
//! buffer dropped while the pool is full is freed.

use bytes::Bytes;
use std::sync::Mutex;

/// The alignment `O_DIRECT` asks of memory, offsets and lengths on Linux filesystems (the
/// page size; most devices' logical block is 512 B or 4 KiB).
pub const DIRECT_ALIGN: usize = 4096;

/// Idle buffers kept for reuse, in bytes at most: about the pieces one download has in flight
/// at the default 4 MiB piece size, so steady transfers recycle instead of allocating.
pub const POOL_BYTES: usize = 16 << 20;

static POOL: Pool = Pool::new(POOL_BYTES);

/// Idle buffers, at most `max_bytes` of them.
struct Pool {
    idle: Mutex<Vec<Vec<u8>>>,
    max_bytes: usize,
}

impl Pool {
    const fn new(max_bytes: usize) -> Pool {
        Pool {
            idle: Mutex::new(Vec::new()),
            max_bytes,
        }
    }

    /// A buffer of at least `need` bytes and at most twice that (so a small piece does not
    /// pin a large buffer), if one is idle.
    fn take(&self, need: usize) -> Option<Vec<u8>> {
        let mut idle = self.idle.lock().ok()?;
        let at = idle
            .iter()
            .position(|v| v.len() >= need && v.len() / 2 <= need)?;
        Some(idle.swap_remove(at))
    }

    fn give(&self, vec: Vec<u8>) {
        if let Ok(mut idle) = self.idle.lock() {
            let held: usize = idle.iter().map(Vec::len).sum();
            if held + vec.len() <= self.max_bytes {
                idle.push(vec);
            }
        }
    }
}

/// A buffer of `len` bytes whose start is page-aligned (when the allocator allows), to be
/// filled and then frozen into [`Bytes`] that return the memory to the pool when dropped.
pub struct PieceBuf {
    pool: &'static Pool,
    vec: Vec<u8>,
    start: usize,
    len: usize,
}

impl PieceBuf {
    /// A buffer for `len` bytes (which the caller bounded): recycled if the pool has one
    /// that fits, else newly allocated and zeroed.
    pub fn take(len: usize) -> PieceBuf {
        PieceBuf::take_from(&POOL, len)
    }

    fn take_from(pool: &'static Pool, len: usize) -> PieceBuf {
        let need = len.saturating_add(DIRECT_ALIGN - 1);
        let vec = pool.take(need).unwrap_or_else(|| vec![0u8; need]);
        // `align_offset` may decline (usize::MAX); then the buffer is simply unaligned and
        // the store copies it through its own aligned buffer.
        let start = match vec.as_ptr().align_offset(DIRECT_ALIGN) {
            n if n < DIRECT_ALIGN => n,
            _ => 0,
        };
        PieceBuf {
            pool,
            vec,
            start,
            len,
        }
    }

    /// The bytes to fill.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let (start, len) = (self.start, self.len);
        self.vec.get_mut(start..start + len).unwrap_or(&mut [])
    }

    /// The filled buffer as shared bytes; the memory goes back to the pool once every clone
    /// is dropped.
    pub fn freeze(self) -> Bytes {
        Bytes::from_owner(self)
    }
}

impl AsRef<[u8]> for PieceBuf {
    fn as_ref(&self) -> &[u8] {
        self.vec
            .get(self.start..self.start + self.len)
            .unwrap_or(&[])
    }
}

impl Drop for PieceBuf {
    fn drop(&mut self) {
        self.pool.give(std::mem::take(&mut self.vec));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_is_aligned_and_exactly_as_long_as_asked() {
        let mut b = PieceBuf::take(100_000);
        assert_eq!(b.as_mut_slice().len(), 100_000);
        assert!((b.as_mut_slice().as_ptr() as usize).is_multiple_of(DIRECT_ALIGN));
        b.as_mut_slice().fill(7);
        let bytes = b.freeze();
        assert_eq!(bytes.len(), 100_000);
        assert!(bytes.iter().all(|&x| x == 7));
        assert!((bytes.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN));
    }

    #[test]
    fn a_dropped_buffer_is_reused_for_a_piece_of_similar_size_only() {
        let pool: &'static Pool = Box::leak(Box::new(Pool::new(8 << 20)));
        let len = 3 * 1024 * 1024 + 17;
        let b = PieceBuf::take_from(pool, len);
        let ptr = b.vec.as_ptr();
        drop(b.freeze());
        let again = PieceBuf::take_from(pool, len - 5);
        assert_eq!(again.vec.as_ptr(), ptr, "the freed buffer was recycled");
        drop(again);
        let small = PieceBuf::take_from(pool, 64 * 1024);
        assert_ne!(
            small.vec.as_ptr(),
            ptr,
            "a small piece does not take a big buffer"
        );
        drop(small);
        // Full: 3 MiB + 64 KiB idle; another 6 MiB buffer does not fit the 8 MiB bound.
        drop(PieceBuf::take_from(pool, 6 << 20));
        let held: usize = pool.idle.lock().unwrap().iter().map(Vec::len).sum();
        assert!(
            held <= 8 << 20,
            "the pool keeps at most its bound ({held} bytes)"
        );
    }
}
