//! Flow-level network model for the discrete-event simulator.
//!
//! Simulating packets would be far too slow for thousands of peers moving
//! gigabytes, so each connection is a fluid flow whose rate is the max-min
//! fair share of the links on its path. Rates are recomputed at most once per
//! `quantum` of simulated time, which batches the many flow starts and ends
//! that happen close together in a swarm.
//!
//! Everything is ordered by vector index (never by hash order) so that a
//! scenario replays identically.

use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, VecDeque};

/// Simulated time in nanoseconds.
pub type Nanos = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub u32);

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u32);

const NANOS_PER_SEC: f64 = 1e9;
/// Float progress never lands exactly on zero, so half a byte counts as done.
const DONE_TOLERANCE: f64 = 0.5;
/// Capacity left over by float cancellation must not look like real capacity.
const RESIDUAL: f64 = 1e-9;
/// Rates this close to the old ones are kept, so float noise from a different
/// summation order does not reschedule every flow after each recompute.
const RATE_EPSILON: f64 = 1e-12;
const IDLE: u32 = u32::MAX;

struct Link {
    cap: f64,
    /// Settled bytes only; flows add their progress lazily.
    bytes: f64,
}

struct Msg {
    remaining: f64,
    tag: u64,
}

struct Conn {
    path: Vec<u32>,
    queue: VecDeque<Msg>,
    rate: f64,
    /// Time up to which the head's progress has been applied.
    last_update: Nanos,
    /// Bumped whenever rate or head changes, so stale completion entries
    /// can stay in the heap and be skipped instead of searched for.
    version: u64,
    /// Position in `Net::active`, or `IDLE`.
    active_pos: u32,
}

/// Orders shares totally so they can key a heap; shares are never NaN.
#[derive(Clone, Copy, PartialEq)]
struct Share(f64);

impl Eq for Share {}

impl PartialOrd for Share {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Share {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0)
    }
}

/// Buffers reused across recomputes: allocating them each time would
/// dominate the cost when the swarm is large and recomputes are frequent.
#[derive(Default)]
struct Fill {
    /// CSR offsets: flows crossing link `l` are `members[start[l]..start[l+1]]`.
    start: Vec<usize>,
    cursor: Vec<usize>,
    /// Positions in `Net::active`.
    members: Vec<u32>,
    /// Links of active flow `pos` are `paths[path_start[pos]..path_start[pos+1]]`.
    path_start: Vec<usize>,
    paths: Vec<u32>,
    cap: Vec<f64>,
    rem: Vec<f64>,
    unfrozen: Vec<u32>,
    gen: Vec<u32>,
    frozen: Vec<bool>,
    rate: Vec<f64>,
    heap: BinaryHeap<Reverse<(Share, u32, u32)>>,
}

type Event = Reverse<(Nanos, u32, u64)>;

/// `Net::default()` is `Net::new(0)`.
#[derive(Default)]
pub struct Net {
    quantum: Nanos,
    now: Nanos,
    links: Vec<Link>,
    conns: Vec<Conn>,
    /// Connections with a non-empty queue; order only matters for
    /// determinism, which swap-removal preserves.
    active: Vec<u32>,
    events: BinaryHeap<Event>,
    /// When the pending recompute is due, if rates are dirty.
    due: Option<Nanos>,
    last_recompute: Option<Nanos>,
    recomputes: u64,
    /// Completions found while catching up inside a mutating call; handed
    /// out by the next `advance` so none is lost.
    delivered: Vec<(ConnId, u64)>,
    fill: Fill,
}

/// NaN or negative capacities would poison the water-filling; infinite ones
/// would turn byte counts into NaN.
fn sanitize(bytes_per_sec: f64) -> f64 {
    if bytes_per_sec.is_nan() || bytes_per_sec <= 0.0 {
        0.0
    } else {
        bytes_per_sec.min(f64::MAX)
    }
}

/// Rounds up so that a message never completes before its bytes are through.
fn ceil_nanos(secs: f64) -> Nanos {
    // `as` saturates, which is what an effectively stalled flow needs.
    (secs * NANOS_PER_SEC).ceil() as Nanos
}

