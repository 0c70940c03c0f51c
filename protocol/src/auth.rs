//! The cluster token and fresh nonces. The token never crosses the wire: it keys the Noise
//! handshake ([`crate::secure`]); without one, the plain handshake exchanges nonces only.

/// Length in bytes of a nonce.
pub const NONCE_LEN: usize = 32;

/// A fresh random nonce.
pub type Nonce = [u8; NONCE_LEN];

/// A shared secret that nodes, roots and log servers of one cluster hold.
#[derive(Clone)]
pub struct Token(Vec<u8>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from its text (as given by `--token` or `PCLUSTER_TOKEN`).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        Token(secret.as_ref().to_vec())
    }

    /// The secret's bytes, for deriving keys from it (never sent).
    pub(crate) fn secret(&self) -> &[u8] {
        &self.0
    }
}

/// The operating system's random source failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct RandomUnavailable(getrandom::Error);

/// A fresh random nonce from the operating system.
///
/// # Errors
/// When the OS random source fails. There is no fallback: a guessable nonce would let a
/// recorded proof be replayed, so the handshake fails instead.
pub fn nonce() -> Result<Nonce, RandomUnavailable> {
    let mut n = [0u8; NONCE_LEN];
    getrandom::fill(&mut n).map_err(RandomUnavailable)?;
    Ok(n)
}
