//! AES-256-GCM for snow with the key schedule expanded once per key, not once per record.
//!
//! snow's own `CipherAesGcm` keeps the raw key and builds an `Aes256Gcm` (AES key expansion
//! and the GHASH key) on every `encrypt`/`decrypt`, i.e. on every record of the encrypted
//! wire. This resolver hands snow the same RustCrypto `aes-gcm` cipher, built once in `set`;
//! everything else (X25519, SHA-256, the random source) is snow's default. The cryptography
//! stays the crate's: this file only caches its object.

use aes_gcm::aead::{AeadInPlace, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use snow::params::{CipherChoice, DHChoice, HashChoice};
use snow::resolvers::{CryptoResolver, DefaultResolver};
use snow::types::{Cipher, Dh, Hash, Random};

const KEY_LEN: usize = 32;
const TAG_LEN: usize = 16;

/// snow's default primitives, with [`CachedAesGcm`] for AES-GCM.
pub(crate) struct Resolver;

impl CryptoResolver for Resolver {
    fn resolve_rng(&self) -> Option<Box<dyn Random>> {
        DefaultResolver.resolve_rng()
    }

    fn resolve_dh(&self, choice: &DHChoice) -> Option<Box<dyn Dh>> {
        DefaultResolver.resolve_dh(choice)
    }

    fn resolve_hash(&self, choice: &HashChoice) -> Option<Box<dyn Hash>> {
        DefaultResolver.resolve_hash(choice)
    }

    fn resolve_cipher(&self, choice: &CipherChoice) -> Option<Box<dyn Cipher>> {
        match choice {
            CipherChoice::AESGCM => Some(Box::new(CachedAesGcm(None))),
            other => DefaultResolver.resolve_cipher(other),
        }
    }
}

/// AES-256-GCM as Noise specifies it (nonce: 4 zero bytes then the counter, big-endian),
/// with the expanded key kept between records. `None` until snow sets a key.
struct CachedAesGcm(Option<Aes256Gcm>);

fn nonce(n: u64) -> Nonce<aes_gcm::aead::consts::U12> {
    let mut bytes = [0u8; 12];
    bytes[4..].copy_from_slice(&n.to_be_bytes());
    bytes.into()
}

impl CachedAesGcm {
    fn aead(&self) -> &Aes256Gcm {
        // snow calls `set` before any use of a cipher it resolved (its CipherState checks
        // `has_key` first), so this holds by construction.
        self.0.as_ref().expect("snow sets the key before using a cipher")
    }
}

impl Cipher for CachedAesGcm {
    fn name(&self) -> &'static str {
        "AESGCM"
    }

    fn set(&mut self, key: &[u8; KEY_LEN]) {
        self.0 = Some(Aes256Gcm::new(key.into()));
    }

    fn encrypt(&self, n: u64, authtext: &[u8], plaintext: &[u8], out: &mut [u8]) -> usize {
        let len = plaintext.len();
        out[..len].copy_from_slice(plaintext);
        let tag = self
            .aead()
            .encrypt_in_place_detached(&nonce(n), authtext, &mut out[..len])
            .expect("AES-GCM seals any record shorter than 64 GiB");
        out[len..len + TAG_LEN].copy_from_slice(&tag);
        len + TAG_LEN
    }

    fn decrypt(
        &self,
        n: u64,
        authtext: &[u8],
        ciphertext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, snow::Error> {
        let len = ciphertext
            .len()
            .checked_sub(TAG_LEN)
            .ok_or(snow::Error::Decrypt)?;
        out[..len].copy_from_slice(&ciphertext[..len]);
        let tag = Tag::from_slice(&ciphertext[len..]);
        self.aead()
            .decrypt_in_place_detached(&nonce(n), authtext, &mut out[..len], tag)
            .map(|()| len)
            .map_err(|_| snow::Error::Decrypt)
    }
}
