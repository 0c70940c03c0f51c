//! Child processes: a guard that kills its process when dropped (so a failing test or an
//! interrupted bench leaves no server behind), and [`Pcluster`], the executable under test with
//! helpers that start `pcluster log` and `pcluster node` and wait until they listen.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, POLL_INTERVAL, free_port};

/// How long a server process gets to start listening.
pub const LISTEN_DEADLINE: Duration = Duration::from_secs(30);

/// A child process that is killed when the guard is dropped.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
    /// The command line, for error messages.
    command: String,
}

impl Child {
    /// Starts `command`.
    ///
    /// # Errors
    /// [`Error::Spawn`] when it cannot be started.
    pub fn spawn(command: &mut Command) -> Result<Child, Error> {
        let line = format!("{command:?}");
        match command.spawn() {
            Ok(child) => Ok(Child {
                child,
                command: line,
            }),
            Err(source) => Err(Error::Spawn {
                command: line,
                source,
            }),
        }
    }

    /// Sends `signal` (e.g. `-KILL`, `-STOP`) through `kill(1)`, which keeps libc out.
    ///
    /// # Errors
    /// [`Error::Signal`] when `kill` fails or cannot be run.
    pub fn signal(&self, signal: &str) -> Result<(), Error> {
        let pid = self.child.id();
        let status = Command::new("kill")
            .args([signal, &pid.to_string()])
            .status();
        match status {
            Ok(s) if s.success() => Ok(()),
            other => Err(Error::Signal {
                signal: signal.to_owned(),
                pid,
                status: match other {
                    Ok(s) => s.to_string(),
                    Err(e) => e.to_string(),
                },
            }),
        }
    }

    /// Sends SIGTERM.
    ///
    /// # Errors
    /// As [`Child::signal`].
    pub fn terminate(&self) -> Result<(), Error> {
        self.signal("-TERM")
    }

