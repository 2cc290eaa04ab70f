//! When to try again: a download's peers that ended a session or turned it away
//! ([`PeerRetry`]), and a node's bootstrap rounds while it starts ([`Bootstrap`]). The agent's
//! download and its swarm, and the simulator, take these waits from here.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// A peer that turned a session away (a dropped stream) is dialled again after this long (one
/// not started on the blob yet after at most this long: [`NOT_YET_MIN`]), and providers are
/// looked up this often while a coordinated download has no peer.
pub const RETRY_SOON: Duration = Duration::from_millis(300);
/// A peer that ended its session is not dialled again for this long.
pub const RETRY_AFTER: Duration = Duration::from_secs(10);
/// The longest a peer that turned sessions away in a row waits before it is dialled again: a
/// busy uploader (all its slots taken) frees one soon, and waiting longer would run into
/// `peer_stall`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Doublings of a peer's wait at most (with [`MAX_BACKOFF`] the cap is reached well before).
const MAX_DOUBLINGS: u32 = 5;
/// The shortest wait before a peer that holds none of the blob yet is dialled again: each
/// such wait is drawn between this and [`RETRY_SOON`] ([`PeerRetry::with_seed`]). A cluster
/// starting together dialled again in lockstep, every node 300 ms after its last refusal, so a
/// node that got its first piece just after one wave was found only by the next, and the
/// pieces spread at the waves' pace: at 2,600 nodes 2,162 nodes held a piece at 1.17 s, and
/// 150 GB/s moved at 1 s against 608 GB/s with the waits spread (pollen-sim, Kraken's set-up;
/// `benches/README.md`, part 9's tenth session).
pub const NOT_YET_MIN: Duration = Duration::from_millis(100);
/// Times in a row a peer that has not started on the blob (it holds none of it yet:
/// `UnknownBlob`) is dialled again after [`NOT_YET_MIN`]–[`RETRY_SOON`], before its waits
/// double as other refusals' do. When a whole cluster starts together every peer holds nothing at first and
/// gets its first pieces within a second or two; with doubling waits a download had 1.3
/// sessions at 1 s and 3 at 2 s, so peers that held pieces sat unasked (pollen-sim, Kraken's
/// set-up: p99 14.9 s). Eight tries cover the first 0.8–2.4 s; a peer that stays empty longer (it
/// dropped the blob) then waits up to [`MAX_BACKOFF`] as before.
pub const NOT_YET_TRIES: u32 = 8;

/// When to dial a peer again after its session ended or was turned away.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Again {
    /// It turned the session away because it holds none of the blob yet.
    NotYet,
    /// After this long, doubled by each failure in a row ([`PeerRetry::ended`]).
    After(Duration),
}

/// The peers of one download that are not dialled again before a time.
#[derive(Debug, Clone)]
pub struct PeerRetry<P> {
    until: BTreeMap<P, Instant>,
    /// Sessions in a row that ended before opening, by peer.
    failures: BTreeMap<P, u32>,
    /// Draws the `NotYet` waits: a counter mixed with the seed.
    draws: u64,
    seed: u64,
}

impl<P: Ord + Clone> Default for PeerRetry<P> {
    fn default() -> Self {
        PeerRetry::with_seed(0)
    }
}

impl<P: Ord + Clone> PeerRetry<P> {
    /// A download's retries, its `NotYet` waits drawn from `seed`: give each download its own
    /// (the agent hashes its node and the blob), or the nodes of a cluster wait alike.
    pub fn with_seed(seed: u64) -> PeerRetry<P> {
        PeerRetry {
            until: BTreeMap::new(),
            failures: BTreeMap::new(),
            draws: 0,
            seed,
        }
    }

    /// The next `NotYet` wait, between [`NOT_YET_MIN`] and [`RETRY_SOON`].
    fn not_yet_wait(&mut self) -> Duration {
        self.draws = self.draws.wrapping_add(1);
        let spread = RETRY_SOON.saturating_sub(NOT_YET_MIN);
        let fraction = (splitmix64(self.seed ^ self.draws) >> 11) as f64 / (1u64 << 53) as f64;
        NOT_YET_MIN + spread.mul_f64(fraction)
    }

