//! [`Connection`]: a TCP stream speaking framed [`Msg`]s, split into a reader and a writer
//! half so one task can read while another writes; with a token, both halves go through the
//! record layer ([`crate::secure`]) below the framing, which stays the same. A connection may
//! also run over an in-memory pipe ([`Connection::in_memory`]), so a peer's side can be played
//! by a test in the same process, on a paused clock.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, DuplexStream, ReadBuf};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;

use crate::codec::encode_frame;
use crate::error::ProtocolError;
use crate::framing::MessageCodec;
use crate::message::Msg;
use crate::secure::{Keys, SEAL_CHUNK, Sealer, SecureError, SecureRead};
use crate::split::Frame;

/// Largest frame either side sends before authentication is done. The handshake messages
/// are tiny; a peer that has not proven itself cannot make us buffer more than this.
pub const HANDSHAKE_MAX_FRAME: usize = 16 << 10;

/// The reading side of a TCP connection: plain bytes, or the bytes that records carry.
#[derive(Debug)]
pub enum ReadHalf {
    /// No token: bytes as they arrive.
    Plain(OwnedReadHalf),
    /// With a token: records opened with the connection's keys.
    Secure(SecureRead<OwnedReadHalf>),
    /// An in-memory pipe (no token).
    Memory(tokio::io::ReadHalf<DuplexStream>),
}

