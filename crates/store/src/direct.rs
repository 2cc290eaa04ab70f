//! Writing a partial blob's bytes past the page cache.
//!
//! A blob's bytes are written once and then read rarely by this node (its clients are fed
//! from memory at the live edge, peers ask for each piece a few times), so copying them into
//! the page cache costs CPU and memory for little. On the 2-core benchmark VM that copy was
//! the receiver's largest cost: 30 % of all samples, more than SHA-256 (part 8 in
//! `benches/README.md`). So every page-aligned run is written with `O_DIRECT`: from the
//! caller's memory when it is aligned too (pieces from peers, `pollen_proto::PieceBuf`),
//! otherwise through one reused aligned buffer. What is not aligned (a blob's last partial
//! page, a piece size that is not a multiple of the page) goes through the page cache as
//! before. A filesystem that refuses `O_DIRECT` (at open or at the first write) is written
//! through the page cache only.
//!
//! The kernel keeps the two descriptors coherent (a direct write invalidates the cached pages
//! it covers), and durability is unchanged (`fsync` on either descriptor flushes the file and
//! the device cache). Readers of a blob in flight ([`DataFile`]) read aligned runs directly
//! too: bytes written past the page cache are not in it, and reading them through it would
//! fill it after all (a client that fell behind the live edge, a peer asking for a piece).

use pollen_proto::DIRECT_ALIGN;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

/// Size of the aligned buffer that unaligned memory is copied through.
const STAGE: usize = 1 << 20;

/// Writes to one data file: direct where it can, through the page cache where it must.
pub(crate) struct DataWriter {
    file: Arc<File>,
    /// The same file opened with `O_DIRECT`, for reading and writing.
    direct: Option<Arc<File>>,
    /// Aligned room for copies (allocated on first use).
    stage: Option<pollen_proto::PieceBuf>,
}

impl DataWriter {
    /// `file` is the data file open for reading and writing; `path` names it, to open a second
    /// descriptor with `O_DIRECT` (`direct = false`, or a filesystem without it: none).
    pub fn new(file: Arc<File>, path: &Path, direct: bool) -> DataWriter {
        let direct = direct
            .then(|| {
                OpenOptions::new()
                    .read(true)
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(path)
                    .ok()
            })
            .flatten()
            .map(Arc::new);
        DataWriter {
            file,
            direct,
            stage: None,
        }
    }

    /// Whether writes still go past the page cache.
    #[cfg(test)]
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// The file for readers, with the direct descriptor while writes use one.
    pub fn reader(&self) -> DataFile {
        DataFile {
            file: self.file.clone(),
            direct: self.direct.clone(),
        }
    }

    /// Writes all of `data` at `offset`.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let aligned = match self.direct {
            Some(_) => aligned_head(offset, data.len()),
            None => 0,
        };
        let (head, tail) = data.split_at(aligned);
        if !head.is_empty() {
            match self.write_direct(head, offset) {
                Ok(()) => {}
                // The filesystem takes O_DIRECT at open but not these writes: page cache
                // from now on.
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!(error = %e, "direct writes refused; writing through the page cache");
                    self.direct = None;
                    return self.file.write_all_at(data, offset);
                }
                Err(e) => return Err(e),
            }
        }
        if tail.is_empty() {
            return Ok(());
        }
        self.file.write_all_at(tail, offset + aligned as u64)
    }

    /// `data` (a multiple of the alignment) at an aligned `offset`, past the page cache.
    fn write_direct(&mut self, data: &[u8], offset: u64) -> io::Result<()> {
        let Some(direct) = &self.direct else {
            return self.file.write_all_at(data, offset);
        };
        if (data.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) {
            return direct.write_all_at(data, offset);
        }
        let stage = self
            .stage
            .get_or_insert_with(|| pollen_proto::PieceBuf::take(STAGE));
        let room = stage.as_mut_slice();
        let mut at = offset;
        for chunk in data.chunks(STAGE) {
            let dst = room
                .get_mut(..chunk.len())
                .ok_or_else(|| io::Error::other("stage"))?;
            dst.copy_from_slice(chunk);
            direct.write_all_at(dst, at)?;
            at += chunk.len() as u64;
        }
        Ok(())
    }
}

