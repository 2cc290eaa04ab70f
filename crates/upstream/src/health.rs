//! Per-mirror health, so a dead mirror is skipped quickly instead of costing every request a
//! timeout, and is retried after a backoff.

use dashmap::DashMap;
use std::time::Duration;
use tokio::time::Instant;

const BACKOFF_MAX: Duration = Duration::from_secs(300);

#[derive(Default)]
pub(crate) struct Health {
    state: DashMap<String, MirrorState>,
}

#[derive(Clone, Copy)]
struct MirrorState {
    failures: u32,
    down_until: Instant,
}

impl Health {
    pub fn is_up(&self, mirror: &str, now: Instant) -> bool {
        self.state.get(mirror).is_none_or(|s| s.down_until <= now)
    }

    pub fn success(&self, mirror: &str) {
        self.state.remove(mirror);
    }

    /// Records a failure and returns how long the mirror is now skipped for.
    pub fn failure(&self, mirror: &str, base: Duration, now: Instant) -> Duration {
        let mut s = self.state.entry(mirror.to_string()).or_insert(MirrorState {
            failures: 0,
            down_until: now,
        });
        s.failures = s.failures.saturating_add(1);
        let backoff = base
            .saturating_mul(1u32 << (s.failures - 1).min(16))
            .min(BACKOFF_MAX);
        s.down_until = now + backoff;
        backoff
    }

    /// The mirrors in configured order, healthy ones first; unhealthy ones are still tried
    /// last, so a request never fails only because every mirror was marked down.
    pub fn order<'a>(&self, mirrors: &'a [String], now: Instant) -> Vec<&'a String> {
        let (mut up, down): (Vec<_>, Vec<_>) = mirrors.iter().partition(|m| self.is_up(m, now));
        up.extend(down);
        up
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn failover_order_and_recovery() {
        let h = Health::default();
        let mirrors = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let t0 = Instant::now();
        assert_eq!(h.order(&mirrors, t0), vec!["a", "b", "c"]);
        let b1 = h.failure("a", Duration::from_secs(1), t0);
        let b2 = h.failure("a", Duration::from_secs(1), t0);
        assert_eq!((b1, b2), (Duration::from_secs(1), Duration::from_secs(2)));
        assert_eq!(h.order(&mirrors, t0), vec!["b", "c", "a"]);
        assert_eq!(
            h.order(&mirrors, t0 + Duration::from_secs(3)),
            vec!["a", "b", "c"]
        );
        h.failure("b", Duration::from_secs(1), t0);
        h.success("a");
        assert_eq!(h.order(&mirrors, t0), vec!["a", "c", "b"]);
    }
}
