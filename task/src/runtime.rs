//! The guest side of the ABI that every module shares: the input buffer, the task's args, the
//! panic hook, the glue behind each task export, and (on wasm32) the SDK's own exports
//! `pcluster_abi_version`, `pcluster_input` and `pcluster_start`.

use std::cell::{Cell, RefCell};
use std::panic::PanicHookInfo;

use crate::sys;

/// The ABI version this SDK implements, returned by the `pcluster_abi_version` export.
pub const ABI_VERSION: i32 = 1;

/// Status of a task call that succeeded.
pub(crate) const STATUS_OK: i32 = 0;
/// Status of a task call whose item failed; the message went to `fail` first.
pub(crate) const STATUS_FAILED: i32 = 1;

// wasm32-unknown-unknown has no threads, so these are plain statics there; natively they are
// per thread, which isolates tests from each other.
thread_local! {
    static INPUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    static ARGS: Cell<&'static [u8]> = const { Cell::new(&[]) };
}

/// The args the host passed to this task's init export (empty without args).
#[inline]
#[must_use]
pub fn args() -> &'static [u8] {
    ARGS.get()
}

/// Keeps the task's args for [`args`].
fn set_args(args: &[u8]) {
    // Init runs once per instance, so leaking is the simple way to a `&'static`.
    ARGS.set(Box::leak(args.into()));
}

/// A buffer of at least `len` bytes for the host to write items into; it only ever grows.
pub(crate) fn input_buffer(len: usize) -> *mut u8 {
    INPUT.with_borrow_mut(|buf| {
        if buf.len() < len {
            // Free the old buffer first so the allocator can reuse its space.
            drop(std::mem::take(buf));
            *buf = vec![0; len];
        }
        buf.as_mut_ptr()
    })
}

/// Writes `bytes` to the input buffer, as the host does before a call.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn write_input(bytes: &[u8]) {
    input_buffer(bytes.len());
    INPUT.with_borrow_mut(|buf| buf[..bytes.len()].copy_from_slice(bytes));
}

/// Runs `call` on the first `len` bytes of the input buffer and turns its result into the
/// status the host expects, handing an error message to `fail`.
#[inline]
pub fn run(len: usize, call: impl FnOnce(&[u8]) -> Result<(), String>) -> i32 {
    let result = INPUT.with_borrow(|buf| match buf.get(..len) {
        Some(item) => call(item),
        None => Err(format!(
            "item of {len} bytes is longer than the input buffer of {} bytes",
            buf.len()
        )),
    });
    match result {
        Ok(()) => STATUS_OK,
        Err(message) => {
            sys::fail(&message);
            STATUS_FAILED
        }
    }
}

/// The message a panic hands to `fail`: one line, like std's "panicked at FILE:LINE:COL: MSG".
/// Runs `call` on each item of a batch: the input buffer holds `count` little-endian `u32`
/// lengths, then the items back to back (`len` bytes in all). Outputs and item failures are
/// collected as records and handed to the host with one `emit_batch` call (docs/ABI.md).
#[cfg(target_arch = "wasm32")]
#[inline]
pub fn run_batch(count: usize, len: usize, call: impl Fn(&[u8]) -> Result<(), String>) -> i32 {
    sys::batch_begin();
    let result = INPUT.with_borrow(|buf| {
        let Some(block) = buf.get(..len) else {
            return Err(format!(
                "batch of {len} bytes is longer than the input buffer"
            ));
        };
        let Some((lens, mut data)) = count
            .checked_mul(4)
            .and_then(|n| (n <= block.len()).then(|| block.split_at(n)))
        else {
            return Err(format!(
                "batch of {count} items does not fit in {len} bytes"
            ));
        };
        for (i, l) in lens.chunks_exact(4).enumerate() {
            let l = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
            let Some((item, rest)) = (l <= data.len()).then(|| data.split_at(l)) else {
                return Err(format!("item {i} of the batch overruns it"));
            };
            data = rest;
            sys::batch_item(i as u32);
            if let Err(message) = call(item) {
                sys::batch_fail(&message);
            }
        }
        Ok(())
    });
    sys::batch_end();
    match result {
        Ok(()) => STATUS_OK,
        Err(message) => {
            sys::fail(&message);
            STATUS_FAILED
        }
    }
}

pub(crate) fn panic_message(info: &PanicHookInfo<'_>) -> String {
    let message = info.payload_as_str().unwrap_or("Box<dyn Any>");
    match info.location() {
        Some(location) => format!("panicked at {location}: {message}"),
        None => format!("panicked: {message}"),
    }
}

/// Sends the panic message to the host, since on wasm32 the panic then aborts with a bare trap.
#[cfg(target_arch = "wasm32")]
fn panic_hook(info: &PanicHookInfo<'_>) {
    sys::fail(&panic_message(info));
}

#[cfg(target_arch = "wasm32")]
mod exports {
    use super::{ABI_VERSION, input_buffer, panic_hook};

    #[unsafe(no_mangle)]
    extern "C" fn pcluster_abi_version() -> i32 {
        ABI_VERSION
    }

    #[unsafe(no_mangle)]
    extern "C" fn pcluster_input(len: usize) -> *mut u8 {
        input_buffer(len)
    }

