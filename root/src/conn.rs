//! One node connection of a root: connect + handshake, then a reader task forwarding every
//! message (or the connection's end) to the scheduler, and a writer task sending frames and
//! heartbeats; and the status request of a status connection.

use std::net::SocketAddr;
use std::time::Duration;

use protocol::Frame;
use protocol::handshake::{self, Role};

use crate::scheduler::Blame;
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
    /// The connection ended: why, and whether its items may be blamed.
    Gone(NodeId, String, crate::scheduler::Blame),
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
    let (mut reader, writer) = conn.split();
    let (tx, rx) = mpsc::channel::<Frame>(4096);
    tokio::spawn(protocol::writer::write_loop(writer, Frames(rx), heartbeat));
    tokio::spawn(async move {
        let why = loop {
            match tokio::time::timeout(heartbeat_timeout, reader.read_message()).await {
                Ok(Ok(Some(Msg::Heartbeat))) => {}
                Ok(Ok(Some(m))) => {
                    if events.send(Event::Msg(id, m)).await.is_err() {
                        return;
                    }
                }
                Ok(Ok(None)) => break ("connection closed".to_string(), Blame::Items),
                Ok(Err(e)) => break (e.to_string(), Blame::Items),
                Err(_) => {
                    let why = format!(
                        "no message or heartbeat for {} s",
                        heartbeat_timeout.as_secs()
                    );
                    break (why, Blame::Link);
                }
            }
        };
        let (why, blame) = why;
        let _ = events.send(Event::Gone(id, why, blame)).await;
    });
    tx
}

/// Frames the scheduler encoded, for the connection's writer.
struct Frames(mpsc::Receiver<Frame>);

impl protocol::writer::Outgoing for Frames {
    type Item = Frame;

    fn recv(&mut self) -> impl std::future::Future<Output = Option<Frame>> + Send {
        self.0.recv()
    }

    fn try_recv(&mut self) -> Option<Frame> {
        self.0.try_recv().ok()
    }

    fn feed(
        &mut self,
        writer: &mut protocol::MessageWriter,
        frame: Frame,
    ) -> Result<(), protocol::ProtocolError> {
        writer.queue(frame);
        Ok(())
    }
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
