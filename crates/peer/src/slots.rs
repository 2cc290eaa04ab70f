//! The node's upload slots for real sessions: pollen-core's [`Slots`] (who holds a slot, who
//! waits, each peer's share, who is next) behind one lock, and a wake-up for each waiting
//! session. The decisions are the core's; this only carries them out, so the simulator and
//! the agent hand slots out by the same code.

use pollen_core::upload::{may_yield, Admission, Slots};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Who a session serves, for the per-peer share of the slots (the agent passes the PeerId's
/// bytes); sessions without one are not counted per peer.
pub type PeerKey = Vec<u8>;

/// What a waiting session is told when it leaves the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    /// It holds a slot now.
    Granted,
    /// It lost its place to a newcomer holding fewer slots, or as a newcomer it held as many
    /// as any in a full queue ([`Slots::holding`]): it is turned away.
    Displaced,
}

/// Why a waiting session got no slot ([`QueuePlace::granted`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoSlot {
    /// The queue was full and kept for nodes holding fewer slots elsewhere: a newcomer took
    /// this session's place, or this session, a newcomer, held no fewer than those waiting.
    /// The downloader may dial again.
    Displaced,
    /// The slot table is gone (the node's uploads are shutting down).
    ShutDown,
}

/// The slot state and the wake-ups of the sessions waiting in it.
struct Book {
    slots: Slots<PeerKey>,
    /// Waiting sessions by ticket: told when they are granted a slot or displaced.
    wake: HashMap<u64, oneshot::Sender<Wake>>,
    next_ticket: u64,
    /// Sessions turned away from a full queue by a newcomer's `Holding`, so far.
    displaced: u64,
}

impl Book {
    fn ticket(&mut self) -> u64 {
        self.next_ticket = self.next_ticket.wrapping_add(1);
        self.next_ticket
    }

    /// A waiting place for `ticket`, already in the core's queue.
    fn place(&mut self, ticket: u64, who: Option<PeerKey>, table: &Arc<SlotTable>) -> QueuePlace {
        let (tx, rx) = oneshot::channel();
        self.wake.insert(ticket, tx);
        QueuePlace {
            ticket,
            who,
            rx,
            settled: false,
            table: table.clone(),
        }
    }

    /// Frees a held slot and hands the free slots to the sessions next in line.
    fn release(&mut self, who: Option<&PeerKey>) {
        self.slots.release(who);
        self.grant();
    }

    /// Hands free slots out and wakes the sessions that got one. A session's wake-up lives as
    /// long as its place in the queue (the place leaves the queue before it drops it), so a
    /// failed send would be a bug; the slot is then handed on rather than lost.
    fn grant(&mut self) {
        let mut granted = self.slots.grant();
        while let Some((ticket, who)) = granted.pop() {
            let woken = self
                .wake
                .remove(&ticket)
                .is_some_and(|tx| tx.send(Wake::Granted).is_ok());
            if !woken {
                self.slots.release(who.as_ref());
                granted.extend(self.slots.grant());
            }
        }
    }
}

/// The node's upload slots (held in an `Arc`: permits and places point back to it).
pub(crate) struct SlotTable {
    book: Mutex<Book>,
}

/// How a new session is let in.
pub(crate) enum Admitted {
    Slot(SlotPermit),
    Queued(QueuePlace),
    Busy,
}

