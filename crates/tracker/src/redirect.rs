//! A tracker asked about a blob it does not know first asks its node whether another tracker
//! has the blob's swarm ([`crate::OtherTrackers`]); this is the bookkeeping around that
//! question, so that the members arriving meanwhile wait for the same answer, a blob once sent
//! elsewhere stays sent there, and two trackers asking each other at the same moment do not
//! both keep the blob (each reports that it is asking; the lower-ranked one gives way).

use pollen_oci::Digest;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// How long a blob sent to another tracker stays sent there.
const MOVED_TTL: Duration = Duration::from_secs(30);
/// Blobs remembered as moved; past this, every move is forgotten (the probes running stay).
const MAX_MOVED: usize = 4096;

/// The answer of a probe: the tracker to send members to, or none (this tracker keeps it).
pub(crate) type Outcome = Option<Vec<u8>>;

enum State {
    Probing(watch::Receiver<Option<Outcome>>),
    Moved(Vec<u8>, Instant),
}

#[derive(Default)]
pub(crate) struct Redirects {
    blobs: Mutex<HashMap<Digest, State>>,
}

/// What a first-time member of a blob nobody here holds should do.
pub(crate) enum Enter<'a> {
    /// Ask the other trackers; report the answer through the guard.
    Probe(ProbeGuard<'a>),
    /// Another member's probe is running: wait for its answer.
    Wait(watch::Receiver<Option<Outcome>>),
    /// The blob was sent to this tracker.
    Moved(Vec<u8>),
}

/// Reports a probe's answer (or none, if dropped unfinished) to the members waiting on it.
pub(crate) struct ProbeGuard<'a> {
    redirects: &'a Redirects,
    digest: Digest,
    tx: watch::Sender<Option<Outcome>>,
    done: bool,
}

impl Redirects {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, State>> {
        self.blobs.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn enter(&self, digest: Digest) -> Enter<'_> {
        let mut blobs = self.lock();
        match blobs.get(&digest) {
            Some(State::Probing(rx)) => return Enter::Wait(rx.clone()),
            Some(State::Moved(to, at)) if at.elapsed() < MOVED_TTL => {
                return Enter::Moved(to.clone())
            }
            _ => {}
        }
        let (tx, rx) = watch::channel(None);
        blobs.insert(digest, State::Probing(rx));
        Enter::Probe(ProbeGuard {
            redirects: self,
            digest,
            tx,
            done: false,
        })
    }

    /// Whether a probe for the blob is running here (reported in `Members`).
    pub fn probing(&self, digest: &Digest) -> bool {
        matches!(self.lock().get(digest), Some(State::Probing(_)))
    }
}

impl ProbeGuard<'_> {
    pub fn finish(mut self, outcome: Outcome) {
        self.done = true;
        self.settle(outcome);
    }

    fn settle(&mut self, outcome: Outcome) {
        let mut blobs = self.redirects.lock();
        match &outcome {
            Some(to) => {
                if blobs.len() >= MAX_MOVED {
                    blobs.retain(|_, s| matches!(s, State::Probing(_)));
                }
                blobs.insert(self.digest, State::Moved(to.clone(), Instant::now()));
            }
            None => {
                blobs.remove(&self.digest);
            }
        }
        drop(blobs);
        self.tx.send_replace(Some(outcome));
    }
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.settle(None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn members_arriving_during_a_probe_share_its_answer_and_a_move_sticks() {
        let r = Redirects::default();
        let d = Digest::of(b"blob");
        let Enter::Probe(guard) = r.enter(d) else {
            panic!("the first member probes")
        };
        assert!(r.probing(&d));
        let Enter::Wait(mut rx) = r.enter(d) else {
            panic!("the second waits")
        };
        guard.finish(Some(vec![7]));
        let answer = rx.wait_for(Option::is_some).await.unwrap().clone();
        assert_eq!(answer, Some(Some(vec![7])));
        assert!(matches!(r.enter(d), Enter::Moved(to) if to == vec![7]));
        assert!(!r.probing(&d));
    }

    #[test]
    fn a_probe_that_finds_nothing_or_is_dropped_leaves_no_trace() {
        let r = Redirects::default();
        let d = Digest::of(b"blob");
        let Enter::Probe(guard) = r.enter(d) else {
            panic!()
        };
        guard.finish(None);
        let Enter::Probe(guard) = r.enter(d) else {
            panic!("asked afresh")
        };
        drop(guard);
        assert!(!r.probing(&d));
        assert!(matches!(r.enter(d), Enter::Probe(_)));
    }
}
