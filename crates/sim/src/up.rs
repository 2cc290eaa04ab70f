//! A node serving a blob: upload slots as the agent's `UploadLimits` hands them out (at most
//! `--upload-slots` unchoked, half of them per peer, four waiting per slot, the fewest held
//! first (`Request::Holding`); a newcomer at a full queue displaces the waiting session holding
//! most if it holds fewer; an idle holder yields after `--slot-yield-after` to one waiting),
//! announcements sent when the session's writer is free, and super-seeding decided by
//! pollen-core's `Claims`.

use crate::world::{nanos, Ev, World};
use pollen_core::retry::{Again, RETRY_SOON};
use pollen_core::upload::Admission;
use pollen_proto::Bitfield;

impl World {
    /// A downloader's session arrives at the uploader.
    pub(crate) fn on_open(&mut self, sid: usize) {
        let Some((up, down, layer, open)) = self
            .sessions
            .get(sid)
            .map(|s| (s.up, s.down, s.layer, s.open))
        else {
            return;
        };
        let back = self.topo.latency(up, down);
        let ready = self.serves(up, layer);
        if !open || !self.nodes.get(up).is_some_and(|n| n.alive) || !ready {
            // Dead, or holding none of the blob yet (`UnknownBlob`): turned away, dialled
            // again soon.
            let again = match ready {
                true => Again::After(RETRY_SOON),
                false => Again::NotYet,
            };
            self.after(back, Ev::Refused(sid, again));
            return;
        }
        let Some(node) = self.nodes.get_mut(up) else {
            return;
        };
        let (unchoked, waiting) = match node.slots.admit(sid as u64, Some(&down)) {
            Admission::Unchoked => (true, false),
            Admission::Waiting => (false, true),
            Admission::Busy => {
                self.after(back, Ev::Refused(sid, Again::After(RETRY_SOON)));
                return;
            }
        };
        let now = self.instant();
        let Some(f) = self.fetch_mut(up, layer) else {
            return;
        };
        let seat = f.claims.seat(now);
        f.uploads.push(sid);
        let (shown, next) = f.claims.visible(seat, &f.have, now, unchoked);
        let granted_at = self.now;
        if let Some(s) = self.sessions.get_mut(sid) {
            s.seat = seat;
            s.granted_at = granted_at;
            s.unchoked = unchoked;
            s.waiting = waiting;
            s.announced = shown.clone();
        }
        self.reveal_later(up, layer, next);
        // The map's hashes go first, as the agent's announcer sends them (then `Have`).
        self.send_hashes(sid);
        self.after(back, Ev::Opened(sid, Box::new(shown)));
        if unchoked {
            self.after(back, Ev::Choke { sid, choked: false });
        } else {
            self.holders_may_yield(up);
        }
    }

    pub(crate) fn on_request(&mut self, sid: usize, piece: u32) {
        let now = self.now;
        let Some(s) = self.sessions.get_mut(sid).filter(|s| s.open && s.unchoked) else {
            return; // the agent drops a request that arrives while choked
        };
        let (up, layer, conn) = (s.up, s.layer, s.conn);
        let has = self.fetch(up, layer).is_some_and(|f| f.have.get(piece));
        let len = self
            .geometry(self.blob_of(up, layer))
            .len_of(piece)
            .unwrap_or(0);
        if !has {
            return;
        }
        if let Some(s) = self.sessions.get_mut(sid) {
            s.queued += 1;
            s.last_request = now;
        }
        self.net.send(now, conn, u64::from(len), u64::from(piece));
    }

    pub(crate) fn on_cancel(&mut self, sid: usize, piece: u32) {
        let now = self.now;
        let Some(s) = self.sessions.get(sid).filter(|s| s.open) else {
            return;
        };
        if self.net.cancel(now, s.conn, u64::from(piece)) {
            if let Some(s) = self.sessions.get_mut(sid) {
                s.queued = s.queued.saturating_sub(1);
            }
        }
    }

    /// A waiting session lost its place in a full queue (to a newcomer holding fewer slots, or
    /// as that newcomer): it ends and its downloader hears `Busy`, as from the agent.
    fn displaced(&mut self, sid: usize) {
        let Some((up, down)) = self.sessions.get(sid).map(|s| (s.up, s.down)) else {
            return;
        };
        self.end_session(sid);
        let back = self.topo.latency(up, down);
        self.after(back, Ev::Refused(sid, Again::After(RETRY_SOON)));
    }

    /// The downloader ended the session (done, or gone to the upstream).
    pub(crate) fn on_close(&mut self, sid: usize) {
        self.end_session(sid);
    }

