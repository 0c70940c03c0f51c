//! The log client: [`LogClient`] queues lines in a bounded buffer and a background thread sends
//! them to the log server, connecting lazily and reconnecting with backoff. Callers never wait
//! on the network; when the buffer is full, lines are dropped and counted. With a token the
//! lines are sealed in records (see [`crate::handshake`]); a server whose token use differs
//! from ours is reported once, as a warning, when we first connect.

use std::collections::HashMap;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use protocol::auth::Token;
use protocol::secure::Sealer;

use crate::error::HandshakeError;
use crate::handshake;

/// Lines queued before new ones are dropped.
pub const QUEUE_CAPACITY: usize = 8192;

/// Longest line the client queues, in bytes; the server's default limit.
pub const MAX_LINE: usize = 64 * 1024;

/// Bytes the queue (and the batch being sent) may hold, each line counting
/// [`LINE_COST`] beyond its text; past it lines are dropped and counted like on a full
/// queue. A task logging long lines in a loop cannot make its node hold more.
pub const QUEUE_BYTES: usize = 4 << 20;
const LINE_COST: usize = 32;

/// Lines taken from the queue per write; they are resent on a new connection if the write fails.
const MAX_BATCH: usize = 512;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a client with a token waits for a server's greeting: none by then means the
/// server runs without a token.
const GREETING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a client without a token looks for a greeting (which says the server requires
/// one) before it sends plain lines. A greeting is sent at accept, so on a LAN it is there
/// within a millisecond.
const GREETING_PEEK: Duration = Duration::from_millis(150);
/// The first connection of a client looks for a greeting only this many times as long as
/// the TCP connect took (at least [`PEEK_FLOOR`], at most [`GREETING_PEEK`]): a greeting
/// leaves the server with its accept, so it trails the connect by about half a round trip.
/// A process that logs a line and exits (`pcluster run` over one item) then does not wait
/// the whole peek at its exit. Should a slow server's greeting come later, the plain lines
/// are refused, the server closes, and every later connection looks for the whole peek.
const PEEK_CONNECTS: u32 = 8;
const PEEK_FLOOR: Duration = Duration::from_millis(10);
/// A server that stops reading for this long is treated as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_START: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
/// How long [`log`] waits for its line to be sent.
const LOG_FLUSH_TIMEOUT: Duration = Duration::from_millis(500);

/// A handle to a background sender of log lines; cheap to clone, all clones share one queue
/// and one connection. The sender thread ends once every clone is dropped and the queue is sent.
#[derive(Clone)]
pub struct LogClient {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Sender<String>,
    shared: Arc<Shared>,
}

/// What the callers and the sender thread both see.
struct Shared {
    addr: String,
    /// Lines accepted into the queue so far.
    queued: AtomicU64,
    /// Bytes of the lines queued and not yet written ([`QUEUE_BYTES`]).
    queued_bytes: AtomicUsize,
    /// Lines written to a socket so far; `flush` waits on it.
    written: Mutex<u64>,
    written_changed: Condvar,
    dropped: AtomicU64,
    /// Dropped since the last line that got through, which reports them.
    unreported: AtomicU64,
    /// Every handle is gone: nobody can flush any more, so an unreachable server ends the thread.
    closed: AtomicBool,
    /// The server refuses us (a token on one side only, or another token): no line can get
    /// through until that changes, so [`LogClient::flush`] gives up at once instead of
    /// holding a process's exit.
    refused: AtomicBool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
    }
}

impl fmt::Debug for LogClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogClient")
            .field("addr", &self.inner.shared.addr)
            .field("dropped", &self.dropped())
            .finish_non_exhaustive()
    }
}

impl LogClient {
    /// A client for the log server at `addr` (`host:port`), proving `token` when the server
    /// asks. Nothing connects until the first line is sent.
    pub fn new(addr: String, token: Option<Token>) -> LogClient {
        let (tx, rx) = crossbeam_channel::bounded(QUEUE_CAPACITY);
        let shared = Arc::new(Shared {
            addr,
            queued: AtomicU64::new(0),
            queued_bytes: AtomicUsize::new(0),
            written: Mutex::new(0),
            written_changed: Condvar::new(),
            dropped: AtomicU64::new(0),
            unreported: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            refused: AtomicBool::new(false),
        });
        let thread_shared = Arc::clone(&shared);
        // Without its thread the client still works as a sink: every line counts as dropped.
        let _ = std::thread::Builder::new()
            .name("pcluster-log-client".into())
            .spawn(move || Worker::new(rx, thread_shared, token).run());
        LogClient {
            inner: Arc::new(Inner { tx, shared }),
        }
    }

