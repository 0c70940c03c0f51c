//! Runs tasks natively the way a node runs them in wasm (same glue, same status and messages),
//! so their unit tests need no wasm runtime. Native only: the wasm build has none of it.
//!
//! State is per thread, and the test harness gives each test a thread: tests do not see each
//! other's args, state, outputs or logs.

use std::panic::{self, AssertUnwindSafe};
use std::sync::Once;

use crate::runtime::{self, STATUS_OK, Task, panic_message};
use crate::{Level, sys};

/// What one call of a task did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The items it emitted, in order (a node discards them when the call fails).
    pub items: Vec<Vec<u8>>,
    /// Why the item failed: an error the task returned, a decoding error, or a panic message.
    pub error: Option<String>,
    /// The lines it logged.
    pub logs: Vec<(Level, String)>,
}

impl Outcome {
    /// The emitted items as text.
    ///
    /// # Panics
    ///
    /// If an item is not UTF-8.
    #[must_use]
    pub fn texts(&self) -> Vec<&str> {
        self.items
            .iter()
            .map(|item| std::str::from_utf8(item).expect("emitted item is not UTF-8"))
            .collect()
    }

    /// Whether the call succeeded.
    #[must_use]
    pub fn is_ok(&self) -> bool {
        self.error.is_none()
    }
}

/// Runs the task's init with `args`, as a node does once per instance before any item.
///
/// # Errors
///
/// The message the init failed with (a panic included), which makes a node's setup fail.
pub fn init(task: &Task, args: &[u8]) -> Result<(), String> {
    let outcome = call(args, |len| runtime::run(len, task.init));
    outcome.error.map_or(Ok(()), Err)
}

/// Runs the task on one item, as a node does for each item.
pub fn run(task: &Task, item: &[u8]) -> Outcome {
    call(item, |len| runtime::run(len, task.call))
}

/// The items emitted on this thread since the last take, for code that calls glue itself.
#[must_use]
pub fn take_emitted() -> Vec<Vec<u8>> {
    sys::take_emitted()
}

/// The lines logged on this thread since the last take.
#[must_use]
pub fn take_logs() -> Vec<(Level, String)> {
    sys::take_logs()
}

/// Puts `bytes` in the input buffer, as the host does, and runs `glue` on them.
fn call(bytes: &[u8], glue: impl FnOnce(usize) -> i32) -> Outcome {
    install_panic_hook();
    // Whatever an earlier direct call left behind is not this call's.
    let _ = (sys::take_emitted(), sys::take_logs(), sys::take_failure());
    runtime::write_input(bytes);
    let status = panic::catch_unwind(AssertUnwindSafe(|| glue(bytes.len())));
    let failure = sys::take_failure();
    let error = match status {
        Ok(STATUS_OK) => None,
        Ok(status) => Some(failure.unwrap_or_else(|| format!("status {status} with no message"))),
        Err(_) => Some(failure.unwrap_or_else(|| "panicked".to_owned())),
    };
    Outcome {
        items: sys::take_emitted(),
        error,
        logs: sys::take_logs(),
    }
}

/// Hands panic messages to `fail` as the wasm panic hook does, then lets the previous hook
/// print them as usual.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            sys::fail(&panic_message(info));
            previous(info);
        }));
    });
}