impl AsyncRead for ReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ReadHalf::Plain(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Secure(r) => Pin::new(r).poll_read(cx, buf),
            ReadHalf::Memory(r) => Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// The writing side: a TCP stream's, or an in-memory pipe's.
#[derive(Debug)]
enum WriteHalf {
    Tcp(OwnedWriteHalf),
    Memory(tokio::io::WriteHalf<DuplexStream>),
}

impl AsyncWrite for WriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write(cx, buf),
            WriteHalf::Memory(w) => Pin::new(w).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_write_vectored(cx, bufs),
            WriteHalf::Memory(w) => Pin::new(w).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            WriteHalf::Tcp(w) => w.is_write_vectored(),
            WriteHalf::Memory(w) => w.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_flush(cx),
            WriteHalf::Memory(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            WriteHalf::Tcp(w) => Pin::new(w).poll_shutdown(cx),
            WriteHalf::Memory(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// A record layer failure surfaces as an I/O error of the stream; it is given back its type.
fn lift(e: ProtocolError) -> ProtocolError {
    match e {
        ProtocolError::Io(io) if io.get_ref().is_some_and(|i| i.is::<SecureError>()) => {
            match io.into_inner().map(|i| i.downcast::<SecureError>()) {
                Some(Ok(secure)) => ProtocolError::Secure(*secure),
                _ => ProtocolError::Secure(SecureError::Decrypt),
            }
        }
        e => e,
    }
}

/// Reading half: yields whole messages.
#[derive(Debug)]
pub struct MessageReader {
    inner: FramedRead<ReadHalf, MessageCodec>,
}

impl MessageReader {
    /// Charges partly read frames to a node-wide budget until the peer is trusted
    /// (`None` lifts it, giving back what was held).
    pub fn set_frame_budget(&mut self, budget: Option<crate::framing::FrameBudget>) {
        self.inner.decoder_mut().set_budget(budget);
    }

    /// The next message; `Ok(None)` when the peer closed the connection cleanly.
    ///
    /// # Errors
    /// On socket errors, malformed or oversized frames, or a close in the middle of a frame.
    pub async fn read_message(&mut self) -> Result<Option<Msg>, ProtocolError> {
        match self.inner.next().await {
            Some(Ok(msg)) => Ok(Some(msg)),
            Some(Err(e)) => Err(lift(e)),
            None => {
                if self.inner.read_buffer().is_empty() {
                    Ok(None)
                } else {
                    Err(ProtocolError::Malformed(
                        "connection closed in the middle of a frame".into(),
                    ))
                }
            }
        }
    }

    /// Like [`MessageReader::read_message`] but a clean close is an error.
    ///
    /// # Errors
    /// As `read_message`, plus [`ProtocolError::Closed`].
    pub async fn expect_message(&mut self) -> Result<Msg, ProtocolError> {
        self.read_message().await?.ok_or(ProtocolError::Closed)
    }
}

/// Writing half: buffers encoded frames and writes them on [`MessageWriter::flush`]. Small
/// frames are copied into one buffer; the bytes of big batches ([`Frame`]s in parts) are
/// queued as they are and written with the rest in vectored writes.
#[derive(Debug)]
pub struct MessageWriter {
    inner: WriteHalf,
    buf: BytesMut,
    /// What goes before `buf`, in order, when big batches are queued.
    queued: VecDeque<Bytes>,
    /// Bytes in `queued`.
    queued_bytes: usize,
    max_frame: usize,
    /// With a token: seals `buf` into `sealed` on each flush.
    sealer: Option<Sealer>,
    /// Sealed records on their way out, at most [`SEAL_CHUNK`] of payload at a time; reused.
    sealed: Vec<u8>,
}

/// Slices handed to one vectored write.
const IOV: usize = 64;

impl MessageWriter {
    /// Encodes `msg` into the write buffer without writing it yet.
    ///
    /// # Errors
    /// When the message does not fit in a frame.
    pub fn feed(&mut self, msg: &Msg) -> Result<(), ProtocolError> {
        encode_frame(msg, &mut self.buf, self.max_frame)
    }

    /// Like [`MessageWriter::feed`], but a big batch in `msg` is queued where it lies,
    /// without a copy (it becomes shared, and stays in `msg`).
    ///
    /// # Errors
    /// When the message does not fit in a frame.
    pub fn feed_mut(&mut self, msg: &mut Msg) -> Result<(), ProtocolError> {
        match crate::split::encode_split(msg, self.max_frame)? {
            Some(frame) => {
                self.queue(frame);
                Ok(())
            }
            None => self.feed(msg),
        }
    }

    /// Queues a frame encoded earlier with [`crate::codec::encode_frame`].
    pub fn feed_frame(&mut self, frame: &[u8]) {
        self.buf.extend_from_slice(frame);
    }

    /// Queues an encoded frame: its batch's bytes as they are, the rest copied.
    pub fn queue(&mut self, frame: Frame) {
        if frame.data.is_empty() {
            self.buf.extend_from_slice(&frame.head);
            self.buf.extend_from_slice(&frame.tail);
            return;
        }
        self.buf.extend_from_slice(&frame.head);
        if !self.buf.is_empty() {
            let before = self.buf.split().freeze();
            self.queued_bytes += before.len();
            self.queued.push_back(before);
        }
        self.queued_bytes += frame.data.len();
        self.queued.push_back(frame.data);
        self.buf.extend_from_slice(&frame.tail);
    }

    /// Bytes waiting to be written.
    pub fn buffered(&self) -> usize {
        self.buf.len() + self.queued_bytes
    }

    /// Writes everything buffered.
    ///
    /// # Errors
    /// On socket errors.
    pub async fn flush(&mut self) -> Result<(), ProtocolError> {
        if !self.queued.is_empty() {
            if !self.buf.is_empty() {
                let rest = self.buf.split().freeze();
                self.queued_bytes += rest.len();
                self.queued.push_back(rest);
            }
            match &mut self.sealer {
                None => write_queued(&mut self.inner, &mut self.queued).await?,
                Some(sealer) => {
                    for part in &self.queued {
                        for chunk in part.chunks(SEAL_CHUNK) {
                            let n = sealer.seal(chunk, &mut self.sealed)?;
                            self.inner.write_all(&self.sealed[..n]).await?;
                        }
                    }
                    self.queued.clear();
                }
            }
            self.queued_bytes = 0;
            return Ok(());
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        match &mut self.sealer {
            None => self.inner.write_all(&self.buf).await?,
            Some(sealer) => {
                for part in self.buf.chunks(SEAL_CHUNK) {
                    let n = sealer.seal(part, &mut self.sealed)?;
                    self.inner.write_all(&self.sealed[..n]).await?;
                }
            }
        }
        self.buf.clear();
        Ok(())
    }

    /// Encodes and writes one message.
    ///
    /// # Errors
    /// When it does not encode or the socket fails.
    pub async fn write_message(&mut self, msg: &Msg) -> Result<(), ProtocolError> {
        self.feed(msg)?;
        self.flush().await
    }

    /// Closes the writing direction.
    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.inner.shutdown().await;
    }
}

/// Writes every queued slice, many per system call; empties the queue.
async fn write_queued(w: &mut WriteHalf, queued: &mut VecDeque<Bytes>) -> io::Result<()> {
    loop {
        while queued.front().is_some_and(Bytes::is_empty) {
            queued.pop_front();
        }
        if queued.is_empty() {
            return Ok(());
        }
        let n = {
            let slices: Vec<IoSlice<'_>> =
                queued.iter().take(IOV).map(|b| IoSlice::new(b)).collect();
            w.write_vectored(&slices).await?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 {
            let Some(front) = queued.front_mut() else {
                break;
            };
            if front.len() <= left {
                left -= front.len();
                queued.pop_front();
            } else {
                let _ = front.split_to(left);
                left = 0;
            }
        }
    }
}

/// A framed connection to a peer.
#[derive(Debug)]
pub struct Connection {
    /// Reading half.
    pub reader: MessageReader,
    /// Writing half.
    pub writer: MessageWriter,
    peer: SocketAddr,
    /// The round trip of the handshake's first exchange, as the connecting side measured it
    /// (zero on the accepting side).
    rtt: std::time::Duration,
}

/// Read buffer of an authenticated connection: room for many frames per read call.
const READ_CAPACITY: usize = 256 << 10;
/// Write buffer of an authenticated connection.
const WRITE_CAPACITY: usize = 64 << 10;
/// Buffers of a connection still in its handshake, whose frames are tiny: a peer that has
/// not authenticated costs little memory.
const HANDSHAKE_CAPACITY: usize = 1 << 10;

impl Connection {
    /// Wraps a stream whose preamble has been exchanged (plain, no token).
    pub fn new(stream: TcpStream, max_frame: usize) -> Self {
        Self::with_buffers(stream, max_frame, READ_CAPACITY, WRITE_CAPACITY, None)
    }

    /// A connection for the authentication frames: small buffers and the handshake's frame
    /// limit, until [`Connection::authenticated`]; sealed with `keys` when given.
    pub(crate) fn for_handshake(stream: TcpStream, keys: Option<Keys>) -> Self {
        Self::with_buffers(
            stream,
            HANDSHAKE_MAX_FRAME,
            HANDSHAKE_CAPACITY,
            HANDSHAKE_CAPACITY,
            keys,
        )
    }

    /// Lifts the handshake's limits once the peer has proven itself: frames up to
    /// `max_frame`, full-size buffers. Bytes already buffered stay.
    pub(crate) fn authenticated(&mut self, max_frame: usize) {
        self.reader.inner.decoder_mut().set_max_frame(max_frame);
        self.reader.inner.read_buffer_mut().reserve(READ_CAPACITY);
        self.writer.max_frame = max_frame;
        self.writer.buf.reserve(WRITE_CAPACITY);
    }

    fn with_buffers(
        stream: TcpStream,
        max_frame: usize,
        read: usize,
        write: usize,
        keys: Option<Keys>,
    ) -> Self {
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        let (r, sealer) = match keys {
            None => (ReadHalf::Plain(r), None),
            Some(keys) => {
                let (sealer, opener) = keys.split();
                (ReadHalf::Secure(SecureRead::new(r, opener)), Some(sealer))
            }
        };
        Connection {
            reader: MessageReader {
                inner: FramedRead::with_capacity(r, MessageCodec::new(max_frame), read),
            },
            rtt: std::time::Duration::ZERO,
            writer: MessageWriter {
                inner: WriteHalf::Tcp(w),
                buf: BytesMut::with_capacity(write),
                queued: VecDeque::new(),
                queued_bytes: 0,
                max_frame,
                sealer,
                sealed: Vec::new(),
            },
            peer,
        }
    }

    /// A plain connection over an in-memory pipe (one end of [`tokio::io::duplex`]), whose
    /// peer is named `peer`: for a peer played in the same process (tests on a paused
    /// clock). It needs no handshake.
    pub fn in_memory(stream: DuplexStream, max_frame: usize, peer: SocketAddr) -> Self {
        let (r, w) = tokio::io::split(stream);
        Connection {
            rtt: std::time::Duration::ZERO,
            reader: MessageReader {
                inner: FramedRead::with_capacity(
                    ReadHalf::Memory(r),
                    MessageCodec::new(max_frame),
                    READ_CAPACITY,
                ),
            },
            writer: MessageWriter {
                inner: WriteHalf::Memory(w),
                buf: BytesMut::with_capacity(WRITE_CAPACITY),
                queued: VecDeque::new(),
                queued_bytes: 0,
                max_frame,
                sealer: None,
                sealed: Vec::new(),
            },
            peer,
        }
    }

    /// Whether the connection is encrypted (a token is in use).
    pub fn is_encrypted(&self) -> bool {
        self.writer.sealer.is_some()
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
    }

    /// The round trip to the peer, measured on the handshake's first exchange by the side
    /// that connected (zero on the side that accepted): what a window must cover to keep the
    /// link busy.
    pub fn handshake_rtt(&self) -> std::time::Duration {
        self.rtt
    }

    pub(crate) fn set_handshake_rtt(&mut self, rtt: std::time::Duration) {
        self.rtt = rtt;
    }

    /// See [`MessageReader::read_message`].
    ///
    /// # Errors
    /// As there.
    pub async fn read_message(&mut self) -> Result<Option<Msg>, ProtocolError> {
        self.reader.read_message().await
    }

    /// See [`MessageReader::expect_message`].
    ///
    /// # Errors
    /// As there.
    pub async fn expect_message(&mut self) -> Result<Msg, ProtocolError> {
        self.reader.expect_message().await
    }

    /// See [`MessageWriter::write_message`].
    ///
    /// # Errors
    /// As there.
    pub async fn write_message(&mut self, msg: &Msg) -> Result<(), ProtocolError> {
        self.writer.write_message(msg).await
    }

    /// Splits into halves that can move to different tasks.
    pub fn split(self) -> (MessageReader, MessageWriter) {
        (self.reader, self.writer)
    }
}
