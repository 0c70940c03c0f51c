//! The pcluster log server and log client.
//!
//! The protocol is plain text: each newline-terminated line a client sends over TCP is one
//! record, so `echo hello | nc host 5555` works. With a token configured, a short challenge
//! ([`handshake`]) comes first and the lines are encrypted.
//!
//! | concept | file |
//! | --- | --- |
//! | server: accept, shutdown | `server.rs` |
//! | one connection: handshake, key confirmation, lines, guest or member | `connection.rs` |
//! | guests evicted per source when the server is full | `gate.rs` |
//! | line framing with bounded memory | `codec.rs` |
//! | the single writer thread, record format, flush interval | `writer.rs` |
//! | the output file's size cap and rotation | `rotation.rs` |
//! | token handshake messages | `handshake.rs` |
//! | client: background sender with a bounded buffer | `client.rs` |
//! | `tracing` layer that sends events through a client | `layer.rs` |
//! | errors | `error.rs` |
//! | round-trip tests on loopback | `tests.rs` |
//! | the public API, by use | `../tests/api.rs` |

pub mod client;
pub mod codec;
mod connection;
mod error;
mod gate;
pub mod handshake;
mod layer;
mod rotation;
mod server;
#[cfg(test)]
mod tests;
mod writer;

pub use client::{LogClient, log};
pub use error::{Error, HandshakeError};
pub use layer::LogLayer;
pub use server::{DEFAULT_KEEP_FILES, DEFAULT_MAX_FILE_MB, ServerConfig, run};
