//! The node's use of the C heap (glibc): compiling a big component (a CPython one) allocates
//! hundreds of MiB on several threads, and glibc would keep that memory resident for good.
//! [`pin_mmap_threshold`] stops its large freed buffers from raising the size below which
//! blocks come from the arenas (where freed memory stays resident); [`release_free`] gives
//! the arenas' free pages back after a compile or an eviction. Measured on a node that
//! compiled the Python example and then ran W4 (5,000 × 100 KB): peak RSS 94–109 MiB without
//! either, 58–69 MiB with both, as a node that never compiled it (59–72 MiB).
//! Elsewhere than glibc both do nothing.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::ffi::c_int;

    /// Blocks of this size and more are mapped on their own and unmapped when freed
    /// (glibc's default starts at 128 KiB but follows the largest block freed, up to
    /// 32 MiB). Above the 4 MiB batches, which the arenas serve as they would anyway.
    pub const MMAP_THRESHOLD: c_int = 8 << 20;

    /// `M_MMAP_THRESHOLD` of glibc's `<malloc.h>`. Fixing it also stops glibc from raising
    /// the trim threshold (free memory kept at the top of an arena) from its 128 KiB: with
    /// it at 16 MiB, as glibc's adjustment would pick, each arena a compile left behind
    /// kept that much and W4 peaked at 89–105 MiB instead.
    pub const M_MMAP_THRESHOLD: c_int = -3;

    unsafe extern "C" {
        pub fn mallopt(param: c_int, value: c_int) -> c_int;
        pub fn malloc_trim(pad: usize) -> c_int;
    }
}

/// Fixes the size from which blocks are mapped on their own (once, at start).
pub fn pin_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `mallopt` only changes a setting of the allocator, under its own lock.
    unsafe {
        glibc::mallopt(glibc::M_MMAP_THRESHOLD, glibc::MMAP_THRESHOLD);
    }
}

/// Gives the heap's free pages back to the system.
pub fn release_free() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns whole free pages of the arenas to the system; it
    // takes the arenas' locks itself and touches no memory in use.
    unsafe {
        glibc::malloc_trim(0);
    }
}
