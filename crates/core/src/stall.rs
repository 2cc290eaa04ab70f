//! When a peer download has stalled: the decision behind "no piece from peers", kept apart
//! from the I/O so it can be tested with made-up instants.
//!
//! A fixed deadline turns a slow swarm into duplicate upstream fetches: behind a thin uplink
//! the fetcher's pieces arrive seconds apart, and a node that saw nothing for the fixed time
//! went to the registry itself. So the watch counts two kinds of progress: pieces this node
//! stored, and pieces that newly appeared in the part of the swarm it sees (a peer announcing
//! a piece no other peer it knows held). Their gaps set the deadline: a multiple of the usual
//! gap, never below the configured `peer_stall` and never above a ceiling. The ceiling also
//! bounds this node's own wait: a peer that keeps announcing pieces it never serves can delay
//! the fall-back to the upstream by no more than that.

use std::time::Duration;
use std::time::Instant;

/// How many usual gaps between new pieces may pass before the swarm counts as stalled.
pub const GAP_FACTOR: u32 = 8;
/// The longest wait, in multiples of `peer_stall`: with the default 10 s it is 40 s, below
/// the 60 s a client request waits for progress (`response_timeout + idle_timeout`).
pub const CEILING_FACTOR: u32 = 4;

/// A new gap counts for this share of the running average: a swarm that slows down is
/// followed within a few pieces.
const NEW_GAP_WEIGHT: u32 = 4;

#[derive(Debug, Clone)]
pub struct StallWatch {
    floor: Duration,
    /// The last piece this node stored.
    own: Instant,
    /// The last new piece anywhere in sight (this node's included).
    swarm: Instant,
    /// The running average gap between new pieces; none before the first.
    gap: Option<Duration>,
}

impl StallWatch {
    pub fn new(floor: Duration, now: Instant) -> StallWatch {
        StallWatch {
            floor,
            own: now,
            swarm: now,
            gap: None,
        }
    }

    /// The download starts (again) now: what was measured of the swarm's pace is kept.
    pub fn restart(&mut self, now: Instant) {
        self.own = now;
        self.swarm = now;
    }

    /// This node stored a piece.
    pub fn stored(&mut self, now: Instant) {
        self.own = now;
        self.new_piece(now);
    }

    /// A peer announced a piece that no peer in sight held before.
    pub fn announced(&mut self, now: Instant) {
        self.new_piece(now);
    }

    fn new_piece(&mut self, now: Instant) {
        let gap = now.saturating_duration_since(self.swarm);
        self.gap = Some(match self.gap {
            None => gap,
            Some(avg) => (avg * (NEW_GAP_WEIGHT - 1) + gap) / NEW_GAP_WEIGHT,
        });
        self.swarm = now;
    }

    fn ceiling(&self) -> Duration {
        self.floor * CEILING_FACTOR
    }

    /// How long the swarm may be quiet now before this node stops waiting for it.
    pub fn window(&self) -> Duration {
        let usual = self.gap.map_or(Duration::ZERO, |g| g * GAP_FACTOR);
        usual.clamp(self.floor, self.ceiling())
    }

    /// When this node stops waiting for peers, unless something arrives first.
    pub fn deadline(&self) -> Instant {
        (self.swarm + self.window()).min(self.own + self.ceiling())
    }

    pub fn stalled(&self, now: Instant) -> bool {
        now >= self.deadline()
    }

    /// What to tell the user: how long nothing came, in the terms of the deadline that ran out.
    pub fn describe(&self, now: Instant) -> String {
        let quiet = now.saturating_duration_since(self.swarm);
        let own = now.saturating_duration_since(self.own);
        if own >= self.ceiling() {
            format!("no piece from peers for {own:.1?} (the longest wait) while they announced new ones")
        } else {
            format!(
                "no piece from peers for {quiet:.1?} (the swarm's pace allowed {:.1?})",
                self.window()
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOOR: Duration = Duration::from_secs(10);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn with_nothing_measured_the_floor_applies() {
        let t0 = Instant::now();
        let w = StallWatch::new(FLOOR, t0);
        assert!(!w.stalled(t0 + FLOOR - ms(1)));
        assert!(w.stalled(t0 + FLOOR));
    }

    #[test]
    fn a_fast_swarm_keeps_the_floor() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(FLOOR, t0);
        for i in 1..=50 {
            w.stored(t0 + ms(20 * i));
        }
        assert_eq!(w.window(), FLOOR);
        assert!(w.stalled(t0 + ms(1000) + FLOOR));
    }

    #[test]
    fn a_slow_swarm_is_waited_for_as_long_as_its_pace_says() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(FLOOR, t0);
        // A thin uplink: a new piece every 3 s.
        let mut t = t0;
        for _ in 0..5 {
            t += Duration::from_secs(3);
            w.stored(t);
        }
        assert_eq!(w.window(), Duration::from_secs(24));
        // 12 s without a piece: the old fixed deadline would have gone to the upstream.
        assert!(!w.stalled(t + Duration::from_secs(12)));
        assert!(w.stalled(t + Duration::from_secs(24)));
    }

    #[test]
    fn the_pace_follows_a_swarm_that_slows_down() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(ms(500), t0);
        let mut t = t0;
        for _ in 0..20 {
            t += ms(10);
            w.stored(t);
        }
        assert_eq!(w.window(), ms(500));
        for _ in 0..6 {
            t += ms(200);
            w.stored(t);
        }
        assert!(w.window() > ms(1000), "{:?}", w.window());
    }

    #[test]
    fn announced_pieces_keep_a_node_waiting_that_gets_none_itself() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(FLOOR, t0);
        let mut t = t0;
        for _ in 0..3 {
            t += Duration::from_secs(8);
            w.announced(t);
        }
        assert!(!w.stalled(t + Duration::from_secs(9)));
    }

    #[test]
    fn a_peer_announcing_forever_delays_the_fall_back_only_to_the_ceiling() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(FLOOR, t0);
        let mut t = t0;
        // A liar announces a new piece every second and serves none.
        while t < t0 + FLOOR * CEILING_FACTOR - ms(1) {
            assert!(!w.stalled(t));
            t += Duration::from_secs(1);
            w.announced(t);
        }
        assert!(w.stalled(t0 + FLOOR * CEILING_FACTOR));
        assert!(w
            .describe(t0 + FLOOR * CEILING_FACTOR)
            .contains("longest wait"));
    }

    #[test]
    fn the_window_never_exceeds_the_ceiling() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(FLOOR, t0);
        w.stored(t0 + Duration::from_secs(35));
        assert_eq!(w.window(), FLOOR * CEILING_FACTOR);
    }

    #[test]
    fn a_restart_keeps_the_pace_and_moves_the_clock() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(FLOOR, t0);
        w.stored(t0 + Duration::from_secs(3));
        w.stored(t0 + Duration::from_secs(6));
        let later = t0 + Duration::from_secs(100);
        w.restart(later);
        assert_eq!(w.window(), Duration::from_secs(24));
        assert!(!w.stalled(later + Duration::from_secs(20)));
    }
}