impl Net {
    pub fn new(quantum: Nanos) -> Net {
        Net {
            quantum,
            ..Net::default()
        }
    }

    /// NaN or non-positive capacities become 0, +inf becomes `f64::MAX`.
    pub fn add_link(&mut self, bytes_per_sec: f64) -> LinkId {
        let id = LinkId(self.links.len() as u32);
        self.links.push(Link {
            cap: sanitize(bytes_per_sec),
            bytes: 0.0,
        });
        id
    }

    /// Changes a link's capacity from `now` on (0 allowed: a cut link; its flows get rate 0 and stall).
    pub fn set_capacity(&mut self, now: Nanos, link: LinkId, bytes_per_sec: f64) {
        let now = self.sync(now, false);
        if let Some(l) = self.links.get_mut(link.0 as usize) {
            l.cap = sanitize(bytes_per_sec);
            self.mark_dirty(now);
        }
        self.prune();
    }

    /// Unknown links and repeats are dropped from the path: a flow cannot use
    /// a link that does not exist, and crossing one twice is meaningless. A
    /// connection left with no links never gets a rate.
    pub fn open(&mut self, path: &[LinkId]) -> ConnId {
        let mut links: Vec<u32> = Vec::with_capacity(path.len());
        for l in path {
            if (l.0 as usize) < self.links.len() && !links.contains(&l.0) {
                links.push(l.0);
            }
        }
        let id = ConnId(self.conns.len() as u32);
        self.conns.push(Conn {
            path: links,
            queue: VecDeque::new(),
            rate: 0.0,
            last_update: self.now,
            version: 0,
            active_pos: IDLE,
        });
        id
    }

    /// Appends a message; the connection becomes an active flow if it was idle.
    pub fn send(&mut self, now: Nanos, conn: ConnId, bytes: u64, tag: u64) {
        let now = self.sync(now, false);
        let c = conn.0;
        let Some(cn) = self.conns.get_mut(c as usize) else {
            return;
        };
        cn.queue.push_back(Msg {
            remaining: bytes as f64,
            tag,
        });
        if cn.queue.len() == 1 {
            cn.last_update = now;
            cn.rate = 0.0;
            cn.active_pos = self.active.len() as u32;
            self.active.push(c);
            self.mark_dirty(now);
            // An empty message completes at once even before it has a rate.
            self.schedule(c);
        }
        self.prune();
    }

    /// Removes the first message with `tag` (queued or partly sent); returns whether it was there. Bytes already sent of it stay counted on the links.
    pub fn cancel(&mut self, now: Nanos, conn: ConnId, tag: u64) -> bool {
        let now = self.sync(now, false);
        let c = conn.0;
        let Some(cn) = self.conns.get_mut(c as usize) else {
            return false;
        };
        let Some(pos) = cn.queue.iter().position(|m| m.tag == tag) else {
            return false;
        };
        if pos == 0 {
            self.settle(c, now);
            self.pop_head(c, now);
        } else {
            cn.queue.remove(pos);
        }
        self.prune();
        true
    }

    /// Drops every message of the connection (it becomes idle; it may be sent on again later). Returns the dropped tags in order.
    pub fn close(&mut self, now: Nanos, conn: ConnId) -> Vec<u64> {
        let now = self.sync(now, false);
        let c = conn.0;
        self.settle(c, now);
        let Some(cn) = self.conns.get_mut(c as usize) else {
            return Vec::new();
        };
        let tags: Vec<u64> = cn.queue.drain(..).map(|m| m.tag).collect();
        if !tags.is_empty() {
            self.deactivate(c, now);
            self.schedule(c);
        }
        self.prune();
        tags
    }

    /// The earliest time something happens: a head message completes, or a pending recompute is due. None when nothing is active and nothing is pending.
    pub fn next_event(&self) -> Option<Nanos> {
        let done = self.events.peek().map(|e| e.0 .0);
        match (done, self.due) {
            (Some(d), Some(r)) => Some(d.min(r)),
            (d, r) => d.or(r),
        }
    }

