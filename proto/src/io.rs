//! Async framing over tokio's `AsyncRead`/`AsyncWrite` (a libp2p stream is adapted with
//! `tokio_util::compat`).
//!
//! Every read is bounded: a length prefix above the direction's limit is refused before the
//! payload is read, and a payload buffer grows only as bytes actually arrive, so a peer that
//! announces a large frame and then stalls costs almost nothing. None of these functions has a
//! timeout: wrap each call in `tokio::time::timeout`, or a silent peer holds the session open.

use crate::buffer::PieceBuf;
use crate::codec::{self, payload_len, PREFIX_LEN};
use crate::error::ProtoError;
use crate::message::{Reply, Request};
use crate::{MAX_PIECE_SIZE, MAX_REPLY_FRAME, MAX_REQUEST_FRAME};
use bytes::{Bytes, BytesMut};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Initial payload buffer: small frames fit at once, big ones grow as their bytes arrive.
const INITIAL_BUFFER: usize = 16 * 1024;

/// Writes one request frame and flushes it, so a pipelined request is not left in a buffer.
pub async fn write_request<W>(writer: &mut W, req: &Request) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let frame = codec::encode_request(req)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Writes one reply frame and flushes it. For pieces use [`write_piece`] or
/// [`write_piece_header`].
pub async fn write_reply<W>(writer: &mut W, reply: &Reply) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let frame = codec::encode_reply(reply)?;
    writer.write_all(&frame).await?;
    writer.flush().await?;
    Ok(())
}

/// Writes the `Piece` header for a body of `len` bytes, without flushing: the caller must then
/// write exactly `len` raw bytes (e.g. straight from the file) and flush. Anything else
/// desynchronizes the stream, and the peer will blame us.
pub async fn write_piece_header<W>(writer: &mut W, index: u32, len: u32) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let frame = codec::encode_reply(&Reply::Piece { index, len })?;
    writer.write_all(&frame).await?;
    Ok(())
}

/// Writes a whole piece held in memory (header, body) and flushes.
pub async fn write_piece<W>(writer: &mut W, index: u32, body: &[u8]) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let len = u32::try_from(body.len())
        .map_err(|_| ProtoError::Encode(format!("piece of {} bytes", body.len())))?;
    write_piece_header(writer, index, len).await?;
    writer.write_all(body).await?;
    writer.flush().await?;
    Ok(())
}

/// Reads the next request; `Ok(None)` when the peer closed the stream cleanly between frames.
/// A stream that ends inside a frame is an I/O error (`UnexpectedEof`).
pub async fn read_request<R>(reader: &mut R) -> Result<Option<Request>, ProtoError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    match read_frame(reader, MAX_REQUEST_FRAME).await? {
        Some(payload) => codec::decode_request(&payload).map(Some),
        None => Ok(None),
    }
}

/// Reads the next reply; `Ok(None)` when the peer closed the stream cleanly between frames.
/// After a `Piece` reply the caller must consume its body with [`read_piece_body`] before
/// reading the next reply.
pub async fn read_reply<R>(reader: &mut R) -> Result<Option<Reply>, ProtoError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    match read_frame(reader, MAX_REPLY_FRAME).await? {
        Some(payload) => codec::decode_reply(&payload).map(Some),
        None => Ok(None),
    }
}

/// Reads the body that follows a `Piece { len, .. }` header. `expected_len` is what the
/// geometry says the piece must be (`PieceGeometry::len_of`); a `len` that differs, or one
/// above `MAX_PIECE_SIZE`, is refused before a byte is read or allocated. The bytes still have
/// to be verified against the piece map.
pub async fn read_piece_body<R>(
    reader: &mut R,
    len: u32,
    expected_len: u32,
) -> Result<Bytes, ProtoError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    if len > MAX_PIECE_SIZE {
        return Err(ProtoError::FrameTooLarge {
            len: len.into(),
            max: MAX_PIECE_SIZE.into(),
        });
    }
    if len != expected_len {
        return Err(ProtoError::Invalid(format!(
            "piece of {len} bytes where the geometry says {expected_len}"
        )));
    }
    let len = usize::try_from(len).map_err(|_| ProtoError::FrameTooLarge {
        len: len.into(),
        max: MAX_PIECE_SIZE.into(),
    })?;
    // The length is our own geometry's, for a piece we asked for: take the whole buffer at
    // once (aligned and recycled, see `PieceBuf`).
    let mut body = PieceBuf::take(len);
    fill(reader, body.as_mut_slice()).await?;
    Ok(body.freeze())
}

/// Reads one frame's payload; `None` on a clean end of stream before the first prefix byte.
pub(crate) async fn read_frame<R>(reader: &mut R, max: u32) -> Result<Option<BytesMut>, ProtoError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut prefix = [0u8; PREFIX_LEN];
    let mut filled = 0;
    while filled < PREFIX_LEN {
        let Some(dst) = prefix.get_mut(filled..) else {
            break;
        };
        let n = reader.read(dst).await?;
        if n == 0 {
            if filled == 0 {
                return Ok(None);
            }
            return Err(eof("inside a frame's length prefix").into());
        }
        filled += n;
    }
    let len = payload_len(prefix, max)?;
    let mut payload = BytesMut::with_capacity(len.min(INITIAL_BUFFER));
    read_exactly(reader, &mut payload, len).await?;
    Ok(Some(payload))
}

/// Appends exactly `len` bytes from `reader` to `buf`, growing `buf` only as bytes arrive.
async fn read_exactly<R>(reader: &mut R, buf: &mut BytesMut, len: usize) -> Result<(), ProtoError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    // Reads go into memory this function zeroed itself, each byte once. Reading into spare
    // capacity instead (`read_buf`) let a futures-io stream under tokio-util's compat layer
    // zero all the room left on every read: two to three times each piece's size in memset.
    let end = buf.len() + len;
    while buf.len() < end {
        let filled = buf.len();
        let want = end - filled;
        if buf.capacity() == filled {
            // Double, but never past what the frame still needs.
            buf.reserve(want.min(buf.capacity().max(INITIAL_BUFFER)));
        }
        let room = (buf.capacity() - filled).min(want);
        buf.resize(filled + room, 0);
        let result = match buf.get_mut(filled..) {
            Some(dst) => fill(reader, dst).await,
            None => Ok(()),
        };
        if let Err(e) = result {
            buf.truncate(filled);
            return Err(e);
        }
    }
    Ok(())
}

/// Fills `dst` from `reader` (memory initialised already, so no layer below zeroes it again).
async fn fill<R>(reader: &mut R, dst: &mut [u8]) -> Result<(), ProtoError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut filled = 0;
    while let Some(rest) = dst.get_mut(filled..).filter(|r| !r.is_empty()) {
        let n = reader.read(rest).await?;
        if n == 0 {
            return Err(eof("inside a frame or piece body").into());
        }
        filled += n;
    }
    Ok(())
}

fn eof(where_: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("stream ended {where_}"),
    )
}
