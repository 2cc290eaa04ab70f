//! The one allocator setting the agent makes.
//!
//! glibc's malloc raises its mmap threshold each time a large block is freed, so later
//! piece-sized buffers (256 KiB to a few MiB) come from its per-thread arenas, which it rarely
//! gives back. In the hour-long soak (`benches/soak.sh`) agents' heaps stood at 0.5–1.5 GiB
//! with under 10 MiB in use (`malloc_stats`: two arenas of ~1 GB each, 7 MB in use); with the
//! threshold fixed, the same workload's agents stayed under 45 MiB. musl's allocator (the
//! static release image) returns memory by itself and needs nothing.

/// Blocks of at least this many bytes are mapped on their own and unmapped when freed
/// (glibc's default before it starts raising the threshold).
pub const MMAP_THRESHOLD: i32 = 128 * 1024;

/// Fixes glibc's mmap threshold, unless `MALLOC_MMAP_THRESHOLD_` already set it. Call before
/// any other thread starts.
pub fn tune() {
    if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
        set_mmap_threshold();
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn set_mmap_threshold() {
    // SAFETY: mallopt only changes an allocator parameter; glibc makes it safe to call at any
    // time, and here no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn set_mmap_threshold() {}
