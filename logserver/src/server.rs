//! The log server: accepts many TCP clients, each admitted by the [`Gate`] (a full server
//! evicts a guest for a newcomer) and served by its [`Connection`], which reads
//! newline-terminated lines and hands them as records to the single writer. Shutdown never
//! loses a line that was read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use protocol::ReadHalf;
use protocol::auth::Token;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout_at};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::connection::{Connection, SHUTDOWN_LINGER, SHUTDOWN_QUIET};
use crate::error::Error;
use crate::gate::{Admission, Gate};
use crate::writer::{self, FLUSH_INTERVAL, Msg};

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Pause after evicting a guest to free a file descriptor: its task closes the socket at once.
const EVICT_BACKOFF: Duration = Duration::from_millis(5);

/// How the log server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The file that records are appended to; created if missing (readable by its owner only).
    pub outfile: PathBuf,
    /// Write JSON lines `{"time":..,"source":..,"message":..}` instead of text.
    pub json: bool,
    /// Connections served at once. A full server evicts a guest (a connection that has not
    /// proved the token, or sent no line, or has been silent for `guest_idle`) for a
    /// newcomer, and closes the newcomer only when every connection is a member.
    pub max_connections: usize,
    /// Longest line in bytes; longer lines are cut and marked as truncated.
    pub max_line: usize,
    /// When set, each client must prove it holds this token before its lines are accepted.
    pub token: Option<Token>,
    /// Also print each record on stdout.
    pub echo_stdout: bool,
    /// Time a client has to finish the token handshake and send its first record.
    pub handshake_timeout: Duration,
    /// A connection silent this long is a guest again: evicted when the server is full.
    pub guest_idle: Duration,
    /// Close connections that send no line for this long.
    pub idle_timeout: Option<Duration>,
    /// Largest size of the output file: past it the file is renamed `<outfile>.1` (older ones
    /// shift to `.2` ...) and a new one started. `None`: it grows without bound.
    pub max_file_bytes: Option<u64>,
    /// Rotated files kept (`<outfile>.1` to `<outfile>.<keep_files>`); older ones are removed.
    pub keep_files: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            outfile: PathBuf::from("pcluster.log"),
            json: false,
            max_connections: 4096,
            max_line: 64 * 1024,
            token: None,
            echo_stdout: true,
            handshake_timeout: Duration::from_secs(5),
            // A node's log client reconnects by itself on its next line, so evicting a quiet
            // one costs a reconnect; strangers sitting on slots cost every newcomer one.
            guest_idle: Duration::from_secs(5),
            // Long enough for a quiet `nc`; guests are evicted long before when room is needed.
            idle_timeout: Some(Duration::from_secs(300)),
            max_file_bytes: Some(DEFAULT_MAX_FILE_MB << 20),
            keep_files: DEFAULT_KEEP_FILES,
        }
    }
}

/// The default size cap of the output file, in MiB.
pub const DEFAULT_MAX_FILE_MB: u64 = 100;

/// The default number of rotated files kept: with the current one, at most 600 MiB of logs.
pub const DEFAULT_KEEP_FILES: usize = 5;

