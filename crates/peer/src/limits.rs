//! Node-wide upload limits, shared by every uploader session: a cap on sessions being served
//! (upload slots) and a byte rate.
//!
//! **Slots.** A session that gets a slot is unchoked and keeps the slot while it asks for
//! pieces; one that has asked for nothing for [`SLOT_YIELD_AFTER`] while others wait gives it
//! up (choked, queued again), and a blob of one small piece needs no slot
//! ([`SLOTLESS_MAX_BYTES`]). A session over the cap
//! stays choked (it is told so with an explicit `Choked` after `Have`), still answers map
//! requests and pushes `HaveMore`, and waits for a slot (the session whose node holds the
//! fewest slots first, by its `Holding`; in arrival order among equals); if none frees up within
//! the slot deadline it gets `Error Busy`. At most `max_waiting` sessions wait. Beyond that a
//! new session waits on trial (one per slot at once) if some waiting node holds slots
//! elsewhere: its own `Holding` then turns away the waiting session whose node holds the most,
//! if more than its own, else itself (`Error Busy`; the downloader dials again later). If no
//! waiting node holds any, the `Interest` is answered `Error Busy` at once, so a crowd of
//! downloaders cannot pile up streams here.
//!
//! **Rate.** A token bucket in virtual-scheduling form: `free_at` is the instant at which every
//! byte granted so far has drained at the configured rate; a grant waits until at most `burst`
//! bytes are "in debt". Grants are reserved in arrival order, so concurrent sessions share the
//! rate fairly chunk by chunk, and it uses `tokio::time` so tests run it on a paused clock.

use crate::slots::{Admitted, SlotTable};
use pollen_core::upload::Slots;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

/// Default cap on sessions being served at once (see [`UploadLimits::default`]).
pub const DEFAULT_MAX_UPLOAD_SESSIONS: usize = 8;

/// Under a rate limit, piece bodies are written (and charged to the limit) in chunks of this
/// size, so one 64 MiB piece does not hold the whole node's rate for seconds and sessions
/// interleave.
const LIMITED_CHUNK: usize = 64 * 1024;

/// Without a rate limit, in chunks of this size: each write becomes one muxer frame, and with
/// 64 KiB frames the per-frame work (a frame buffer, a wake-up on each side) cost both ends
/// 0.05–0.1 CPU-s per GiB and the transfer about 7 % of its throughput (`benches/README.md`,
/// part 8). Sessions still interleave at 1 MiB: a millisecond of a 10 Gbit/s link.
const UNLIMITED_CHUNK: usize = 1024 * 1024;

/// Burst of the rate limiter, as time at the configured rate: large enough that timer
/// granularity (about 1 ms) does not cap a fast rate, small enough that the limit holds over
/// any tenth of a second.
const BURST: Duration = Duration::from_millis(50);

/// A blob of one piece no larger than this is served without an upload slot (unless uploads
/// are off: no slots at all). A slot is held until its session ends, so a fetcher busy passing
/// on a large layer kept an image's config blob (a few hundred bytes) waiting behind those
/// sessions until the downloaders gave up on it and fetched it from the registry themselves
/// (`pollen demo`: 3 runs in 30 took 10 s longer). Such a session costs one small piece; the
/// byte rate, the stream and connection caps still bound it.
pub const SLOTLESS_MAX_BYTES: u64 = 1 << 20;

pub use pollen_core::upload::{PEER_SHARE_DIVISOR, SLOT_YIELD_AFTER};

pub use crate::slots::PeerKey;

/// Limits and counters shared by all uploader sessions of a node (hold it in an `Arc`).
pub struct UploadLimits {
    slots: Arc<SlotTable>,
    /// The cap on slots: 0 turns uploads off, small blobs included.
    max_sessions: usize,
    rate: RateLimiter,
    bytes_sent: AtomicU64,
    pieces_sent: AtomicU64,
}

impl UploadLimits {
    /// At most `max_sessions` sessions unchoked at once (0 refuses every session with `Busy`),
    /// at most `pollen_core::upload::WAITING_PER_SLOT` times as many more waiting for a slot, and piece bodies
    /// sent at no more than `bytes_per_sec` in total (0: unlimited).
    pub fn new(max_sessions: usize, bytes_per_sec: u64) -> UploadLimits {
        UploadLimits {
            slots: Arc::new(SlotTable::new(max_sessions)),
            max_sessions,
            rate: RateLimiter::new(bytes_per_sec),
            bytes_sent: AtomicU64::new(0),
            pieces_sent: AtomicU64::new(0),
        }
    }

    fn configure(self, f: impl FnOnce(Slots<PeerKey>) -> Slots<PeerKey>) -> UploadLimits {
        self.slots.configure(f);
        self
    }