    /// The uploader's side of a session ends: its slot and super-seeding seat are freed.
    pub(crate) fn end_session(&mut self, sid: usize) {
        let now = self.now;
        let Some(s) = self.sessions.get_mut(sid).filter(|s| s.open) else {
            return;
        };
        s.open = false;
        // A closed session's entry stays (events in flight name it), its buffers need not.
        s.announced = Bitfield::default();
        s.hashes_sent = Bitfield::default();
        s.pending = Vec::new();
        let (up, down, layer, conn, seat) = (s.up, s.down, s.layer, s.conn, s.seat);
        let (unchoked, waiting) = (s.unchoked, s.waiting);
        s.unchoked = false;
        s.waiting = false;
        self.net.close(now, conn);
        let mut freed = false;
        if let Some(f) = self.fetch_mut(up, layer) {
            f.uploads.retain(|x| *x != sid);
            freed = f.claims.leave(seat);
        }
        if let Some(node) = self.nodes.get_mut(up) {
            if unchoked {
                node.slots.release(Some(&down));
            }
            if waiting {
                node.slots.leave(sid as u64);
            }
        }
        if freed {
            self.reveal(up, layer);
        }
        if unchoked && self.nodes.get(up).is_some_and(|n| n.alive) {
            self.grant(up);
        }
    }

    /// Free slots go to waiting sessions, the fewest held first, within each peer's share.
    fn grant(&mut self, up: usize) {
        let granted = self.nodes.get_mut(up).map(|n| n.slots.grant());
        let granted = granted.into_iter().flatten();
        for sid in granted.filter_map(|(t, _)| usize::try_from(t).ok()) {
            let Some(s) = self.sessions.get_mut(sid) else {
                continue;
            };
            s.unchoked = true;
            s.waiting = false;
            s.last_request = self.now;
            s.granted_at = self.now;
            let (down, layer) = (s.down, s.layer);
            let delay = self.topo.latency(up, down);
            self.after(delay, Ev::Choke { sid, choked: false });
            self.news(sid);
            let _ = layer;
        }
    }

    /// A downloader said how many slots it holds: its session's place in this node's queue.
    pub(crate) fn on_holding(&mut self, sid: usize, slots: u32) {
        let Some(s) = self.sessions.get_mut(sid).filter(|s| s.open) else {
            return;
        };
        s.holding = slots;
        let up = s.up;
        let out = self
            .nodes
            .get_mut(up)
            .filter(|n| n.alive)
            .and_then(|node| node.slots.holding(sid as u64, slots));
        if let Some(out) = out {
            self.displaced(out as usize);
        }
    }

