//! The store's errors: each names what failed, so a caller can tell the user which directory
//! and why without this crate printing anything.

use std::path::PathBuf;

/// What went wrong with a store.
#[derive(Debug, thiserror::Error)]
pub enum MemoError {
    /// The directory could not be created or read.
    #[error("cannot use the memo directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Another process (or another handle in this one) has the store open.
    #[error("the memo store {0} is in use by another run")]
    InUse(PathBuf),
    /// The database could not be opened (not a store, a newer format, a damaged file).
    #[error("cannot open the memo store {path}: {message}")]
    Open { path: PathBuf, message: String },
    /// A read or a write of the database failed.
    #[error("memo store: {0}")]
    Db(String),
    /// A stored value does not decode: the store was written by something else.
    #[error("memo store: a stored value is malformed ({0})")]
    Malformed(&'static str),
    /// The writer thread is gone (it failed earlier; that error was reported then).
    #[error("the memo writer has stopped")]
    WriterGone,
}

/// Maps any redb error to [`MemoError::Db`]: the caller can do nothing finer with them.
pub(crate) fn db<E: std::fmt::Display>(e: E) -> MemoError {
    MemoError::Db(e.to_string())
}