    /// Sets how many sessions may wait (choked) for a slot before new ones get `Busy`.
    pub fn with_max_waiting(self, max_waiting: usize) -> UploadLimits {
        self.configure(|s| s.with_max_waiting(max_waiting))
    }

    /// Sets the most slots one peer may hold at once (at least one).
    pub fn with_max_per_peer(self, per_peer: usize) -> UploadLimits {
        self.configure(|s| s.with_per_peer(per_peer))
    }

    /// Piece bytes sent by all sessions so far (for metrics; counted as written, so a session
    /// that fails midway still counts what it sent).
    pub fn bytes_sent(&self) -> u64 {
        self.bytes_sent.load(Ordering::Relaxed)
    }

    /// Sessions turned away from a full queue so far, to let in a node holding fewer upload
    /// slots elsewhere (for metrics).
    pub fn sessions_displaced(&self) -> u64 {
        self.slots.displaced()
    }

    /// Whole pieces sent by all sessions so far.
    pub fn pieces_sent(&self) -> u64 {
        self.pieces_sent.load(Ordering::Relaxed)
    }

    /// Whether a session for a blob cut by `geometry` is served without a slot
    /// ([`SLOTLESS_MAX_BYTES`]).
    pub(crate) fn slotless(&self, geometry: &pollen_proto::PieceGeometry) -> bool {
        self.max_sessions > 0 && geometry.count() <= 1 && geometry.size() <= SLOTLESS_MAX_BYTES
    }

    /// A new session for `who`: a slot now, a place in the queue, or `Busy`.
    pub(crate) fn admit(&self, who: Option<PeerKey>) -> Admitted {
        self.slots.admit(who)
    }

    /// Session `ticket`'s downloader holds `slots` slots now (`Request::Holding`).
    pub(crate) fn holding(&self, ticket: u64, slots: u32) {
        self.slots.holding(ticket, slots);
    }

    /// Whether some session waits for a slot now.
    pub(crate) fn someone_waiting(&self) -> bool {
        self.slots.someone_waiting()
    }

    /// The node's upload rate limit in bytes per second (0: unlimited); see
    /// [`RateLimiter::set_rate`].
    pub fn rate(&self) -> &RateLimiter {
        &self.rate
    }

    /// How much of a piece body to write (and charge) at a time: see [`LIMITED_CHUNK`].
    pub(crate) fn chunk(&self) -> usize {
        if self.rate.rate() == 0 {
            UNLIMITED_CHUNK
        } else {
            LIMITED_CHUNK
        }
    }

    /// Waits until `bytes` more may be sent under the node's rate.
    pub(crate) async fn throttle(&self, bytes: usize) {
        self.rate.acquire(bytes as u64).await;
    }

    pub(crate) fn count_sent(&self, bytes: u64, pieces: u64) {
        self.bytes_sent.fetch_add(bytes, Ordering::Relaxed);
        self.pieces_sent.fetch_add(pieces, Ordering::Relaxed);
    }
}

impl Default for UploadLimits {
    /// [`DEFAULT_MAX_UPLOAD_SESSIONS`] slots, no rate limit.
    fn default() -> UploadLimits {
        UploadLimits::new(DEFAULT_MAX_UPLOAD_SESSIONS, 0)
    }
}

/// Token bucket over `tokio::time`; see the module docs. Public so the agent throttles its
/// downloads (`--download-limit`) with the same rule its uploads follow.
pub struct RateLimiter {
    /// Bytes per second; 0 is unlimited. Changed in place by a reload ([`RateLimiter::set_rate`]).
    rate: AtomicU64,
    /// The debt allowed before a grant waits, as time at `rate`.
    burst: Duration,
    /// When every byte granted so far will have drained.
    free_at: Mutex<Instant>,
}

impl RateLimiter {
    /// `rate` bytes per second in total over every caller; 0 is unlimited.
    pub fn new(rate: u64) -> RateLimiter {
        RateLimiter {
            rate: AtomicU64::new(rate),
            burst: BURST,
            free_at: Mutex::new(Instant::now()),
        }
    }

    /// Waits until `bytes` may go: reserves them at once (so later callers queue behind),
    /// then sleeps until the debt left at the reservation's end is within the burst.
    pub async fn acquire(&self, bytes: u64) {
        let rate = self.rate.load(Ordering::Relaxed);
        if rate == 0 || bytes == 0 {
            return;
        }
        let now = Instant::now();
        let go_at = {
            // A poisoned lock only means another session panicked mid-update of an Instant.
            let mut free_at = self.free_at.lock().unwrap_or_else(|e| e.into_inner());
            let end = (*free_at).max(now) + time_for(bytes, rate);
            *free_at = end;
            end.checked_sub(self.burst).unwrap_or(now)
        };
        if go_at > now {
            tokio::time::sleep_until(go_at).await;
        }
    }

