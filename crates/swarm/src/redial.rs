//! When the next bootstrap round runs: soon and then less soon while a bootstrap target is
//! missing, every `bootstrap_interval` once all are connected. Pure (the caller passes the
//! time), so the schedule is tested without a network.
//!
//! A DaemonSet starts every agent in the same second, and the bootstrap Service may have no
//! ready endpoint yet: the first dial is refused, or the name has no address. Waiting the
//! steady interval (30 s) then left a node alone for its first pulls, fetching whole blobs
//! from the registry beside the swarm (part 7).

use std::time::Duration;

/// The first retry after a bootstrap target could not be reached.
pub const FIRST_RETRY: Duration = Duration::from_millis(50);
/// The longest wait between retries while a bootstrap target is missing.
pub const MAX_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug)]
pub(crate) struct Redial {
    steady: Duration,
    /// The wait after the next failed round.
    backoff: Duration,
}

impl Redial {
    pub fn new(steady: Duration) -> Redial {
        Redial {
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
    fn backs_off_from_tens_of_milliseconds_to_a_few_seconds() {
        let mut r = Redial::new(Duration::from_secs(30));
        let waits: Vec<_> = (0..10).map(|_| r.missing(0.0).as_millis()).collect();
        assert_eq!(
            waits,
            [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
        assert_eq!(r.settled(), Duration::from_secs(30));
        assert_eq!(r.missing(0.0), FIRST_RETRY, "a success resets the backoff");
    }

    #[test]
    fn jitter_stretches_by_at_most_half_and_the_steady_interval_caps() {
        let mut r = Redial::new(Duration::from_millis(120));
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
