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
//!
//! Nodes that lose the same source stall together: when the owner of a share of a split fetch
//! dies, every node waiting for its pieces reaches its deadline within milliseconds of the
//! others (before pings close the dead connection and the tracker hands the share on), and
//! each fetched the same missing pieces from the upstream (e2e step m: 1.43 × the image in 1 of
//! 9 runs). So a node's deadline is staggered by its rank among itself and the peers it has
//! sessions with, as repair requests are in reliable multicast (SRM): the first goes to the
//! upstream at once, the pieces it fetches reach the others within the stagger and end their
//! stall.

use std::time::Duration;
use std::time::Instant;

/// How many usual gaps between new pieces may pass before the swarm counts as stalled.
pub const GAP_FACTOR: u32 = 8;
/// The longest wait, in multiples of `peer_stall`: with the default 10 s it is 40 s, below
/// the 60 s a client request waits for progress (`response_timeout + idle_timeout`).
pub const CEILING_FACTOR: u32 = 4;

/// The extra wait per rank between nodes that stall together: more than a piece takes from
/// the upstream to the first node and on to the next inside a cluster.
pub const STALL_STAGGER: Duration = Duration::from_secs(1);
/// Ranks from here on wait as long as this one: the cost of a stall nobody else fills is
/// bounded by `MAX_STAGGER_RANK * STALL_STAGGER`.
pub const MAX_STAGGER_RANK: u32 = 3;

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
    /// This node's stagger ([`stagger`]).
    defer: Duration,
}

impl StallWatch {
    pub fn new(floor: Duration, now: Instant) -> StallWatch {
        StallWatch {
            floor,
            own: now,
            swarm: now,
            gap: None,
            defer: Duration::ZERO,
        }
    }

    /// Waits `defer` longer than the swarm's pace says (this node's [`stagger`]).
    pub fn set_defer(&mut self, defer: Duration) {
        self.defer = defer;
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
        (self.swarm + self.window()).min(self.own + self.ceiling()) + self.defer
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

/// The stagger of node `me` among the nodes it has sessions with for blob `blob`: its rank in
/// an order every node computes alike and that differs per blob (so no node always waits),
/// times [`STALL_STAGGER`], up to [`MAX_STAGGER_RANK`]. Nodes that see different peers may
/// share a rank; they are then no worse off than without it.
pub fn stagger<'a>(me: &[u8], peers: impl IntoIterator<Item = &'a [u8]>, blob: &[u8]) -> Duration {
    let key = |id: &[u8]| fnv1a(blob, id);
    let mine = key(me);
    let ahead = peers
        .into_iter()
        .filter(|p| *p != me)
        .filter(|p| (key(p), *p) < (mine, me))
        .count();
    let rank = u32::try_from(ahead)
        .unwrap_or(u32::MAX)
        .min(MAX_STAGGER_RANK);
    STALL_STAGGER * rank
}

/// FNV-1a over `a` then `b`: the same on every node and every build (std's hashers promise
/// neither).
pub(crate) fn fnv1a(a: &[u8], b: &[u8]) -> u64 {
    a.iter().chain(b).fold(0xcbf2_9ce4_8422_2325, |h, byte| {
        (h ^ u64::from(*byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
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

    #[test]
    fn nodes_that_see_each_other_stall_one_after_another() {
        let ids: Vec<Vec<u8>> = (0u8..5).map(|i| vec![i; 38]).collect();
        let all = || ids.iter().map(Vec::as_slice);
        let mut defers: Vec<Duration> = ids
            .iter()
            .map(|me| stagger(me, all(), b"sha256:aa"))
            .collect();
        defers.sort();
        let want: Vec<Duration> = [0, 1, 2, 3, 3].map(|r| STALL_STAGGER * r).to_vec();
        assert_eq!(defers, want, "distinct ranks, the tail capped");
        // The order differs between blobs: node 0 does not always go first.
        let first = |blob: &[u8]| {
            ids.iter()
                .position(|me| stagger(me, all(), blob).is_zero())
                .unwrap()
        };
        let firsts: std::collections::HashSet<usize> = (0..20u8).map(|b| first(&[b])).collect();
        assert!(firsts.len() > 1, "{firsts:?}");
    }

    #[test]
    fn a_staggered_node_waits_its_stagger_longer() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(FLOOR, t0);
        w.set_defer(STALL_STAGGER * 2);
        assert!(!w.stalled(t0 + FLOOR));
        assert!(w.stalled(t0 + FLOOR + STALL_STAGGER * 2));
        // A piece from the node that went first ends the stall.
        w.stored(t0 + FLOOR + STALL_STAGGER);
        assert!(!w.stalled(t0 + FLOOR + STALL_STAGGER * 2));
    }
}
