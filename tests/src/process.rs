//! Child processes: a guard that kills its process when dropped (so a failing test or an
//! interrupted bench leaves no server behind), and [`Pcluster`], the executable under test with
//! helpers that start `pcluster log` and `pcluster node` and wait until they listen.
//!
//! Servers start on port 0 and write the address they bound to `--port-file`, which is read
//! back here: a port picked by the test, released and then handed to the child could be taken
//! by another test in between.

use std::net::{IpAddr, SocketAddr};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::{Error, poll_for};

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
        let what = format!("{} to exit", self.command);
        poll_for(deadline, &what, || {
            std::future::ready(self.child.try_wait().ok().flatten())
        })
        .await
    }

    /// Waits until the process (a server started with `--port-file path`) has written the
    /// address it listens on to `path`, and returns that address. The server writes the file
    /// whole (a temporary file renamed), so an address read here is never a part of one.
    ///
    /// # Errors
    /// [`Error::Exited`] as soon as it exits instead, [`Error::TimedOut`] after `deadline`.
    pub async fn wait_port_file(
        &mut self,
        path: &Path,
        deadline: Duration,
    ) -> Result<SocketAddr, Error> {
        let what = format!(
            "{} to write its address to {}",
            self.command,
            path.display()
        );
        let found = poll_for(deadline, &what, || {
            std::future::ready(match self.child.try_wait() {
                Ok(Some(status)) => Some(Err(status)),
                _ => std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok())
                    .map(Ok),
            })
        })
        .await?;
        found.map_err(|status| Error::Exited {
            command: self.command.clone(),
            status,
        })
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

    /// Starts `pcluster log` (plus `extra` arguments) on a port of 127.0.0.1 that the OS
    /// chooses, writing to `outfile`, its own output discarded; returns once it listens, with
    /// its port.
    ///
    /// # Errors
    /// When it cannot be started or does not listen.
    pub async fn start_log(&self, outfile: &Path, extra: &[&str]) -> Result<(Child, u16), Error> {
        let mut cmd = self.log_command(0, outfile);
        cmd.args(extra);
        let (child, addr) = start(&mut cmd).await?;
        Ok((child, addr.port()))
    }

    /// Starts `pcluster node` (plus `extra` arguments) on `ip:port`, its own output discarded;
    /// returns once it listens, with its port: with `port` 0, the one the OS chose.
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
    ) -> Result<(Child, u16), Error> {
        let mut cmd = self.node_command(ip, port, log_port, workers);
        cmd.args(extra);
        let (child, addr) = start(&mut cmd).await?;
        Ok((child, addr.port()))
    }
}

/// Starts a server command (`pcluster log` or `pcluster node`) with `--port-file` added and
/// its output as `cmd` says; returns once it listens, with the address it listens on.
///
/// # Errors
/// When it cannot be started, or exits or writes no address within [`LISTEN_DEADLINE`].
pub async fn spawn_server(cmd: &mut Command) -> Result<(Child, SocketAddr), Error> {
    // Removed once read: the address is returned, and the server never reads the file.
    let dir = crate::temp_dir("port-file")?;
    let path = dir.join("addr");
    let mut child = Child::spawn(cmd.arg("--port-file").arg(&path))?;
    let addr = child.wait_port_file(&path, LISTEN_DEADLINE).await?;
    Ok((child, addr))
}

/// [`spawn_server`] with the server's output discarded.
async fn start(cmd: &mut Command) -> Result<(Child, SocketAddr), Error> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    spawn_server(cmd).await
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
        // `true --port-file PATH` exits at once, having written nothing.
        let started = std::time::Instant::now();
        let err = start(&mut Command::new("true")).await.unwrap_err();
        assert!(matches!(err, Error::Exited { .. }), "{err}");
        assert!(
            started.elapsed() < LISTEN_DEADLINE / 2,
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn the_address_a_server_writes_is_returned() {
        // A stand-in server: `sh -c SCRIPT server --port-file PATH` writes an address as
        // `pcluster` does (a temporary file renamed), then stays up.
        let script =
            r#"printf '127.0.0.2:16001\n' > "$2.tmp" && mv "$2.tmp" "$2" && exec sleep 600"#;
        let mut cmd = Command::new("sh");
        cmd.args(["-c", script, "server"]);
        let (mut child, addr) = start(&mut cmd).await.unwrap();
        assert_eq!(addr, "127.0.0.2:16001".parse().unwrap());
        assert!(
            child.try_wait().unwrap().is_none(),
            "the server is still up"
        );
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