    #[unsafe(no_mangle)]
    extern "C" fn pcluster_start() {
        std::panic::set_hook(Box::new(panic_hook));
    }
}

/// Names a task's glue: what its exports run, and what [`testing`](crate::testing) drives
/// natively. The `task!` and `stateful_task!` macros make one per task, as `<task>::TASK`.
#[derive(Clone, Copy, Debug)]
// The wasm exports call the glue functions directly, so there only the name is read.
#[cfg_attr(target_arch = "wasm32", allow(dead_code))]
pub struct Task {
    name: &'static str,
    pub(crate) init: fn(&[u8]) -> Result<(), String>,
    pub(crate) call: fn(&[u8]) -> Result<(), String>,
    generator: bool,
}

impl Task {
    #[doc(hidden)]
    #[must_use]
    pub const fn __new(
        name: &'static str,
        init: fn(&[u8]) -> Result<(), String>,
        call: fn(&[u8]) -> Result<(), String>,
        generator: bool,
    ) -> Self {
        Task {
            name,
            init,
            call,
            generator,
        }
    }

    /// The task's export name.
    #[must_use]
    pub const fn name(&self) -> &'static str {
        self.name
    }

    /// Whether the task can emit several items per input, and so is listed in the module's
    /// `pcluster.generators` custom section.
    #[must_use]
    pub const fn generator(&self) -> bool {
        self.generator
    }
}

/// What the macros expand to; not part of the API.
#[doc(hidden)]
pub mod __private {
    #[cfg(target_arch = "wasm32")]
    pub use super::run_batch;
    pub use super::{Task, args, run};
    pub use crate::logging::log_fmt;
    use crate::{Emitter, Output, Stateful};

    /// Whether the function `_f`'s return type can hold several items: a generator.
    /// (Inferred from the function, so that a return type the macro cannot name, such as
    /// `Each<impl Iterator<..>>`, works too.)
    #[must_use]
    pub const fn returns_several<F, A, R>(_f: &F) -> bool
    where
        F: Fn(A) -> R,
        R: Output,
    {
        R::GENERATOR
    }

    /// The length of a task's entry in the `pcluster.generators` section: `name\n` for a
    /// generator, nothing otherwise.
    #[must_use]
    pub const fn generator_entry_len(name: &str, generator: bool) -> usize {
        if generator { name.len() + 1 } else { 0 }
    }

    /// The first `N` bytes of `name\n` (all of them when `N` is [`generator_entry_len`]).
    #[must_use]
    pub const fn generator_entry<const N: usize>(name: &str) -> [u8; N] {
        let mut entry = [b'\n'; N];
        let name = name.as_bytes();
        let mut i = 0;
        while i < N && i < name.len() {
            entry[i] = name[i];
            i += 1;
        }
        entry
    }

    /// Init of a plain task: keep the args for [`args`].
    #[inline]
    pub fn init_args(args: &[u8]) -> Result<(), String> {
        super::set_args(args);
        Ok(())
    }

    #[inline]
    #[must_use]
    pub fn emitter() -> Emitter {
        Emitter::new()
    }

    /// The task's result, failed if one of its outputs could not be encoded.
    #[inline]
    pub fn finish(out: Emitter, result: Result<(), String>) -> Result<(), String> {
        out.finish(result)
    }

    /// Init of a stateful task: keep the args and build the state.
    #[inline]
    pub fn init_state<S: Stateful>(state: &mut Option<S>, args: &[u8]) -> Result<(), String> {
        super::set_args(args);
        *state = Some(S::init(args)?);
        Ok(())
    }

    /// One item of a stateful task; a host that skipped init gets the state built from no args.
    #[inline]
    pub fn process<S: Stateful>(state: &mut Option<S>, item: &[u8]) -> Result<(), String> {
        let state = match state {
            Some(state) => state,
            None => state.insert(S::init(&[])?),
        };
        let mut out = Emitter::new();
        let result = state.process(item, &mut out);
        out.finish(result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generator_entries_are_the_name_and_a_newline() {
        use __private::{generator_entry, generator_entry_len};
        const LEN: usize = generator_entry_len("fan_out", true);
        const ENTRY: [u8; LEN] = generator_entry("fan_out");
        assert_eq!(&ENTRY, b"fan_out\n");
        assert_eq!(generator_entry_len("identity", false), 0);
        assert_eq!(generator_entry::<0>("identity"), [0u8; 0]);
    }

    #[test]
    fn input_buffer_only_grows() {
        let first = input_buffer(16);
        assert_eq!(input_buffer(8), first);
        assert_eq!(input_buffer(16), first);
        input_buffer(1 << 16);
        assert_eq!(INPUT.with_borrow(Vec::len), 1 << 16);
    }

    #[test]
    fn item_longer_than_the_buffer_fails() {
        input_buffer(4);
        let mut seen = 0;
        let status = run(4, |item| {
            seen = item.len();
            Ok(())
        });
        assert_eq!((status, seen), (STATUS_OK, 4));
        assert_eq!(run(5, |_| Ok(())), STATUS_FAILED);
        assert_eq!(
            sys::take_failure().as_deref(),
            Some("item of 5 bytes is longer than the input buffer of 4 bytes")
        );
    }
}
