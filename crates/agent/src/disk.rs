//! The disk under the cache: how much is free, whether it is full, and whether a blob can fit.
//!
//! A blob that cannot fit on the disk is refused before its first byte (507 Insufficient
//! Storage): the runtime then goes to its next host, the registry, as it does for any error,
//! instead of receiving half a body that breaks off when the disk fills (docs/decisions.md,
//! "Disk full").

use pollen_store::Store;

/// Below this much free space the cache's disk counts as full (not ready): a miss could not
/// be stored, so not served either.
pub const FULL_BELOW: u64 = 16 << 20;

pub(crate) fn free_space(path: &std::path::Path) -> Result<u64, String> {
    let st = rustix::fs::statvfs(path).map_err(|e| e.to_string())?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// Why the cache's disk is full, if it is.
pub(crate) fn full(store: &Store) -> Option<String> {
    let free = free_space(store.root()).ok()?;
    (free < FULL_BELOW).then(|| {
        format!(
            "the cache's disk is full ({} MiB free under {}): free space or lower --cache-size",
            free >> 20,
            store.root().display()
        )
    })
}

/// Whether a new blob of `size` bytes can fit: the disk's free space plus everything the cache
/// holds now (which eviction may give back; an overestimate, so only a blob that cannot fit
/// whatever is evicted is refused), with [`FULL_BELOW`] to spare. An unknown free space is
/// no reason to refuse.
pub(crate) fn room_for(store: &Store, size: u64) -> Result<(), String> {
    let Ok(free) = free_space(store.root()) else {
        return Ok(());
    };
    let cached = store.usage().bytes;
    if free.saturating_add(cached) >= size.saturating_add(FULL_BELOW) {
        return Ok(());
    }
    Err(format!(
        "no room for a blob of {} MiB: {} MiB free on the disk under {} and {} MiB in the cache; free space or move --data-dir to a bigger disk",
        size >> 20,
        free >> 20,
        store.root().display(),
        cached >> 20
    ))
}
