//! [`Connection`]: a TCP stream speaking framed [`Msg`]s, split into a reader and a writer
//! half so one task can read while another writes.

use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::codec::FramedRead;

use crate::codec::{MessageCodec, encode_frame};
use crate::error::ProtocolError;
use crate::message::Msg;

/// Reading half: yields whole messages.
#[derive(Debug)]
pub struct MessageReader {
    inner: FramedRead<OwnedReadHalf, MessageCodec>,
}

impl MessageReader {
    /// Charges partly read frames to a node-wide budget until the peer is trusted
    /// (`None` lifts it, giving back what was held).
    pub fn set_frame_budget(&mut self, budget: Option<crate::codec::FrameBudget>) {
        self.inner.decoder_mut().set_budget(budget);
    }

    /// The next message; `Ok(None)` when the peer closed the connection cleanly.
    ///
    /// # Errors
    /// On socket errors, malformed or oversized frames, or a close in the middle of a frame.
    pub async fn read_message(&mut self) -> Result<Option<Msg>, ProtocolError> {
        match self.inner.next().await {
            Some(Ok(msg)) => Ok(Some(msg)),
            Some(Err(e)) => Err(e),
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

/// Writing half: buffers encoded frames and writes them on [`MessageWriter::flush`].
#[derive(Debug)]
pub struct MessageWriter {
    inner: OwnedWriteHalf,
    buf: BytesMut,
    max_frame: usize,
}

impl MessageWriter {
    /// Encodes `msg` into the write buffer without writing it yet.
    ///
    /// # Errors
    /// When the message does not fit in a frame.
    pub fn feed(&mut self, msg: &Msg) -> Result<(), ProtocolError> {
        encode_frame(msg, &mut self.buf, self.max_frame)
    }

    /// Queues a frame encoded earlier with [`crate::codec::encode_frame`].
    pub fn feed_frame(&mut self, frame: &[u8]) {
        self.buf.extend_from_slice(frame);
    }

    /// Bytes waiting in the buffer.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Writes everything buffered.
    ///
    /// # Errors
    /// On socket errors.
    pub async fn flush(&mut self) -> Result<(), ProtocolError> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
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

    /// Writes a pre-encoded frame.
    ///
    /// # Errors
    /// On socket errors.
    pub async fn write_frame(&mut self, frame: Bytes) -> Result<(), ProtocolError> {
        self.flush().await?;
        self.inner.write_all(&frame).await?;
        Ok(())
    }

    /// Closes the writing direction.
    pub async fn shutdown(&mut self) {
        let _ = self.flush().await;
        let _ = self.inner.shutdown().await;
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
}

/// Read buffer of an authenticated connection: room for many frames per read call.
const READ_CAPACITY: usize = 256 << 10;
/// Write buffer of an authenticated connection.
const WRITE_CAPACITY: usize = 64 << 10;
/// Buffers of a connection still in its handshake, whose frames are tiny: a peer that has
/// not authenticated costs little memory.
const HANDSHAKE_CAPACITY: usize = 1 << 10;

impl Connection {
    /// Wraps a stream whose preamble has been exchanged.
    pub fn new(stream: TcpStream, max_frame: usize) -> Self {
        Self::with_buffers(stream, max_frame, READ_CAPACITY, WRITE_CAPACITY)
    }

    /// A connection for the authentication frames: small buffers and the handshake's frame
    /// limit, until [`Connection::authenticated`].
    pub(crate) fn for_handshake(stream: TcpStream) -> Self {
        Self::with_buffers(
            stream,
            crate::handshake::HANDSHAKE_MAX_FRAME,
            HANDSHAKE_CAPACITY,
            HANDSHAKE_CAPACITY,
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

    fn with_buffers(stream: TcpStream, max_frame: usize, read: usize, write: usize) -> Self {
        let peer = stream
            .peer_addr()
            .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
        let _ = stream.set_nodelay(true);
        let (r, w) = stream.into_split();
        Connection {
            reader: MessageReader {
                inner: FramedRead::with_capacity(r, MessageCodec::new(max_frame), read),
            },
            writer: MessageWriter {
                inner: w,
                buf: BytesMut::with_capacity(write),
                max_frame,
            },
            peer,
        }
    }

    /// The peer's address.
    pub fn peer(&self) -> SocketAddr {
        self.peer
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
