//! Single-flight: concurrent callers for the same key share one execution and its result.

use dashmap::DashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;
use tokio::sync::OnceCell;

pub(crate) struct SingleFlight<K, V> {
    calls: DashMap<K, Arc<OnceCell<V>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight {
            calls: DashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `f` unless a call for `key` is already running, in which case its result is
    /// shared. If the running caller goes away, a waiting one takes over. The result is not
    /// kept: the next call after this one finishes runs `f` again (caching is the caller's).
    pub async fn run<F, Fut>(&self, key: K, f: F) -> V
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = V>,
    {
        let cell = self.calls.entry(key.clone()).or_default().clone();
        let value = cell.get_or_init(f).await.clone();
        self.calls.remove_if(&key, |_, c| Arc::ptr_eq(c, &cell));
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flight = Arc::new(SingleFlight::<u32, usize>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..8 {
            let (flight, runs, gate) = (flight.clone(), runs.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                flight
                    .run(1, || async move {
                        gate.notified().await;
                        runs.fetch_add(1, Ordering::SeqCst) + 100
                    })
                    .await
            }));
        }
        // Wait until all eight hold the same cell (the map's reference plus eight), then
        // release the one runner.
        let parked = async {
            while flight.calls.get(&1).map_or(0, |c| Arc::strong_count(&c)) < 9 {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), parked)
            .await
            .expect("callers never met on one cell");
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 100);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert!(flight.calls.is_empty());
        assert_eq!(
            flight.run(1, || async { 7 }).await,
            7,
            "result must not be cached"
        );
    }
}