    /// A session with `peer` ended (`retry_after`: [`RETRY_SOON`] when it was turned away,
    /// [`RETRY_AFTER`] when it ran and ended). Each failure in a row doubles the wait, so a
    /// dead peer is not dialled twice a second for ever, up to [`MAX_BACKOFF`] (never below
    /// `retry_after`).
    pub fn ended(&mut self, peer: P, retry_after: Duration, now: Instant) {
        let failures = self.failures.entry(peer.clone()).or_default();
        let backoff = retry_after
            .saturating_mul(1 << (*failures).min(MAX_DOUBLINGS))
            .min(MAX_BACKOFF.max(retry_after));
        *failures = failures.saturating_add(1);
        self.until.insert(peer, now + backoff);
    }

    /// A session with `peer` ended or was turned away, for the reason `again` gives.
    pub fn again(&mut self, peer: P, again: Again, now: Instant) {
        match again {
            Again::After(wait) => self.ended(peer, wait, now),
            Again::NotYet => {
                let failures = self.failures.entry(peer.clone()).or_default();
                if *failures >= NOT_YET_TRIES {
                    return self.ended(peer, RETRY_SOON, now);
                }
                *failures = failures.saturating_add(1);
                let wait = self.not_yet_wait();
                self.until.insert(peer, now + wait);
            }
        }
    }

    /// A session with `peer` opened: its next failure waits the least again.
    pub fn opened(&mut self, peer: &P) {
        self.failures.remove(peer);
    }

    /// `peer` is not dialled before `at` (a session closed by this node, to be dialled again
    /// at the next look).
    pub fn hold(&mut self, peer: P, at: Instant) {
        self.until.insert(peer, at);
    }

    /// Forgets the waits that are over.
    pub fn expire(&mut self, now: Instant) {
        self.until.retain(|_, until| *until > now);
    }

    /// Whether `peer` still waits (as of the last [`PeerRetry::expire`]).
    pub fn waits(&self, peer: &P) -> bool {
        self.until.contains_key(peer)
    }

    /// The earliest retry, if any peer waits.
    pub fn next(&self) -> Option<Instant> {
        self.until.values().min().copied()
    }

    /// The earliest retry no later than `by`.
    pub fn next_by(&self, by: Instant) -> Option<Instant> {
        self.until.values().filter(|t| **t <= by).min().copied()
    }

    /// Forgets every peer (the download starts afresh).
    pub fn clear(&mut self) {
        self.until.clear();
        self.failures.clear();
    }
}

/// A seed for one download's [`PeerRetry`]: its node's id and the blob, hashed the same on
/// every build, so two nodes (or two blobs) draw different waits.
pub fn seed_of(node: &[u8], blob: &[u8]) -> u64 {
    crate::stall::fnv1a(node, blob)
}

/// SplitMix64's output function: a well-spread 64-bit value of `x`, the same on every build.
fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The first retry after a bootstrap target could not be reached.
pub const FIRST_RETRY: Duration = Duration::from_millis(50);
/// The longest wait between bootstrap retries while a target is missing.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

/// When the next bootstrap round runs: soon and then less soon while a bootstrap target is
/// missing, every `steady` interval once all are connected.
///
/// A DaemonSet starts every agent in the same second, and the bootstrap Service may have no
/// ready endpoint yet: the first dial is refused, or the name has no address. Waiting the
/// steady interval (30 s) then left a node alone for its first pulls, fetching whole blobs
/// from the registry beside the swarm (part 7).
#[derive(Debug, Clone)]
pub struct Bootstrap {
    steady: Duration,
    /// The wait after the next failed round.
    backoff: Duration,
}

impl Bootstrap {
    pub fn new(steady: Duration) -> Bootstrap {
        Bootstrap {
            steady,
            backoff: FIRST_RETRY,
        }
    }

    /// Every target answered (or there are none): the next round after the steady interval,
    /// and the next failure starts the backoff from the beginning.
    pub fn settled(&mut self) -> Duration {
        self.backoff = FIRST_RETRY;
        self.steady
    }

    /// A target was refused, timed out or had no address: the wait before the next round,
    /// doubling each time up to [`MAX_RETRY`] (never beyond the steady interval), stretched by
    /// `jitter` (0.0–1.0, a random fraction of half the wait) so a cluster's retries spread.
    pub fn missing(&mut self, jitter: f64) -> Duration {
        let wait = self.backoff.min(self.steady);
        self.backoff = (self.backoff * 2).min(MAX_RETRY);
        wait + wait.mul_f64(jitter.clamp(0.0, 1.0) / 2.0)
    }

