//! One turn of the uploader's writer: some control frames, then at most one piece.
//!
//! A job owns the write half while it runs, so nothing else can interleave bytes into a piece
//! body; the session loop keeps reading requests meanwhile. One piece per job is what makes
//! `Cancel` work: a queued piece stays cancellable until a job takes it.

use super::super::limits::UploadLimits;
use crate::error::SessionError;
use crate::source::PieceReader;
use pollen_proto::{write_piece_header, write_reply, Reply};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::time::timeout;

/// A piece to send: its index, the length the geometry gives it, and where to read it.
pub(super) struct PieceJob {
    pub(super) index: u32,
    pub(super) len: u32,
    pub(super) reader: Arc<dyn PieceReader>,
}

/// What a job sent.
#[derive(Default)]
pub(super) struct Sent {
    pub(super) bytes: u64,
    pub(super) pieces: u64,
    /// The piece written whole, if the job had one.
    pub(super) piece: Option<u32>,
}

/// Why a job failed.
pub(super) enum JobError {
    /// The stream failed or stalled: nothing more can be said on it.
    Stream(SessionError),
    /// The source could not produce the piece. Nothing of the piece was written, so the stream
    /// is still in step and the peer can be told `Error Internal`.
    Source(String),
}

/// Writes `frames`, then `piece` (rate-limited, in chunks), then shuts the stream down if
/// `close`. Every write is bounded by `stall`; so is reading the piece from the source.
pub(super) async fn run<W>(
    w: &mut W,
    frames: Vec<Reply>,
    piece: Option<PieceJob>,
    close: bool,
    limits: &UploadLimits,
    stall: Duration,
) -> Result<Sent, JobError>
where
    W: AsyncWrite + Unpin,
{
    let mut sent = Sent::default();
    for frame in &frames {
        within(stall, write_reply(w, frame)).await?;
    }
    if let Some(piece) = piece {
        let body = match timeout(stall, piece.reader.read_piece(piece.index)).await {
            Err(_) => {
                return Err(JobError::Source(format!(
                    "reading piece {} timed out",
                    piece.index
                )))
            }
            Ok(Err(e)) => {
                return Err(JobError::Source(format!(
                    "reading piece {}: {e}",
                    piece.index
                )))
            }
            Ok(Ok(body)) => body,
        };
        if body.len() != piece.len as usize {
            return Err(JobError::Source(format!(
                "the source gave {} bytes for piece {} of {} bytes",
                body.len(),
                piece.index,
                piece.len
            )));
        }
        within(stall, write_piece_header(w, piece.index, piece.len)).await?;
        for chunk in body.chunks(limits.chunk()) {
            limits.throttle(chunk.len()).await;
            within(stall, w.write_all(chunk)).await?;
            sent.bytes += chunk.len() as u64;
            limits.count_sent(chunk.len() as u64, 0);
        }
        within(stall, w.flush()).await?;
        sent.pieces = 1;
        sent.piece = Some(piece.index);
        limits.count_sent(0, 1);
    }
    if close {
        within(stall, w.shutdown()).await?;
    }
    Ok(sent)
}

/// Awaits one write with the stall deadline.
async fn within<T, E>(
    stall: Duration,
    write: impl Future<Output = Result<T, E>>,
) -> Result<T, JobError>
where
    SessionError: From<E>,
{
    match timeout(stall, write).await {
        Err(_) => Err(JobError::Stream(SessionError::Timeout)),
        Ok(Err(e)) => Err(JobError::Stream(e.into())),
        Ok(Ok(v)) => Ok(v),
    }
}
