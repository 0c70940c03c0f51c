//! The node's use of the C heap (glibc): compiling a big component (a CPython one) allocates
//! hundreds of MiB on several threads, and glibc would keep that memory resident for good.
//! [`release_free`] gives the arenas' free pages back after a compile or an eviction.
//! (Fixing glibc's mmap threshold as well kept a few more MiB off a node after a compile,
//! but made every big buffer of W4 fault its pages in anew: the nodes' CPU per W4 run went
//! from 0.6 to 1.1 s.) Elsewhere than glibc it does nothing.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::ffi::c_int;

    unsafe extern "C" {
        pub fn malloc_trim(pad: usize) -> c_int;
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