/// A data file for readers: aligned runs read directly where the file has a direct
/// descriptor (a blob in flight, written past the page cache), the rest through the page
/// cache.
#[derive(Clone, Debug)]
pub struct DataFile {
    file: Arc<File>,
    direct: Option<Arc<File>>,
}

impl DataFile {
    /// A file read through the page cache only (a committed blob).
    pub fn cached(file: Arc<File>) -> DataFile {
        DataFile { file, direct: None }
    }

    /// The ordinary descriptor (also what tells two downloads of a blob apart).
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    /// Fills `buf` from `offset`. Direct for the aligned part when `buf` is page-aligned
    /// memory (`pollen_proto::PieceBuf`) and `offset` a page boundary.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let aligned = match &self.direct {
            Some(_) if (buf.as_ptr() as usize).is_multiple_of(DIRECT_ALIGN) => {
                aligned_head(offset, buf.len())
            }
            _ => 0,
        };
        let (head, tail) = buf.split_at_mut(aligned);
        if let (Some(direct), false) = (&self.direct, head.is_empty()) {
            match direct.read_exact_at(head, offset) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    return self.file.read_exact_at(buf, offset)
                }
                Err(e) => return Err(e),
            }
        }
        if tail.is_empty() {
            return Ok(());
        }
        self.file.read_exact_at(tail, offset + aligned as u64)
    }
}

/// How much of `len` bytes at `offset` can go direct: whole pages from a page boundary.
fn aligned_head(offset: u64, len: usize) -> usize {
    match offset.is_multiple_of(DIRECT_ALIGN as u64) {
        true => len / DIRECT_ALIGN * DIRECT_ALIGN,
        false => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    fn setup(direct: bool) -> (tempfile::TempDir, Arc<File>, DataWriter) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .unwrap(),
        );
        file.set_len(3 * STAGE as u64).unwrap();
        let w = DataWriter::new(file.clone(), &path, direct);
        (dir, file, w)
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    /// Every shape of write (aligned memory or not, aligned offset or not, a tail shorter
    /// than a page, longer than the stage) reads back exactly, direct or not.
    #[test]
    fn every_write_reads_back_through_the_ordinary_descriptor() {
        for direct in [true, false] {
            let (_dir, file, mut w) = setup(direct);
            // Where the filesystem takes O_DIRECT, none of these writes may turn it off.
            let was_direct = w.is_direct();
            let cases: [(usize, u64, usize); 5] = [
                (0, 0, STAGE + 3 * DIRECT_ALIGN),        // aligned memory and offset
                (1, STAGE as u64 * 2, DIRECT_ALIGN * 2), // unaligned memory: staged
                (0, 5 * DIRECT_ALIGN as u64 + 100, 777), // unaligned offset: page cache
                (3, 8 * DIRECT_ALIGN as u64, 2 * STAGE - DIRECT_ALIGN - 5), // staged + tail
                (0, 3 * STAGE as u64 - 10, 10),          // the file's last bytes
            ];
            for (n, (skew, offset, len)) in cases.into_iter().enumerate() {
                let data = pattern(len, n as u8);
                let mut buf = pollen_proto::PieceBuf::take(len + skew);
                buf.as_mut_slice()[skew..].copy_from_slice(&data);
                let bytes = buf.freeze();
                w.write_at(&bytes[skew..], offset).unwrap();
                let mut back = vec![0u8; len];
                file.read_exact_at(&mut back, offset).unwrap();
                assert!(back == data, "case {n} (direct {direct}) reads back");
                // And through the reader, into aligned memory or not.
                for skew in [0, 1] {
                    let mut buf = pollen_proto::PieceBuf::take(len + skew);
                    let room = &mut buf.as_mut_slice()[skew..];
                    w.reader().read_exact_at(room, offset).unwrap();
                    assert!(
                        *room == data[..],
                        "case {n} (direct {direct}, skew {skew}) reads"
                    );
                }
            }
            assert_eq!(w.is_direct(), was_direct);
            assert!(direct || !was_direct);
        }
    }
}
