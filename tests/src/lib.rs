//! The kit: test support shared by the workspace's integration tests (`tests/it/`) and
//! `pcluster bench` (feature `bench`), so that both start clusters, wait, measure and check
//! the same way.
//!
//! | concept | file |
//! | --- | --- |
//! | waits on a condition with a deadline, "is it listening", an address that refuses | `wait.rs` |
//! | a child-process guard; the `pcluster` executable; starting `pcluster log` and `pcluster node` on port 0 and reading back their address | `process.rs` |
//! | resident memory from `/proc`: reading and sampling | `rss.rs` |
//! | CPU time from `/proc`: of a process, a thread, finished children | `cpu.rs` |
//! | the example module, chain specs over its tasks, chain files | `chain.rs` |
//! | W1: inputs, expected outputs, the exact check of outputs | `w1.rs` |
//! | the native floors: W1 and W2 through tasks-example's own functions | `floors.rs` |
//! | a slow link: a TCP proxy delaying every byte each way | `proxy.rs` |
//! | a plain HTTP GET, percent-encoding | `http.rs` |
//! | a real Prometheus server scraping targets, and its queries | `prometheus.rs` |
//! | hosts of their own: network namespaces on a bridge, links cut and shaped, nodes in them | `netns.rs` |
//! | a chaos soak: W1 runs on nodes in namespaces under random overlapping faults | `chaos.rs` |
//!
//! Everything here returns typed errors ([`Error`]) rather than panicking: the bench is a
//! command. The integration tests wrap what they use in panicking helpers.

mod chain;
mod chaos;
mod cpu;
mod floors;
mod http;
mod netns;
mod process;
mod prometheus;
mod proxy;
mod rss;
mod w1;
mod wait;

use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

pub use chain::{
    TaskDef, W1_TASKS, chain_file_text, chain_spec, repo, tasks_example_dir, tasks_example_wasm,
    w1_chain, write_chain_file,
};
pub use chaos::{ChaosOptions, ChaosReport, Fault, soak};
pub use cpu::{Cpu, CpuTime, cpu_time, parse_stat};
pub use floors::{native_w1, native_w2};
pub use http::{http_get, url_encode};
pub use netns::{Hosts, NODE_PORT};
pub use process::{Child, LISTEN_DEADLINE, Pcluster, pcluster_exe, spawn_server};
pub use prometheus::{Job, Prometheus, free_addr};
pub use proxy::DelayProxy;
pub use rss::{Field, Process, RssSampler, parse_status_kib, peak_rss_mib, status_kib};
pub use w1::{W1Check, W1Mismatch, w1_batches, w1_expected, w1_inputs, w1_item, write_w1_input};
pub use wait::{POLL_INTERVAL, poll, poll_for, refusing_addr, wait_listening};

/// What can go wrong while setting up or watching a test cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A condition did not hold within its deadline.
    #[error("timed out after {after:?} waiting for {what}")]
    TimedOut {
        /// What was awaited.
        what: String,
        /// The deadline.
        after: Duration,
    },
    /// A process could not be started.
    #[error("cannot start {command}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A server process exited while we waited for it to listen.
    #[error("{command} exited ({status}) before it listened")]
    Exited {
        /// The command line.
        command: String,
        /// How it ended.
        status: ExitStatus,
    },
    /// Sending a signal through `kill(1)` failed.
    #[error("kill {signal} {pid} failed ({status})")]
    Signal {
        /// The signal, e.g. `-TERM`.
        signal: String,
        /// The process.
        pid: u32,
        /// What `kill` said.
        status: String,
    },
    /// The example tasks could not be built for wasm32.
    #[error("cannot build the example tasks: {0}")]
    BuildTasks(String),
    /// A program the kit needs is not installed.
    #[error("not installed: {0}")]
    Missing(&'static str),
    /// The `pcluster` executable could not be built.
    #[error("cannot build the pcluster executable: {0}")]
    BuildPcluster(String),
    /// Network namespaces cannot be used here (not root, no iproute2, no namespace
    /// support): tests that need them skip, except in CI.
    #[error("network namespaces are not available: {0}")]
    NoNamespaces(String),
    /// A command (of iproute2) failed.
    #[error("{command} failed: {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// What it said.
        stderr: String,
    },
    /// A route did not leave through the interface the harness set up for it.
    #[error("the route to {to} is `{route}`, not through {expected}")]
    Route {
        /// The destination.
        to: String,
        /// What `ip route get` said.
        route: String,
        /// The interface it should use.
        expected: String,
    },
    /// A chaos soak went wrong: a run failed or its outputs were not exact.
    #[error("chaos soak: {0}")]
    Chaos(String),
    /// A file or directory could not be read or written.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done, e.g. `cannot write`.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    pub(crate) fn io(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.to_path_buf();
        move |source| Error::Io {
            action,
            path,
            source,
        }
    }
}

/// A fresh, empty directory under the system temp dir, named after this process and `name`,
/// removed with everything in it when the guard is dropped.
///
/// # Errors
/// When it cannot be created.
pub fn temp_dir(name: &str) -> Result<TempDir, Error> {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pcluster-{}-{n}-{name}", std::process::id()));
    // A leftover of an earlier process with the same pid: start empty.
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(Error::io("cannot create", &dir))?;
    Ok(TempDir(dir))
}

/// A directory of [`temp_dir`]'s. Dropping it removes it, unless the thread is panicking: a
/// failed test keeps its logs and outputs where its message says, to be read afterwards.
/// Tests and benches write hundreds of megabytes each; left behind, a few runs fill a disk.
#[derive(Debug)]
#[must_use = "the directory is removed when this is dropped"]
pub struct TempDir(PathBuf);

impl TempDir {
    /// Where it is.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Leaves the directory in place (for a failure to be looked into) and returns its path.
    pub fn keep(self) -> PathBuf {
        let me = std::mem::ManuallyDrop::new(self);
        me.0.clone()
    }
}

impl std::ops::Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempDir {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("kept for the failure above: {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
