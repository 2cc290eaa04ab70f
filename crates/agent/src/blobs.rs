//! Blobs: one upstream fetch per digest however many clients ask, streamed to all of them.
//!
//! The first request for a missing blob starts a download task and registers an [`Inflight`]
//! under the digest; later requests join it. The task writes the bytes once into the store's
//! temp file (hashing them on the way) and publishes its progress on a watch channel;
//! clients read the file behind it ([`crate::follow`]). A transfer that breaks is resumed
//! with a `Range` request. The task runs on its own, so a client that hangs up does not
//! cancel the fetch for the others (or for the cache).

use crate::error::FetchError;
use crate::Ctx;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use pollen_oci::Digest;
use pollen_store::{Blob, Kind, StoreError, Writer};
use pollen_upstream::{FetchRequest, Route, UpstreamResponse};
use std::fs::File;
use std::sync::Arc;
use tokio::sync::{mpsc, watch};
use tokio::time::timeout;
use tracing::{info, warn};

/// Times a broken transfer is resumed before the fetch fails.
const MAX_RESUMES: u32 = 3;
/// Chunks queued between the network and the disk writer (each at most a socket read).
const WRITE_QUEUE: usize = 16;
/// Most bytes written before readers are told about them.
const PUBLISH_BATCH: usize = 1 << 20;

/// Where a blob's bytes are, as seen by the clients reading it.
#[derive(Clone)]
pub(crate) enum Progress {
    /// Waiting for the upstream's response headers.
    Connecting,
    /// Bytes `0..written` of `size` are in `file`; none of them verified yet. The chunk
    /// received last is also kept in memory (it may not be on disk yet), so readers at the
    /// live edge take it without waiting for the disk or reading it back.
    Streaming {
        size: Option<u64>,
        written: u64,
        file: Arc<File>,
        recent: Recent,
        /// The digest has been checked: the last byte may go out (the fsync is pending).
        verified: bool,
    },
    /// Verified and committed; the handle pins it in the store.
    Done(Arc<Blob>),
    Failed(FetchError),
}

/// The chunks received last, starting at byte `start` of the blob.
#[derive(Clone, Default)]
pub(crate) struct Recent {
    pub start: u64,
    pub chunks: Arc<[Bytes]>,
}

impl Recent {
    pub fn end(&self) -> u64 {
        self.start + self.chunks.iter().map(|c| c.len() as u64).sum::<u64>()
    }

    /// Bytes from `pos` (inclusive) up to `limit` (exclusive) out of one in-memory chunk.
    pub fn slice(&self, pos: u64, limit: u64) -> Option<Bytes> {
        let mut offset = self.start;
        for chunk in self.chunks.iter() {
            let end = offset + chunk.len() as u64;
            if pos >= offset && pos < end && pos < limit {
                let from = (pos - offset) as usize;
                let to = (end.min(limit) - offset) as usize;
                return Some(chunk.slice(from..to));
            }
            offset = end;
        }
        None
    }
}

/// A blob being fetched, shared by every client that asked for it meanwhile.
pub(crate) struct Inflight {
    progress: watch::Sender<Progress>,
}

impl Inflight {
    pub fn subscribe(&self) -> watch::Receiver<Progress> {
        self.progress.subscribe()
    }
}

/// A receiver for a blob: already complete when cached, else following its one fetch.
pub(crate) fn open(
    ctx: &Arc<Ctx>,
    route: Route,
    digest: Digest,
    client_auth: Option<http::HeaderValue>,
) -> (watch::Receiver<Progress>, bool) {
    if let Some(blob) = ctx.store.get(Kind::Blob, &digest) {
        return (watch::channel(Progress::Done(Arc::new(blob))).1, true);
    }
    let entry = ctx.blobs.entry(digest);
    if let dashmap::Entry::Occupied(e) = &entry {
        return (e.get().subscribe(), false);
    }
    let (tx, rx) = watch::channel(Progress::Connecting);
    entry.insert(Arc::new(Inflight {
        progress: tx.clone(),
    }));
    // The fetch that registered just before us may have committed between our store lookup
    // and the insert: look again now that we own the slot.
    if let Some(blob) = ctx.store.get(Kind::Blob, &digest) {
        tx.send_replace(Progress::Done(Arc::new(blob)));
        ctx.blobs.remove(&digest);
        return (rx, true);
    }
    let ctx = ctx.clone();
    tokio::spawn(async move {
        let outcome = download(&ctx, &route, digest, client_auth, &tx).await;
        match outcome {
            Ok(blob) => {
                tx.send_replace(Progress::Done(Arc::new(blob)));
            }
            Err(e) => {
                if matches!(e, FetchError::Corrupt(_)) {
                    ctx.metrics.digest_mismatch.inc();
                }
                warn!(%digest, registry = %route.registry, error = ?e, "blob fetch failed");
                tx.send_replace(Progress::Failed(e));
            }
        }
        ctx.blobs.remove(&digest);
    });
    (rx, false)
}

