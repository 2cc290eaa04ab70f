//! Server-side state shared between the [`TestRegistry`](crate::TestRegistry)
//! handle and every connection task: content, auth mode, injected fault,
//! issued tokens and request statistics.
//!
//! Everything sits behind short-lived `std::sync::Mutex` locks: no lock is
//! held across an `.await`, and the critical sections are map lookups, so a
//! blocking mutex is both simpler and faster than an async one here.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;
use sha2::{Digest, Sha256};

use crate::util::sha256_digest;
use crate::{Auth, Fault, Stats};

/// A stored manifest: its media type (served as `Content-Type`) and bytes.
#[derive(Clone)]
pub(crate) struct StoredManifest {
    pub digest: String,
    pub media_type: String,
    pub body: Bytes,
}

/// One repository's content. Blobs and manifests are keyed by digest; tags
/// point at manifest digests, as in a real registry.
#[derive(Default)]
struct Repo {
    blobs: HashMap<String, Bytes>,
    manifests: HashMap<String, StoredManifest>,
    tags: HashMap<String, String>,
}

/// The state behind one registry instance.
pub(crate) struct Shared {
    /// Address clients should use (`127.0.0.1:PORT`), also used in the
    /// token realm so challenges point back at this server.
    pub host: String,
    repos: Mutex<HashMap<String, Repo>>,
    auth: Mutex<Auth>,
    /// The realm `Auth::Token` challenges name instead of this server's own `/token`.
    realm: Mutex<Option<String>>,
    fault: Mutex<Fault>,
    response_delay: Mutex<std::time::Duration>,
    uplink: Mutex<Option<Arc<crate::body::Uplink>>>,
    tokens: Mutex<HashSet<String>>,
    token_seq: AtomicU64,
    /// Per-instance secret so two registries in one process never accept
    /// each other's tokens.
    secret: u64,
    stats: Mutex<Stats>,
    /// Kept outside `stats` because blob bodies bump it once per chunk from
    /// inside `poll_frame`, where an atomic is cheaper than a lock.
    pub blob_bytes_sent: Arc<AtomicU64>,
}

/// Locks a mutex, ignoring poisoning: a panicking test thread must not turn
/// every later request into a second panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Adds `value` to `list` unless already present (order of first sight kept).
fn push_distinct(list: &mut Vec<String>, value: &str) {
    if !list.iter().any(|v| v == value) {
        list.push(value.to_owned());
    }
}

impl Shared {
    pub fn new(addr: SocketAddr) -> Shared {
        // `RandomState` is seeded from OS randomness; hashing the clock as
        // well keeps instances distinct even if seeds were ever reused.
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        Shared {
            host: addr.to_string(),
            repos: Mutex::default(),
            auth: Mutex::new(Auth::None),
            realm: Mutex::default(),
            fault: Mutex::new(Fault::None),
            response_delay: Mutex::new(std::time::Duration::ZERO),
            uplink: Mutex::default(),
            tokens: Mutex::default(),
            token_seq: AtomicU64::new(0),
            secret: h.finish(),
            stats: Mutex::default(),
            blob_bytes_sent: Arc::default(),
        }
    }

    // ---- content ----------------------------------------------------------

    pub fn put_blob(&self, repo: &str, data: Bytes) -> String {
        let digest = sha256_digest(&data);
        let mut repos = lock(&self.repos);
        let r = repos.entry(repo.to_owned()).or_default();
        r.blobs.insert(digest.clone(), data);
        digest
    }

    pub fn put_manifest(
        &self,
        repo: &str,
        tag: Option<&str>,
        media_type: &str,
        body: Bytes,
    ) -> String {
        let digest = sha256_digest(&body);
        let mut repos = lock(&self.repos);
        let r = repos.entry(repo.to_owned()).or_default();
        let stored = StoredManifest {
            digest: digest.clone(),
            media_type: media_type.to_owned(),
            body,
        };
        r.manifests.insert(digest.clone(), stored);
        if let Some(tag) = tag {
            r.tags.insert(tag.to_owned(), digest.clone());
        }
        digest
    }

    pub fn blob(&self, repo: &str, digest: &str) -> Option<Bytes> {
        lock(&self.repos).get(repo)?.blobs.get(digest).cloned()
    }

    /// Resolves `reference` as a digest first, then as a tag.
    pub fn manifest(&self, repo: &str, reference: &str) -> Option<StoredManifest> {
        let repos = lock(&self.repos);
        let r = repos.get(repo)?;
        let digest = match r.manifests.contains_key(reference) {
            true => reference,
            false => r.tags.get(reference)?,
        };
        r.manifests.get(digest).cloned()
    }

