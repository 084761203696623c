//! An allocator that measures, per thread, the most memory a piece of code holds at once, so
//! the property tests can check that a parser given N bytes allocates O(N) or a fixed cap,
//! never what a declared size asks for. Included with `#[path]` by the property tests; the test binary
//! installs it with `#[global_allocator] static A: alloc::Counting = alloc::Counting;`.
#![allow(dead_code)] // each test binary uses part of it

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// [`System`], counting each thread's live bytes and their peak.
pub struct Counting;

thread_local! {
    /// Bytes this thread allocated and has not freed (negative when it frees another's).
    static LIVE: Cell<isize> = const { Cell::new(0) };
    /// The highest `LIVE` since the outermost running [`peak`] started.
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    // `try_with`: nothing to count while the thread is being torn down.
    let _ = LIVE.try_with(|live| {
        let now = live.get().saturating_add(delta);
        live.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is passed to `System` unchanged; counting touches only thread-local
// `Cell`s with `const` initialisers, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size() as isize);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: `ptr` came from `System` with this layout (see `alloc`).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size as isize - layout.size() as isize);
        // SAFETY: as for `dealloc`; `new_size` is the caller's, checked by its contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// `f`'s result and the most bytes it had allocated at once on this thread (its peak memory,
/// over what was live before it started).
pub fn peak<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = LIVE.with(Cell::get);
    let outer = PEAK.with(|p| p.replace(before));
    let r = f();
    let top = PEAK.with(|p| p.replace(outer.max(p.get())));
    (r, (top - before).max(0) as usize)
}

/// `f`'s result; panics when `f`, given `input_len` bytes, had more than `per_byte` times
/// that plus `fixed` bytes allocated at once.
pub fn bounded<R>(
    what: &str,
    input_len: usize,
    per_byte: usize,
    fixed: usize,
    f: impl FnOnce() -> R,
) -> R {
    let (r, n) = peak(f);
    let cap = input_len * per_byte + fixed;
    assert!(
        n <= cap,
        "{what}: {input_len} bytes of input, {n} bytes allocated at once (cap {cap})"
    );
    r
}
