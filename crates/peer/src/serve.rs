//! The uploader's side of a session: [`serve`] one downloader over one stream.
//!
//! # Concurrency
//! One task, no spawns: dropping the `serve` future ends the session at once. The stream is
//! split (`tokio::io::split`); three things make progress in one `select!` loop:
//! - the **reader**, a persistent future reading the next request (kept across loop turns,
//!   because a frame read is not cancel-safe);
//! - the **writer**, a *job* that owns the write half while it writes pending control frames
//!   and at most one piece (see `job`). So `Cancel` and `NotInterested` are read and acted on
//!   while a large piece is being written, and a piece is cancellable until a job takes it;
//! - the source's **watch**, which only marks the state dirty: when the writer is next free,
//!   the difference is sent as one batch (`announce`), however many changes happened.
//!
//! # Choking and deadlines
//! Sessions start choked. One that gets an upload slot ([`UploadLimits`]) at once is sent
//! `Unchoked` right after `Have`; one over the cap is sent `Choked` and waits for a slot, up to
//! `slot_timeout`, then `Error Busy`. A slot is kept while the session asks for pieces; after
//! `SLOT_YIELD_AFTER` without a request, with others waiting, the session is sent `Choked` and
//! queues again. A blob of one small piece is served without a slot. `GetPiece`s
//! arriving while choked are dropped (the protocol's rule). The session ends quietly after
//! `idle_timeout` without a request while nothing is queued or being written; every write and
//! every source read is bounded by `stall_timeout`.
//!
//! # Errors
//! A request that breaks the protocol is answered `Error BadRequest` and the session ends with
//! [`SessionError::PeerFault`]; a source that fails, with `Error Internal`. If a piece is
//! being written at that moment, it is finished first (the `Error` frame cannot go inside a
//! piece body), then the frame is sent and the stream shut down.

mod announce;
mod job;
mod uploader;

use crate::config::{after, SessionConfig};
use crate::error::SessionError;
use crate::limits::{PeerKey, UploadLimits};
use crate::slots::Admitted;
use crate::source::PieceSource;
use pollen_oci::Digest;
use pollen_proto::{read_request, write_reply, ErrorCode, ProtoError, Reply, Request};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};
use uploader::{Slot, Uploader};

/// How an uploader session that did not fail ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServeEnd {
    /// The downloader sent `NotInterested`.
    NotInterested,
    /// The downloader closed its side of the stream.
    Closed,
    /// No request for `idle_timeout`; the stream was closed.
    Idle,
    /// The blob is not here; the downloader got `Error UnknownBlob`.
    UnknownBlob,
    /// No upload slot (now, or within `slot_timeout`); the downloader got `Error Busy`.
    Busy,
}

/// What one uploader session did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServeSummary {
    /// The blob the downloader asked for.
    pub digest: Digest,
    /// How the session ended.
    pub end: ServeEnd,
    /// Piece bytes written (bodies only, not frames).
    pub bytes_sent: u64,
    /// Whole pieces written.
    pub pieces_sent: u64,
}

/// Serves one downloader: reads its `Interest`, answers `Have` (or `Error UnknownBlob` /
/// `Busy`), then serves map and piece requests and pushes the source's progress until the
/// downloader is done, goes idle, or breaks the protocol. See the module docs for the policy.
pub async fn serve<S>(
    stream: S,
    source: Arc<dyn PieceSource>,
    limits: Arc<UploadLimits>,
    cfg: &SessionConfig,
) -> Result<ServeSummary, SessionError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    serve_peer(stream, source, limits, cfg, None).await
}

/// [`serve`] for a known peer (`who`, e.g. its PeerId's bytes): its sessions together hold
/// at most its share of the upload slots ([`crate::limits::PEER_SHARE_DIVISOR`]).
pub async fn serve_peer<S>(
    stream: S,
    source: Arc<dyn PieceSource>,
    limits: Arc<UploadLimits>,
    cfg: &SessionConfig,
    who: Option<PeerKey>,
) -> Result<ServeSummary, SessionError>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(stream);
    let first = timeout(cfg.stall_timeout, read_request(&mut reader))
        .await
        .map_err(|_| SessionError::Timeout)?;
    let digest = match first {
        Ok(Some(Request::Interest { digest })) => digest,
        Ok(Some(other)) => {
            let msg = format!("{other:?} before Interest");
            refuse(&mut writer, ErrorCode::BadRequest, &msg, cfg).await;
            return Err(SessionError::fault(msg));
        }
        Ok(None) => return Err(SessionError::Closed),
        Err(e) => return Err(refuse_garbage(&mut writer, e, cfg).await),
    };
    let summary = |end| ServeSummary {
        digest,
        end,
        bytes_sent: 0,
        pieces_sent: 0,
    };
    let Some(view) = source.blob(&digest) else {
        refuse(
            &mut writer,
            ErrorCode::UnknownBlob,
            "no such blob here",
            cfg,
        )
        .await;
        return Ok(summary(ServeEnd::UnknownBlob));
    };
    let admitted = match limits.slotless(&view.geometry) {
        true => None,
        false => Some(limits.admit(who)),
    };
    let slot = match admitted {
        None => Slot::Free,
        Some(Admitted::Slot(permit)) => Slot::Held { permit },
        Some(Admitted::Queued(place)) => Slot::Waiting {
            place: Some(place),
            until: after(Instant::now(), cfg.slot_timeout),
        },
        Some(Admitted::Busy) => {
            refuse(
                &mut writer,
                ErrorCode::Busy,
                "all upload slots are taken",
                cfg,
            )
            .await;
            return Ok(summary(ServeEnd::Busy));
        }
    };
    Uploader::new(summary(ServeEnd::Closed), view, limits, cfg, slot)
        .run(reader, writer)
        .await
}

/// Sends a final `Error` and shuts the stream down, best effort (the session is over anyway).
async fn refuse<W: AsyncWrite + Unpin>(w: &mut W, code: ErrorCode, msg: &str, cfg: &SessionConfig) {
    let _ = timeout(cfg.stall_timeout, async {
        write_reply(w, &Reply::error(code, msg)).await?;
        w.shutdown().await?;
        Ok::<(), ProtoError>(())
    })
    .await;
}

/// The error for an unreadable first request; garbage is answered `BadRequest` first.
async fn refuse_garbage<W: AsyncWrite + Unpin>(
    w: &mut W,
    e: ProtoError,
    cfg: &SessionConfig,
) -> SessionError {
    let e = SessionError::from(e);
    if e.is_peer_fault() {
        refuse(w, ErrorCode::BadRequest, &e.to_string(), cfg).await;
    }
    e
}