    /// Sorted tag names, or `None` if the repository does not exist.
    pub fn tags(&self, repo: &str) -> Option<Vec<String>> {
        let repos = lock(&self.repos);
        let mut tags: Vec<String> = repos.get(repo)?.tags.keys().cloned().collect();
        tags.sort();
        Some(tags)
    }

    // ---- auth and tokens --------------------------------------------------

    pub fn auth(&self) -> Auth {
        lock(&self.auth).clone()
    }

    pub fn set_auth(&self, auth: Auth) {
        *lock(&self.auth) = auth;
    }

    /// Mints a fresh opaque token and remembers it as valid.
    pub fn issue_token(&self) -> String {
        let seq = self.token_seq.fetch_add(1, Ordering::Relaxed);
        let mut h = Sha256::new();
        h.update(self.secret.to_le_bytes());
        h.update(seq.to_le_bytes());
        let token = format!("testreg.{}", hex::encode(&h.finalize()[..20]));
        lock(&self.tokens).insert(token.clone());
        token
    }

    pub fn token_valid(&self, token: &str) -> bool {
        lock(&self.tokens).contains(token)
    }

    pub fn revoke_tokens(&self) {
        lock(&self.tokens).clear();
    }

    // ---- faults -----------------------------------------------------------

    pub fn set_fault(&self, fault: Fault) {
        *lock(&self.fault) = fault;
    }

    pub fn set_response_delay(&self, delay: std::time::Duration) {
        *lock(&self.response_delay) = delay;
    }

    pub fn set_uplink(&self, bytes_per_sec: u64) {
        *lock(&self.uplink) =
            (bytes_per_sec > 0).then(|| Arc::new(crate::body::Uplink::new(bytes_per_sec)));
    }

    pub fn uplink(&self) -> Option<Arc<crate::body::Uplink>> {
        lock(&self.uplink).clone()
    }

    pub fn response_delay(&self) -> std::time::Duration {
        *lock(&self.response_delay)
    }

    /// If a `Fault::Status` is armed, consumes one use of it and returns the
    /// status to answer with. The fault disarms itself when its count runs
    /// out so that clients see the registry "recover".
    pub fn take_status_fault(&self) -> Option<u16> {
        let mut fault = lock(&self.fault);
        let Fault::Status { status, count } = &mut *fault else {
            return None;
        };
        let status = *status;
        if *count == 0 {
            *fault = Fault::None;
            return None;
        }
        *count -= 1;
        if *count == 0 {
            *fault = Fault::None;
        }
        Some(status)
    }

    /// The currently armed fault (for blob body shaping).
    pub fn fault(&self) -> Fault {
        lock(&self.fault).clone()
    }

    // ---- statistics -------------------------------------------------------

    /// Records the per-request facts: total count, User-Agent and (for
    /// `/v2/` paths) the Authorization header.
    pub fn record_request(&self, user_agent: Option<&str>, authorization: Option<&str>) {
        let mut s = lock(&self.stats);
        s.requests += 1;
        if let Some(ua) = user_agent {
            push_distinct(&mut s.user_agents, ua);
        }
        if let Some(a) = authorization {
            push_distinct(&mut s.authorizations, a);
        }
    }

    pub fn count_blob_get(&self, digest: &str) {
        *lock(&self.stats)
            .blob_gets
            .entry(digest.to_owned())
            .or_default() += 1;
    }

    pub fn count_blob_head(&self, digest: &str) {
        *lock(&self.stats)
            .blob_heads
            .entry(digest.to_owned())
            .or_default() += 1;
    }

    pub fn count_manifest(&self, reference: &str) {
        *lock(&self.stats)
            .manifest_gets
            .entry(reference.to_owned())
            .or_default() += 1;
    }

    pub fn count_token_request(&self, authorization: Option<&str>) {
        let mut s = lock(&self.stats);
        s.token_requests += 1;
        if let Some(a) = authorization {
            push_distinct(&mut s.token_authorizations, a);
        }
    }

    pub fn set_realm(&self, realm: Option<String>) {
        *lock(&self.realm) = realm;
    }

    pub fn realm(&self) -> Option<String> {
        lock(&self.realm).clone()
    }

    pub fn count_manifest_head(&self, reference: &str) {
        *lock(&self.stats)
            .manifest_heads
            .entry(reference.to_owned())
            .or_default() += 1;
    }

    pub fn stats(&self) -> Stats {
        let mut s = lock(&self.stats).clone();
        s.blob_bytes_sent = self.blob_bytes_sent.load(Ordering::Relaxed);
        s
    }

    pub fn reset_stats(&self) {
        let mut s = lock(&self.stats);
        *s = Stats::default();
        self.blob_bytes_sent.store(0, Ordering::Relaxed);
    }
}