    /// A new rate (SIGHUP reload), for grants from now on; 0 lifts the limit. Bytes already
    /// granted keep their place: a lower rate applies after them.
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, Ordering::Relaxed);
    }

    /// The rate in bytes per second; 0 is unlimited.
    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }
}

/// How long `bytes` take at `rate` bytes/s (saturating; `rate` > 0 or zero time).
fn time_for(bytes: u64, rate: u64) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    let nanos = u128::from(bytes) * 1_000_000_000 / u128::from(rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slots::NoSlot;

    #[tokio::test(start_paused = true)]
    async fn rate_holds_over_many_grants() {
        let rate = 1_000_000;
        let limiter = RateLimiter::new(rate);
        let start = Instant::now();
        for _ in 0..100 {
            limiter.acquire(50_000).await; // 5 MB in total
        }
        let took = start.elapsed();
        // 5 s at 1 MB/s, less the burst granted up front.
        let expect = Duration::from_secs(5) - limiter.burst;
        assert!(took + Duration::from_millis(1) >= expect, "{took:?}");
        assert!(took <= Duration::from_secs(5), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn unlimited_never_waits_and_idle_time_is_not_banked() {
        let free = RateLimiter::new(0);
        let start = Instant::now();
        free.acquire(u64::MAX).await;
        assert_eq!(start.elapsed(), Duration::ZERO);

        let limiter = RateLimiter::new(1_000_000);
        tokio::time::sleep(Duration::from_secs(100)).await;
        // After a long idle spell only the burst is free, not 100 s worth.
        let start = Instant::now();
        limiter.acquire(1_000_000).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(1) - limiter.burst, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_grants_share_the_rate() {
        let limiter = Arc::new(RateLimiter::new(100_000));
        let start = Instant::now();
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let l = limiter.clone();
                tokio::spawn(async move {
                    for _ in 0..10 {
                        l.acquire(10_000).await;
                    }
                    start.elapsed()
                })
            })
            .collect();
        for t in tasks {
            let took = t.await.unwrap();
            // 400 kB at 100 kB/s: every task finishes near the end, none early.
            assert!(took >= Duration::from_millis(3_500), "{took:?}");
            assert!(took <= Duration::from_secs(4), "{took:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rate_applies_to_the_next_grants() {
        let limiter = RateLimiter::new(0);
        let start = Instant::now();
        limiter.acquire(10_000_000).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "unlimited at first");
        limiter.set_rate(1_000_000);
        assert_eq!(limiter.rate(), 1_000_000);
        let start = Instant::now();
        limiter.acquire(2_000_000).await;
        let took = start.elapsed();
        assert!(took >= Duration::from_secs(2) - limiter.burst, "{took:?}");
        limiter.set_rate(0);
        let start = Instant::now();
        limiter.acquire(10_000_000).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "lifted again");
    }

    fn queued(a: Admitted) -> crate::slots::QueuePlace {
        match a {
            Admitted::Queued(place) => place,
            _ => panic!("expected a place in the queue"),
        }
    }

    fn slot(a: Admitted) -> crate::slots::SlotPermit {
        match a {
            Admitted::Slot(permit) => permit,
            _ => panic!("expected a slot"),
        }
    }

    #[test]
    fn queue_is_bounded() {
        let limits = UploadLimits::new(1, 0).with_max_waiting(2);
        let _held = slot(limits.admit(None));
        let a = queued(limits.admit(None));
        let _b = queued(limits.admit(None));
        assert!(matches!(limits.admit(None), Admitted::Busy));
        drop(a);
        assert!(matches!(limits.admit(None), Admitted::Queued(_)));
    }

    #[tokio::test]
    async fn one_peer_holds_at_most_its_share() {
        let limits = Arc::new(UploadLimits::new(4, 0));
        let (a, b) = (b"a".to_vec(), b"b".to_vec());
        let a1 = slot(limits.admit(Some(a.clone())));
        let _a2 = slot(limits.admit(Some(a.clone())));
        let waiting = queued(limits.admit(Some(a.clone())));
        let waiting = tokio::spawn(waiting.granted());
        let _b1 = slot(limits.admit(Some(b.clone())));
        let _b2 = slot(limits.admit(Some(b.clone())));
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished(), "a holds its share (2 of 4)");
        drop(a1);
        let a3 = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .unwrap()
            .unwrap();
        assert!(a3.is_ok(), "a's waiting session gets the slot a freed");
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_waiting_session_whose_node_holds_fewest() {
        let limits = UploadLimits::new(1, 0);
        let held = slot(limits.admit(None));
        let rich = queued(limits.admit(None));
        let poor = queued(limits.admit(None));
        limits.holding(rich.ticket(), 6);
        limits.holding(poor.ticket(), 1);
        let rich = tokio::spawn(rich.granted());
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(5), poor.granted()).await;
        let _permit = got
            .unwrap()
            .expect("the later session holding fewer went first");
        tokio::task::yield_now().await;
        assert!(
            !rich.is_finished(),
            "the earlier one, holding more, still waits"
        );
    }

    #[tokio::test]
    async fn a_newcomer_displaces_the_waiting_session_holding_most_and_it_is_told() {
        let limits = UploadLimits::new(1, 0).with_max_waiting(2);
        let held = slot(limits.admit(None));
        let rich = queued(limits.admit(None));
        let poor = queued(limits.admit(None));
        limits.holding(rich.ticket(), 6);
        limits.holding(poor.ticket(), 1);
        let newcomer = queued(limits.admit(None));
        limits.holding(newcomer.ticket(), 0);
        let told = tokio::time::timeout(Duration::from_secs(5), rich.granted()).await;
        assert!(
            matches!(told.unwrap(), Err(NoSlot::Displaced)),
            "the session holding most was turned away"
        );
        assert_eq!(limits.sessions_displaced(), 1);
        // The displaced session's place is gone without freeing anything: the slot is still
        // held, and the newcomer (holding none) and the poorer session wait for it, in that order.
        let poor = tokio::spawn(poor.granted());
        drop(held);
        let got = tokio::time::timeout(Duration::from_secs(5), newcomer.granted()).await;
        let permit = got.unwrap().expect("the newcomer holds fewest");
        tokio::task::yield_now().await;
        assert!(!poor.is_finished(), "one slot, held by the newcomer");
        drop(permit);
        let got = tokio::time::timeout(Duration::from_secs(5), poor).await;
        assert!(got.unwrap().unwrap().is_ok(), "then the poorer session");
    }

    #[test]
    fn a_displaced_place_dropped_before_it_hears_frees_nothing() {
        let limits = UploadLimits::new(1, 0).with_max_waiting(1);
        let held = slot(limits.admit(None));
        let rich = queued(limits.admit(None));
        limits.holding(rich.ticket(), 3);
        let newcomer = queued(limits.admit(None));
        limits.holding(newcomer.ticket(), 0);
        drop(rich); // displaced, and gone without reading why
        assert!(
            matches!(limits.admit(None), Admitted::Busy),
            "the queue holds the newcomer only, who holds none: nothing was freed"
        );
        drop(held);
        drop(newcomer);
        let _again = slot(limits.admit(None));
    }

    #[tokio::test]
    async fn a_newcomer_holding_as_much_as_any_waiting_is_the_one_turned_away() {
        let limits = UploadLimits::new(1, 0).with_max_waiting(1);
        let _held = slot(limits.admit(None));
        let waiting = queued(limits.admit(None));
        limits.holding(waiting.ticket(), 2);
        let newcomer = queued(limits.admit(None));
        limits.holding(newcomer.ticket(), 2);
        let told = tokio::time::timeout(Duration::from_secs(5), newcomer.granted()).await;
        assert!(matches!(told.unwrap(), Err(NoSlot::Displaced)));
        let waiting = tokio::spawn(waiting.granted());
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "the first still waits, for the slot"
        );
    }

    #[tokio::test]
    async fn a_slot_granted_to_a_session_that_left_goes_to_the_next() {
        let limits = UploadLimits::new(1, 0);
        let held = slot(limits.admit(None));
        let first = queued(limits.admit(None));
        let second = queued(limits.admit(None));
        drop(held); // granted to `first`, which leaves without taking it
        drop(first);
        let got = tokio::time::timeout(Duration::from_secs(5), second.granted()).await;
        assert!(got.unwrap().is_ok(), "the slot was handed on, not lost");
    }

    #[tokio::test]
    async fn an_idle_holder_gives_its_slot_up_only_to_someone_waiting() {
        let limits = UploadLimits::new(1, 0);
        let held = slot(limits.admit(None));
        let held = match held.give_up(0) {
            Err(kept) => kept,
            Ok(_) => panic!("nobody waits: the holder keeps its slot"),
        };
        let waiter = queued(limits.admit(None));
        assert!(limits.someone_waiting());
        let Ok(requeued) = held.give_up(0) else {
            panic!("someone waits: the slot goes to them");
        };
        let took = tokio::time::timeout(Duration::from_secs(5), waiter.granted()).await;
        let took = took.unwrap().expect("the waiting session got the slot");
        assert!(limits.someone_waiting(), "the holder queued again");
        drop(took);
        let back = tokio::time::timeout(Duration::from_secs(5), requeued.granted()).await;
        assert!(back.unwrap().is_ok(), "and gets it back when it frees");
    }
}
