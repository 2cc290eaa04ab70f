//! Kademlia's record store, sized for a cluster's blobs and swept of expired provider records.
//!
//! libp2p's `MemoryStore` drops an expired provider record only when someone asks for that
//! key again, and its `max_provided_keys` limit counts every key it holds, ours and other
//! nodes'. Blobs come and go (every layer ever pulled is a key), so without a sweep the store
//! would fill with dead keys and then refuse new ones. This wrapper remembers which keys hold
//! records from other nodes and drops expired ones every [`ProviderStore::sweep`].
//!
//! It also counts the records each other node holds here: one member of the swarm announcing
//! made-up digests gets [`MAX_PROVIDER_KEYS_PER_PEER`] of them, not the whole store.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
// libp2p records carry std instants; the event loop passes tokio's clock in (`into_std`).
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

/// Blobs one other node may be recorded as providing here. A node announces what its cache
/// holds; a quarter of the store is tens of thousands of layers, more than any cache holds,
/// and leaves the rest of the store to the other nodes.
pub const MAX_PROVIDER_KEYS_PER_PEER: usize = MAX_PROVIDER_KEYS / 4;

/// Value records are not used by Pollen (only provider records are); a small bound keeps a
/// misbehaving peer from filling memory with them.
pub const MAX_VALUE_RECORDS: usize = 64;
const MAX_VALUE_BYTES: usize = 1024;

pub struct ProviderStore {
    inner: MemoryStore,
    local: PeerId,
    /// Keys that hold at least one record from another node (candidates for the sweep).
    foreign: HashSet<RecordKey>,
    /// Records held per other node, for [`MAX_PROVIDER_KEYS_PER_PEER`].
    per_peer: HashMap<PeerId, usize>,
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
            per_peer: HashMap::new(),
        }
    }

    fn count_removed(per_peer: &mut HashMap<PeerId, usize>, peer: &PeerId) {
        if let Some(n) = per_peer.get_mut(peer) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                per_peer.remove(peer);
            }
        }
    }

    /// Drops expired provider records of other nodes; returns how many went.
    pub fn sweep(&mut self, now: Instant) -> usize {
        let ProviderStore {
            inner,
            local,
            foreign,
            per_peer,
        } = self;
        let mut removed = 0;
        foreign.retain(|key| {
            let mut live = 0;
            for record in inner.providers(key) {
                if record.is_expired(now) {
                    inner.remove_provider(key, &record.provider);
                    if record.provider != *local {
                        Self::count_removed(per_peer, &record.provider);
                    }
                    removed += 1;
                } else if record.provider != *local {
                    live += 1;
                }
            }
            live > 0
        });
        removed
    }

    /// The keys this node itself announces.
    pub fn provided_keys(&self) -> Vec<RecordKey> {
        self.inner.provided().map(|r| r.key.clone()).collect()
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
        if record.provider == self.local {
            return self.inner.add_provider(record);
        }
        let existing = self.inner.providers(&record.key);
        let is_new = existing.len() < MAX_PROVIDERS_PER_KEY
            && !existing.iter().any(|p| p.provider == record.provider);
        let provider = record.provider;
        if is_new {
            let held = self.per_peer.get(&provider).copied().unwrap_or(0);
            if held >= MAX_PROVIDER_KEYS_PER_PEER {
                tracing::debug!(peer = %provider, held, "provider record refused: the peer's share of the store is full");
                return Err(libp2p::kad::store::Error::MaxProvidedKeys);
            }
        }
        let key = record.key.clone();
        self.inner.add_provider(record)?;
        self.foreign.insert(key);
        if is_new {
            *self.per_peer.entry(provider).or_insert(0) += 1;
        }
        Ok(())
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        self.inner.providers(key)
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.inner.provided()
    }

    fn remove_provider(&mut self, k: &RecordKey, p: &PeerId) {
        if *p != self.local && self.inner.providers(k).iter().any(|r| r.provider == *p) {
            Self::count_removed(&mut self.per_peer, p);
        }
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
    fn one_peer_gets_its_share_of_the_store_only() {
        let mut store = ProviderStore::new(PeerId::random());
        let (flooder, honest) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        for i in 0..MAX_PROVIDER_KEYS_PER_PEER {
            let key = RecordKey::new(&i.to_be_bytes());
            store
                .add_provider(record(&key, flooder, Some(later)))
                .unwrap();
        }
        // Re-announcing a record it holds is an update, not a new record.
        let first = RecordKey::new(&0usize.to_be_bytes());
        store
            .add_provider(record(&first, flooder, Some(later)))
            .unwrap();
        let extra = RecordKey::new(b"one too many");
        assert!(store
            .add_provider(record(&extra, flooder, Some(later)))
            .is_err());
        assert!(store.providers(&extra).is_empty());
        store
            .add_provider(record(&extra, honest, Some(later)))
            .unwrap();
        assert_eq!(store.providers(&extra).len(), 1);
        // A record gone (removed or expired) frees its place.
        store.remove_provider(&first, &flooder);
        store
            .add_provider(record(&extra, flooder, Some(now)))
            .unwrap();
        assert_eq!(store.sweep(now + Duration::from_millis(1)), 1);
        assert_eq!(
            store.per_peer.get(&flooder),
            Some(&(MAX_PROVIDER_KEYS_PER_PEER - 1))
        );
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