impl SlotTable {
    /// `slots` slots (0: every session is turned away), the core's default share and queue.
    pub fn new(slots: usize) -> SlotTable {
        SlotTable {
            book: Mutex::new(Book {
                slots: Slots::new(slots),
                wake: HashMap::new(),
                next_ticket: 0,
                displaced: 0,
            }),
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // Poisoned only by a panic elsewhere mid-update; the counts stay usable.
        self.book.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the core's limits (see [`Slots::with_per_peer`], [`Slots::with_max_waiting`]);
    /// meant for before sessions arrive, and harmless after (the counts carry over).
    pub fn configure(&self, f: impl FnOnce(Slots<PeerKey>) -> Slots<PeerKey>) {
        let mut book = self.book();
        book.slots = f(book.slots.clone());
    }

    /// A slot now, a place in the queue, or `Busy` ([`Slots::admit`]).
    pub fn admit(self: &Arc<Self>, who: Option<PeerKey>) -> Admitted {
        let mut book = self.book();
        let ticket = book.ticket();
        match book.slots.admit(ticket, who.as_ref()) {
            Admission::Unchoked => Admitted::Slot(SlotPermit {
                ticket,
                who,
                held: true,
                table: self.clone(),
            }),
            Admission::Waiting => Admitted::Queued(book.place(ticket, who, self)),
            Admission::Busy => Admitted::Busy,
        }
    }

    /// The downloader of session `ticket` holds `slots` slots now ([`Slots::holding`]): its
    /// place among the waiting, and for a session waiting on trial, who leaves the queue (that
    /// session is told).
    pub fn holding(&self, ticket: u64, slots: u32) {
        let mut book = self.book();
        let Some(out) = book.slots.holding(ticket, slots) else {
            return;
        };
        book.displaced = book.displaced.saturating_add(1);
        // Every waiting session's wake-up lives as long as its place in the queue (the place
        // leaves the queue under this lock before it drops it).
        if let Some(tx) = book.wake.remove(&out) {
            let _ = tx.send(Wake::Displaced);
        }
    }

    /// Sessions turned away from a full queue so far ([`SlotTable::holding`]).
    pub fn displaced(&self) -> u64 {
        self.book().displaced
    }

    /// Whether some session waits for a slot now ([`may_yield`]).
    pub fn someone_waiting(&self) -> bool {
        may_yield(self.book().slots.waiting())
    }
}

/// An upload slot, held until dropped (or given up, [`SlotPermit::give_up`]).
pub(crate) struct SlotPermit {
    ticket: u64,
    who: Option<PeerKey>,
    /// False once given up: the slot is no longer this permit's to release.
    held: bool,
    table: Arc<SlotTable>,
}

impl SlotPermit {
    /// The session's ticket in the table (the same while it waits again after giving up).
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// An idle holder gives its slot to a waiting session and queues again at the back,
    /// placed by `holding` (what its downloader last said), if the core says so
    /// ([`Slots::yield_slot`]); otherwise the permit comes back.
    pub fn give_up(self, holding: u32) -> Result<QueuePlace, SlotPermit> {
        self.leave_if(|slots, ticket, who| slots.yield_slot(ticket, who, holding))
    }

    /// After a piece, a holder that still asks gives its slot to a poorer waiting node and
    /// queues again, if the core says so ([`Slots::turn_over`]: `holding` is what its
    /// downloader last said, `held_for` how long it has had this slot); otherwise the permit
    /// comes back.
    pub fn turn_over(
        self,
        holding: u32,
        held_for: Duration,
        now: Instant,
    ) -> Result<QueuePlace, SlotPermit> {
        self.leave_if(|slots, ticket, who| slots.turn_over(ticket, who, holding, held_for, now))
    }

    /// Gives the slot up and takes a place in the queue if `decide` (the core, which then
    /// has queued the session already) says so.
    fn leave_if(
        mut self,
        decide: impl FnOnce(&mut Slots<PeerKey>, u64, Option<&PeerKey>) -> bool,
    ) -> Result<QueuePlace, SlotPermit> {
        let table = self.table.clone();
        let mut book = table.book();
        if !decide(&mut book.slots, self.ticket, self.who.as_ref()) {
            drop(book);
            return Err(self);
        }
        self.held = false;
        let place = book.place(self.ticket, self.who.take(), &table);
        book.grant();
        Ok(place)
    }
}

impl Drop for SlotPermit {
    fn drop(&mut self) {
        if self.held {
            self.table.book().release(self.who.as_ref());
        }
    }
}

/// A session's place in the queue for a slot; dropping it leaves the queue (or hands on a
/// slot granted and not taken).
pub(crate) struct QueuePlace {
    ticket: u64,
    who: Option<PeerKey>,
    rx: oneshot::Receiver<Wake>,
    /// Its wake-up was received: the granted slot became a [`SlotPermit`], or the session
    /// was displaced; either way it is no longer in the queue.
    settled: bool,
    table: Arc<SlotTable>,
}

impl QueuePlace {
    /// The session's ticket in the table.
    pub fn ticket(&self) -> u64 {
        self.ticket
    }

    /// Waits until this session is granted a slot, or displaced from the queue.
    pub async fn granted(mut self) -> Result<SlotPermit, NoSlot> {
        let wake = (&mut self.rx).await.map_err(|_| NoSlot::ShutDown)?;
        self.settled = true;
        match wake {
            Wake::Granted => Ok(SlotPermit {
                ticket: self.ticket,
                who: self.who.take(),
                held: true,
                table: self.table.clone(),
            }),
            Wake::Displaced => Err(NoSlot::Displaced),
        }
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        let mut book = self.table.book();
        book.wake.remove(&self.ticket);
        if self.settled {
            return;
        }
        // Under the lock every wake-up sent is already in the channel.
        match self.rx.try_recv() {
            // Granted a slot while leaving: the slot goes to the next in line.
            Ok(Wake::Granted) => book.release(self.who.as_ref()),
            Ok(Wake::Displaced) => {}
            Err(_) => {
                book.slots.leave(self.ticket);
            }
        }
    }
}