/// Fetches one blob into the store, resuming broken transfers.
async fn download(
    ctx: &Ctx,
    route: &Route,
    digest: Digest,
    client_auth: Option<http::HeaderValue>,
    progress: &watch::Sender<Progress>,
) -> Result<Blob, FetchError> {
    let started = std::time::Instant::now();
    let mut sink: Option<Sink> = None;
    let mut resumes = 0;
    loop {
        let offset = sink.as_ref().map_or(0, |s| s.sent);
        let req = FetchRequest {
            route,
            method: Method::GET,
            path: format!("blobs/{digest}"),
            accept: None,
            range_start: offset,
            client_auth: client_auth.clone(),
        };
        ctx.metrics.upstream_requests.inc();
        let resp = ctx.upstream.fetch(&req).await?;
        let skip = match (resp.status, offset) {
            (StatusCode::OK, _) => offset,
            (StatusCode::PARTIAL_CONTENT, o) if o > 0 && range_start(&resp) == Some(o) => 0,
            (status, _) if !status.is_success() => {
                return Err(FetchError::from_status(status, &resp.headers))
            }
            (status, _) => {
                return Err(FetchError::Upstream(format!(
                    "unexpected upstream answer HTTP {status}"
                )))
            }
        };
        let sink = match &mut sink {
            Some(s) => s,
            None => {
                let size = content_length(&resp);
                let writer = ctx.store.writer(Kind::Blob, digest, size, None)?;
                progress.send_replace(Progress::Streaming {
                    size,
                    written: 0,
                    file: writer.file().clone(),
                    recent: Recent::default(),
                    verified: false,
                });
                sink.insert(Sink::start(writer, progress.clone()))
            }
        };
        let mirror = resp.mirror.clone();
        match pump(ctx, resp, skip, sink, progress).await {
            Ok(()) => break,
            Err(PumpError::Store) => break, // the writer's own error is reported by finish()
            Err(PumpError::Upstream(why)) if resumes < MAX_RESUMES => {
                resumes += 1;
                ctx.upstream.report_failure(&mirror);
                warn!(%digest, offset = sink.sent, error = %why, "upstream transfer broke; resuming with a range request");
            }
            Err(PumpError::Upstream(why)) => {
                return Err(FetchError::Upstream(format!(
                    "transfer failed {} times, last: {why}",
                    resumes + 1
                )))
            }
        }
    }
    let sink = sink.ok_or_else(|| FetchError::Upstream("no transfer".into()))?;
    let blob = sink.finish().await?;
    info!(
        %digest,
        registry = %route.registry,
        bytes = blob.size(),
        secs = started.elapsed().as_secs_f64(),
        "blob fetched and verified"
    );
    Ok(blob)
}

enum PumpError {
    Upstream(String),
    Store,
}

