//! One log client's connection: the token handshake (with a token), then lines handed to the
//! writer, while its standing with the [`Gate`] follows what it does.
//!
//! A connection starts as a guest. It becomes a member with its first line: with a token that
//! line came in a record that opened with the connection's keys, which proves the client
//! holds the token (confirming the key: a replayed first handshake message gets an `OK` too,
//! but its sender has no keys). With a token a guest must do that within the handshake
//! timeout of connecting. A member silent for `guest_idle` is a guest again, evictable, until
//! its next line; any connection silent for `idle_timeout` is closed.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use protocol::ReadHalf;
use protocol::auth::Token;
use protocol::secure::{Keys, SecureRead};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{Instant, timeout, timeout_at};
use tokio_util::codec::{Decoder, FramedRead};
use tokio_util::sync::CancellationToken;

use crate::codec::{Line, LineCodec};
use crate::error::HandshakeError;
use crate::gate::Gate;
use crate::handshake;
use crate::server::ServerConfig;
use crate::writer::{Msg, Record};

/// After shutdown starts, a connection keeps reading while data keeps coming this fast, so that
/// lines already on their way (in socket buffers) are not cut off.
pub(crate) const SHUTDOWN_QUIET: Duration = Duration::from_millis(50);

/// ... but no connection holds up the shutdown longer than this.
pub(crate) const SHUTDOWN_LINGER: Duration = Duration::from_secs(1);

type Lines = FramedRead<ReadHalf, LineCodec>;

/// One client connection, admitted by the gate as guest `id`; it leaves the gate when dropped.
pub(crate) struct Connection {
    pub(crate) id: u64,
    pub(crate) peer: SocketAddr,
    pub(crate) config: Arc<ServerConfig>,
    pub(crate) gate: Arc<Gate>,
    pub(crate) tx: mpsc::Sender<Msg>,
    pub(crate) shutdown: CancellationToken,
    /// Cancelled when the gate evicts this connection.
    pub(crate) kick: CancellationToken,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.gate.leave(self.id);
    }
}

/// Where a connection stands: a member or a guest, and the times its deadlines count from.
#[derive(Debug, Clone, Copy)]
struct Standing {
    member: bool,
    /// Its last line (or its arrival, before the first).
    last_line: Instant,
    /// With a token, until its first line: when it must have proved the key.
    confirm_by: Option<Instant>,
}

/// What a connection does when no line has come by a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lapse {
    /// A member becomes a guest again.
    Demote,
    /// The connection is closed.
    Close,
}

impl Standing {
    /// The next deadline without a line, and what then.
    fn deadline(&self, config: &ServerConfig) -> (Option<Instant>, Lapse) {
        let idle_end = config.idle_timeout.map(|d| self.last_line + d);
        if self.member {
            let demote_at = self.last_line + config.guest_idle;
            return match idle_end {
                Some(end) if end <= demote_at => (Some(end), Lapse::Close),
                _ => (Some(demote_at), Lapse::Demote),
            };
        }
        let end = [idle_end, self.confirm_by].into_iter().flatten().min();
        (end, Lapse::Close)
    }
}

/// Sleeps until `end`; forever without one.
async fn until(end: Option<Instant>) {
    match end {
        Some(end) => tokio::time::sleep_until(end).await,
        None => std::future::pending().await,
    }
}

impl Connection {
    /// Serves the connection to its end: `read` and `write` are its two halves.
    pub(crate) async fn serve<W: AsyncWrite + Unpin>(self, read: ReadHalf, mut write: W) {
        let arrived = Instant::now();
        tracing::debug!(peer = %self.peer, "log client connected");
        let mut lines = FramedRead::new(read, LineCodec::new(self.config.max_line));
        let mut confirm_by = None;
        if let Some(token) = &self.config.token {
            let Some(sealed) = self.handshake(token, lines, &mut write).await else {
                return;
            };
            lines = sealed;
            confirm_by = Some(arrived + self.config.handshake_timeout);
        }
        let standing = Standing {
            member: false,
            last_line: arrived,
            confirm_by,
        };
        self.read_lines(lines, standing).await;
        drop(write);
        tracing::debug!(peer = %self.peer, "log client disconnected");
    }

