//! The cluster token and fresh nonces. The token never crosses the wire: it keys the Noise
//! handshake ([`crate::secure`]); without one, the plain handshake exchanges nonces only.
//!
//! A handshake message lets whoever holds one test guesses of the token offline, so a token
//! is turned into its key by a memory-hard function (argon2id), once per process. A key
//! written by `pcluster key new` (64 hex digits: 256 random bits) is its own key already.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex, PoisonError};

/// Shortest token a command accepts without `--weak-token`.
pub const MIN_TOKEN_CHARS: usize = 16;

/// argon2id's settings for a token: 19 MiB, two passes, one lane (OWASP's first choice). The
/// salt is fixed: every peer of a cluster must derive the same key from the same text.
const KDF_MEMORY_KIB: u32 = 19 * 1024;
const KDF_PASSES: u32 = 2;
const KDF_SALT: &[u8] = b"pcluster/2 token";

/// Length in bytes of a nonce.
pub const NONCE_LEN: usize = 32;

/// A fresh random nonce.
pub type Nonce = [u8; NONCE_LEN];

/// A shared secret that nodes, roots and log servers of one cluster hold: the key derived
/// from its text.
#[derive(Clone)]
pub struct Token([u8; 32]);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Token {
    /// A token from its text (as given by `--token`, `PCLUSTER_TOKEN` or a key file): 64 hex
    /// digits are the key itself; any other text is stretched by argon2id (tens of
    /// milliseconds, once per process and text).
    pub fn new(secret: impl AsRef<[u8]>) -> Self {
        let secret = secret.as_ref();
        let mut key = [0u8; 32];
        if secret.len() == 64 && hex::decode_to_slice(secret, &mut key).is_ok() {
            return Token(key);
        }
        Token(stretched(secret))
    }

    /// The key's bytes, for deriving session keys from it (never sent).
    pub(crate) fn secret(&self) -> &[u8] {
        &self.0
    }
}

/// Whether `text` is too short a token to resist offline guessing (a key is never).
pub fn is_weak(text: &str) -> bool {
    text.chars().count() < MIN_TOKEN_CHARS
}

/// The argon2id key of `secret`, computed once per process.
fn stretched(secret: &[u8]) -> [u8; 32] {
    static KEYS: LazyLock<Mutex<HashMap<Vec<u8>, [u8; 32]>>> = LazyLock::new(Mutex::default);
    let mut keys = KEYS.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(key) = keys.get(secret) {
        return *key;
    }
    let key = argon2id(secret);
    keys.insert(secret.to_vec(), key);
    key
}

fn argon2id(secret: &[u8]) -> [u8; 32] {
    use argon2::{Algorithm, Argon2, Params, Version};
    let mut key = [0u8; 32];
    let derived = Params::new(KDF_MEMORY_KIB, KDF_PASSES, 1, Some(key.len()))
        .map(|params| Argon2::new(Algorithm::Argon2id, Version::V0x13, params))
        .and_then(|a| a.hash_password_into(secret, KDF_SALT, &mut key));
    if derived.is_err() {
        // Only a secret of 4 GiB or more is refused by argon2; no command can pass one.
        use sha2::Digest as _;
        key.copy_from_slice(&sha2::Sha256::digest(secret));
    }
    key
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typed_token_is_stretched_and_a_key_is_taken_as_it_is() {
        let typed = Token::new("correct horse battery staple");
        assert_eq!(
            typed.secret(),
            Token::new("correct horse battery staple").secret()
        );
        assert_ne!(
            typed.secret(),
            Token::new("correct horse battery stapl").secret()
        );
        let key = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
        assert_eq!(hex::encode(Token::new(key).secret()), key);
        assert!(is_weak("s3cret") && !is_weak("sixteen chars ok"));
    }
}
