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
    /// The peer sent a message that makes no sense here.
    #[error("unexpected message: {0}")]
    Unexpected(String),
}

/// The kind of an error sent over the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The request was malformed or made no sense in this state.
    BadRequest,
    /// The node serves another root.
    Busy,
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

/// An error a peer reports; the connection may stay open unless said otherwise.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
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

    /// Whether trying again (later, or on another node) may succeed.
    pub fn retryable(&self) -> bool {
        matches!(
            self.kind,
            ErrorKind::Busy | ErrorKind::Internal | ErrorKind::ShuttingDown
        )
    }
}
