//! The upstream's bytes gathered into page-aligned chunks before they go to the writer.
//!
//! A response body arrives in frames of whatever size the socket gave (often 16–64 KiB, at
//! any offset). Written as they come, they would have to go through the page cache; gathered
//! into 1 MiB chunks that start and end on page boundaries of the blob, the store writes them
//! past it (`pollen_store`'s `direct.rs`) straight from this memory, and clients at the live
//! edge are fed the same chunks. Gathering never holds bytes back while the upstream is slow:
//! when no more bytes are waiting, everything up to the last page boundary goes out, and the
//! rest (less than a page) with the next bytes or at the end of the range.

use bytes::Bytes;
use pollen_proto::{PieceBuf, DIRECT_ALIGN};

/// Size of a gathered chunk (a multiple of the page).
pub(crate) const CHUNK: usize = 1 << 20;

/// Bytes gathered for the blob from `offset` on.
pub(crate) struct Gather {
    buf: PieceBuf,
    /// The blob offset of the buffer's first byte.
    offset: u64,
    /// Bytes in the buffer.
    filled: usize,
    /// Room in the buffer: up to the next multiple of [`CHUNK`] in the blob, so every chunk
    /// after the first starts on a chunk boundary.
    room: usize,
}

impl Gather {
    /// Gathering for bytes that start at blob offset `offset`.
    pub fn new(offset: u64) -> Gather {
        let into_chunk = (offset % CHUNK as u64) as usize;
        Gather {
            buf: PieceBuf::take(CHUNK),
            offset,
            filled: 0,
            room: CHUNK - into_chunk,
        }
    }

    /// The blob offset after the last byte gathered.
    pub fn end(&self) -> u64 {
        self.offset + self.filled as u64
    }

    /// Adds `data`; every chunk it completes is appended to `out` with its offset.
    pub fn push(&mut self, mut data: &[u8], out: &mut Vec<(u64, Bytes)>) {
        while !data.is_empty() {
            let n = (self.room - self.filled).min(data.len());
            let (now, rest) = data.split_at(n);
            if let Some(dst) = self
                .buf
                .as_mut_slice()
                .get_mut(self.filled..self.filled + n)
            {
                dst.copy_from_slice(now);
            }
            self.filled += n;
            data = rest;
            if self.filled == self.room {
                out.extend(self.cut(self.filled));
            }
        }
    }

    /// What is gathered, to go out now: all of it (`all`, at the end of a range), or up to the
    /// last page boundary of the blob (the rest stays for the next bytes).
    pub fn flush(&mut self, all: bool) -> Option<(u64, Bytes)> {
        let len = match all {
            true => self.filled,
            false => {
                let boundary = self.end() / DIRECT_ALIGN as u64 * DIRECT_ALIGN as u64;
                boundary.saturating_sub(self.offset) as usize
            }
        };
        self.cut(len)
    }

    /// Hands out the first `len` gathered bytes and starts a new buffer with the rest.
    fn cut(&mut self, len: usize) -> Option<(u64, Bytes)> {
        if len == 0 {
            return None;
        }
        let old = std::mem::replace(self, Gather::new(self.offset + len as u64));
        let full = old.buf.freeze();
        if old.filled > len {
            // Less than a page (an idle flush): it fits the new buffer's first chunk.
            self.push(full.get(len..old.filled).unwrap_or(&[]), &mut Vec::new());
        }
        Some((old.offset, full.slice(..len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8).collect()
    }

    /// Whatever the frame sizes, the chunks put the same bytes back together in order, and
    /// every chunk but the first starts on a chunk boundary.
    #[test]
    fn chunks_reassemble_the_bytes_on_chunk_boundaries() {
        let data = pattern(3 * CHUNK + 12_345);
        for start in [0u64, 4096 * 3, 777] {
            let mut g = Gather::new(start);
            let mut out = Vec::new();
            for frame in data.chunks(65_537) {
                g.push(frame, &mut out);
            }
            out.extend(g.flush(true));
            let mut at = start;
            let mut joined = Vec::new();
            for (i, (offset, chunk)) in out.iter().enumerate() {
                assert_eq!(*offset, at, "chunk {i} follows the one before");
                if i > 0 {
                    assert_eq!(offset % CHUNK as u64, 0, "chunk {i} starts on a boundary");
                }
                at += chunk.len() as u64;
                joined.extend_from_slice(chunk);
            }
            assert!(
                joined == data,
                "start {start}: the bytes come back in order"
            );
        }
    }

    /// Waiting for more (a slow upstream) sends all but the part of the last page; that part
    /// goes with the next bytes, and the chunks that follow are aligned in memory and blob.
    #[test]
    fn an_idle_flush_keeps_only_a_partial_page() {
        let data = pattern(10_000);
        let mut g = Gather::new(0);
        let mut out = Vec::new();
        g.push(&data, &mut out);
        assert!(out.is_empty());
        let (offset, chunk) = g.flush(false).unwrap();
        assert_eq!((offset, chunk.len()), (0, 8192));
        assert_eq!(g.end(), 10_000, "the partial page is still gathered");
        assert_eq!(g.flush(false), None, "nothing more up to a page boundary");
        g.push(&pattern(100), &mut out);
        let (offset, chunk) = g.flush(true).unwrap();
        assert_eq!((offset, chunk.len()), (8192, 10_000 - 8192 + 100));
        assert!((chunk.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN));
        assert_eq!(&chunk[..10_000 - 8192], &data[8192..]);
        assert_eq!(g.flush(true), None);
    }
}
