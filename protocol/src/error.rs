//! Protocol errors: local failures ([`ProtocolError`]) and the error a peer sends ([`WireError`]).

use serde::{Deserialize, Serialize};

/// What went wrong on a connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The socket failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame did not decode into a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A frame was larger than the limit.
    #[error("frame of {size} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// Announced size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The bytes all unclaimed connections hold in partly read frames are at their bound.
    #[error("the node holds {limit} bytes in partly read frames of unclaimed connections already")]
    FrameBudget {
        /// The node-wide bound.
        limit: usize,
    },
    /// The peer did not open with pcluster's magic bytes.
    #[error("peer is not a pcluster peer (bad magic bytes)")]
    BadMagic,
    /// The peer speaks another protocol version.
    #[error("protocol version mismatch: we speak {ours}, peer speaks {theirs}")]
    VersionMismatch {
        /// Our version.
        ours: u16,
        /// The peer's version.
        theirs: u16,
    },
    /// The peer refused us, or we refused the peer, during authentication.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The peer did not answer in time.
    #[error("timed out during {0}")]
    Timeout(&'static str),
    /// The peer closed the connection where a message was required.
    #[error("connection closed by peer")]
    Closed,
    /// The peer answered with an error.
    #[error("{0}")]
    Remote(WireError),
    /// The operating system's random source failed, so no fresh nonce could be made; the
    /// handshake fails rather than fall back to a guessable one.
    #[error("no nonce: the operating system's random source failed: {0}")]
    Random(#[from] crate::auth::RandomUnavailable),
    /// The encrypted record layer failed: a record did not open (altered on the way), or
    /// the Noise handshake failed.
    #[error("{0}")]
    Secure(#[from] crate::secure::SecureError),
    /// The peer sent a message that makes no sense here.
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

/// The kind of an error sent over the wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request was malformed or made no sense in this state.
    BadRequest,
    /// The node serves another root, whose connection is alive: who, and for how long.
    /// Sent for a [`crate::Setup`] while another root holds the node, and for a
    /// `Reset`/`Pause`/`Resume` from a connection that does not hold it.
    Busy(Holder),
    /// Authentication is required or failed.
    Unauthorized,
    /// The chain could not be set up (module, export, init).
    Setup,
    /// Items arrived with no chain set up.
    NotSetUp,
    /// Too large (an item or a frame).
    TooLarge,
    /// The node failed internally.
    Internal,
    /// The node is shutting down.
    ShuttingDown,
}

impl std::fmt::Display for ErrorKind {
    /// The kind's name; a holder is in the message that goes with it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ErrorKind::BadRequest => "BadRequest",
            ErrorKind::Busy(_) => "Busy",
            ErrorKind::Unauthorized => "Unauthorized",
            ErrorKind::Setup => "Setup",
            ErrorKind::NotSetUp => "NotSetUp",
            ErrorKind::TooLarge => "TooLarge",
            ErrorKind::Internal => "Internal",
            ErrorKind::ShuttingDown => "ShuttingDown",
        })
    }
}

/// An error a peer reports; the connection may stay open unless said otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct WireError {
    /// What kind of failure.
    pub kind: ErrorKind,
    /// A message for people.
    pub message: String,
}

impl WireError {
    /// An error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        WireError {
            kind,
            message: message.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wire_error_reads_as_its_kind_and_message() {
        let busy = WireError::new(
            ErrorKind::Busy(Holder {
                root: "r".into(),
                held_s: 1,
            }),
            "node is busy: held by r (for 1 s)",
        );
        assert_eq!(busy.to_string(), "Busy: node is busy: held by r (for 1 s)");
        let setup = WireError::new(ErrorKind::Setup, "module 0 does not compile");
        assert_eq!(setup.to_string(), "Setup: module 0 does not compile");
        assert_eq!(
            ProtocolError::Remote(setup).to_string(),
            "Setup: module 0 does not compile"
        );
    }
}

/// The root that holds a node, and for how long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// The holding root's address, as the node sees it.
    pub root: String,
    /// Seconds since it claimed the node (its setup).
    pub held_s: u64,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (for {} s)", self.root, self.held_s)
    }
}