    /// The token handshake; on success the lines that follow, opened with the connection's
    /// keys.
    async fn handshake<W: AsyncWrite + Unpin>(
        &self,
        token: &Token,
        mut lines: Lines,
        write: &mut W,
    ) -> Option<Lines> {
        let peer = self.peer;
        lines.decoder_mut().set_max_line(handshake::MAX_LINE);
        let result = tokio::select! {
            () = self.shutdown.cancelled() => return None,
            () = self.kick.cancelled() => return None,
            r = timeout(self.config.handshake_timeout, authenticate(token, &mut lines, write)) => {
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
                let refusal = handshake::refuse(&e.to_string());
                let _ = timeout(Duration::from_secs(1), write.write_all(refusal.as_bytes())).await;
                return None;
            }
        };
        // The client seals nothing before our answer, so nothing can be buffered here.
        let parts = lines.into_parts();
        let ReadHalf::Plain(read) = parts.io else {
            return None;
        };
        if !parts.read_buf.is_empty() {
            tracing::debug!(%peer, "log client sent data before the handshake ended");
            return None;
        }
        let (_, opener) = keys.split();
        Some(FramedRead::new(
            ReadHalf::Secure(SecureRead::new(read, opener)),
            LineCodec::new(self.config.max_line),
        ))
    }

