//! The wire protocol between pcluster roots and nodes.
//!
//! - [`handshake`]: the raw preamble (magic, version, role) and token authentication that open
//!   every connection.
//! - [`message`]: the message set, one struct per request or event.
//! - [`packed`]: item batches as one byte buffer plus lengths, so a batch of thousands of items
//!   decodes with two copies and no allocation per item.
//! - [`native`]: native Python code (sources and requirements) carried as a chain's module.
//! - [`codec`]: messages as bincode in length-prefixed frames; the only place that names bincode.
//! - [`framing`]: frames cut out of the byte stream, bounded across connections.
//! - [`gate`]: [`gate::ByteGate`], the bound in bytes on every queue between two sides.
//! - [`guests`]: which unauthenticated connection a full server evicts (per source).
//! - [`connection`]: [`Connection`], which hides framing behind `read_message`/`write_message`.
//! - [`writer`]: the writer task of a connection (queued messages, heartbeats).
//! - [`auth`]: the shared cluster token (stretched by argon2id) and fresh nonces.
//! - [`secure`]: with a token, the Noise handshake and the records that encrypt the wire.

pub mod auth;
pub mod codec;
pub mod connection;
pub mod error;
pub mod framing;
pub mod gate;
pub mod guests;
pub mod handshake;
pub mod ids;
pub mod message;
pub mod native;
pub mod packed;
pub mod secure;
pub mod split;
pub mod writer;

pub use connection::{Connection, MessageReader, MessageWriter, ReadHalf};
pub use error::{ErrorKind, ProtocolError, WireError};
pub use handshake::{PROTOCOL_VERSION, Role};
pub use ids::{ItemId, NodeId, SessionId, TaskIndex};
pub use message::*;
pub use packed::{Data, Gaps, Packed, PackedError, U32s};
pub use split::Frame;

/// Default port of a node.
pub const DEFAULT_NODE_PORT: u16 = 6000;
/// Default port of the log server.
pub const DEFAULT_LOG_PORT: u16 = 5555;
/// Default largest frame a peer may send (64 MiB).
pub const DEFAULT_MAX_FRAME: usize = 64 << 20;
