//! Typed errors: [`Error`] for the server as a whole, [`HandshakeError`] for one connection's
//! token handshake (on either side).

use std::io;
use std::path::PathBuf;

/// Why the log server stopped or could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration cannot work, e.g. a zero line or connection limit.
    #[error("invalid log server configuration: {0}")]
    Config(&'static str),
    /// The output file could not be opened for appending.
    #[error("cannot open log file {}", path.display())]
    OpenOutfile {
        /// The file named in the configuration.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Writing records to the output file failed; records after the first failure may be lost.
    #[error("cannot write log file {}", path.display())]
    WriteOutfile {
        /// The file named in the configuration.
        path: PathBuf,
        /// The first write error.
        #[source]
        source: io::Error,
    },
    /// The listener's address could not be read, or the writer thread could not start.
    #[error("log server I/O error")]
    Io(#[from] io::Error),
    /// The writer thread ended without reporting, so it panicked.
    #[error("the log writer thread panicked")]
    WriterPanicked,
}

/// Why a token handshake between a log client and a log server failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The other side did not finish within the deadline.
    #[error("handshake timed out")]
    Timeout,
    /// The other side closed the connection during the handshake.
    #[error("connection closed during the handshake")]
    Closed,
    /// The other side sent something that is not part of the handshake.
    #[error("malformed handshake message")]
    Malformed,
    /// The other side's proof does not match our token.
    #[error("wrong token")]
    BadProof,
    /// The server refused us, with its reason.
    #[error("refused by the log server: {0}")]
    Refused(String),
    /// The server asks for the cluster token and we have none.
    #[error("the log server requires the cluster token (--token or PCLUSTER_TOKEN)")]
    TokenRequired,
    /// We have a token and the server asked for none: it cannot prove it is ours, and our
    /// lines would cross the network in the clear, so they are not sent.
    #[error(
        "the log server has no cluster token: it cannot prove it is ours, so no log lines are sent to it (start it with --token)"
    )]
    ServerWithoutToken,
    /// The Noise handshake or a record failed.
    #[error("{0}")]
    Secure(protocol::secure::SecureError),
    /// The socket failed.
    #[error("handshake I/O error")]
    Io(#[from] io::Error),
    /// No fresh nonce: the OS random source failed.
    #[error("no nonce: the operating system's random source failed: {0}")]
    Random(#[from] protocol::auth::RandomUnavailable),
}