    /// Every connection is gone: retry at once, as after a fresh start.
    pub fn lost_all(&mut self) -> Duration {
        self.backoff = FIRST_RETRY;
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_not_started_yet_is_tried_again_soon_a_few_times_then_backed_off() {
        let t0 = Instant::now();
        let mut r = PeerRetry::default();
        let mut wait = || {
            r.again("p", Again::NotYet, t0);
            (r.next().unwrap() - t0).as_millis()
        };
        let soon = NOT_YET_MIN.as_millis()..=RETRY_SOON.as_millis();
        let first: Vec<u128> = (0..NOT_YET_TRIES).map(|_| wait()).collect();
        assert!(first.iter().all(|w| soon.contains(w)), "{first:?}");
        assert_eq!(wait(), MAX_BACKOFF.as_millis());
        // A session that opens starts the count again.
        r.opened(&"p");
        r.again("p", Again::NotYet, t0);
        assert!(soon.contains(&(r.next().unwrap() - t0).as_millis()));
        // Other refusals keep doubling from where they are.
        r.again("p", Again::After(RETRY_SOON), t0);
        assert_eq!(
            (r.next().unwrap() - t0).as_millis(),
            2 * RETRY_SOON.as_millis()
        );
    }

    #[test]
    fn waits_for_peers_not_started_spread_and_differ_by_seed() {
        let t0 = Instant::now();
        let waits = |seed: u64| -> Vec<Duration> {
            let mut r = PeerRetry::with_seed(seed);
            (0..64)
                .map(|i| {
                    r.again(i, Again::NotYet, t0);
                    r.until.get(&i).map_or(Duration::MAX, |at| *at - t0)
                })
                .collect()
        };
        let a = waits(1);
        assert_eq!(a, waits(1), "the same seed draws the same waits");
        assert_ne!(a, waits(2), "another download waits otherwise");
        assert!(a.iter().all(|w| (NOT_YET_MIN..=RETRY_SOON).contains(w)));
        let (lo, hi) = (a.iter().min().unwrap(), a.iter().max().unwrap());
        assert!(
            *hi - *lo > (RETRY_SOON - NOT_YET_MIN) / 2,
            "spread over the range, not in lockstep: {lo:?}..{hi:?}"
        );
    }

    #[test]
    fn a_peer_that_keeps_failing_waits_longer_up_to_the_cap() {
        let t0 = Instant::now();
        let mut r = PeerRetry::default();
        let waits: Vec<u128> = (0..5)
            .map(|_| {
                r.ended("p", RETRY_SOON, t0);
                (r.next().unwrap() - t0).as_millis()
            })
            .collect();
        assert_eq!(waits, [300, 600, 1200, 2000, 2000]);
        r.opened(&"p");
        r.ended("p", RETRY_SOON, t0);
        assert_eq!(r.next(), Some(t0 + RETRY_SOON), "an open session resets it");
        r.ended("q", RETRY_AFTER, t0);
        assert!(r.waits(&"q"));
        assert_eq!(
            r.next_by(t0 + Duration::from_secs(1)),
            Some(t0 + RETRY_SOON)
        );
        r.expire(t0 + Duration::from_secs(5));
        assert!(!r.waits(&"p") && r.waits(&"q"), "q waits its 10 s");
    }

    #[test]
    fn bootstrap_backs_off_from_tens_of_milliseconds_to_a_few_seconds() {
        let mut r = Bootstrap::new(Duration::from_secs(30));
        let waits: Vec<_> = (0..10).map(|_| r.missing(0.0).as_millis()).collect();
        assert_eq!(
            waits,
            [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
        assert_eq!(r.settled(), Duration::from_secs(30));
        assert_eq!(r.missing(0.0), FIRST_RETRY, "a success resets the backoff");
    }

    #[test]
    fn bootstrap_jitter_stretches_by_at_most_half_and_the_steady_interval_caps() {
        let mut r = Bootstrap::new(Duration::from_millis(120));
        assert_eq!(r.missing(1.0), Duration::from_millis(75));
        assert_eq!(r.missing(7.0), Duration::from_millis(150), "clamped jitter");
        assert_eq!(
            r.missing(0.0),
            Duration::from_millis(120),
            "never beyond steady"
        );
        r.missing(0.0);
        assert_eq!(r.lost_all(), Duration::ZERO);
        assert_eq!(r.missing(0.0), FIRST_RETRY);
    }
}
