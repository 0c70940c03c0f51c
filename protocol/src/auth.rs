//! Shared-token mutual authentication: HMAC-SHA256 proofs over fresh nonces from both sides.
//!
//! The token never crosses the wire. Each side sends a random nonce; each proves it knows
//! the token by sending `HMAC(token, label || own-side nonce order)`. Labels differ per
//! direction so a proof can never be reflected back to its sender.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Length in bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Length in bytes of a proof.
pub const PROOF_LEN: usize = 32;

/// A fresh random nonce.
pub type Nonce = [u8; NONCE_LEN];
/// An HMAC proof.
pub type Proof = [u8; PROOF_LEN];

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

    fn mac(&self, label: &str, first: &Nonce, second: &Nonce) -> Hmac<Sha256> {
        // HMAC accepts keys of any length; new_from_slice cannot fail for it.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(first);
        mac.update(second);
        mac
    }

    /// The proof for `label` over the two nonces, in the order given.
    pub fn proof(&self, label: &str, first: &Nonce, second: &Nonce) -> Proof {
        self.mac(label, first, second)
            .finalize()
            .into_bytes()
            .into()
    }

    /// Checks a proof in constant time.
    pub fn verify(&self, label: &str, first: &Nonce, second: &Nonce, proof: &[u8]) -> bool {
        self.mac(label, first, second).verify_slice(proof).is_ok()
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

/// Labels for each direction of each handshake.
pub mod label {
    /// A node (server) proving itself to a root or scanner.
    pub const NODE: &str = "pcluster/1 node";
    /// A root or scanner (client) proving itself to a node.
    pub const ROOT: &str = "pcluster/1 root";
    /// A log server proving itself to a log client.
    pub const LOG_SERVER: &str = "pcluster/1 log-server";
    /// A log client proving itself to a log server.
    pub const LOG_CLIENT: &str = "pcluster/1 log-client";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_verify_only_with_the_same_token_label_and_order() {
        let a = nonce().unwrap();
        let b = nonce().unwrap();
        let t = Token::new("secret");
        let p = t.proof(label::ROOT, &a, &b);
        assert!(t.verify(label::ROOT, &a, &b, &p));
        assert!(!t.verify(label::NODE, &a, &b, &p));
        assert!(!t.verify(label::ROOT, &b, &a, &p));
        assert!(!Token::new("other").verify(label::ROOT, &a, &b, &p));
    }
}
