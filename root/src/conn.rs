//! One node connection of a root: connect + handshake, then a reader task forwarding every
//! message (or the connection's end) to the scheduler, and a writer task sending frames and
//! heartbeats; and the status request of a status connection.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::Frame;
use protocol::handshake::{self, Role};
use protocol::{Connection, Msg, NodeId, NodeStatus, SessionId, Welcome};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::RootOptions;
use crate::error::RootError;
use crate::events::EventsTx;

/// What a node connection tells the scheduler.
#[derive(Debug)]
pub(crate) enum Event {
    /// A message from the node.
    Msg(NodeId, Msg),
    /// The connection ended.
    Gone(NodeId, String),
}

/// Connects to `addr` and runs the handshake in `role`.
pub(crate) async fn connect(
    addr: SocketAddr,
    role: Role,
    options: &RootOptions,
    resume: Option<SessionId>,
) -> Result<(Connection, Welcome), RootError> {
    let node_err = |source| RootError::Node {
        addr: addr.to_string(),
        source,
    };
    let stream = tokio::time::timeout(options.connect_timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| node_err(protocol::ProtocolError::Timeout("connect")))?
        .map_err(|e| node_err(e.into()))?;
    handshake::connect(
        stream,
        role,
        options.token.as_ref(),
        resume,
        options.max_frame,
        options.handshake_timeout,
    )
    .await
    .map_err(node_err)
}

/// Starts the reader and writer tasks of an established root connection; returns the
/// sender of pre-encoded frames.
pub(crate) fn spawn(
    id: NodeId,
    conn: Connection,
    events: EventsTx,
    heartbeat: Duration,
    heartbeat_timeout: Duration,
) -> mpsc::Sender<Frame> {
    let (mut reader, mut writer) = conn.split();
    let (tx, mut rx) = mpsc::channel::<Frame>(4096);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat);
        let mut hb = bytes::BytesMut::new();
        let _ = protocol::codec::encode_frame(&Msg::Heartbeat, &mut hb, 1024);
        let hb = hb.freeze();
        loop {
            tokio::select! {
                f = rx.recv() => {
                    let Some(f) = f else { break };
                    writer.queue(f);
                    while writer.buffered() < (1 << 20) {
                        match rx.try_recv() {
                            Ok(f) => writer.queue(f),
                            Err(_) => break,
                        }
                    }
                    if writer.flush().await.is_err() { break; }
                }
                _ = tick.tick() => {
                    writer.feed_frame(&hb);
                    if writer.flush().await.is_err() { break; }
                }
            }
        }
        writer.shutdown().await;
    });
    tokio::spawn(async move {
        let why = loop {
            match tokio::time::timeout(heartbeat_timeout, reader.read_message()).await {
                Ok(Ok(Some(Msg::Heartbeat))) => {}
                Ok(Ok(Some(m))) => {
                    if events.send(Event::Msg(id, m)).await.is_err() {
                        return;
                    }
                }
                Ok(Ok(None)) => break "connection closed".to_string(),
                Ok(Err(e)) => break e.to_string(),
                Err(_) => {
                    break format!(
                        "no message or heartbeat for {} s",
                        heartbeat_timeout.as_secs()
                    );
                }
            }
        };
        let _ = events.send(Event::Gone(id, why)).await;
    });
    tx
}

/// Asks for a node's status over an open status connection (which may serve many).
pub(crate) async fn request_status(
    conn: &mut Connection,
    addr: SocketAddr,
    options: &RootOptions,
) -> Result<NodeStatus, RootError> {
    let err = |source| RootError::Node {
        addr: addr.to_string(),
        source,
    };
    conn.write_message(&Msg::StatusRequest).await.map_err(err)?;
    let answer = tokio::time::timeout(options.handshake_timeout, conn.expect_message())
        .await
        .map_err(|_| RootError::Timeout("status"))?
        .map_err(err)?;
    match answer {
        Msg::Status(s) => Ok(*s),
        Msg::Error(e) => Err(err(protocol::ProtocolError::Remote(e))),
        other => Err(err(protocol::ProtocolError::Unexpected(
            other.name().into(),
        ))),
    }
}
