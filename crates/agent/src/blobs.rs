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
use pollen_proto::PieceGeometry;
use pollen_store::{Blob, Kind, Partial, StoreError};
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
        size: u64,
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
        let fetch = BlobFetch {
            ctx: &ctx,
            route: &route,
            digest,
            client_auth,
            progress: &tx,
        };
        let outcome = fetch.run().await;
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

/// One blob fetch and everything it works with.
struct BlobFetch<'a> {
    ctx: &'a Ctx,
    route: &'a Route,
    digest: Digest,
    client_auth: Option<http::HeaderValue>,
    progress: &'a watch::Sender<Progress>,
}

impl BlobFetch<'_> {
    /// Fetches the blob into the store, resuming broken transfers. On failure what was
    /// fetched is kept as a partial blob, so the next attempt continues from there.
    async fn run(&self) -> Result<Blob, FetchError> {
        let started = std::time::Instant::now();
        // A partial download left by an earlier run (or an earlier failed fetch) resumes
        // where it stopped: only the missing bytes are asked for.
        let mut sink = match self.ctx.store.partial_geometry(&self.digest) {
            Some(geometry) => Some(Sink::start(
                self.open_partial(geometry).await?,
                self.progress,
            )),
            None => None,
        };
        if let Some(s) = sink.as_ref().filter(|s| s.sent > 0) {
            info!(digest = %self.digest, offset = s.sent, "resuming a partial download");
        }
        if let Err(e) = self.transfer(&mut sink).await {
            if let Some(s) = sink.take() {
                s.suspend().await;
            }
            return Err(e);
        }
        let sink = sink.ok_or_else(|| FetchError::Upstream("no transfer".into()))?;
        let blob = sink.finish().await?;
        info!(
            digest = %self.digest,
            registry = %self.route.registry,
            bytes = blob.size(),
            secs = started.elapsed().as_secs_f64(),
            "blob fetched and verified"
        );
        Ok(blob)
    }

    /// Requests the blob (from the resume offset) until the whole body is in the sink.
    async fn transfer(&self, sink: &mut Option<Sink>) -> Result<(), FetchError> {
        let mut resumes = 0;
        loop {
            let offset = sink.as_ref().map_or(0, |s| s.sent);
            let req = FetchRequest {
                route: self.route,
                method: Method::GET,
                path: format!("blobs/{}", self.digest),
                accept: None,
                range_start: offset,
                client_auth: self.client_auth.clone(),
            };
            self.ctx.metrics.upstream_requests.inc();
            let resp = self.ctx.upstream.fetch(&req).await?;
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
            let s = match sink {
                Some(s) => s,
                None => {
                    let size = content_length(&resp).ok_or_else(|| {
                        FetchError::Upstream("upstream sent a blob without Content-Length".into())
                    })?;
                    let geometry = PieceGeometry::choose(size, None)
                        .map_err(|e| FetchError::Upstream(format!("blob of {size} bytes: {e}")))?;
                    sink.insert(Sink::start(
                        self.open_partial(geometry).await?,
                        self.progress,
                    ))
                }
            };
            if resp.status == StatusCode::OK && content_length(&resp) != Some(s.size) {
                return Err(FetchError::Upstream(format!(
                    "upstream size changed: {:?} bytes, expected {}",
                    content_length(&resp),
                    s.size
                )));
            }
            let mirror = resp.mirror.clone();
            match self.pump(resp, skip, s).await {
                Ok(()) => return Ok(()),
                Err(PumpError::Store) => return Ok(()), // the writer's own error is reported by finish()
                Err(PumpError::Upstream(why)) if resumes < MAX_RESUMES => {
                    resumes += 1;
                    self.ctx.upstream.report_failure(&mirror);
                    warn!(digest = %self.digest, offset = s.sent, error = %why, "upstream transfer broke; resuming with a range request");
                }
                Err(PumpError::Upstream(why)) => {
                    return Err(FetchError::Upstream(format!(
                        "transfer failed {} times, last: {why}",
                        resumes + 1
                    )));
                }
            }
        }
    }

    async fn open_partial(&self, geometry: PieceGeometry) -> Result<Partial, FetchError> {
        let store = self.ctx.store.clone();
        let digest = self.digest;
        // Reopening re-verifies pieces already on disk: blocking work.
        tokio::task::spawn_blocking(move || store.partial(digest, geometry))
            .await
            .map_err(|e| FetchError::Store(format!("opening partial blob: {e}")))?
            .map_err(FetchError::from)
    }

    /// Moves one response body into the sink, skipping `skip` bytes a 200 resends on resume.
    async fn pump(
        &self,
        resp: UpstreamResponse,
        mut skip: u64,
        sink: &mut Sink,
    ) -> Result<(), PumpError> {
        let idle = self.ctx.cfg.upstream.idle_timeout;
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
            self.ctx.metrics.upstream_bytes.inc_by(data.len() as u64);
            let start = sink.sent;
            sink.sent += data.len() as u64;
            if sink.tx.send(data.clone()).await.is_err() {
                return Err(PumpError::Store);
            }
            // Readers at the live edge take the chunk from memory now, while the disk write
            // and the hash proceed on their own threads.
            self.progress.send_modify(|p| {
                if let Progress::Streaming { recent, .. } = p {
                    *recent = Recent {
                        start,
                        chunks: vec![data].into(),
                    };
                }
            });
        }
    }
}

