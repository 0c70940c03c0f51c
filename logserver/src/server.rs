//! The log server: accepts many TCP clients, reads newline-terminated lines from each, and hands
//! them as records to the single writer. Shutdown never loses a line that was read.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use protocol::ReadHalf;
use protocol::auth::Token;
use protocol::secure::{Keys, SecureRead};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::codec::{Line, LineCodec};
use crate::error::{Error, HandshakeError};
use crate::handshake;
use crate::writer::{self, FLUSH_INTERVAL, Msg, Record};

/// After shutdown starts, a connection keeps reading while data keeps coming this fast, so that
/// lines already on their way (in socket buffers) are not cut off.
const SHUTDOWN_QUIET: Duration = Duration::from_millis(50);

/// ... but no connection holds up the shutdown longer than this.
const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

/// Pause after a failed `accept` (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// How the log server runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The file that records are appended to; created if missing.
    pub outfile: PathBuf,
    /// Write JSON lines `{"time":..,"source":..,"message":..}` instead of text.
    pub json: bool,
    /// Connections served at once; more are closed right after accept.
    pub max_connections: usize,
    /// Longest line in bytes; longer lines are cut and marked as truncated.
    pub max_line: usize,
    /// When set, each client must prove it holds this token before its lines are accepted.
    pub token: Option<Token>,
    /// Also print each record on stdout.
    pub echo_stdout: bool,
    /// Time a client has to finish the token handshake.
    pub handshake_timeout: Duration,
    /// Close connections that send nothing for this long.
    pub idle_timeout: Option<Duration>,
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
            // Long enough for a quiet node; short enough that idle connections cannot hold
            // every slot for long. A client reconnects by itself on its next line.
            idle_timeout: Some(Duration::from_secs(300)),
        }
    }
}

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
    let local = listener.local_addr()?;
    let file = writer::open(&config.outfile)?;
    let (tx, rx) = mpsc::channel(writer::CHANNEL_CAPACITY);
    let done = writer::spawn(
        file,
        config.outfile.clone(),
        config.json,
        config.echo_stdout,
        rx,
    )?;
    if config.token.is_none() {
        tracing::warn!(
            %local,
            "the log server has no token: anyone who can reach this port can write to the log"
        );
    }
    tracing::info!(%local, outfile = %config.outfile.display(), "log server listening");

    let config = Arc::new(config);
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let tracker = TaskTracker::new();
    tracker.spawn(ticker(tx.clone(), shutdown.clone()));
    loop {
        let (stream, peer) = tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(ACCEPT_BACKOFF) => continue,
                    }
                }
            },
        };
        serve(stream, peer, &limit, &tracker, &config, &tx, &shutdown);
    }
    // A client may have connected and written before we got to accept it, and from its side
    // those lines are sent: take the connections already waiting, which shut down at once.
    let linger_end = Instant::now() + SHUTDOWN_LINGER;
    while let Ok(Ok((stream, peer))) = timeout_at(
        (Instant::now() + SHUTDOWN_QUIET).min(linger_end),
        listener.accept(),
    )
    .await
    {
        serve(stream, peer, &limit, &tracker, &config, &tx, &shutdown);
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
    // The last sender: once it is gone the writer drains the channel, flushes and reports.
    drop(tx);
    done.await.unwrap_or(Err(Error::WriterPanicked))
}

