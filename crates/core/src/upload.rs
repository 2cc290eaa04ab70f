//! The uploader's slot rules: how many sessions of a node may be unchoked, how many wait,
//! what share one peer gets, and when an idle holder gives its slot to a waiting session.
//! `pollen_peer::UploadLimits` enforces them with a semaphore; the simulator with counters.

use std::time::Duration;

/// A session holding a slot that has asked for nothing this long gives the slot up while
/// other sessions wait for one (it is sent `Choked` and queues again). A slot was kept until
/// its session ended, so downloaders of a layer holding every slot of a node, most of them idle
/// (they took their pieces elsewhere), starved a node that asked only later: it got nothing for
/// `peer_stall` and went to the registry (`pollen demo`: 2 runs in 14). Half a second, not the
/// first second: at 600 nodes pulling 3 GB at 300 MB/s, p99 17.0-17.3 s against 18.7-19.5 s
/// (pollen-sim, three seeds); at 300 ms slots changed hands faster than pieces arrived and
/// the tail grew (p99 22-24 s, stalls sent nodes to the registry).
pub const SLOT_YIELD_AFTER: Duration = Duration::from_millis(500);

/// Sessions that may wait (choked) per upload slot. A waiting session costs a stream and no
/// piece bytes, and it receives `Have` and the piece hashes this node vouches for: with one
/// waiting place per slot, a fetcher whose slots were taken by a dozen downloaders (of this
/// and other blobs) turned the rest away, and those could not check the pieces other peers
/// held until some node completed the blob (benches/cluster.sh, peer-bound: nodes then went
/// to the upstream after `peer_stall`).
pub const WAITING_PER_SLOT: usize = 4;

/// A peer's fair share of the upload slots: at most this fraction of them (rounded up, at
/// least one) are held by sessions of one peer at once, so a peer that opens many sessions
/// leaves room for the others (with the default 8 slots: 4 per peer). Its further sessions wait
/// (choked) behind the other peers' sessions until one of its own ends.
pub const PEER_SHARE_DIVISOR: usize = 2;

/// Slots one peer may hold at once with `slots` in all.
pub fn per_peer(slots: usize) -> usize {
    slots.div_ceil(PEER_SHARE_DIVISOR).max(1)
}

/// Sessions that may wait with `slots` in all.
pub fn max_waiting(slots: usize) -> usize {
    slots.saturating_mul(WAITING_PER_SLOT)
}

/// Whether an idle holder gives its slot up now: someone waits. It queues again itself, and
/// the slot it frees takes a waiting session out of the queue, so a full queue is no reason to
/// keep the slot: with the queue full, idle holders kept every slot of a fetcher while the
/// sessions that needed its pieces waited behind them (pollen-sim, 300 nodes: the swarm stood
/// still until super-seeding revealed the pieces 6 s later). The queue may run over its
/// length by at most one place per slot (`yield_room`).
pub fn may_yield(waiting: usize) -> bool {
    waiting > 0
}

/// The most sessions that may wait counting holders that just yielded (see [`may_yield`]).
pub fn yield_room(slots: usize) -> usize {
    max_waiting(slots).saturating_add(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_and_queues_follow_the_slots() {
        assert_eq!(per_peer(8), 4);
        assert_eq!(per_peer(1), 1);
        assert_eq!(per_peer(0), 1);
        assert_eq!(max_waiting(8), 32);
        assert_eq!(yield_room(8), 40);
        assert!(
            may_yield(32),
            "a full queue does not keep an idle holder's slot"
        );
        assert!(!may_yield(0));
    }
}