    /// Queues one line without waiting; drops it (and counts it) when the queue is full.
    ///
    /// Newlines inside `line` become spaces, so one call is one record. The next line that gets
    /// through after drops says how many were dropped.
    pub fn send(&self, line: impl AsRef<str>) {
        let shared = &self.inner.shared;
        let mut text = one_line(line.as_ref());
        let unreported = shared.unreported.swap(0, Ordering::AcqRel);
        if unreported > 0 {
            text.push_str(&format!(" [pcluster-log: {unreported} lines dropped]"));
        }
        let cost = text.len() + LINE_COST;
        let held = shared.queued_bytes.fetch_add(cost, Ordering::AcqRel);
        let sent = if held + cost > QUEUE_BYTES {
            Err(TrySendError::Full(text))
        } else {
            self.inner.tx.try_send(text)
        };
        match sent {
            Ok(()) => {
                shared.queued.fetch_add(1, Ordering::AcqRel);
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                shared.queued_bytes.fetch_sub(cost, Ordering::AcqRel);
                shared
                    .unreported
                    .fetch_add(unreported + 1, Ordering::AcqRel);
                shared.dropped.fetch_add(1, Ordering::AcqRel);
            }
        }
    }

    /// Waits until every line queued so far is written to the socket, or until `timeout`.
    /// Returns whether they all were. Meant for process shutdown. While the server cannot be
    /// refuses us (a token mismatch) it returns false at once.
    pub fn flush(&self, timeout: Duration) -> bool {
        let shared = &self.inner.shared;
        let target = shared.queued.load(Ordering::Acquire);
        let deadline = Instant::now() + timeout;
        let mut written = shared
            .written
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        while *written < target {
            let now = Instant::now();
            if now >= deadline || shared.refused.load(Ordering::Acquire) {
                return false;
            }
            written = shared
                .written_changed
                // Short waits: the worker's failure is seen without a wake-up of its own.
                .wait_timeout(written, (deadline - now).min(Duration::from_millis(20)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
        true
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.inner.shared.dropped.load(Ordering::Acquire)
    }

    /// The server address this client sends to.
    pub fn addr(&self) -> &str {
        &self.inner.shared.addr
    }
}

/// Sends one line to the log server at `addr` and waits briefly for it to be written.
///
/// Uses one client per address for the whole process, with the token from `PCLUSTER_TOKEN`
/// if that is set.
pub fn log(message: &str, addr: &str) {
    static CLIENTS: OnceLock<Mutex<HashMap<String, LogClient>>> = OnceLock::new();
    let client = {
        let mut clients = CLIENTS
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        clients
            .entry(addr.to_owned())
            .or_insert_with(|| {
                let token = std::env::var("PCLUSTER_TOKEN")
                    .ok()
                    .filter(|t| !t.is_empty())
                    .map(Token::new);
                LogClient::new(addr.to_owned(), token)
            })
            .clone()
    };
    client.send(message);
    client.flush(LOG_FLUSH_TIMEOUT);
}

/// `line` with line breaks turned into spaces and cut to [`MAX_LINE`] bytes.
fn one_line(line: &str) -> String {
    let mut end = line.len().min(MAX_LINE);
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    let mut text = line[..end].replace(['\n', '\r'], " ");
    if end < line.len() {
        text.push_str(&format!(" [truncated {} bytes]", line.len() - end));
    }
    text
}

/// The background thread: takes lines from the queue and writes them to the server.
struct Worker {
    rx: Receiver<String>,
    shared: Arc<Shared>,
    token: Option<Token>,
    conn: Option<Conn>,
    /// Set while the server cannot be reached, so that failures are reported once, not per try.
    failing: bool,
    /// A connection was closed or failed under us: look for a greeting the whole
    /// [`GREETING_PEEK`] from now on.
    careful: bool,
}

impl Worker {
    fn new(rx: Receiver<String>, shared: Arc<Shared>, token: Option<Token>) -> Self {
        Worker {
            rx,
            shared,
            token,
            conn: None,
            failing: false,
            careful: false,
        }
    }

    fn run(mut self) {
        let mut batch: Vec<String> = Vec::with_capacity(MAX_BATCH);
        let mut backoff = BACKOFF_START;
        loop {
            if batch.is_empty() {
                match self.rx.recv() {
                    Ok(line) => batch.push(line),
                    // Every handle is gone and everything queued has been sent.
                    Err(_) => return,
                }
                batch.extend(self.rx.try_iter().take(MAX_BATCH - 1));
            }
            let Some(mut conn) = self.connection() else {
                if self.shared.closed.load(Ordering::Acquire) {
                    return;
                }
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            };
            backoff = BACKOFF_START;
            self.shared.refused.store(false, Ordering::Release);
            if conn.write_batch(&batch).is_ok() {
                self.conn = Some(conn);
                let mut written = self
                    .shared
                    .written
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                *written += batch.len() as u64;
                self.shared.written_changed.notify_all();
                let bytes: usize = batch.iter().map(|l| l.len() + LINE_COST).sum();
                self.shared.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
                batch.clear();
            } else {
                // The batch goes again on the next connection: a line may arrive twice, but a
                // line the server never saw is not lost to a dead socket.
                self.careful = true;
                tracing::debug!(addr = %self.shared.addr, "log server connection lost");
            }
        }
    }

    /// The current connection if it is still open, else a new one.
    fn connection(&mut self) -> Option<Conn> {
        if let Some(conn) = self.conn.take() {
            if still_open(&conn.stream) {
                return Some(conn);
            }
            // Perhaps a server that wants a token and greeted after a quick look.
            self.careful = true;
        }
        match connect_peeking(&self.shared.addr, self.token.as_ref(), self.careful) {
            Ok(conn) => {
                if self.failing {
                    tracing::info!(addr = %self.shared.addr, "log server reachable again");
                    self.failing = false;
                }
                Some(conn)
            }
            Err(e) => {
                let refused = matches!(
                    e,
                    HandshakeError::BadProof
                        | HandshakeError::Refused(_)
                        | HandshakeError::TokenRequired
                        | HandshakeError::ServerWithoutToken
                );
                self.shared.refused.store(refused, Ordering::Release);
                if !self.failing {
                    match &e {
                        HandshakeError::BadProof
                        | HandshakeError::Refused(_)
                        | HandshakeError::TokenRequired
                        | HandshakeError::ServerWithoutToken => {
                            tracing::warn!(addr = %self.shared.addr, "log server {}: {e}; log lines go to this console only", self.shared.addr);
                        }
                        _ => {
                            tracing::debug!(addr = %self.shared.addr, error = %e, "cannot reach the log server");
                        }
                    }
                    self.failing = true;
                }
                None
            }
        }
    }
}

/// A connection to the log server: plain, or sealing its lines with the connection's keys.
pub(crate) struct Conn {
    stream: TcpStream,
    sealer: Option<Sealer>,
    /// The lines of a batch, then their records; both reused.
    plain: Vec<u8>,
    sealed: Vec<u8>,
}

impl Conn {
    fn write_batch(&mut self, batch: &[String]) -> io::Result<()> {
        self.plain.clear();
        for line in batch {
            self.plain.extend_from_slice(line.as_bytes());
            self.plain.push(b'\n');
        }
        match &mut self.sealer {
            None => self.stream.write_all(&self.plain),
            Some(sealer) => {
                let n = sealer.seal(&self.plain, &mut self.sealed)?;
                self.stream.write_all(&self.sealed[..n])
            }
        }
    }

    /// Whether the lines are sealed.
    #[cfg(test)]
    pub(crate) fn is_encrypted(&self) -> bool {
        self.sealer.is_some()
    }
}

/// Whether the server is still there. The server never sends anything after the handshake, so
/// readable data or an end of stream means it has closed (or is not a log server we can use);
/// catching that before writing saves the lines that a write into a closed socket would lose.
fn still_open(stream: &TcpStream) -> bool {
    if stream.set_nonblocking(true).is_err() {
        return false;
    }
    let mut byte = [0u8; 1];
    let open = matches!(stream.peek(&mut byte), Err(e) if e.kind() == io::ErrorKind::WouldBlock);
    stream.set_nonblocking(false).is_ok() && open
}

/// Connects to `addr` and, with a token, runs the client side of the handshake; without
/// one, checks that the server does not ask for a token (looking for its greeting the whole
/// [`GREETING_PEEK`]).
#[cfg(test)]
pub(crate) fn connect(addr: &str, token: Option<&Token>) -> Result<Conn, HandshakeError> {
    connect_peeking(addr, token, true)
}

/// Connects to `addr` and, with a token, runs the client side of the handshake; without
/// one, checks that the server does not ask for a token, looking for its greeting the
/// whole [`GREETING_PEEK`] when `careful`, else a few times as long as the connect took
/// ([`PEEK_CONNECTS`]).
fn connect_peeking(
    addr: &str,
    token: Option<&Token>,
    careful: bool,
) -> Result<Conn, HandshakeError> {
    let started = Instant::now();
    let mut last = io::Error::new(io::ErrorKind::NotFound, "address resolves to nothing");
    let mut stream = None;
    for sock in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&sock, CONNECT_TIMEOUT) {
            Ok(s) => {
                stream = Some(s);
                break;
            }
            Err(e) => last = e,
        }
    }
    let stream = stream.ok_or(last)?;
    stream.set_nodelay(true)?;
    stream.set_write_timeout(Some(WRITE_TIMEOUT))?;
    let sealer = match token {
        Some(token) => {
            stream.set_read_timeout(Some(GREETING_TIMEOUT))?;
            match read_line(&stream) {
                Ok(line) if line == handshake::GREETING => {}
                Ok(_) => return Err(HandshakeError::Malformed),
                Err(HandshakeError::Timeout) => return Err(HandshakeError::ServerWithoutToken),
                Err(e) => return Err(e),
            }
            stream.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
            let (init, first) = handshake::start(token)?;
            (&stream).write_all(first.as_bytes())?;
            let reply = read_line(&stream)?;
            let keys = handshake::finish(init, &reply)?;
            Some(keys.split().0)
        }
        None => {
            let peek = if careful {
                GREETING_PEEK
            } else {
                (started.elapsed() * PEEK_CONNECTS).clamp(PEEK_FLOOR, GREETING_PEEK)
            };
            stream.set_read_timeout(Some(peek))?;
            let mut byte = [0u8; 1];
            match stream.peek(&mut byte) {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(_) => return Err(HandshakeError::TokenRequired),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => return Err(e.into()),
            }
            None
        }
    };
    stream.set_read_timeout(None)?;
    Ok(Conn {
        stream,
        sealer,
        plain: Vec::new(),
        sealed: Vec::new(),
    })
}

/// Reads one handshake line byte by byte: nothing past the newline may be consumed, and these
/// lines are short and rare.
fn read_line(mut stream: &TcpStream) -> Result<String, HandshakeError> {
    let mut line = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    loop {
        match stream.read(&mut byte) {
            Ok(0) => return Err(HandshakeError::Closed),
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) if line.len() >= handshake::MAX_LINE => return Err(HandshakeError::Malformed),
            Ok(_) => line.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(HandshakeError::Timeout);
            }
            Err(e) => return Err(e.into()),
        }
    }
    if line.last() == Some(&b'\r') {
        line.pop();
    }
    String::from_utf8(line).map_err(|_| HandshakeError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_made_single_and_bounded() {
        assert_eq!(one_line("a\nb\r\nc"), "a b  c");
        let long = "é".repeat(MAX_LINE);
        let cut = one_line(&long);
        assert!(cut.len() <= MAX_LINE + 40);
        assert!(cut.ends_with(&format!(" [truncated {} bytes]", MAX_LINE)));
    }

    #[test]
    fn without_a_server_send_never_blocks_and_drops_are_counted() {
        // A port that was just free: connections are refused.
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let client = LogClient::new(addr, None);
        let started = Instant::now();
        let total = 3 * QUEUE_CAPACITY;
        for i in 0..total {
            client.send(format!("line {i}"));
        }
        // Generous: the point is that no send waits on the network.
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(client.dropped() >= (total - QUEUE_CAPACITY - MAX_BATCH) as u64);
        assert!(!client.flush(Duration::from_millis(10)));
    }

    #[test]
    fn long_lines_are_dropped_once_the_queue_holds_its_bytes() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr").to_string()
        };
        let client = LogClient::new(addr, None);
        let line = "x".repeat(MAX_LINE);
        let fit = QUEUE_BYTES / (MAX_LINE + LINE_COST);
        for _ in 0..fit + 100 {
            client.send(&line);
        }
        assert!(client.dropped() >= 100, "{} dropped", client.dropped());
        let held = client.inner.shared.queued_bytes.load(Ordering::Acquire);
        assert!(held <= QUEUE_BYTES, "{held} bytes queued");
    }
}
