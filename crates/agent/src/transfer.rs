//! The upstream side of a blob fetch: range requests for the pieces no peer supplied (or
//! this node's share of a split fetch), streamed into the blob's writer, resumed when a
//! transfer breaks.

use crate::error::FetchError;
use crate::fetch::{BlobFetch, Coordination, UpstreamBusy};
use crate::gather::Gather;
use crate::inflight::Progress;
use crate::sink::{Appender, Op, Sink};
use bytes::Bytes;
use futures_util::FutureExt;
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

/// Why appending from the upstream stopped short.
enum Appending {
    /// The writer stopped (its own error is reported by `Sink::finish`).
    Stopped,
    /// The upstream gives the blob another size than the one it was opened with.
    Resized(u64),
    /// A response body broke off (resumed with a range request, up to [`MAX_RESUMES`]).
    Broken(String),
    Failed(FetchError),
}

impl BlobFetch<'_> {
    /// Fetches from the upstream what is missing; returns this node's share when the tracker
    /// split the fetch at its first response (the caller fetches the share beside the peer
    /// download, [`BlobFetch::fetch_share`]).
    pub(crate) async fn upstream(
        &self,
        sink: &mut Option<Sink>,
        coordination: &mut Coordination,
        why: &str,
    ) -> Result<Option<Range<u32>>, FetchError> {
        if let Some((link, _)) = coordination.as_ref() {
            link.set_fetching();
        }
        if let Some(s) = sink.as_ref() {
            s.fetching_upstream();
        }
        self.announce();
        let missing = sink.as_ref().map(|s| s.have.count() - s.have.count_ones());
        info!(digest = %self.digest, reason = %why, ?missing, "fetching from the upstream");
        let _busy = UpstreamBusy::start(self.peers);
        self.transfer(sink, coordination).await
    }

    /// This node's share of a split fetch, appended through `app` while the peer download
    /// carries on beside it (the node trades the other shares meanwhile).
    pub(crate) async fn fetch_share(
        &self,
        app: &mut Appender,
        share: &Range<u32>,
    ) -> Result<(), FetchError> {
        info!(digest = %self.digest, pieces = ?share, "fetching a share of a split fetch from the upstream");
        app.spread_as_fetcher();
        self.announce();
        let _busy = UpstreamBusy::start(self.peers);
        match self.append_missing(app, Some(share), &mut 0).await {
            Ok(()) => Ok(()),
            Err(Appending::Stopped) => Err(FetchError::Store("the blob's writer stopped".into())),
            Err(Appending::Resized(n)) => Err(FetchError::Upstream(format!(
                "the upstream gives the blob {n} bytes, not the {} its download was opened with",
                app.geometry.size()
            ))),
            Err(Appending::Failed(e)) => Err(e),
            Err(Appending::Broken(why)) => Err(FetchError::Upstream(why)),
        }
    }

    pub(crate) fn geometry_of(&self, size: u64) -> Result<PieceGeometry, FetchError> {
        self.check_size(size)?;
        PieceGeometry::choose(size, self.piece_size())
            .map_err(|e| FetchError::Upstream(format!("blob of {size} bytes: {e}")))
    }

    /// Fetches every piece still missing, opening the blob from the first response when no
    /// peer opened it. A size that differs from the one the blob was opened with (a peer's
    /// claim, a manifest's, an older answer) starts the blob afresh, once.
    async fn transfer(
        &self,
        sink: &mut Option<Sink>,
        coordination: &mut Coordination,
    ) -> Result<Option<Range<u32>>, FetchError> {
        let (mut restarted, mut resumes, mut probed) = (false, 0, false);
        loop {
            // A blob not opened yet starts with the first range; so does the tracker's fetcher
            // of a blob opened from a manifest's size with nothing in it yet, since that
            // range's response is what it reports to the tracker for the split.
            let fetcher = coordination.as_ref().is_some_and(|(_, a)| a.fetch);
            let fresh = sink
                .as_ref()
                .is_none_or(|s| fetcher && s.have.count_ones() == 0);
            if fresh && !std::mem::replace(&mut probed, true) {
                match self.first_range(sink, coordination, &mut resumes).await? {
                    Some(share) => return Ok(Some(share)),
                    None => continue,
                }
            }
            let Some(s) = sink.as_mut() else {
                return Err(FetchError::Upstream(
                    "the upstream's first response opened no blob".into(),
                ));
            };
            let mut app = s.appender();
            let result = self.append_missing(&mut app, None, &mut resumes).await;
            s.absorb(app);
            match result {
                Ok(()) | Err(Appending::Stopped) => return Ok(None),
                Err(Appending::Failed(e)) => return Err(e),
                Err(Appending::Broken(why)) => return Err(FetchError::Upstream(why)),
                Err(Appending::Resized(n)) => {
                    let opened = s.geometry.size();
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
                }
            }
        }
    }

    /// The first request of a blob nothing was fetched of: its response tells the size,
    /// opens the blob (or confirms the size it was opened with) and streams its first range.
    /// A coordinated fetch asks for a first range only and reports the size: when the
    /// tracker splits the fetch, this node's share is returned.
    /// The rest (and a broken first range) is the caller's to continue.
    async fn first_range(
        &self,
        sink: &mut Option<Sink>,
        coordination: &mut Coordination,
        resumes: &mut u32,
    ) -> Result<Option<Range<u32>>, FetchError> {
        let end = coordination.as_ref().and(self.probe_range());
        let (resp, skip) = self.request(0, end).await?;
        let size = total_size(&resp)
            .ok_or_else(|| FetchError::Upstream("upstream sent a blob without its size".into()))?;
        let geometry = self.geometry_of(size)?;
        let s = match sink.take() {
            Some(s) if s.geometry == geometry => sink.insert(s),
            opened => {
                if let Some(old) = opened {
                    let opened = old.geometry.size();
                    warn!(digest = %self.digest, upstream = size, opened, "the upstream's size differs from the manifest's; opening the blob afresh");
                    old.abandon().await;
                }
                sink.insert(self.start_sink(geometry).await?)
            }
        };
        // Large enough to be split: the tracker decides while the first range streams, and
        // the answer is taken after it.
        let split_min = self.peers.split_min();
        let splittable = split_min > 0 && size >= split_min.saturating_mul(2);
        let ranges = resp.status == StatusCode::PARTIAL_CONTENT || accepts_ranges(&resp);
        let reported = match coordination.as_mut().filter(|_| splittable) {
            Some((link, _)) => {
                link.report_size(size, geometry.count(), ranges);
                true
            }
            None => false,
        };
        let mut app = s.appender();
        app.seek_to(0).await?;
        let mirror = resp.mirror.clone();
        let result = self.take_range(resp, skip, end, None, &mut app).await;
        s.absorb(app);
        match result {
            Ok(()) => {}
            Err(Appending::Broken(why)) => {
                *resumes += 1;
                self.origin.count_resume();
                self.origin.current().report_failure(&mirror);
                warn!(digest = %self.digest, error = %why, "upstream transfer broke; resuming with a range request");
            }
            Err(Appending::Stopped) => return Ok(None),
            Err(Appending::Failed(e)) => return Err(e),
            Err(Appending::Resized(_)) => {} // the first response set the size
        }
        if !reported {
            return Ok(None);
        }
        let Some((link, assignment)) = coordination.as_mut() else {
            return Ok(None);
        };
        let share = link.share(assignment).await;
        if let Some(r) = &share {
            info!(digest = %self.digest, pieces = ?r, "the fetch is split; this node fetches a share");
        }
        Ok(share)
    }

    /// Appends every missing piece (of `share`, if given) from the upstream, one range request
    /// per run of missing pieces, resuming broken transfers until `resumes` (counted
    /// across the fetch) reaches [`MAX_RESUMES`].
    async fn append_missing(
        &self,
        app: &mut Appender,
        share: Option<&Range<u32>>,
        resumes: &mut u32,
    ) -> Result<(), Appending> {
        loop {
            let Some((start, end)) = app.next_range(share) else {
                return Ok(());
            };
            let size = app.geometry.size();
            app.seek_to(start).await.map_err(Appending::Failed)?;
            let end = (end < size).then_some(end);
            let (resp, skip) = self.request(start, end).await.map_err(Appending::Failed)?;
            let told = total_size(&resp);
            if let Some(n) = told.filter(|n| *n != size) {
                return Err(Appending::Resized(n));
            }
            if told.is_some() && !app.confirmed && !app.confirm().await {
                return Err(Appending::Stopped);
            }
            let mirror = resp.mirror.clone();
            match self.take_range(resp, skip, end, share, app).await {
                Err(Appending::Broken(why)) if *resumes < MAX_RESUMES => {
                    *resumes += 1;
                    self.origin.count_resume();
                    self.origin.current().report_failure(&mirror);
                    warn!(digest = %self.digest, offset = app.sent, error = %why, "upstream transfer broke; resuming with a range request");
                }
                Err(Appending::Broken(why)) => {
                    return Err(Appending::Failed(FetchError::Upstream(format!(
                        "transfer failed {} times, last: {why}",
                        *resumes + 1
                    ))))
                }
                other => other?,
            }
        }
    }

    /// Asks the upstream for the blob from byte `start` (to `end`, if given); returns the
    /// response and the bytes of it to skip (a 200 sends the blob from its first byte).
    async fn request(
        &self,
        start: u64,
        end: Option<u64>,
    ) -> Result<(UpstreamResponse, u64), FetchError> {
        let req = FetchRequest {
            route: self.route,
            method: Method::GET,
            path: format!("blobs/{}", self.digest),
            accept: None,
            range_start: start,
            range_end: end,
            client_auth: self.client_auth.clone(),
        };
        let resp = self.origin.fetch(&req).await?;
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
        Ok((resp, skip))
    }

    /// Streams one response into `app` (through the end of `share`, if given) and records the
    /// pieces it completed.
    async fn take_range(
        &self,
        resp: UpstreamResponse,
        skip: u64,
        end: Option<u64>,
        share: Option<&Range<u32>>,
        app: &mut Appender,
    ) -> Result<(), Appending> {
        app.spread_as_fetcher();
        let size = app.geometry.size();
        let share_end = share
            .and_then(|r| app.geometry.offset_of(r.end))
            .unwrap_or(size);
        // A 200 to a range request sends the whole blob anyway: take all of it.
        let end = end.filter(|_| resp.status == StatusCode::PARTIAL_CONTENT);
        let limit = end.unwrap_or(size).min(share_end).min(size);
        match self.pump(resp, skip, limit, app).await {
            Ok(()) => {
                app.appended_through(limit, share.map_or(0, |r| r.start));
                match app.tx.send(Op::Settle).await {
                    true => Ok(()),
                    false => Err(Appending::Stopped),
                }
            }
            Err(PumpError::Store) => Err(Appending::Stopped),
            Err(PumpError::Upstream(why)) => Err(Appending::Broken(why)),
        }
    }

    /// The first range of a coordinated fetch: [`PROBE_RANGE`], or half the smallest share
    /// when shares are smaller (`--split-min`); the whole blob when fetches are never split.
    fn probe_range(&self) -> Option<u64> {
        let split_min = self.peers.split_min();
        (split_min > 0).then(|| PROBE_RANGE.min(split_min / 2).max(1))
    }

    fn piece_size(&self) -> Option<u32> {
        self.peers.piece_size()
    }

    /// Moves one response body into the sink up to `limit`, skipping `skip` bytes a 200
    /// resends on resume. The bytes go out in page-aligned chunks (`gather.rs`), and at
    /// once whenever the upstream has nothing more waiting.
    async fn pump(
        &self,
        resp: UpstreamResponse,
        mut skip: u64,
        limit: u64,
        sink: &mut Appender,
    ) -> Result<(), PumpError> {
        let idle = self.origin.current().config().idle_timeout;
        let mut body = resp.body;
        let mut gather = Gather::new(sink.sent);
        let mut ready = Vec::new();
        // A frame that was already waiting when the last one was taken.
        let mut waiting = None;
        while gather.end() < limit {
            let next = match waiting.take() {
                Some(next) => Ok(next),
                None => timeout(idle, body.frame()).await,
            };
            let frame = match next {
                Ok(Some(Ok(frame))) => frame,
                broken => {
                    // Keep what arrived; the next range resumes after it.
                    self.deliver(gather.flush(true), sink).await?;
                    return Err(PumpError::Upstream(match broken {
                        Err(_) => format!("no bytes for {idle:?}"),
                        Ok(Some(Err(e))) => e.to_string(),
                        _ => format!("body ended at byte {} of {limit}", sink.sent),
                    }));
                }
            };
            let Ok(mut data) = frame.into_data() else {
                continue;
            };
            if skip > 0 {
                let n = skip.min(data.len() as u64);
                skip -= n;
                data = data.slice(n as usize..);
            }
            let room = limit - gather.end();
            if data.len() as u64 > room {
                data.truncate(room as usize);
            }
            self.metrics.upstream_bytes.inc_by(data.len() as u64);
            self.inflight
                .from_upstream
                .fetch_add(data.len() as u64, Ordering::Relaxed);
            gather.push(&data, &mut ready);
            waiting = body.frame().now_or_never();
            if waiting.is_none() {
                ready.extend(gather.flush(false));
            }
            for chunk in ready.drain(..) {
                self.deliver(Some(chunk), sink).await?;
            }
        }
        self.deliver(gather.flush(true), sink).await
    }

    /// Sends a gathered chunk to the writer and lets readers at the live edge take it from
    /// memory now, while the disk write and the hashes proceed on their own threads.
    async fn deliver(
        &self,
        chunk: Option<(u64, Bytes)>,
        sink: &mut Appender,
    ) -> Result<(), PumpError> {
        let Some((start, data)) = chunk else {
            return Ok(());
        };
        debug_assert_eq!(start, sink.sent, "chunks follow the append cursor");
        sink.sent += data.len() as u64;
        if !sink.tx.send(Op::Append(data.clone())).await {
            return Err(PumpError::Store);
        }
        self.inflight.progress().send_modify(|p| {
            if let Progress::Streaming { recent, .. } = p {
                *recent = recent.with([(start, data)]);
            }
        });
        Ok(())
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
pub(crate) fn range_start(resp: &UpstreamResponse) -> Option<u64> {
    header(resp, http::header::CONTENT_RANGE)?
        .strip_prefix("bytes ")?
        .split('-')
        .next()?
        .parse()
        .ok()
}