    /// Moves time to `now` and appends every message completed at or before
    /// `now` to `delivered` in completion order (ties by `ConnId`).
    ///
    /// Passing a time beyond `next_event()` is tolerated: the events in
    /// between are processed in order. An earlier time than the last call
    /// is treated as the last call's time, since time cannot go backwards.
    pub fn advance(&mut self, now: Nanos, delivered: &mut Vec<(ConnId, u64)>) {
        self.sync(now, true);
        self.prune();
        delivered.append(&mut self.delivered);
    }

    /// Bytes per second the connection gets now (0 when idle or unknown).
    pub fn rate(&self, conn: ConnId) -> f64 {
        self.conns.get(conn.0 as usize).map_or(0.0, |c| c.rate)
    }

    /// Bytes carried so far, including partly sent and cancelled messages.
    /// Scans the active flows, since progress is settled lazily; meant for
    /// occasional reporting, not for the hot path.
    pub fn link_bytes(&self, link: LinkId) -> f64 {
        let Some(l) = self.links.get(link.0 as usize) else {
            return 0.0;
        };
        let pending: f64 = self
            .active
            .iter()
            .filter_map(|&c| self.conns.get(c as usize))
            .filter(|cn| cn.path.contains(&link.0))
            .map(|cn| self.unsettled(cn))
            .sum();
        l.bytes + pending
    }

    /// Unsent bytes queued on the connection as of now, so callers can see
    /// how far a partly sent head message has got.
    pub fn queued_bytes(&self, conn: ConnId) -> f64 {
        let Some(cn) = self.conns.get(conn.0 as usize) else {
            return 0.0;
        };
        let queued: f64 = cn.queue.iter().map(|m| m.remaining).sum();
        (queued - self.unsettled(cn)).max(0.0)
    }

    /// The time of the last `advance` (or of a later mutating call).
    pub fn now(&self) -> Nanos {
        self.now
    }

    pub fn active_flows(&self) -> usize {
        self.active.len()
    }

    /// How many max-min recomputes ran, for reporting.
    pub fn recomputes(&self) -> u64 {
        self.recomputes
    }

    fn unsettled(&self, cn: &Conn) -> f64 {
        if cn.queue.is_empty() {
            return 0.0;
        }
        cn.rate * self.now.saturating_sub(cn.last_update) as f64 / NANOS_PER_SEC
    }

    /// Processes completions and recomputes up to `now` in time order, so
    /// that every mutation sees the network as it is at its own time (a
    /// message completing exactly at `now` is delivered, not cancelled).
    /// Mutations leave a recompute due exactly at `now` pending: it changes
    /// nothing before `now`, and a burst of changes at one instant should
    /// cost one recompute, not one each.
    fn sync(&mut self, now: Nanos, fill_at_now: bool) -> Nanos {
        let target = now.max(self.now);
        loop {
            self.prune();
            let done = self.events.peek().map(|e| e.0 .0).filter(|&t| t <= target);
            let fill = self
                .due
                .filter(|&t| t < target || (fill_at_now && t == target));
            match (done, fill) {
                (None, None) => break,
                (Some(d), Some(f)) if f < d => self.recompute(f),
                (Some(d), _) => self.complete_next(d),
                (None, Some(f)) => self.recompute(f),
            }
        }
        self.now = target;
        target
    }

    /// Drops stale entries from the top so `next_event` can peek without
    /// mutating.
    fn prune(&mut self) {
        while let Some(Reverse((_, c, v))) = self.events.peek() {
            if self
                .conns
                .get(*c as usize)
                .is_some_and(|cn| cn.version == *v)
            {
                break;
            }
            self.events.pop();
        }
    }

    fn mark_dirty(&mut self, now: Nanos) {
        if self.due.is_none() {
            let earliest = self
                .last_recompute
                .map_or(now, |t| t.saturating_add(self.quantum));
            self.due = Some(now.max(earliest));
        }
    }

