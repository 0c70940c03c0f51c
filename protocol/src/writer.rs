//! [`write_loop`]: the writer task of a connection, for roots and nodes alike. It writes what
//! other tasks queue ([`Outgoing`]), as much as is ready in one flush, and a heartbeat
//! whenever `heartbeat` passes, until the queue closes or a write fails; then it shuts the
//! connection's writing side.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;

use crate::codec::encode_frame;
use crate::connection::MessageWriter;
use crate::error::ProtocolError;
use crate::message::Msg;

/// Most bytes gathered in the writer before they are flushed.
const GATHER_BYTES: usize = 1 << 20;

/// What a connection's writer task sends: items other tasks queue.
pub trait Outgoing: Send {
    /// What is queued: messages, or frames encoded already.
    type Item: Send;

    /// The next item; `None` once nothing more will come.
    fn recv(&mut self) -> impl Future<Output = Option<Self::Item>> + Send;

    /// The next item if one is ready.
    fn try_recv(&mut self) -> Option<Self::Item>;

    /// Puts `item` in the writer's buffer.
    ///
    /// # Errors
    /// When it cannot be encoded; the connection then ends.
    fn feed(&mut self, writer: &mut MessageWriter, item: Self::Item) -> Result<(), ProtocolError>;
}

/// Writes what `out` yields to `writer`, with a heartbeat every `heartbeat`, until `out`
/// closes or writing fails.
pub async fn write_loop<O: Outgoing>(mut writer: MessageWriter, mut out: O, heartbeat: Duration) {
    let mut tick = tokio::time::interval(heartbeat);
    let mut beat = BytesMut::new();
    // A heartbeat always encodes (it is a unit variant far below any frame limit).
    let _ = encode_frame(&Msg::Heartbeat, &mut beat, 1024);
    let beat = beat.freeze();
    loop {
        tokio::select! {
            item = out.recv() => {
                let Some(item) = item else { break };
                if gather(&mut writer, &mut out, item).is_err() { break; }
                if writer.flush().await.is_err() { break; }
            }
            _ = tick.tick() => {
                writer.feed_frame(&beat);
                if writer.flush().await.is_err() { break; }
            }
        }
    }
    writer.shutdown().await;
}

/// `first`, then whatever else is ready, up to [`GATHER_BYTES`], into the writer's buffer.
fn gather<O: Outgoing>(
    writer: &mut MessageWriter,
    out: &mut O,
    first: O::Item,
) -> Result<(), ProtocolError> {
    out.feed(writer, first)?;
    while writer.buffered() < GATHER_BYTES {
        match out.try_recv() {
            Some(item) => out.feed(writer, item)?,
            None => break,
        }
    }
    Ok(())
}
