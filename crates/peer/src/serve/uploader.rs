//! The uploader's session loop (see the parent module for the design): one task, a
//! persistent read of the next request, a writer job, the source's watch, the slot wait and
//! the deadlines in one `select!`.

use super::announce::Announcer;
use super::job::{self, JobError, PieceJob, Sent};
use super::{ServeEnd, ServeSummary};
use crate::config::{after, SessionConfig};
use crate::error::SessionError;
use crate::limits::{UploadLimits, SLOT_YIELD_AFTER};
use crate::slots::{NoSlot, QueuePlace, SlotPermit};
use crate::source::{BlobView, PieceReader, PieceState};
use crate::spread::Seat;
use pollen_proto::{
    read_request, ErrorCode, PieceGeometry, ProtoError, Reply, Request, MAX_OUTSTANDING_REQUESTS,
};
use std::collections::VecDeque;
use std::future::{pending, Future};
use std::pin::Pin;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::watch;
use tokio::time::{sleep_until, timeout, Instant};
use tracing::debug;

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A running writer job: gives the write half back with what it sent.
type Job<S> = BoxFut<(WriteHalf<S>, Result<Sent, JobError>)>;

/// The pending read of the next request: gives the read half back with the request.
type NextRequest<S> = BoxFut<(ReadHalf<S>, Result<Option<Request>, ProtoError>)>;

/// The session's upload slot. The permit and the queue place release the slot or leave the
/// queue when dropped.
pub(super) enum Slot {
    Held {
        permit: SlotPermit,
    },
    /// A small blob, served without a slot ([`crate::limits::SLOTLESS_MAX_BYTES`]).
    Free,
    /// Waiting for a slot until `until`. The place moves into the wait for the grant once
    /// the session's loop starts waiting.
    Waiting {
        place: Option<QueuePlace>,
        until: Instant,
    },
}

/// How the session will end: a last frame to send (or nothing), then the result.
struct Ending {
    last: Last,
    result: Result<ServeEnd, SessionError>,
}

enum Last {
    /// An `Error` to send once the writer is free.
    Frame(Reply),
    /// The final job is writing it.
    Writing,
    /// Nothing to send: end now.
    Nothing,
}

pub(super) struct Uploader {
    summary: ServeSummary,
    geometry: PieceGeometry,
    ann: Announcer,
    state: watch::Receiver<PieceState>,
    /// This session's place in the blob's super-seeding, and when its view next widens.
    seat: Option<Seat>,
    reveal_at: Option<Instant>,
    reader: Arc<dyn PieceReader>,
    limits: Arc<UploadLimits>,
    cfg: SessionConfig,
    /// `GetPiece`s accepted and not yet taken by a job, in arrival order.
    queue: VecDeque<u32>,
    slot: Slot,
    unchoked: bool,
    /// `Unchoked` or `Choked`, to send with the next job.
    choke_news: Option<Reply>,
    /// False once the source dropped its watch sender (the last state stays valid).
    watching: bool,
    state_dirty: bool,
    /// An idle slot holder found nobody waiting: it looks again from this instant.
    yield_checked: Instant,
    /// The session's ticket in the node's slot table (`None`: served without a slot).
    ticket: Option<u64>,
    /// The slots the downloader last said its node holds (`Request::Holding`).
    holding: u32,
    /// When this session last got its slot (`Slots::turn_over` counts its tenure).
    granted_at: Instant,
    last_request: Instant,
    ending: Option<Ending>,
}

impl Uploader {
    pub(super) fn new(
        summary: ServeSummary,
        view: BlobView,
        limits: Arc<UploadLimits>,
        cfg: &SessionConfig,
        slot: Slot,
    ) -> Uploader {
        let held = matches!(slot, Slot::Held { .. } | Slot::Free);
        let ticket = match &slot {
            Slot::Held { permit } => Some(permit.ticket()),
            Slot::Waiting { place, .. } => place.as_ref().map(|p| p.ticket()),
            Slot::Free => None,
        };
        Uploader {
            geometry: view.geometry,
            ann: Announcer::new(summary.digest, view.geometry, cfg.signed_hashes),
            summary,
            state: view.state,
            seat: view.spread.as_ref().map(|s| s.seat()),
            reveal_at: None,
            reader: view.reader,
            limits,
            cfg: cfg.clone(),
            queue: VecDeque::new(),
            unchoked: held,
            // Sessions start choked; an explicit `Choked` tells a waiting peer why nothing comes.
            choke_news: Some(if held { Reply::Unchoked } else { Reply::Choked }),
            slot,
            watching: true,
            state_dirty: true,
            last_request: Instant::now(),
            yield_checked: Instant::now(),
            ticket,
            holding: 0,
            granted_at: Instant::now(),
            ending: None,
        }
    }