    /// Applies the head's progress since `last_update` to it and its links.
    fn settle(&mut self, c: u32, t: Nanos) {
        let Some(cn) = self.conns.get_mut(c as usize) else {
            return;
        };
        let dt = t.saturating_sub(cn.last_update);
        cn.last_update = cn.last_update.max(t);
        match cn.queue.front_mut() {
            Some(head) if dt > 0 && cn.rate > 0.0 => {
                let moved = cn.rate * dt as f64 / NANOS_PER_SEC;
                head.remaining -= moved;
                add_bytes(&mut self.links, &cn.path, moved);
            }
            _ => {}
        }
    }

    /// Invalidates the connection's old completion entry and pushes a new
    /// one for its head; a stalled flow gets none, so it cannot keep
    /// `next_event` alive.
    fn schedule(&mut self, c: u32) {
        let Some(cn) = self.conns.get_mut(c as usize) else {
            return;
        };
        cn.version += 1;
        let Some(head) = cn.queue.front() else {
            return;
        };
        let at = if head.remaining <= DONE_TOLERANCE {
            cn.last_update
        } else if cn.rate > 0.0 {
            cn.last_update
                .saturating_add(ceil_nanos(head.remaining / cn.rate))
        } else {
            return;
        };
        self.events.push(Reverse((at, c, cn.version)));
    }

    fn complete_next(&mut self, t: Nanos) {
        self.now = t;
        let Some(Reverse((_, c, _))) = self.events.pop() else {
            return;
        };
        self.settle(c, t);
        let Some(cn) = self.conns.get(c as usize) else {
            return;
        };
        let Some(head) = cn.queue.front() else {
            return;
        };
        // Float drift can leave a sliver; only a saturated time cannot move on.
        if head.remaining > DONE_TOLERANCE && t < Nanos::MAX {
            self.schedule(c);
            return;
        }
        // Rounding the completion up overshoots by up to a nanosecond of
        // traffic; correct it so links count exactly the message's bytes.
        let (fix, tag) = (head.remaining, head.tag);
        add_bytes(&mut self.links, &cn.path, fix);
        self.pop_head(c, t);
        self.delivered.push((ConnId(c), tag));
    }

    /// The next message inherits the flow's rate at once, as on one TCP
    /// stream; only an emptied queue changes the set of flows.
    fn pop_head(&mut self, c: u32, now: Nanos) {
        let Some(cn) = self.conns.get_mut(c as usize) else {
            return;
        };
        cn.queue.pop_front();
        if cn.queue.is_empty() {
            self.deactivate(c, now);
        }
        self.schedule(c);
    }

    fn deactivate(&mut self, c: u32, now: Nanos) {
        let Some(cn) = self.conns.get_mut(c as usize) else {
            return;
        };
        let pos = cn.active_pos as usize;
        cn.active_pos = IDLE;
        cn.rate = 0.0;
        if pos >= self.active.len() {
            return;
        }
        self.active.swap_remove(pos);
        if let Some(&moved) = self.active.get(pos) {
            if let Some(m) = self.conns.get_mut(moved as usize) {
                m.active_pos = pos as u32;
            }
        }
        self.mark_dirty(now);
    }

    fn recompute(&mut self, t: Nanos) {
        self.now = t;
        self.due = None;
        self.last_recompute = Some(t);
        self.recomputes += 1;
        self.build_membership();
        self.water_fill();
        self.apply_rates(t);
        if self.events.len() > 2 * self.active.len() + 1024 {
            let conns = &self.conns;
            self.events.retain(|Reverse((_, c, v))| {
                conns.get(*c as usize).is_some_and(|cn| cn.version == *v)
            });
        }
    }

