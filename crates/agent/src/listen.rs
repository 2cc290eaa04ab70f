//! Connection caps for the agent's HTTP listeners (the mirror, the admin port, the control
//! socket), so idle or slow connections cannot pin every file descriptor.
//!
//! Each listener holds at most `max` connections. At the cap a newcomer asks the oldest open
//! connection to close (one without a response in progress closes at once, even with half a
//! request head sent; one in the middle of a response finishes that response first, hyper's
//! graceful shutdown) and waits for its place for
//! [`EVICT_WAIT`]; if no place frees up, the newcomer is closed. A flood of idle connections
//! therefore cycles through the oldest places while a client that sends its request gets
//! served, and the connections with a response in progress are never cut. Idle keep-alive
//! connections also end by themselves after the header read timeout (hyper applies it to the
//! wait for the next request too).

use hyper_util::server::graceful::GracefulConnection;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// Default cap on the mirror's client connections (`--max-connections`): a node's runtimes
/// pull a few images at once with a few connections each, far below this.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Default cap on the admin port's and the control socket's connections, each
/// (`--max-admin-connections`): Prometheus, probes and an operator's commands.
pub const DEFAULT_MAX_ADMIN_CONNECTIONS: usize = 64;
/// Deadline for a client of the admin port or the control socket to send its request head
/// (and for the next one on a kept-alive connection).
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a newcomer at the cap waits for the oldest connection to make room.
pub const EVICT_WAIT: Duration = Duration::from_millis(200);

/// Requests of one connection whose response is not finished yet (its body not dropped): a
/// connection asked to make room closes at once when there are none, even halfway through
/// sending a request head (hyper's graceful shutdown would wait for that head).
#[derive(Clone, Default)]
pub(crate) struct InFlight(Arc<AtomicUsize>);

/// One request in progress; ends when dropped (with the response body).
pub(crate) struct InFlightGuard(Arc<AtomicUsize>);

impl InFlight {
    pub fn start(&self) -> InFlightGuard {
        self.0.fetch_add(1, Ordering::SeqCst);
        InFlightGuard(self.0.clone())
    }

    pub fn idle(&self) -> bool {
        self.0.load(Ordering::SeqCst) == 0
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Drives one HTTP connection to its end. When `stop` resolves (the agent drains) the response
/// in progress is finished and the connection closed instead of kept alive; when a newcomer
/// needs the connection's place (`evict`) the same happens, except that a connection with no
/// response in progress closes at once.
pub(crate) async fn run_conn<C: GracefulConnection>(
    conn: C,
    evict: &Notify,
    inflight: &InFlight,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), C::Error> {
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => r,
        () = stop => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = evict.notified() => {
            if inflight.idle() {
                return Ok(());
            }
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// `body`, holding `guard` until the body is dropped (sent, or the client gone).
pub(crate) fn hold<B>(
    body: B,
    guard: InFlightGuard,
) -> http_body_util::combinators::BoxBody<B::Data, B::Error>
where
    B: http_body::Body + Send + Sync + 'static,
    B::Data: Send,
{
    use http_body_util::BodyExt;
    body.map_frame(move |f| {
        let _held = &guard;
        f
    })
    .boxed()
}

/// One listener's connection cap; see the module docs.
pub(crate) struct ConnLimit {
    places: Arc<Semaphore>,
    /// Open connections by age (ids grow), each with the signal asking it to close.
    open: Mutex<BTreeMap<u64, Arc<Notify>>>,
    next: AtomicU64,
}

/// An admitted connection's place; frees it when dropped.
pub(crate) struct Admitted {
    _permit: OwnedSemaphorePermit,
    id: u64,
    limit: Arc<ConnLimit>,
    /// Notified when a newcomer needs this connection's place.
    pub evict: Arc<Notify>,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.limit.open_map().remove(&self.id);
    }
}

impl ConnLimit {
    /// At most `max` connections (at least one).
    pub fn new(max: usize) -> Arc<ConnLimit> {
        Arc::new(ConnLimit {
            places: Arc::new(Semaphore::new(max.clamp(1, Semaphore::MAX_PERMITS))),
            open: Mutex::new(BTreeMap::new()),
            next: AtomicU64::new(0),
        })
    }

    fn open_map(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Notify>>> {
        // A poisoned map only means a panic elsewhere while holding it; the map is still valid.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A place for a new connection: a free one, or the oldest connection's after asking it
    /// to close; `None` (close the newcomer) when none frees up within [`EVICT_WAIT`].
    pub async fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let permit = match self.places.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                let oldest = self.open_map().pop_first();
                if let Some((_, evict)) = oldest {
                    evict.notify_one();
                }
                tokio::time::timeout(EVICT_WAIT, self.places.clone().acquire_owned())
                    .await
                    .ok()?
                    .ok()?
            }
        };
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let evict = Arc::new(Notify::new());
        self.open_map().insert(id, evict.clone());
        Some(Admitted {
            _permit: permit,
            id,
            limit: self.clone(),
            evict,
        })
    }

    /// Connections open now.
    #[cfg(test)]
    pub fn open(&self) -> usize {
        self.open_map().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn at_the_cap_the_oldest_is_asked_to_leave() {
        let limit = ConnLimit::new(2);
        let a = limit.admit().await.unwrap();
        let b = limit.admit().await.unwrap();
        assert_eq!(limit.open(), 2);
        let evicted_a = a.evict.clone();
        // The oldest (a) is asked to close; it does so when told.
        let closer = tokio::spawn(async move {
            evicted_a.notified().await;
            drop(a);
        });
        let c = limit.admit().await.expect("a place once the oldest left");
        closer.await.unwrap();
        assert_eq!(limit.open(), 2);
        // b is now the oldest; it ignores the request: the newcomer is refused in time.
        let started = tokio::time::Instant::now();
        assert!(limit.admit().await.is_none());
        assert!(started.elapsed() < EVICT_WAIT * 10);
        drop((b, c));
        assert_eq!(limit.open(), 0);
    }
}