    pub(super) async fn run<S>(
        mut self,
        reader: ReadHalf<S>,
        writer: WriteHalf<S>,
    ) -> Result<ServeSummary, SessionError>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mut writer = Some(writer);
        let mut job: Option<Job<S>> = None;
        let mut read = Some(read_next(reader));
        let mut slot_wait: Option<BoxFut<Result<SlotPermit, NoSlot>>> = None;
        loop {
            // Waiting for a slot, from the start or since this session gave its own up.
            if let (None, None, Slot::Waiting { place, .. }) =
                (&slot_wait, &self.ending, &mut self.slot)
            {
                if let Some(place) = place.take() {
                    slot_wait = Some(Box::pin(place.granted()));
                }
            }
            if let Some(w) = writer.take() {
                match self.next_job(w) {
                    Ok(started) => job = Some(started),
                    Err(idle) => writer = Some(idle),
                }
            }
            match self.ending.as_ref().map(|e| &e.last) {
                None => {}
                Some(Last::Nothing) => {
                    if let Some(w) = writer.as_mut() {
                        let _ = timeout(self.cfg.stall_timeout, w.shutdown()).await;
                    }
                    let result = self
                        .ending
                        .take()
                        .map_or(Ok(ServeEnd::Closed), |e| e.result);
                    return self.finish(result);
                }
                // Waiting for the writer to take the last frame, or to finish writing it: stop
                // everything else.
                Some(Last::Frame(_) | Last::Writing) => {
                    read = None;
                    slot_wait = None;
                    self.watching = false;
                    self.queue.clear();
                }
            }
            let deadline = self.deadline(job.is_some());
            tokio::select! {
                biased;
                done = poll_opt(&mut job) => {
                    job = None;
                    let (w, res) = done;
                    writer = Some(w);
                    if let Some(end) = self.on_job_done(res) {
                        return self.finish(end);
                    }
                }
                got = poll_opt(&mut read) => {
                    let (r, res) = got;
                    read = None;
                    match res {
                        Ok(Some(req)) => {
                            read = Some(read_next(r));
                            self.on_request(req);
                        }
                        Ok(None) => self.end_quietly(Ok(ServeEnd::Closed)),
                        Err(e) => match SessionError::from(e) {
                            e @ SessionError::PeerFault(_) => {
                                let msg = e.to_string();
                                self.end_with(ErrorCode::BadRequest, msg, Err(e));
                            }
                            e => self.end_quietly(Err(e)),
                        },
                    }
                }
                changed = self.state.changed(), if self.watching => match changed {
                    Ok(()) => self.state_dirty = true,
                    Err(_) => self.watching = false,
                },
                permit = poll_opt(&mut slot_wait) => {
                    slot_wait = None;
                    match permit {
                        Ok(permit) => self.grant(permit),
                        Err(NoSlot::Displaced) => self.end_with(
                            ErrorCode::Busy,
                            "the upload queue is full and kept for nodes holding fewer upload slots elsewhere",
                            Ok(ServeEnd::Busy),
                        ),
                        Err(NoSlot::ShutDown) => self.end_with(ErrorCode::Busy, "uploads are shut down", Ok(ServeEnd::Busy)),
                    }
                }
                () = sleep_opt(deadline) => self.on_deadline(job.is_some()),
                () = async {
                    match self.seat.as_mut() {
                        Some(seat) => seat.changed().await,
                        None => pending().await,
                    }
                } => self.state_dirty = true,
                () = sleep_opt(self.reveal_at) => {
                    self.reveal_at = None;
                    self.state_dirty = true;
                }
            }
        }
    }

    /// The next job for a free writer, or the writer back if there is nothing to write.
    fn next_job<S>(&mut self, mut w: WriteHalf<S>) -> Result<Job<S>, WriteHalf<S>>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let mut frames = Vec::new();
        if self.state_dirty && self.ending.is_none() {
            self.state_dirty = false;
            // Clone out of the watch: its guard must not be held across an await.
            let mut state = self.state.borrow_and_update().clone();
            self.reveal_at = None;
            if let Some(seat) = self.seat.as_ref() {
                let (shown, next) = seat.visible(&state.have, Instant::now(), self.unchoked);
                if shown != state.have {
                    // Super-seeding still holds pieces back: the peer hears of them later, and
                    // of the blob being complete only when it may ask for every piece.
                    state.have = shown;
                    state.complete = false;
                    state.map_id = None;
                }
                self.reveal_at = next;
            }
            if let Err(msg) = self.ann.update(&state, &mut frames) {
                frames.clear();
                let msg = format!("the piece source broke its contract: {msg}");
                self.end_with(
                    ErrorCode::Internal,
                    msg.clone(),
                    Err(SessionError::Internal(msg)),
                );
            }
        }
        let mut close = false;
        let mut piece = None;
        if let Some(ending) = self.ending.as_mut() {
            match std::mem::replace(&mut ending.last, Last::Writing) {
                Last::Frame(frame) => frames = vec![frame],
                other => {
                    ending.last = other;
                    return Err(w);
                }
            }
            close = true;
        } else {
            frames.extend(self.choke_news.take());
            if self.unchoked {
                piece = self.queue.pop_front().map(|index| PieceJob {
                    index,
                    // Only announced (so in-range) pieces are queued.
                    len: self.geometry.len_of(index).unwrap_or(0),
                    reader: self.reader.clone(),
                });
            }
        }
        if frames.is_empty() && piece.is_none() {
            return Err(w);
        }
        let limits = self.limits.clone();
        let stall = self.cfg.stall_timeout;
        Ok(Box::pin(async move {
            let res = job::run(&mut w, frames, piece, close, &limits, stall).await;
            (w, res)
        }))
    }

    fn on_request(&mut self, req: Request) {
        // `Holding` asks for nothing: it does not keep an idle holder's slot.
        if !matches!(req, Request::Holding { .. }) {
            self.last_request = Instant::now();
        }
        match req {
            Request::Interest { .. } => self.bad_request("a second Interest".into()),
            Request::GetPieceMap => {
                self.ann.ask_map();
                self.state_dirty = true;
            }
            Request::GetPiece { index } => {
                let count = self.geometry.count();
                if index >= count {
                    self.bad_request(format!("piece {index} is past the blob's {count} pieces"));
                } else if !self.unchoked {
                    debug!(index, "GetPiece while choked: dropped");
                } else if !self.ann.is_announced(index) {
                    self.bad_request(format!("piece {index} was never announced"));
                } else if self.queue.contains(&index) {
                    debug!(index, "GetPiece for a piece already queued: ignored");
                } else if self.queue.len() >= MAX_OUTSTANDING_REQUESTS {
                    self.bad_request(format!(
                        "more than {MAX_OUTSTANDING_REQUESTS} outstanding requests"
                    ));
                } else {
                    self.queue.push_back(index);
                }
            }
            Request::Cancel { index } => self.queue.retain(|&i| i != index),
            Request::NotInterested => self.end_quietly(Ok(ServeEnd::NotInterested)),
            Request::Holding { slots } => {
                self.holding = slots;
                if let Some(ticket) = self.ticket {
                    self.limits.holding(ticket, slots);
                }
            }
        }
    }

    /// A finished job: counts what it sent; `Some` ends the session with that result.
    fn on_job_done(
        &mut self,
        res: Result<Sent, JobError>,
    ) -> Option<Result<ServeEnd, SessionError>> {
        match res {
            Ok(sent) => {
                if let (Some(seat), Some(index)) = (self.seat.as_ref(), sent.piece) {
                    // A place in the super-seeding quota may have freed: look again.
                    seat.sent(index, Instant::now());
                    self.state_dirty = true;
                }
                if sent.piece.is_some() && self.ending.is_none() {
                    self.turn_over(Instant::now());
                }
                self.summary.bytes_sent += sent.bytes;
                self.summary.pieces_sent += sent.pieces;
                // Time spent writing is not idle time.
                self.last_request = self.last_request.max(Instant::now());
                // The last frame went out: done.
                match &self.ending {
                    Some(Ending {
                        last: Last::Writing,
                        ..
                    }) => self.ending.take().map(|e| e.result),
                    _ => None,
                }
            }
            // The stream is gone; a fault found earlier is the better explanation.
            Err(JobError::Stream(e)) => Some(self.ending.take().map_or(Err(e), |end| end.result)),
            Err(JobError::Source(msg)) => {
                if self.ending.is_none() {
                    self.end_with(
                        ErrorCode::Internal,
                        msg.clone(),
                        Err(SessionError::Internal(msg)),
                    );
                }
                None
            }
        }
    }

    fn grant(&mut self, permit: SlotPermit) {
        self.slot = Slot::Held { permit };
        self.granted_at = Instant::now();
        self.unchoked = true;
        // Super-seeding: an unchoked session may take new pieces now.
        self.state_dirty = true;
        self.choke_news = Some(Reply::Unchoked);
    }

    /// The earliest of the idle deadline (nothing queued or being written), the deadline for
    /// getting a slot, and the moment an idle slot holder looks whether to give it up; `None`
    /// when none applies.
    fn deadline(&self, writing: bool) -> Option<Instant> {
        if self.ending.is_some() {
            // Only the last frame is left to write, bounded by the stall deadline.
            return None;
        }
        let idle = self.queue.is_empty() && !writing;
        let end = idle.then(|| after(self.last_request, self.cfg.idle_timeout));
        let slot = match self.slot {
            Slot::Waiting { until, .. } => Some(until),
            Slot::Held { .. } if idle => Some(self.yield_at()),
            Slot::Held { .. } | Slot::Free => None,
        };
        end.into_iter().chain(slot).min()
    }

    /// When an idle slot holder next looks whether others wait ([`SLOT_YIELD_AFTER`]).
    fn yield_at(&self) -> Instant {
        after(self.last_request, SLOT_YIELD_AFTER).max(self.yield_checked)
    }

    /// Gives the slot up to a waiting session: `Choked` now, back in the queue (even a full
    /// one: `pollen_core::upload::may_yield`). Kept only past the queue's overrun bound.
    fn yield_slot(&mut self, now: Instant) {
        let Slot::Held { permit } = std::mem::replace(&mut self.slot, Slot::Free) else {
            return;
        };
        match permit.give_up(self.holding) {
            Ok(place) => self.lost_slot(place, now),
            Err(permit) => {
                self.slot = Slot::Held { permit };
                self.yield_checked = after(now, SLOT_YIELD_AFTER);
            }
        }
    }

    /// After a piece: the slot goes to a poorer waiting node if the core says so
    /// (`Slots::turn_over`), with a `Choked` that drops the requests queued here (the
    /// downloader asks for them elsewhere, and again here once unchoked).
    fn turn_over(&mut self, now: Instant) {
        let Slot::Held { permit } = std::mem::replace(&mut self.slot, Slot::Free) else {
            return;
        };
        let held_for = now.saturating_duration_since(self.granted_at);
        match permit.turn_over(self.holding, held_for, now.into_std()) {
            Ok(place) => self.lost_slot(place, now),
            Err(permit) => self.slot = Slot::Held { permit },
        }
    }

    /// The slot went to another session: `Choked` now (dropping the requests queued here,
    /// as the protocol says), back in the queue, and the pieces this session owned unsent in
    /// the super-seeding go to others (`Claims::choked`).
    fn lost_slot(&mut self, place: QueuePlace, now: Instant) {
        self.slot = Slot::Waiting {
            place: Some(place),
            until: after(now, self.cfg.slot_timeout),
        };
        self.unchoked = false;
        self.queue.clear();
        if let Some(seat) = self.seat.as_ref() {
            seat.choked();
        }
        self.state_dirty = true;
        self.choke_news = Some(Reply::Choked);
    }

    fn on_deadline(&mut self, writing: bool) {
        let now = Instant::now();
        let idle = self.queue.is_empty() && !writing;
        if idle && matches!(self.slot, Slot::Held { .. }) && self.yield_at() <= now {
            match self.limits.someone_waiting() {
                true => self.yield_slot(now),
                false => self.yield_checked = after(now, SLOT_YIELD_AFTER),
            }
        }
        if matches!(self.slot, Slot::Waiting { until, .. } if until <= now) {
            self.end_with(
                ErrorCode::Busy,
                "no upload slot came free",
                Ok(ServeEnd::Busy),
            );
        } else if idle && after(self.last_request, self.cfg.idle_timeout) <= now {
            self.end_quietly(Ok(ServeEnd::Idle));
        }
    }

    fn bad_request(&mut self, msg: String) {
        self.end_with(
            ErrorCode::BadRequest,
            msg.clone(),
            Err(SessionError::PeerFault(msg)),
        );
    }

    fn end_with(
        &mut self,
        code: ErrorCode,
        msg: impl Into<String>,
        result: Result<ServeEnd, SessionError>,
    ) {
        if self.ending.is_none() {
            self.ending = Some(Ending {
                last: Last::Frame(Reply::error(code, msg)),
                result,
            });
        }
    }

    fn end_quietly(&mut self, result: Result<ServeEnd, SessionError>) {
        if self.ending.is_none() {
            self.ending = Some(Ending {
                last: Last::Nothing,
                result,
            });
        }
    }

    fn finish(self, result: Result<ServeEnd, SessionError>) -> Result<ServeSummary, SessionError> {
        debug!(digest = %self.summary.digest, ?result, bytes = self.summary.bytes_sent, "upload session ended");
        result.map(|end| ServeSummary {
            end,
            ..self.summary
        })
    }
}

fn read_next<S>(mut r: ReadHalf<S>) -> NextRequest<S>
where
    S: AsyncRead + Send + 'static,
{
    Box::pin(async move {
        let res = read_request(&mut r).await;
        (r, res)
    })
}

/// Awaits the future if there is one, else never completes (a disabled `select!` branch).
async fn poll_opt<F: Future + Unpin>(f: &mut Option<F>) -> F::Output {
    match f {
        Some(f) => f.await,
        None => pending().await,
    }
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(at) => sleep_until(at).await,
        None => pending().await,
    }
}