    /// Waits up to `deadline` for the process to exit.
    ///
    /// # Errors
    /// [`Error::TimedOut`] when it is still running then.
    pub async fn wait_exit(&mut self, deadline: Duration) -> Result<ExitStatus, Error> {
        let end = Instant::now() + deadline;
        loop {
            let polled = self.child.try_wait();
            if let Ok(Some(status)) = polled {
                return Ok(status);
            }
            if Instant::now() >= end {
                return Err(Error::TimedOut {
                    what: format!("{} to exit", self.command),
                    after: deadline,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Waits until the process listens on `addr`.
    ///
    /// # Errors
    /// [`Error::Exited`] as soon as it exits instead, [`Error::TimedOut`] after `deadline`.
    pub async fn wait_listening(
        &mut self,
        addr: SocketAddr,
        deadline: Duration,
    ) -> Result<(), Error> {
        let end = Instant::now() + deadline;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(Error::Exited {
                    command: self.command.clone(),
                    addr,
                    status,
                });
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(());
            }
            if Instant::now() >= end {
                return Err(Error::TimedOut {
                    what: format!("{} to listen on {addr}", self.command),
                    after: deadline,
                });
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
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

/// The `pcluster` executable of this checkout, built (release) by cargo the first time a
/// process asks, so a test never runs a stale one: cargo answers at once when it is up to
/// date.
///
/// # Errors
/// When cargo cannot build it.
pub fn pcluster_exe() -> Result<PathBuf, Error> {
    static EXE: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        escargot::CargoBuild::new()
            .manifest_path(crate::repo().join("Cargo.toml"))
            .package("pcluster")
            .bin("pcluster")
            .release()
            .run()
            .map(|built| built.path().to_path_buf())
            .map_err(|e| e.to_string())
    })
    .clone()
    .map_err(Error::BuildPcluster)
}

/// The `pcluster` executable: the tests' ([`pcluster_exe`]), or the bench's own.
#[derive(Clone, Debug)]
pub struct Pcluster {
    bin: PathBuf,
}

impl Pcluster {
    /// The executable at `bin`.
    pub fn new(bin: impl Into<PathBuf>) -> Pcluster {
        Pcluster { bin: bin.into() }
    }

    /// Where the executable is.
    #[must_use]
    pub fn bin(&self) -> &Path {
        &self.bin
    }

    /// A command running the executable, with no arguments yet.
    #[must_use]
    pub fn command(&self) -> Command {
        Command::new(&self.bin)
    }

    /// `pcluster log` on 127.0.0.1:`port` writing to `outfile`.
    #[must_use]
    pub fn log_command(&self, port: u16, outfile: &Path) -> Command {
        let mut cmd = self.command();
        cmd.args(["log", "--host", "127.0.0.1", "--port", &port.to_string()])
            .arg("--outfile")
            .arg(outfile);
        cmd
    }

    /// `pcluster node` on `ip:port` with `workers` workers, logging to 127.0.0.1:`log_port`.
    #[must_use]
    pub fn node_command(&self, ip: IpAddr, port: u16, log_port: u16, workers: u32) -> Command {
        let mut cmd = self.command();
        cmd.args([
            "node",
            "--host",
            &ip.to_string(),
            "--port",
            &port.to_string(),
        ])
        .args([
            "--log-host",
            "127.0.0.1",
            "--log-port",
            &log_port.to_string(),
        ])
        .args(["--workers", &workers.to_string()]);
        cmd
    }

    /// Starts `pcluster log` (plus `extra` arguments) on a free port of 127.0.0.1, writing to
    /// `outfile`, its own output discarded; returns once it listens, with its port.
    ///
    /// # Errors
    /// When it cannot be started or does not listen.
    pub async fn start_log(&self, outfile: &Path, extra: &[&str]) -> Result<(Child, u16), Error> {
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let port = free_port(ip)?;
        let mut cmd = self.log_command(port, outfile);
        cmd.args(extra);
        let child = start(&mut cmd, SocketAddr::new(ip, port)).await?;
        Ok((child, port))
    }

    /// Starts `pcluster node` (plus `extra` arguments) on `ip:port`, its own output discarded;
    /// returns once it listens.
    ///
    /// # Errors
    /// When it cannot be started or does not listen.
    pub async fn start_node(
        &self,
        ip: IpAddr,
        port: u16,
        log_port: u16,
        workers: u32,
        extra: &[&str],
    ) -> Result<Child, Error> {
        let mut cmd = self.node_command(ip, port, log_port, workers);
        cmd.args(extra);
        start(&mut cmd, SocketAddr::new(ip, port)).await
    }
}

/// Spawns a server with its output discarded and waits until it listens on `addr`.
async fn start(cmd: &mut Command, addr: SocketAddr) -> Result<Child, Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = Child::spawn(cmd)?;
    child.wait_listening(addr, LISTEN_DEADLINE).await?;
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_is_signalled_waited_for_and_killed_on_drop() {
        let mut sleeper = Child::spawn(Command::new("sleep").arg("600")).unwrap();
        sleeper.terminate().unwrap();
        let status = sleeper.wait_exit(Duration::from_secs(30)).await.unwrap();
        assert!(!status.success());

        let sleeper = Child::spawn(Command::new("sleep").arg("600")).unwrap();
        let pid = sleeper.id();
        drop(sleeper);
        // Reaped by the guard: `kill -0` finds no such process.
        let alive = Command::new("kill")
            .args(["-0", &pid.to_string()])
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(!alive.success());
    }

    #[tokio::test]
    async fn a_server_that_exits_early_is_reported_at_once() {
        let mut cmd = Command::new("true");
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let addr = SocketAddr::new(ip, free_port(ip).unwrap());
        let err = start(&mut cmd, addr).await.unwrap_err();
        assert!(matches!(err, Error::Exited { .. }), "{err}");
    }

    #[test]
    fn a_missing_executable_is_a_spawn_error() {
        let pcluster = Pcluster::new("/nonexistent/pcluster");
        let err = Child::spawn(&mut pcluster.log_command(1, Path::new("x.log"))).unwrap_err();
        assert!(matches!(err, Error::Spawn { .. }), "{err}");
        assert!(
            err.to_string()
                .starts_with("cannot start \"/nonexistent/pcluster\" \"log\"")
        );
    }
}