enum PumpError {
    Upstream(String),
    Store,
}

/// The disk side of a download: a blocking thread that writes the partial blob (hashing
/// pieces as they complete, the whole-blob hash beside it), so the network side never waits
/// on the disk or a hash.
struct Sink {
    tx: mpsc::Sender<Bytes>,
    /// Bytes of the blob sent to the writer so far (from the resume offset on).
    sent: u64,
    size: u64,
    progress: watch::Sender<Progress>,
    writer: tokio::task::JoinHandle<Result<Partial, StoreError>>,
}

impl Sink {
    fn start(mut partial: Partial, progress: &watch::Sender<Progress>) -> Sink {
        let sent = partial.append_offset();
        let size = partial.geometry().size();
        progress.send_replace(Progress::Streaming {
            size,
            written: sent,
            file: partial.file().clone(),
            recent: Recent::default(),
            verified: false,
        });
        let publish = progress.clone();
        let (tx, mut rx) = mpsc::channel::<Bytes>(WRITE_QUEUE);
        let writer = tokio::task::spawn_blocking(move || {
            while let Some(chunk) = rx.blocking_recv() {
                let mut result = partial.append(&chunk);
                // Drain what else has arrived before telling the readers: one wake-up per
                // batch instead of per chunk.
                let mut batched = chunk.len();
                while result.is_ok() && batched < PUBLISH_BATCH {
                    let Ok(more) = rx.try_recv() else { break };
                    result = partial.append(&more);
                    batched += more.len();
                }
                if let Err(e) = result {
                    // Disk full, or bytes that contradict a known piece hash: start afresh
                    // next time rather than keep what cannot be completed.
                    partial.abandon();
                    return Err(e);
                }
                let written = partial.append_offset();
                publish.send_modify(|p| {
                    if let Progress::Streaming { written: w, .. } = p {
                        *w = written;
                    }
                });
            }
            Ok(partial)
        });
        Sink {
            tx,
            sent,
            size,
            progress: progress.clone(),
            writer,
        }
    }

    async fn join(self) -> Result<(Partial, watch::Sender<Progress>), FetchError> {
        drop(self.tx);
        let partial = self
            .writer
            .await
            .map_err(|e| FetchError::Store(format!("writer task: {e}")))??;
        Ok((partial, self.progress))
    }

    /// Keeps what was fetched for a later attempt: a checkpoint instead of a commit.
    async fn suspend(self) {
        if let Ok((mut partial, _)) = self.join().await {
            let _ = tokio::task::spawn_blocking(move || partial.checkpoint()).await;
        }
    }

    async fn finish(self) -> Result<Blob, FetchError> {
        let (mut partial, progress) = self.join().await?;
        // Verify first and let readers have the last byte at once; the fsync and rename
        // that make the blob durable need not delay them.
        let partial = tokio::task::spawn_blocking(move || partial.verify().map(|()| partial))
            .await
            .map_err(|e| FetchError::Store(format!("verify task: {e}")))??;
        progress.send_modify(|p| {
            if let Progress::Streaming { verified, .. } = p {
                *verified = true;
            }
        });
        tokio::task::spawn_blocking(move || partial.commit())
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
