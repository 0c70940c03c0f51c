//! The three host calls of the ABI (`emit`, `log`, `fail`): the `pcluster` wasm imports on
//! wasm32, and in-process stand-ins everywhere else so tasks can be unit-tested natively.

#[cfg(target_arch = "wasm32")]
pub(crate) use imp::{batch_begin, batch_end, batch_fail, batch_item};
pub(crate) use imp::{emit, fail, log};
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
        #[link_name = "emit_batch"]
        fn host_emit_batch(ptr: *const u8, len: usize);
    }

    use std::cell::RefCell;

    // During a batched call, outputs and item failures are collected here as records
    // (index u32, length u32 with bit 31 set for a failure, bytes) and handed to the host in
    // one `emit_batch` call: no host call per item. The buffer stays allocated between
    // batches.
    struct Batch {
        on: bool,
        current: u32,
        buf: Vec<u8>,
    }

    thread_local! {
        static BATCH: RefCell<Batch> = const {
            RefCell::new(Batch { on: false, current: 0, buf: Vec::new() })
        };
    }

    const FLUSH_AT: usize = 1 << 20;

    pub(crate) fn batch_begin() {
        BATCH.with_borrow_mut(|b| {
            b.on = true;
            b.buf.clear();
        });
    }

    pub(crate) fn batch_item(index: u32) {
        BATCH.with_borrow_mut(|b| {
            b.current = index;
            if b.buf.len() >= FLUSH_AT {
                flush(&mut b.buf);
            }
        });
    }

    fn record(b: &mut Batch, len_word: u32, bytes: &[u8]) {
        b.buf.extend_from_slice(&b.current.to_le_bytes());
        b.buf.extend_from_slice(&len_word.to_le_bytes());
        b.buf.extend_from_slice(bytes);
    }

    pub(crate) fn batch_fail(message: &str) {
        let message = &message.as_bytes()[..message.len().min(16 << 10)];
        BATCH.with_borrow_mut(|b| {
            if b.on {
                record(b, message.len() as u32 | 1 << 31, message);
            }
        });
    }

    fn flush(buf: &mut Vec<u8>) {
        if !buf.is_empty() {
            // SAFETY: the host reads `len` bytes at `ptr` during the call only (and never
            // calls back into the guest, so the batch stays borrowed by this call alone).
            unsafe { host_emit_batch(buf.as_ptr(), buf.len()) }
            buf.clear();
        }
    }

    pub(crate) fn batch_end() {
        BATCH.with_borrow_mut(|b| {
            flush(&mut b.buf);
            b.on = false;
        });
    }

    #[inline]
    pub(crate) fn emit(bytes: &[u8]) {
        let batched = BATCH.with_borrow_mut(|b| {
            if b.on {
                record(b, bytes.len() as u32, bytes);
            }
            b.on
        });
        if batched {
            return;
        }
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