/// Moves one response body into the sink, skipping `skip` bytes a 200 resends on resume.
async fn pump(
    ctx: &Ctx,
    resp: UpstreamResponse,
    mut skip: u64,
    sink: &mut Sink,
    progress: &watch::Sender<Progress>,
) -> Result<(), PumpError> {
    let idle = ctx.cfg.upstream.idle_timeout;
    let mut body = resp.body;
    loop {
        let frame = match timeout(idle, body.frame()).await {
            Err(_) => return Err(PumpError::Upstream(format!("no bytes for {idle:?}"))),
            Ok(None) => return Ok(()),
            Ok(Some(Err(e))) => return Err(PumpError::Upstream(e.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(mut data) = frame.into_data() else {
            continue;
        };
        if skip > 0 {
            let n = skip.min(data.len() as u64);
            skip -= n;
            data = data.slice(n as usize..);
            if data.is_empty() {
                continue;
            }
        }
        ctx.metrics.upstream_bytes.inc_by(data.len() as u64);
        let start = sink.sent;
        sink.sent += data.len() as u64;
        if sink.tx.send(data.clone()).await.is_err() {
            return Err(PumpError::Store);
        }
        // Readers at the live edge take the chunk from memory now, while the disk write
        // and the hash proceed on their own threads.
        progress.send_modify(|p| {
            if let Progress::Streaming { recent, .. } = p {
                *recent = Recent {
                    start,
                    chunks: vec![data].into(),
                };
            }
        });
    }
}

/// The disk side of a download: a blocking thread that writes and hashes, so the network
/// side never waits on the disk or the hash.
struct Sink {
    tx: mpsc::Sender<Bytes>,
    sent: u64,
    progress: watch::Sender<Progress>,
    writer: tokio::task::JoinHandle<Result<Writer, StoreError>>,
}

impl Sink {
    fn start(mut writer: Writer, progress: watch::Sender<Progress>) -> Sink {
        let publish = progress.clone();
        let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let handle = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = rx.blocking_recv() {
                writer.write(&chunk)?;
                // Drain what else has arrived before telling the readers: one wake-up per
                // batch instead of per chunk.
                let mut batched = chunk.len();
                while batched < PUBLISH_BATCH {
                    let Ok(more) = rx.try_recv() else { break };
                    writer.write(&more)?;
                    batched += more.len();
                }
                let written = writer.written();
                progress.send_modify(|p| {
                    if let Progress::Streaming { written: w, .. } = p {
                        *w = written;
                    }
                });
            }
            Ok(writer)
        });
        Sink {
            tx,
            sent: 0,
            progress: publish,
            writer: handle,
        }
    }

    async fn finish(self) -> Result<Blob, FetchError> {
        drop(self.tx);
        let mut writer = self
            .writer
            .await
            .map_err(|e| FetchError::Store(format!("writer task: {e}")))??;
        // Verify first and let readers have the last byte at once; the fsync and rename
        // that make the blob durable need not delay them.
        let writer = tokio::task::spawn_blocking(move || writer.verify().map(|()| writer))
            .await
            .map_err(|e| FetchError::Store(format!("verify task: {e}")))??;
        self.progress.send_modify(|p| {
            if let Progress::Streaming { verified, .. } = p {
                *verified = true;
            }
        });
        tokio::task::spawn_blocking(move || writer.commit())
            .await
            .map_err(|e| FetchError::Store(format!("commit task: {e}")))?
            .map_err(FetchError::from)
    }
}

fn content_length(resp: &UpstreamResponse) -> Option<u64> {
    resp.headers
        .get(http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// The first byte of a 206's `Content-Range: bytes a-b/n`.
fn range_start(resp: &UpstreamResponse) -> Option<u64> {
    let v = resp
        .headers
        .get(http::header::CONTENT_RANGE)?
        .to_str()
        .ok()?;
    v.strip_prefix("bytes ")?.split('-').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_slices_stay_inside_chunks_and_limits() {
        let recent = Recent {
            start: 100,
            chunks: vec![Bytes::from_static(b"abcd"), Bytes::from_static(b"efgh")].into(),
        };
        assert_eq!(recent.slice(100, 200).as_deref(), Some(&b"abcd"[..]));
        assert_eq!(recent.slice(102, 200).as_deref(), Some(&b"cd"[..]));
        assert_eq!(recent.slice(104, 200).as_deref(), Some(&b"efgh"[..]));
        assert_eq!(
            recent.slice(105, 107).as_deref(),
            Some(&b"fg"[..]),
            "limit holds back"
        );
        assert_eq!(
            recent.slice(107, 107),
            None,
            "nothing readable at the limit"
        );
        assert_eq!(
            recent.slice(99, 200),
            None,
            "before the batch: read the file"
        );
        assert_eq!(recent.slice(108, 200), None, "past the batch");
        assert_eq!(Recent::default().slice(0, 10), None);
    }
}
