//! Log lines from a task to the host, which tags them with the task and node: [`Level`],
//! [`log`] and the `error!` .. `trace!` macros.

use std::fmt;

use crate::sys;

/// Severity of a log line; the discriminant is the `level` argument of the `log` import.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(i32)]
pub enum Level {
    /// Something failed.
    Error = 0,
    /// Something looks wrong but the task goes on.
    Warn = 1,
    /// What a task did, at a rate a person can read.
    Info = 2,
    /// Details for whoever debugs the task.
    Debug = 3,
    /// Very verbose details.
    Trace = 4,
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
            Level::Trace => "TRACE",
        })
    }
}

/// Sends one log line to the host.
#[inline]
pub fn log(level: Level, message: &str) {
    sys::log(level, message);
}

/// Formats and sends one log line; a message without arguments is sent without allocating.
#[doc(hidden)]
#[inline]
pub fn log_fmt(level: Level, args: fmt::Arguments<'_>) {
    match args.as_str() {
        Some(message) => sys::log(level, message),
        None => sys::log(level, &args.to_string()),
    }
}

/// Logs a line at `level`, formatted like [`format!`].
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)+) => {
        $crate::__private::log_fmt($level, ::core::format_args!($($arg)+))
    };
}

/// Logs a line at [`Level::Error`].
#[macro_export]
macro_rules! error {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Error, $($arg)+) };
}

/// Logs a line at [`Level::Warn`].
#[macro_export]
macro_rules! warn {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Warn, $($arg)+) };
}

/// Logs a line at [`Level::Info`].
#[macro_export]
macro_rules! info {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Info, $($arg)+) };
}

/// Logs a line at [`Level::Debug`].
#[macro_export]
macro_rules! debug {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Debug, $($arg)+) };
}

/// Logs a line at [`Level::Trace`].
#[macro_export]
macro_rules! trace {
    ($($arg:tt)+) => { $crate::log!($crate::Level::Trace, $($arg)+) };
}