    /// Someone waits for a slot: each idle holder looks whether to give its slot up.
    fn holders_may_yield(&mut self, up: usize) {
        let yield_after = nanos(self.s.yield_after());
        let holders: Vec<(usize, u64)> = self
            .nodes
            .get(up)
            .map(|n| {
                n.fetches
                    .iter()
                    .flat_map(|f| f.uploads.iter().copied())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default()
            .into_iter()
            .filter_map(|sid| {
                let s = self.sessions.get(sid)?;
                (s.open && s.unchoked && s.queued == 0 && s.yield_check.is_none())
                    .then_some((sid, s.last_request.saturating_add(yield_after)))
            })
            .collect();
        for (sid, at) in holders {
            if let Some(s) = self.sessions.get_mut(sid) {
                s.yield_check = Some(at);
            }
            self.at(at, Ev::YieldCheck(sid));
        }
    }

    pub(crate) fn yield_check(&mut self, sid: usize) {
        let now = self.now;
        let yield_after = nanos(self.s.yield_after());
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        s.yield_check = None;
        let idle = s.open && s.unchoked && s.queued == 0;
        if !idle {
            return;
        }
        let due = s.last_request.saturating_add(yield_after);
        if now < due {
            // A request came since: look again a second after it (the uploader's deadline).
            s.yield_check = Some(due);
            self.at(due, Ev::YieldCheck(sid));
            return;
        }
        let (up, down, holding) = (s.up, s.down, s.holding);
        let yielded = self
            .nodes
            .get_mut(up)
            .is_some_and(|n| n.slots.yield_slot(sid as u64, Some(&down), holding));
        if !yielded {
            return;
        }
        self.lost_slot(sid);
        let delay = self.topo.latency(up, down);
        self.after(delay, Ev::Choke { sid, choked: true });
        self.grant(up);
    }

    /// A session gave its slot up (idle, or turned over): it waits again, and the pieces it
    /// owned unsent in the super-seeding go to others (`Claims::choked`).
    fn lost_slot(&mut self, sid: usize) {
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        s.unchoked = false;
        s.waiting = true;
        s.queued = 0;
        let (up, layer, seat) = (s.up, s.layer, s.seat);
        let freed = self
            .fetch_mut(up, layer)
            .is_some_and(|f| f.claims.choked(seat));
        if freed {
            self.reveal(up, layer);
        }
    }

    /// A piece finished crossing a session: counted, and the writer is free for news.
    pub(crate) fn uploaded(&mut self, sid: usize, piece: u32, len: u64) {
        let now = self.instant();
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        s.queued = s.queued.saturating_sub(1);
        // Time spent sending is not idle time (the agent's uploader counts idleness from the
        // last frame written): over a slow uplink a holder whose only piece took longer than
        // `SLOT_YIELD_AFTER` to send gave its slot up the moment the piece was through.
        s.last_request = s.last_request.max(self.now);
        let (up, layer, seat, queued) = (s.up, s.layer, s.seat, s.queued);
        if let Some(node) = self.nodes.get_mut(up) {
            node.sent += len;
        }
        let mut spread = false;
        if let Some(f) = self.fetch_mut(up, layer) {
            f.claims.sent(seat, piece, now);
            spread = f.claims.is_active();
        }
        // A super-seeded session that sent a piece has room for a new one: look again.
        if spread || self.sessions.get(sid).is_some_and(|s| s.dirty) {
            self.news(sid);
        }
        if spread {
            // Idle sessions may now see the piece just sent (`Claims::visible`).
            self.reveal(up, layer);
        }
        if queued == 0 && self.nodes.get(up).is_some_and(|n| n.slots.waiting() > 0) {
            self.holders_may_yield(up);
        }
        self.turn_over(sid);
    }

    /// After a piece, a holder still asking may give its slot to a poorer waiting node
    /// (`Slots::turn_over`): its queued pieces are dropped with the `Choked`.
    fn turn_over(&mut self, sid: usize) {
        let (now, at) = (self.now, self.instant());
        let Some(s) = self.sessions.get(sid).filter(|s| s.open && s.unchoked) else {
            return;
        };
        let (up, down, holding, conn) = (s.up, s.down, s.holding, s.conn);
        let held_for = std::time::Duration::from_nanos(now.saturating_sub(s.granted_at));
        let turned = self.nodes.get_mut(up).is_some_and(|n| {
            n.alive
                && n.slots
                    .turn_over(sid as u64, Some(&down), holding, held_for, at)
        });
        if !turned {
            return;
        }
        // The pieces queued on the session's connection are not sent.
        let _ = self.net.close(now, conn);
        self.lost_slot(sid);
        let delay = self.topo.latency(up, down);
        self.after(delay, Ev::Choke { sid, choked: true });
        self.grant(up);
    }

    /// A piece was stored: each upload session of the blob hears of it when its writer is
    /// free (the agent's announcer sends news between pieces).
    pub(crate) fn announce(&mut self, n: usize, layer: usize, piece: u32) {
        let uploads = self
            .fetch(n, layer)
            .map(|f| f.uploads.clone())
            .unwrap_or_default();
        for sid in uploads {
            let Some(s) = self.sessions.get_mut(sid).filter(|s| s.open) else {
                continue;
            };
            s.pending.push(piece);
            s.dirty = true;
            if s.queued == 0 {
                self.news(sid);
            }
        }
    }

    /// Sends a session what its downloader has not heard of yet.
    fn news(&mut self, sid: usize) {
        let now = self.instant();
        let Some(s) = self.sessions.get_mut(sid).filter(|s| s.open) else {
            return;
        };
        s.dirty = false;
        let (up, down, layer, seat, unchoked) = (s.up, s.down, s.layer, s.seat, s.unchoked);
        let pending = std::mem::take(&mut s.pending);
        // Hashes first, as the agent's announcer sends them.
        self.send_hashes(sid);
        let Some(f) = self
            .nodes
            .get_mut(up)
            .and_then(|n| n.fetches.get_mut(layer))
        else {
            return;
        };
        let (fresh, next) = if f.claims.is_active() {
            let (shown, next) = f.claims.visible(seat, &f.have, now, unchoked);
            let announced = &self.sessions.get(sid).map(|s| s.announced.clone());
            let fresh: Vec<u32> = shown
                .iter_ones()
                .filter(|i| !announced.as_ref().is_some_and(|a| a.get(*i)))
                .collect();
            (fresh, next)
        } else {
            (pending, None)
        };
        self.reveal_later(up, layer, next);
        let Some(s) = self.sessions.get_mut(sid) else {
            return;
        };
        let fresh: Vec<u32> = fresh
            .into_iter()
            .filter(|i| s.announced.set(*i).unwrap_or(false))
            .collect();
        let fresh = self.heard_at_once(sid, down, layer, fresh);
        if !fresh.is_empty() {
            let delay = self.topo.latency(up, down);
            self.after(delay, Ev::HaveMore(sid, fresh));
        }
    }

    /// Super-seeding shows more at `next`: every session looks again then.
    fn reveal_later(&mut self, n: usize, layer: usize, next: Option<std::time::Instant>) {
        let Some(at) = next.map(|t| self.to_nanos(t)) else {
            return;
        };
        let now = self.now;
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        if f.reveal_at.is_some_and(|r| r <= at && r >= now) {
            return;
        }
        f.reveal_at = Some(at);
        self.at(at, Ev::Reveal { node: n, layer });
    }

    pub(crate) fn reveal(&mut self, n: usize, layer: usize) {
        if !self.nodes.get(n).is_some_and(|x| x.alive) {
            return;
        }
        let now = self.now;
        let Some(f) = self.fetch_mut(n, layer) else {
            return;
        };
        if f.reveal_at.is_some_and(|r| r <= now) {
            f.reveal_at = None;
        }
        for sid in f.uploads.clone() {
            let idle = self.sessions.get(sid).is_some_and(|s| s.queued == 0);
            match idle {
                true => self.news(sid),
                false => {
                    if let Some(s) = self.sessions.get_mut(sid) {
                        s.dirty = true;
                    }
                }
            }
        }
    }
}
