//! Counts the heap a piece of code keeps: the tracker's memory is measured by running every
//! call into a tracker's `Swarms` under [`measure`], which adds up what that call allocated
//! and freed (on this thread only; the simulator has one).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, counting while [`measure`] runs.
pub struct Counting;

thread_local! {
    static ON: Cell<bool> = const { Cell::new(false) };
    static DELTA: Cell<i64> = const { Cell::new(0) };
}

fn count(bytes: i64) {
    let _ = ON.try_with(|on| {
        if on.get() {
            let _ = DELTA.try_with(|d| d.set(d.get().saturating_add(bytes)));
        }
    });
}

fn signed(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

// SAFETY: every call goes to `System` with the caller's arguments unchanged; the counting
// touches only const-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(signed(layout.size()));
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(signed(layout.size()));
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-signed(layout.size()));
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(signed(new_size) - signed(layout.size()));
        }
        p
    }
}

/// Runs `f` and returns what it left allocated (negative: it freed more than it allocated).
pub fn measure<R>(f: impl FnOnce() -> R) -> (R, i64) {
    DELTA.with(|d| d.set(0));
    ON.with(|on| on.set(true));
    let r = f();
    ON.with(|on| on.set(false));
    (r, DELTA.with(Cell::get))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_what_is_kept_and_what_is_freed() {
        let (v, kept) = measure(|| vec![0u8; 4096]);
        assert_eq!(kept, 4096);
        let ((), freed) = measure(|| drop(v));
        assert_eq!(freed, -kept);
    }
}