    /// Builds, per link, the list of active flows crossing it, and a flat
    /// copy of the flows' paths (CSR layouts), in O(flows × path length +
    /// links); the flat arrays keep the fill loop off scattered heap memory.
    fn build_membership(&mut self) {
        let n = self.links.len();
        let f = &mut self.fill;
        f.start.clear();
        f.start.resize(n + 1, 0);
        f.path_start.clear();
        f.paths.clear();
        for &c in &self.active {
            f.path_start.push(f.paths.len());
            for &l in &self.conns[c as usize].path {
                f.start[l as usize + 1] += 1;
                f.paths.push(l);
            }
        }
        f.path_start.push(f.paths.len());
        for l in 0..n {
            f.start[l + 1] += f.start[l];
        }
        f.members.clear();
        f.members.resize(f.start[n], 0);
        f.cursor.clear();
        f.cursor.extend_from_slice(&f.start[..n]);
        for pos in 0..self.active.len() {
            for &l in &f.paths[f.path_start[pos]..f.path_start[pos + 1]] {
                let slot = &mut f.cursor[l as usize];
                f.members[*slot] = pos as u32;
                *slot += 1;
            }
        }
    }

    fn init_fill(&mut self) {
        let n = self.links.len();
        let f = &mut self.fill;
        f.cap.clear();
        f.cap.extend(self.links.iter().map(|l| l.cap));
        f.rem.clear();
        f.rem.extend_from_slice(&f.cap);
        f.unfrozen.clear();
        f.unfrozen
            .extend((0..n).map(|l| (f.start[l + 1] - f.start[l]) as u32));
        f.gen.clear();
        f.gen.resize(n, 0);
        f.frozen.clear();
        f.frozen.resize(self.active.len(), false);
        f.rate.clear();
        f.rate.resize(self.active.len(), 0.0);
        let mut heap = std::mem::take(&mut f.heap).into_vec();
        heap.clear();
        heap.extend((0..n).filter(|&l| f.unfrozen[l] > 0).map(|l| {
            let share = f.rem[l] / f.unfrozen[l] as f64;
            Reverse((Share(share), l as u32, 0))
        }));
        f.heap = BinaryHeap::from(heap);
    }

    /// Progressive filling: the link with the smallest fair share is the
    /// bottleneck of all its unfrozen flows. Freezing them can only raise
    /// other links' shares, so a heap entry is a lower bound of its link's
    /// share: a stale entry is re-pushed with the current share only when it
    /// reaches the top, which keeps heap traffic near one entry per link.
    fn water_fill(&mut self) {
        self.init_fill();
        let f = &mut self.fill;
        while let Some(Reverse((Share(share), l, g))) = f.heap.pop() {
            let l = l as usize;
            if f.unfrozen[l] == 0 {
                continue;
            }
            if g != f.gen[l] {
                let share = f.rem[l] / f.unfrozen[l] as f64;
                f.heap.push(Reverse((Share(share), l as u32, f.gen[l])));
                continue;
            }
            for i in f.start[l]..f.start[l + 1] {
                let pos = f.members[i] as usize;
                if f.frozen[pos] {
                    continue;
                }
                f.frozen[pos] = true;
                f.rate[pos] = share;
                for &l2 in &f.paths[f.path_start[pos]..f.path_start[pos + 1]] {
                    let l2 = l2 as usize;
                    let left = f.rem[l2] - share;
                    f.rem[l2] = if left <= RESIDUAL * f.cap[l2] {
                        0.0
                    } else {
                        left
                    };
                    f.unfrozen[l2] -= 1;
                    f.gen[l2] += 1;
                }
            }
        }
    }

    /// Only flows whose rate changed get settled and rescheduled, which keeps
    /// a recompute that moves few rates cheap after the fill itself.
    fn apply_rates(&mut self, t: Nanos) {
        for pos in 0..self.active.len() {
            let c = self.active[pos];
            let new = self.fill.rate[pos];
            let old = self.conns[c as usize].rate;
            if (new - old).abs() <= RATE_EPSILON * old.max(new) {
                continue;
            }
            self.settle(c, t);
            self.conns[c as usize].rate = new;
            self.schedule(c);
        }
    }
}

fn add_bytes(links: &mut [Link], path: &[u32], bytes: f64) {
    for &l in path {
        if let Some(link) = links.get_mut(l as usize) {
            link.bytes += bytes;
        }
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
