//! The event queue: events in time order, and in the order they were scheduled among those
//! due at the same moment (so a run is the same byte for byte).
//!
//! Most events are scheduled a fixed delay after now: a message one link latency later, and
//! a run has a handful of latencies. Events pushed with the same delay come out of a FIFO
//! already in (time, sequence) order, since now only grows, so each such delay gets a lane,
//! a plain `VecDeque`, and only the rest go through a heap. Popping takes the earliest of the
//! heap's top and the lanes' fronts: the same order a single heap gives, at a fraction of its
//! cost (the heap's pops were 7 % of a 10,000-node run, most of them cache misses deep in a
//! heap of millions). The heap holds each event's time, sequence number and place in a slab:
//! a heap of whole events moved 64 bytes per level on every pop.

use crate::net::Nanos;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

/// Lanes at most: a run with more distinct delays sends the rest through the heap.
const MAX_LANES: usize = 8;

pub struct Queue<E> {
    heap: BinaryHeap<Reverse<(Nanos, u64, usize)>>,
    slab: Vec<Option<E>>,
    free: Vec<usize>,
    lanes: Vec<Lane<E>>,
    seq: u64,
}

/// Events scheduled with one delay, in the order they are due.
struct Lane<E> {
    delay: Nanos,
    events: VecDeque<(Nanos, u64, E)>,
}

/// Where the next event is.
enum Next {
    Heap,
    Lane(usize),
}

impl<E> Default for Queue<E> {
    fn default() -> Queue<E> {
        Queue {
            heap: BinaryHeap::new(),
            slab: Vec::new(),
            free: Vec::new(),
            lanes: Vec::new(),
            seq: 0,
        }
    }
}

impl<E> Queue<E> {
    /// Schedules `ev` at `at`, after the events already due then.
    pub fn push(&mut self, at: Nanos, ev: E) {
        self.seq += 1;
        let place = match self.free.pop() {
            Some(p) => {
                if let Some(slot) = self.slab.get_mut(p) {
                    *slot = Some(ev);
                }
                p
            }
            None => {
                self.slab.push(Some(ev));
                self.slab.len() - 1
            }
        };
        self.heap.push(Reverse((at, self.seq, place)));
    }

    /// Schedules `ev` `delay` after `now`, which must never be earlier than the `now` of a
    /// previous call (the simulated clock).
    pub fn push_after(&mut self, now: Nanos, delay: Nanos, ev: E) {
        let at = now.saturating_add(delay);
        let lane = match self.lanes.iter().position(|l| l.delay == delay) {
            Some(i) => i,
            None if self.lanes.len() < MAX_LANES => {
                self.lanes.push(Lane {
                    delay,
                    events: VecDeque::new(),
                });
                self.lanes.len() - 1
            }
            None => return self.push(at, ev),
        };
        self.seq += 1;
        if let Some(l) = self.lanes.get_mut(lane) {
            l.events.push_back((at, self.seq, ev));
        }
    }

    fn next(&self) -> Option<(Nanos, u64, Next)> {
        let mut best = self
            .heap
            .peek()
            .map(|Reverse((at, seq, _))| (*at, *seq, Next::Heap));
        for (i, l) in self.lanes.iter().enumerate() {
            let Some(&(at, seq, _)) = l.events.front() else {
                continue;
            };
            if best.as_ref().is_none_or(|b| (at, seq) < (b.0, b.1)) {
                best = Some((at, seq, Next::Lane(i)));
            }
        }
        best
    }

    /// When the next event is due.
    pub fn next_at(&self) -> Option<Nanos> {
        self.next().map(|(at, _, _)| at)
    }

    /// The next event.
    pub fn pop(&mut self) -> Option<E> {
        match self.next()?.2 {
            Next::Lane(i) => self
                .lanes
                .get_mut(i)
                .and_then(|l| l.events.pop_front())
                .map(|(_, _, ev)| ev),
            Next::Heap => {
                let Reverse((_, _, place)) = self.heap.pop()?;
                self.free.push(place);
                self.slab.get_mut(place).and_then(Option::take)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_in_time_order_and_in_scheduling_order_at_the_same_time() {
        let mut q = Queue::default();
        q.push(5, "b");
        q.push(3, "a");
        q.push(5, "c");
        assert_eq!(q.pop(), Some("a"));
        q.push(5, "d");
        q.push(4, "e");
        let rest: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest, ["e", "b", "c", "d"]);
        assert_eq!(q.next_at(), None);
    }

    #[test]
    fn lanes_and_the_heap_give_the_order_one_heap_gives() {
        // Random delays from a few values (lanes) and some arbitrary times (heap), pushed as
        // the clock moves on; popped against a plain sort by (time, sequence).
        let mut q = Queue::default();
        let mut want = Vec::new();
        let mut seq = 0u64;
        let mut rng = crate::rng::Rng::new(7);
        let mut now = 0;
        for i in 0..20_000u64 {
            now += rng.below(3) as u64;
            seq += 1;
            match rng.below(12) {
                0 => {
                    let at = now + rng.below(50) as u64;
                    q.push(at, i);
                    want.push((at, seq, i));
                }
                k => {
                    let delay = [0, 5, 9, 30, 31, 40, 41, 42, 43, 44, 45][k - 1];
                    q.push_after(now, delay, i);
                    want.push((now + delay, seq, i));
                }
            }
        }
        want.sort_unstable();
        let got: Vec<u64> = std::iter::from_fn(|| q.pop()).collect();
        let want: Vec<u64> = want.into_iter().map(|(_, _, i)| i).collect();
        assert_eq!(got, want);
    }
}