    async fn read_lines(&self, mut lines: Lines, mut standing: Standing) {
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
                None => {
                    let (end, lapse) = standing.deadline(&self.config);
                    tokio::select! {
                        () = self.shutdown.cancelled() => {
                            linger_until = Some(Instant::now() + SHUTDOWN_LINGER);
                            continue;
                        }
                        () = self.kick.cancelled() => {
                            tracing::debug!(peer = %self.peer, "log server full: evicted this guest");
                            break;
                        }
                        () = until(end) => match lapse {
                            Lapse::Demote => {
                                standing.member = false;
                                self.gate.demote(self.id);
                                continue;
                            }
                            Lapse::Close => {
                                tracing::debug!(peer = %self.peer, "log client idle; closing");
                                break;
                            }
                        },
                        next = lines.next() => next,
                    }
                }
            };
            match next {
                Some(Ok(line)) => {
                    self.note_line(&mut standing);
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

    /// A line came: the connection is a member (with a token, the line opened with its keys,
    /// so the key is confirmed), until it is silent again.
    fn note_line(&self, standing: &mut Standing) {
        standing.last_line = Instant::now();
        if !standing.member {
            // False when it was evicted meanwhile: then `kick` ends it.
            standing.member = self.gate.promote(self.id, self.peer.ip());
            standing.confirm_by = None;
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

/// The server side of the token handshake: greets, answers the client's Noise message, and
/// returns the connection's keys. The client has not proved the key yet: its first record
/// does that.
async fn authenticate<W: AsyncWrite + Unpin>(
    token: &Token,
    lines: &mut Lines,
    write: &mut W,
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

#[cfg(test)]
mod tests {
    //! Standing over time, on a paused clock: connections over in-memory pipes, no token.

    use std::net::IpAddr;

    use tokio::io::{AsyncReadExt, DuplexStream};
    use tokio::task::JoinHandle;

    use super::*;
    use crate::gate::Admission;

    const GUEST_IDLE: Duration = Duration::from_secs(5);
    const IDLE: Duration = Duration::from_secs(60);

    /// A gate, a writer's channel, and connections served over pipes.
    struct Harness {
        gate: Arc<Gate>,
        config: Arc<ServerConfig>,
        tx: mpsc::Sender<Msg>,
        rx: mpsc::Receiver<Msg>,
        shutdown: CancellationToken,
    }

    /// A client's end of a served connection.
    struct Client {
        pipe: DuplexStream,
        task: JoinHandle<()>,
        kick: CancellationToken,
    }

    impl Harness {
        fn new(max_connections: usize) -> Harness {
            let (tx, rx) = mpsc::channel(64);
            Harness {
                gate: Arc::new(Gate::new(max_connections)),
                config: Arc::new(ServerConfig {
                    max_connections,
                    guest_idle: GUEST_IDLE,
                    idle_timeout: Some(IDLE),
                    ..ServerConfig::default()
                }),
                tx,
                rx,
                shutdown: CancellationToken::new(),
            }
        }

        /// Connection `id` from `ip`, when the gate admits it.
        fn connect(&self, id: u64, ip: &str) -> Option<Client> {
            let ip: IpAddr = ip.parse().expect("an IP address");
            let kick = CancellationToken::new();
            if self.gate.enter(id, ip, &kick) == Admission::Full {
                return None;
            }
            let (pipe, server) = tokio::io::duplex(4096);
            let (read, write) = tokio::io::split(server);
            let conn = Connection {
                id,
                peer: SocketAddr::new(ip, 40_000),
                config: Arc::clone(&self.config),
                gate: Arc::clone(&self.gate),
                tx: self.tx.clone(),
                shutdown: self.shutdown.clone(),
                kick: kick.clone(),
            };
            let task = tokio::spawn(conn.serve(ReadHalf::Memory(read), write));
            Some(Client { pipe, task, kick })
        }

        /// The text of the next record the writer would get.
        async fn record(&mut self) -> String {
            loop {
                match self.rx.recv().await.expect("a record") {
                    Msg::Record(r) => return r.line.text,
                    Msg::Flush => {}
                }
            }
        }
    }

    impl Client {
        async fn send(&mut self, text: &str) {
            self.pipe.write_all(text.as_bytes()).await.expect("write");
        }

        /// Waits until the server has closed the connection.
        async fn closed(mut self) {
            self.task.await.expect("the connection's task");
            let mut rest = Vec::new();
            self.pipe.read_to_end(&mut rest).await.expect("read");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_silent_past_guest_idle_is_evicted_for_a_newcomer() {
        let mut h = Harness::new(1);
        let mut a = h.connect(1, "10.0.0.1").expect("room");
        a.send("hello\n").await;
        assert_eq!(h.record().await, "hello");
        assert_eq!(h.gate.counts(), (1, 0));
        assert!(h.connect(2, "10.0.0.2").is_none(), "full of members");
        tokio::time::sleep(GUEST_IDLE - Duration::from_secs(1)).await;
        a.send("still here\n").await;
        assert_eq!(h.record().await, "still here");
        // The silence counts from the last line.
        tokio::time::sleep(GUEST_IDLE - Duration::from_secs(1)).await;
        assert!(h.connect(3, "10.0.0.2").is_none(), "still a member");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(h.gate.counts(), (0, 1), "silent too long: a guest");
        let mut c = h.connect(4, "10.0.0.2").expect("the guest makes room");
        assert!(a.kick.is_cancelled());
        a.closed().await;
        c.send("newcomer\n").await;
        assert_eq!(h.record().await, "newcomer");
        assert_eq!(h.gate.counts(), (1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_guest_that_talks_again_is_a_member_again_and_silence_closes_at_last() {
        let mut h = Harness::new(2);
        let mut a = h.connect(1, "10.0.0.1").expect("room");
        // Sent no line yet: a guest from the start, however fresh.
        assert_eq!(h.gate.counts(), (0, 1));
        a.send("one\n").await;
        assert_eq!(h.record().await, "one");
        tokio::time::sleep(GUEST_IDLE + Duration::from_secs(1)).await;
        assert_eq!(h.gate.counts(), (0, 1));
        a.send("two\n").await;
        assert_eq!(h.record().await, "two");
        assert_eq!(h.gate.counts(), (1, 0));
        // A partial line is no line: the connection closes `IDLE` after "two", keeping it.
        a.send("half").await;
        tokio::time::sleep(IDLE - Duration::from_secs(1)).await;
        assert!(!a.task.is_finished());
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(h.record().await, "half");
        a.closed().await;
        assert_eq!(h.gate.counts(), (0, 0), "it left the gate");
    }

    #[tokio::test(start_paused = true)]
    async fn a_flooding_source_loses_its_own_guests_not_another_sources_member_turned_guest() {
        let mut h = Harness::new(4);
        let mut node = h.connect(1, "10.0.0.2").expect("room");
        node.send("node up\n").await;
        assert_eq!(h.record().await, "node up");
        tokio::time::sleep(GUEST_IDLE + Duration::from_secs(1)).await;
        // The node is a guest now, the oldest; a flood of newcomers from one address comes.
        let mut flood = Vec::new();
        for id in 10..60 {
            flood.push(
                h.connect(id, "10.0.0.9")
                    .expect("a guest is evicted for each"),
            );
        }
        assert!(!node.kick.is_cancelled(), "the flood evicted its own");
        assert_eq!(flood.iter().filter(|c| !c.kick.is_cancelled()).count(), 3);
        node.send("node still logging\n").await;
        assert_eq!(h.record().await, "node still logging");
    }
}
