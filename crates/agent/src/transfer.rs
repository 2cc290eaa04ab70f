//! The upstream side of a blob fetch: range requests for the pieces no peer supplied (or
//! this node's share of a split fetch), streamed into the blob's writer, resumed when a
//! transfer breaks.

use crate::blobs::{BlobFetch, Progress, Recent};
use crate::error::FetchError;
use crate::p2p::tracker::{Assignment, TrackerLink};
use crate::sink::{Op, Sink};
use http::{Method, StatusCode};
use http_body_util::BodyExt;
use pollen_proto::PieceGeometry;
use pollen_upstream::{FetchRequest, UpstreamResponse};
use std::ops::Range;
use std::sync::atomic::Ordering;
use tokio::time::timeout;
use tracing::{info, warn};

/// The first request of a coordinated fetch asks for at most this many bytes: enough to
/// start streaming, and less than a share of a split fetch (so when the tracker answers
/// `Sized`, no byte past this node's share is on its way).
const PROBE_RANGE: u64 = 4 << 20;

/// Times a broken transfer is resumed before the fetch fails.
const MAX_RESUMES: u32 = 3;

impl BlobFetch<'_> {
    /// Fetches from the upstream what is missing (of `share`, or of the whole blob); returns
    /// the share this node was left with when the tracker split the fetch meanwhile.
    pub(crate) async fn upstream(
        &self,
        sink: &mut Option<Sink>,
        coordination: &mut Option<(TrackerLink, Assignment)>,
        share: Option<Range<u32>>,
        why: &str,
    ) -> Result<Option<Range<u32>>, FetchError> {
        if let Some((link, _)) = coordination.as_ref() {
            link.set_fetching();
        }
        let missing = sink.as_ref().map(|s| s.have.count() - s.have.count_ones());
        info!(digest = %self.digest, reason = %why, ?share, ?missing, "fetching from the upstream");
        let _busy = self.ctx.p2p.as_ref().map(UpstreamFetch::start);
        self.transfer(sink, coordination, share).await
    }

    pub(crate) fn geometry_of(&self, size: u64) -> Result<PieceGeometry, FetchError> {
        self.check_size(size)?;
        PieceGeometry::choose(size, self.piece_size())
            .map_err(|e| FetchError::Upstream(format!("blob of {size} bytes: {e}")))
    }

    /// Fetches every piece still missing (of `share`, if given) from the upstream, one range
    /// request per run of missing pieces, resuming broken transfers. The first response tells
    /// the blob's size; the blob's tracker may then split the fetch, and this node keeps only
    /// its share (returned).
    async fn transfer(
        &self,
        sink: &mut Option<Sink>,
        coordination: &mut Option<(TrackerLink, Assignment)>,
        mut share: Option<Range<u32>>,
    ) -> Result<Option<Range<u32>>, FetchError> {
        let mut resumes = 0;
        let mut reported = false;
        let mut restarted = false;
        loop {
            if std::mem::take(&mut reported) {
                if let Some((link, assignment)) = coordination.as_mut() {
                    share = link.share(assignment).await;
                    if let Some(r) = &share {
                        info!(digest = %self.digest, pieces = ?r, "the fetch is split; this node fetches a share");
                    }
                }
            }
            let (start, end) = match sink.as_ref() {
                // A coordinated fetch may be split once the size is known: ask for a first
                // range only, so no byte past this node's share is on its way by then.
                None if coordination.is_some() => (0, self.probe_range()),
                None => (0, None),
                Some(s) => match s.next_range(share.as_ref()) {
                    None => return Ok(share),
                    Some((start, end)) => (start, (end < s.geometry.size()).then_some(end)),
                },
            };
            if let Some(s) = sink.as_mut() {
                s.seek_to(start).await?;
            }
            let req = FetchRequest {
                route: self.route,
                method: Method::GET,
                path: format!("blobs/{}", self.digest),
                accept: None,
                range_start: start,
                range_end: end,
                client_auth: self.client_auth.clone(),
            };
            let resp = self.ctx.upstream_fetch(&req).await?;
            let ranged = start > 0 || end.is_some();
            let skip = match resp.status {
                StatusCode::OK => start,
                StatusCode::PARTIAL_CONTENT if ranged && range_start(&resp) == Some(start) => 0,
                status if !status.is_success() => {
                    return Err(FetchError::from_status(status, &resp.headers))
                }
                status => {
                    return Err(FetchError::Upstream(format!(
                        "unexpected upstream answer HTTP {status}"
                    )))
                }
            };
            if let Some(s) = sink.as_mut() {
                let (told, opened) = (total_size(&resp), s.geometry.size());
                if told == Some(opened) && !s.confirmed && !s.confirm().await {
                    return Ok(None); // the writer's own error is reported by finish()
                }
                if let Some(n) = told.filter(|n| *n != opened) {
                    // The size the blob was opened with (a peer's claim, a manifest's, or an
                    // older upstream answer) is not the upstream's: what was downloaded
                    // cannot be this blob. Start afresh, once.
                    warn!(digest = %self.digest, upstream = n, opened, "the upstream's size differs; dropping the partial download");
                    if let Some(old) = sink.take() {
                        old.abandon().await;
                    }
                    self.check_size(n)?;
                    if std::mem::replace(&mut restarted, true) {
                        return Err(FetchError::Upstream(
                            "the upstream changed the blob's size twice".into(),
                        ));
                    }
                    continue;
                }
            }
            let s = match sink {
                Some(s) => s,
                None => {
                    let size = total_size(&resp).ok_or_else(|| {
                        FetchError::Upstream("upstream sent a blob without its size".into())
                    })?;
                    let geometry = self.geometry_of(size)?;
                    let s = sink.insert(self.start_sink(geometry).await?);
                    // Large enough to be split: the tracker decides while the first range
                    // streams, and the answer is taken before the next request.
                    let split_min = self.ctx.p2p.as_ref().map_or(0, |p| p.cfg.split_min);
                    let splittable = split_min > 0 && size >= split_min.saturating_mul(2);
                    if let Some((link, _)) = coordination.as_mut().filter(|_| splittable) {
                        let ranges =
                            resp.status == StatusCode::PARTIAL_CONTENT || accepts_ranges(&resp);
                        link.report_size(size, geometry.count(), ranges);
                        reported = true;
                    }
                    s
                }
            };
            s.spread_as_fetcher();
            let size = s.geometry.size();
            let share_end = share
                .as_ref()
                .and_then(|r| s.geometry.offset_of(r.end))
                .unwrap_or(size);
            // A 200 to a range request sends the whole blob anyway: take all of it.
            let end = end.filter(|_| resp.status == StatusCode::PARTIAL_CONTENT);
            let limit = end.unwrap_or(size).min(share_end).min(size);
            let mirror = resp.mirror.clone();
            match self.pump(resp, skip, limit, s).await {
                Ok(()) => {
                    s.appended_through(limit, share.as_ref().map_or(0, |r| r.start));
                    if !s.send(Op::Settle).await {
                        return Ok(None); // the writer's own error is reported by finish()
                    }
                }
                Err(PumpError::Store) => return Ok(None), // the writer's own error is reported by finish()
                Err(PumpError::Upstream(why)) if resumes < MAX_RESUMES => {
                    resumes += 1;
                    self.ctx.upstream().report_failure(&mirror);
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

    /// The first range of a coordinated fetch: [`PROBE_RANGE`], or half the smallest share
    /// when shares are smaller (`--split-min`); the whole blob when fetches are never split.
    fn probe_range(&self) -> Option<u64> {
        let split_min = self.ctx.p2p.as_ref()?.cfg.split_min;
        (split_min > 0).then(|| PROBE_RANGE.min(split_min / 2).max(1))
    }

    fn piece_size(&self) -> Option<u32> {
        self.ctx.p2p.as_ref().and_then(|p| p.cfg.session.piece_size)
    }

    /// Moves one response body into the sink up to `limit`, skipping `skip` bytes a 200
    /// resends on resume.
    async fn pump(
        &self,
        resp: UpstreamResponse,
        mut skip: u64,
        limit: u64,
        sink: &mut Sink,
    ) -> Result<(), PumpError> {
        let idle = self.ctx.upstream().config().idle_timeout;
        let mut body = resp.body;
        while sink.sent < limit {
            let frame = match timeout(idle, body.frame()).await {
                Err(_) => return Err(PumpError::Upstream(format!("no bytes for {idle:?}"))),
                Ok(None) => {
                    return Err(PumpError::Upstream(format!(
                        "body ended at byte {} of {limit}",
                        sink.sent
                    )))
                }
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
            }
            let room = limit - sink.sent;
            if data.len() as u64 > room {
                data.truncate(room as usize);
            }
            if data.is_empty() {
                continue;
            }
            self.ctx.metrics.upstream_bytes.inc_by(data.len() as u64);
            self.inflight
                .from_upstream
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            let start = sink.sent;
            sink.sent += data.len() as u64;
            if !sink.send(Op::Append(data.clone())).await {
                return Err(PumpError::Store);
            }
            // Readers at the live edge take the chunk from memory now, while the disk write
            // and the hash proceed on their own threads.
            self.inflight.progress().send_modify(|p| {
                if let Progress::Streaming { recent, .. } = p {
                    *recent = Recent {
                        start,
                        chunks: vec![data].into(),
                    };
                }
            });
        }
        Ok(())
    }
}

/// Counts this node's upstream transfers while it lives (see `P2p::upstream_fetches`).
struct UpstreamFetch<'a>(&'a crate::p2p::P2p);

impl UpstreamFetch<'_> {
    fn start(p2p: &crate::p2p::P2p) -> UpstreamFetch<'_> {
        p2p.upstream_fetches.fetch_add(1, Ordering::Relaxed);
        UpstreamFetch(p2p)
    }
}

