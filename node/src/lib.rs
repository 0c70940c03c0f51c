//! The pcluster node: accepts a taskchain from a root, compiles its WebAssembly modules once,
//! and runs the chain on a pool of worker threads, streaming outputs back.
//!
//! The public API is [`run`] with its [`NodeConfig`], and the typed errors of [`error`].
//!
//! - `server`: the TCP server, who holds the node, and message handling.
//! - `worker`: the worker pool and the per-unit chain execution.
//! - `engine`: wasmtime: engine, module cache, task instances and host functions.
//! - [`budget`]: the node-wide memory budget a chain must fit in.
//! - `heap`: glibc settings that keep the node's heap from holding on to freed memory.
//! - [`error`]: typed errors (setup, item, request) and their mapping to the wire.

pub mod budget;
mod engine;
pub mod error;
mod heap;
pub mod native;
mod outbox;
mod server;
mod worker;

pub use engine::{CACHE_DIR_ENV, default_cache_dir};
pub use error::{CallError, RequestError, SetupError, TaskProblem};
pub use server::{NodeConfig, NodeError, cores, run};
#[cfg(feature = "local-chain")]
pub use worker::LocalChain;

/// Resident memory of this process in bytes, from `/proc/self/status` (`VmRSS`, in kB, so no
/// page size is needed); `None` where there is no procfs.
pub fn rss_bytes() -> Option<u64> {
    status_bytes("VmRSS:")
}

/// The most resident memory this process has had, in bytes (`VmHWM`); `None` where there is
/// no procfs.
pub fn peak_rss_bytes() -> Option<u64> {
    status_bytes("VmHWM:")
}

fn status_bytes(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    #[test]
    fn rss_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            let rss = super::rss_bytes().expect("VmRSS in /proc/self/status");
            assert!(rss > 1 << 20, "{rss}");
        }
    }
}