/// Serves one accepted connection in its own task, or closes it when over the limit.
fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    limit: &Arc<Semaphore>,
    tracker: &TaskTracker,
    config: &Arc<ServerConfig>,
    tx: &mpsc::Sender<Msg>,
    shutdown: &CancellationToken,
) {
    let Ok(permit) = Arc::clone(limit).try_acquire_owned() else {
        tracing::debug!(%peer, "too many log connections; closing this one");
        return;
    };
    let _ = stream.set_nodelay(true);
    let conn = Connection {
        peer,
        config: Arc::clone(config),
        tx: tx.clone(),
        shutdown: shutdown.clone(),
    };
    let (read, write) = stream.into_split();
    tracker.spawn(async move {
        conn.serve(read, write).await;
        drop(permit);
    });
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

/// One client connection.
struct Connection {
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    tx: mpsc::Sender<Msg>,
    shutdown: CancellationToken,
}

type Lines = FramedRead<ReadHalf, LineCodec>;

impl Connection {
    async fn serve(self, read: OwnedReadHalf, mut write: OwnedWriteHalf) {
        let peer = self.peer;
        tracing::debug!(%peer, "log client connected");
        let mut lines =
            FramedRead::new(ReadHalf::Plain(read), LineCodec::new(self.config.max_line));
        if let Some(token) = &self.config.token {
            lines.decoder_mut().set_max_line(handshake::MAX_LINE);
            let result = tokio::select! {
                () = self.shutdown.cancelled() => return,
                r = timeout(self.config.handshake_timeout, authenticate(token, &mut lines, &mut write)) => {
                    r.unwrap_or(Err(HandshakeError::Timeout))
                }
            };
            let keys = match result {
                Ok(keys) => keys,
                Err(e) => {
                    if matches!(e, HandshakeError::BadProof) {
                        tracing::warn!(%peer, "log client refused: wrong token");
                    } else {
                        tracing::debug!(%peer, error = %e, "log client handshake failed");
                    }
                    // Best effort: the client may already be gone.
                    let _ = timeout(
                        Duration::from_secs(1),
                        write.write_all(handshake::refuse(&e.to_string()).as_bytes()),
                    )
                    .await;
                    return;
                }
            };
            // The client seals nothing before our answer, so nothing can be buffered here.
            let parts = lines.into_parts();
            let ReadHalf::Plain(read) = parts.io else {
                return;
            };
            if !parts.read_buf.is_empty() {
                tracing::debug!(%peer, "log client sent data before the handshake ended");
                return;
            }
            let (_, opener) = keys.split();
            lines = FramedRead::new(
                ReadHalf::Secure(SecureRead::new(read, opener)),
                LineCodec::new(self.config.max_line),
            );
        }
        self.read_lines(lines).await;
        drop(write);
        tracing::debug!(%peer, "log client disconnected");
    }

    async fn read_lines(&self, mut lines: Lines) {
        let mut linger_until: Option<Instant> = None;
        loop {
            let next = match linger_until {
                Some(end) => {
                    let quiet = (Instant::now() + SHUTDOWN_QUIET).min(end);
                    match timeout_at(quiet, lines.next()).await {
                        Ok(next) => next,
                        Err(_) => break,
                    }
                }
                None => tokio::select! {
                    () = self.shutdown.cancelled() => {
                        linger_until = Some(Instant::now() + SHUTDOWN_LINGER);
                        continue;
                    }
                    next = next_or_idle(&mut lines, self.config.idle_timeout) => match next {
                        Some(next) => next,
                        None => {
                            tracing::debug!(peer = %self.peer, "log client idle; closing");
                            break;
                        }
                    },
                },
            };
            match next {
                Some(Ok(line)) => {
                    if !self.hand_over(line).await {
                        return;
                    }
                }
                Some(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "log client read failed");
                    break;
                }
                // End of stream: the codec's `decode_eof` already gave the partial last line.
                None => return,
            }
        }
        // Stopped before the end of stream: what is buffered was read, so it is kept.
        let mut parts = lines.into_parts();
        while let Ok(Some(line)) = parts.codec.decode_eof(&mut parts.read_buf) {
            if !self.hand_over(line).await {
                return;
            }
        }
    }

    /// Passes a line to the writer, waiting while its channel is full; false if it is gone.
    async fn hand_over(&self, line: Line) -> bool {
        let record = Record {
            time: SystemTime::now(),
            source: self.peer,
            line,
        };
        self.tx.send(Msg::Record(record)).await.is_ok()
    }
}

/// The next line, or `None` once the connection has been idle for `idle`.
async fn next_or_idle(
    lines: &mut Lines,
    idle: Option<Duration>,
) -> Option<Option<Result<Line, std::io::Error>>> {
    match idle {
        Some(idle) => timeout(idle, lines.next()).await.ok(),
        None => Some(lines.next().await),
    }
}

/// The server side of the token handshake: greets, answers the client's Noise message, and
/// returns the connection's keys.
async fn authenticate(
    token: &Token,
    lines: &mut Lines,
    write: &mut OwnedWriteHalf,
) -> Result<Keys, HandshakeError> {
    write.write_all(handshake::greeting().as_bytes()).await?;
    let first = match lines.next().await {
        Some(Ok(line)) if line.truncated == 0 => line,
        Some(Ok(_)) => return Err(HandshakeError::Malformed),
        Some(Err(e)) => return Err(e.into()),
        None => return Err(HandshakeError::Closed),
    };
    let (reply, keys) = handshake::respond(token, &first.text)?;
    write.write_all(reply.as_bytes()).await?;
    Ok(keys)
}
