//! Kademlia's record store, sized for a cluster's blobs and swept of expired provider records.
//!
//! libp2p's `MemoryStore` drops an expired provider record only when someone asks for that
//! key again, and its `max_provided_keys` limit counts every key it holds, ours and other
//! nodes'. Blobs come and go (every layer ever pulled is a key), so without a sweep the store
//! would fill with dead keys and then refuse new ones. This wrapper remembers which keys hold
//! records from other nodes and drops expired ones every [`ProviderStore::sweep`].

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Instant;

use libp2p::kad::store::{MemoryStore, MemoryStoreConfig, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::PeerId;

/// Keys (blobs) this node can hold provider records for, its own and other nodes'. A few
/// hundred bytes each with a handful of providers: 100 000 keys is tens of MiB at most.
pub const MAX_PROVIDER_KEYS: usize = 100_000;

/// Providers remembered per blob. Kademlia's default (20, the replication factor) would hide
/// most of the nodes holding a popular layer; a downloader wants many to spread the load.
pub const MAX_PROVIDERS_PER_KEY: usize = 256;

/// Value records are not used by Pollen (only provider records are); a small bound keeps a
/// misbehaving peer from filling memory with them.
pub const MAX_VALUE_RECORDS: usize = 64;
const MAX_VALUE_BYTES: usize = 1024;

pub struct ProviderStore {
    inner: MemoryStore,
    local: PeerId,
    /// Keys that hold at least one record from another node (candidates for the sweep).
    foreign: HashSet<RecordKey>,
}

impl ProviderStore {
    pub fn new(local: PeerId) -> ProviderStore {
        let config = MemoryStoreConfig {
            max_records: MAX_VALUE_RECORDS,
            max_value_bytes: MAX_VALUE_BYTES,
            max_providers_per_key: MAX_PROVIDERS_PER_KEY,
            max_provided_keys: MAX_PROVIDER_KEYS,
        };
        ProviderStore {
            inner: MemoryStore::with_config(local, config),
            local,
            foreign: HashSet::new(),
        }
    }

    /// Drops expired provider records of other nodes; returns how many went.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let ProviderStore {
            inner,
            local,
            foreign,
        } = self;
        let mut removed = 0;
        foreign.retain(|key| {
            let mut live = 0;
            for record in inner.providers(key) {
                if record.is_expired(now) {
                    inner.remove_provider(key, &record.provider);
                    removed += 1;
                } else if record.provider != *local {
                    live += 1;
                }
            }
            live > 0
        });
        removed
    }

    /// How many blobs this node itself announces.
    pub fn provided_count(&self) -> usize {
        self.inner.provided().count()
    }
}

impl RecordStore for ProviderStore {
    type RecordsIter<'a> = <MemoryStore as RecordStore>::RecordsIter<'a>;
    type ProvidedIter<'a> = <MemoryStore as RecordStore>::ProvidedIter<'a>;

    fn get(&self, k: &RecordKey) -> Option<Cow<'_, Record>> {
        self.inner.get(k)
    }

    fn put(&mut self, r: Record) -> Result<()> {
        self.inner.put(r)
    }

    fn remove(&mut self, k: &RecordKey) {
        self.inner.remove(k)
    }

    fn records(&self) -> Self::RecordsIter<'_> {
        self.inner.records()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        if record.provider != self.local {
            self.foreign.insert(record.key.clone());
        }
        self.inner.add_provider(record)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.inner.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.inner.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        self.inner.remove_provider(k, p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn record(key: &RecordKey, provider: PeerId, expires: Option<Instant>) -> ProviderRecord {
        let mut r = ProviderRecord::new(key.clone(), provider, Vec::new());
        r.expires = expires;
        r
    }

    #[test]
    fn sweep_drops_expired_foreign_records_only() {
        let local = PeerId::random();
        let mut store = ProviderStore::new(local);
        let now = Instant::now();
        let (gone, kept, ours) = (
            RecordKey::new(b"gone"),
            RecordKey::new(b"kept"),
            RecordKey::new(b"ours"),
        );
        let (p1, p2) = (PeerId::random(), PeerId::random());
        store.add_provider(record(&gone, p1, Some(now))).unwrap();
        store.add_provider(record(&kept, p1, Some(now))).unwrap();
        store
            .add_provider(record(&kept, p2, Some(now + Duration::from_secs(60))))
            .unwrap();
        store.add_provider(record(&ours, local, None)).unwrap();

        assert_eq!(store.sweep(now + Duration::from_millis(1)), 2);
        assert!(store.providers(&gone).is_empty());
        let kept_providers: Vec<_> = store.providers(&kept).iter().map(|r| r.provider).collect();
        assert_eq!(kept_providers, vec![p2]);
        assert_eq!(store.providers(&ours).len(), 1);
        assert_eq!(store.provided_count(), 1);
        // Only `kept` is still tracked as holding foreign records.
        assert_eq!(store.foreign.len(), 1);
    }

    #[test]
    fn holds_more_providers_than_kademlias_default() {
        let mut store = ProviderStore::new(PeerId::random());
        let key = RecordKey::new(b"popular");
        let later = Instant::now() + Duration::from_secs(60);
        for _ in 0..100 {
            store
                .add_provider(record(&key, PeerId::random(), Some(later)))
                .unwrap();
        }
        assert_eq!(store.providers(&key).len(), 100);
    }
}
