//! The three host calls of the ABI (`emit`, `log`, `fail`): the `pcluster` wasm imports on
//! wasm32, and in-process stand-ins everywhere else so tasks can be unit-tested natively.

pub(crate) use imp::{begin, emit, fail, log};
#[cfg(not(target_arch = "wasm32"))]
pub(crate) use imp::{take_emitted, take_failure, take_logs};

#[cfg(target_arch = "wasm32")]
mod imp {
    use crate::Level;

    // Rust gives imports a private symbol name, so `log` here cannot be confused with libm's.
    #[link(wasm_import_module = "pcluster")]
    unsafe extern "C" {
        #[link_name = "emit"]
        fn host_emit(ptr: *const u8, len: usize);
        #[link_name = "log"]
        fn host_log(level: i32, ptr: *const u8, len: usize);
        #[link_name = "fail"]
        fn host_fail(ptr: *const u8, len: usize);
        #[link_name = "begin"]
        fn host_begin(index: usize);
    }

    #[inline]
    pub(crate) fn begin(index: usize) {
        // SAFETY: takes a plain integer.
        unsafe { host_begin(index) }
    }

    #[inline]
    pub(crate) fn emit(bytes: &[u8]) {
        // SAFETY: the host only reads `len` bytes at `ptr`, and only during the call.
        unsafe { host_emit(bytes.as_ptr(), bytes.len()) }
    }

    #[inline]
    pub(crate) fn log(level: Level, message: &str) {
        // SAFETY: as for `emit`.
        unsafe { host_log(level as i32, message.as_ptr(), message.len()) }
    }

    #[inline]
    pub(crate) fn fail(message: &str) {
        // SAFETY: as for `emit`.
        unsafe { host_fail(message.as_ptr(), message.len()) }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use std::cell::RefCell;

    use crate::Level;

    // Per thread, because the test harness runs each test on a thread of its own.
    thread_local! {
        static EMITTED: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
        static LOGS: RefCell<Vec<(Level, String)>> = const { RefCell::new(Vec::new()) };
        static FAILURE: RefCell<Option<String>> = const { RefCell::new(None) };
    }

    pub(crate) fn emit(bytes: &[u8]) {
        EMITTED.with_borrow_mut(|items| items.push(bytes.to_vec()));
    }

    pub(crate) fn log(level: Level, message: &str) {
        eprintln!("[{level}] {message}");
        LOGS.with_borrow_mut(|logs| logs.push((level, message.to_owned())));
    }

    pub(crate) fn fail(message: &str) {
        FAILURE.set(Some(message.to_owned()));
    }

    #[allow(dead_code)] // Batches are driven by a host; natively, tests call tasks one by one.
    pub(crate) fn begin(_index: usize) {}

    pub(crate) fn take_emitted() -> Vec<Vec<u8>> {
        EMITTED.take()
    }

    pub(crate) fn take_logs() -> Vec<(Level, String)> {
        LOGS.take()
    }

    pub(crate) fn take_failure() -> Option<String> {
        FAILURE.take()
    }
}