/// Serves log clients on `listener` until `shutdown` is cancelled.
///
/// On shutdown it stops accepting, lets each connection hand over what it has read (a partial
/// last line included), writes and flushes every record, and only then returns.
///
/// # Errors
///
/// [`Error::Config`] for a zero limit, [`Error::OpenOutfile`] when the file cannot be opened,
/// [`Error::Io`] when the writer thread cannot start, [`Error::WriteOutfile`] (after serving
/// until shutdown) when some records could not be written.
pub async fn run(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    if config.max_connections == 0 {
        return Err(Error::Config("max_connections must be at least 1"));
    }
    if config.max_line == 0 {
        return Err(Error::Config("max_line must be at least 1"));
    }
    if config.max_file_bytes == Some(0) {
        return Err(Error::Config("max_file_bytes must be at least 1"));
    }
    let local = listener.local_addr()?;
    let rotation = writer::Rotation {
        path: config.outfile.clone(),
        max_bytes: config.max_file_bytes,
        keep: config.keep_files,
    };
    let file = writer::open(&config.outfile)?;
    let (tx, rx) = mpsc::channel(writer::CHANNEL_CAPACITY);
    let done = writer::spawn(file, rotation, config.json, config.echo_stdout, rx)?;
    if config.token.is_none() {
        tracing::warn!(
            %local,
            "the log server has no token: anyone who can reach this port can write to the log"
        );
    }
    tracing::info!(%local, outfile = %config.outfile.display(), "log server listening");

    let server = Server {
        gate: Arc::new(Gate::new(config.max_connections)),
        next_id: AtomicU64::new(1),
        config: Arc::new(config),
        tracker: TaskTracker::new(),
        tx,
        shutdown,
    };
    server
        .tracker
        .spawn(ticker(server.tx.clone(), server.shutdown.clone()));
    server.accept_loop(&listener).await;
    // A client may have connected and written before we got to accept it, and from its side
    // those lines are sent: take the connections already waiting, which shut down at once.
    let linger_end = Instant::now() + SHUTDOWN_LINGER;
    while let Ok(Ok((stream, peer))) = timeout_at(
        (Instant::now() + SHUTDOWN_QUIET).min(linger_end),
        listener.accept(),
    )
    .await
    {
        server.serve(stream, peer);
    }
    drop(listener);
    let Server { tracker, tx, .. } = server;
    tracker.close();
    tracker.wait().await;
    // The last sender: once it is gone the writer drains the channel, flushes and reports.
    drop(tx);
    done.await.unwrap_or(Err(Error::WriterPanicked))
}

/// What every connection shares.
struct Server {
    config: Arc<ServerConfig>,
    gate: Arc<Gate>,
    next_id: AtomicU64,
    tracker: TaskTracker,
    tx: mpsc::Sender<Msg>,
    shutdown: CancellationToken,
}

impl Server {
    /// Accepts connections until shutdown.
    async fn accept_loop(&self, listener: &TcpListener) {
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = self.shutdown.cancelled() => return,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of file descriptors: a guest's is the one to give up, as for a
                        // full server; the newcomer waits in the backlog meanwhile.
                        let freed = out_of_files(&e) && self.gate.evict_one();
                        if !freed {
                            tracing::warn!(error = %e, "accept failed");
                        }
                        let pause = if freed { EVICT_BACKOFF } else { ACCEPT_BACKOFF };
                        tokio::select! {
                            () = self.shutdown.cancelled() => return,
                            () = tokio::time::sleep(pause) => continue,
                        }
                    }
                },
            };
            self.serve(stream, peer);
        }
    }

    /// Serves one accepted connection in its own task, evicting a guest when the server is
    /// full; closes it when every connection is a member.
    fn serve(&self, stream: TcpStream, peer: SocketAddr) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let kick = CancellationToken::new();
        match self.gate.enter(id, peer.ip(), &kick) {
            Admission::Full => {
                tracing::debug!(%peer, "log server full of members; closing this connection");
                return;
            }
            Admission::Admitted { evicted } if evicted > 0 => {
                tracing::debug!(%peer, "log server full: evicted a guest for this connection");
            }
            Admission::Admitted { .. } => {}
        }
        let _ = stream.set_nodelay(true);
        let conn = Connection {
            id,
            peer,
            config: Arc::clone(&self.config),
            gate: Arc::clone(&self.gate),
            tx: self.tx.clone(),
            shutdown: self.shutdown.clone(),
            kick,
        };
        let (read, write) = stream.into_split();
        self.tracker
            .spawn(async move { conn.serve(ReadHalf::Plain(read), write).await });
    }
}

/// Whether `e` says the process (or the system) has no file descriptor left.
fn out_of_files(e: &std::io::Error) -> bool {
    // EMFILE and ENFILE on Linux; std has no `ErrorKind` for them.
    matches!(e.raw_os_error(), Some(23 | 24))
}

/// Asks the writer to flush every [`FLUSH_INTERVAL`] until shutdown (which flushes anyway).
async fn ticker(tx: mpsc::Sender<Msg>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(FLUSH_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            sent = tx.send(Msg::Flush) => if sent.is_err() { return },
        }
    }
}
