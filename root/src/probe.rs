//! One-shot requests to a node over a status-only connection: its status, and releasing it
//! from a root that holds it. Neither claims the node.

use std::net::SocketAddr;

use protocol::handshake::Role;
use protocol::{Msg, NodeStatus};

use crate::{RootError, RootOptions, conn};

/// The status of the node at `addr`, over a status-only connection.
///
/// # Errors
/// Unreachable, not a node, authentication failed, or no answer.
pub async fn node_status(addr: SocketAddr, options: &RootOptions) -> Result<NodeStatus, RootError> {
    let (mut conn, _) = conn::connect(addr, Role::Probe, options, None).await?;
    conn::request_status(&mut conn, addr, options).await
}

/// Frees the node at `addr` whoever holds it, over a status-only connection: the node drops
/// the chain and closes the holding root's connection (that root sees the node lost). For a
/// root that is alive but stuck; with a token, only holders of the token may do it. Returns
/// the root that held the node, if any.
///
/// # Errors
/// Unreachable, not a node, authentication failed, or no answer.
pub async fn release_node(
    addr: SocketAddr,
    options: &RootOptions,
) -> Result<Option<protocol::Holder>, RootError> {
    let (mut conn, _) = conn::connect(addr, Role::Probe, options, None).await?;
    let err = |source| RootError::Node {
        addr: addr.to_string(),
        source,
    };
    conn.write_message(&Msg::Release).await.map_err(err)?;
    let answer = tokio::time::timeout(options.handshake_timeout, conn.expect_message())
        .await
        .map_err(|_| RootError::Timeout("release"))?
        .map_err(err)?;
    match answer {
        Msg::Released(r) => Ok(r.was_held_by),
        Msg::Error(e) => Err(err(protocol::ProtocolError::Remote(e))),
        other => Err(err(protocol::ProtocolError::Unexpected(
            other.name().into(),
        ))),
    }
}
