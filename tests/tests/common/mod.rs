//! Helpers shared by the integration tests: find (or build) the `pcluster` binary, pick free
//! loopback ports, wait on a condition with a deadline, and a child process guard.

#![allow(dead_code)] // Not every test module uses every helper.

use std::net::{IpAddr, TcpListener};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The `pcluster` executable of the same profile as this test binary, built first.
///
/// The tests package cannot depend on another package's binary, so `CARGO_BIN_EXE_pcluster`
/// does not exist here; the binary sits next to the `deps/` directory that holds this test
/// executable. Under cargo (`CARGO` set) it is always rebuilt once per test run, a no-op when
/// it is fresh, because a stale binary fails tests in confusing ways; otherwise it is built
/// only when missing.
pub fn pcluster_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current test executable");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable is in target/<profile>/deps");
        let bin = profile_dir.join(format!("pcluster{}", std::env::consts::EXE_SUFFIX));
        let cargo = std::env::var("CARGO").ok();
        if cargo.is_some() || !bin.exists() {
            let mut build = Command::new(cargo.as_deref().unwrap_or("cargo"));
            build.args(["build", "-p", "pcluster", "--bin", "pcluster"]);
            if exe.to_string_lossy().contains("/release/") {
                build.arg("--release");
            }
            let status = build.status().expect("run cargo build for pcluster");
            assert!(status.success(), "building pcluster failed: {status}");
            assert!(
                bin.exists(),
                "cargo build did not produce {}",
                bin.display()
            );
        }
        bin
    })
    .clone()
}

/// A TCP port on `ip` that was free a moment ago.
pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Polls `f` every few milliseconds until it holds; panics naming `what` after `deadline`.
pub async fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh, empty directory under the system temp dir, named after `name`.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pcluster-test-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A child process that is killed when the guard is dropped, so a failing test leaves no
/// server behind.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
}

impl Child {
    /// Starts `command`.
    pub fn spawn(command: &mut Command) -> Child {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        Child { child }
    }

    /// Sends SIGTERM (through `kill(1)`: the tests do not link libc).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits up to `deadline` for the process to exit.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let mut status = None;
        wait_until(deadline, "the process to exit", || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        })
        .await;
        status.expect("exit status")
    }
}

impl Deref for Child {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.child
    }
}

impl DerefMut for Child {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.child
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