impl Drop for UpstreamFetch<'_> {
    fn drop(&mut self) {
        self.0.upstream_fetches.fetch_sub(1, Ordering::Relaxed);
    }
}

enum PumpError {
    Upstream(String),
    Store,
}

/// A response header as text, if present and readable.
fn header(resp: &UpstreamResponse, name: http::header::HeaderName) -> Option<&str> {
    resp.headers.get(name)?.to_str().ok()
}

/// The upstream answers range requests for this blob.
fn accepts_ranges(resp: &UpstreamResponse) -> bool {
    header(resp, http::header::ACCEPT_RANGES)
        .is_some_and(|v| v.split(',').any(|u| u.trim().eq_ignore_ascii_case("bytes")))
}

/// The blob's size as the upstream states it: a 206's `Content-Range` total, else the
/// `Content-Length` of the whole blob.
fn total_size(resp: &UpstreamResponse) -> Option<u64> {
    match resp.status {
        StatusCode::PARTIAL_CONTENT => range_total(resp),
        _ => content_length(resp),
    }
}

fn content_length(resp: &UpstreamResponse) -> Option<u64> {
    header(resp, http::header::CONTENT_LENGTH)?.parse().ok()
}

/// The blob's size from a 206's `Content-Range: bytes a-b/n`.
fn range_total(resp: &UpstreamResponse) -> Option<u64> {
    header(resp, http::header::CONTENT_RANGE)?
        .rsplit('/')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// The first byte of a 206's `Content-Range: bytes a-b/n`.
fn range_start(resp: &UpstreamResponse) -> Option<u64> {
    header(resp, http::header::CONTENT_RANGE)?
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .parse()
        .ok()
}
