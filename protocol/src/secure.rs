//! The encrypted wire: a Noise handshake keyed by the cluster token, then records that seal
//! the byte stream.
//!
//! With a token, every connection runs `Noise_NNpsk0_25519_AESGCM_SHA256`: the client sends
//! an ephemeral key under a pre-shared key derived from the token ([`psk`]), the server
//! answers with its own, and both derive fresh transport keys. Only holders of the token can
//! complete it (mutual authentication), and keys die with the connection (forward secrecy).
//! The cryptography is `snow`'s (with AES-GCM, SHA-256 and the random source from `ring`); this
//! file only glues it to our streams.
//!
//! After the handshake the bytes of each direction travel in records: a 2-byte big-endian
//! length, then a sealed Noise message (at most 65535 bytes: 65519 of payload and a 16-byte
//! tag). A record carries whatever was buffered (many frames, or part of one); framing above
//! does not change. Nonces are implicit counters, one per direction, so a record altered,
//! dropped, replayed or reordered fails to open: [`SecureError::Decrypt`], and the connection
//! ends. Sealing and opening reuse their buffers: nothing is allocated per record.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use sha2::{Digest, Sha256};
use snow::{HandshakeState, StatelessTransportState};
use tokio::io::{AsyncRead, ReadBuf};

use crate::auth::Token;

/// The Noise protocol every encrypted connection runs.
pub const NOISE_PATTERN: &str = "Noise_NNpsk0_25519_AESGCM_SHA256";
/// Largest Noise message, hence largest sealed record (without its length prefix).
pub const MAX_RECORD: usize = 65535;
/// The AEAD tag each record carries.
pub const TAG_LEN: usize = 16;
/// Largest payload of one record.
pub const MAX_PLAIN: usize = MAX_RECORD - TAG_LEN;
/// Payload sealed per write of a connection: whole records, about a mebibyte, so the
/// buffer of sealed bytes stays bounded however large a frame is.
pub const SEAL_CHUNK: usize = 16 * MAX_PLAIN;
/// Length of each handshake message: an ephemeral X25519 key and the tag of an empty payload.
pub const HANDSHAKE_MSG_LEN: usize = 32 + TAG_LEN;
/// Domain of the PSK derivation, so the key is used for nothing else.
const PSK_DOMAIN: &[u8] = b"pcluster/2 noise psk";

/// Why a secure connection failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecureError {
    /// A record did not open: it was altered on the way, or not sealed by our peer.
    #[error(
        "decryption failed: a record was altered on the way or is not from our peer; connection closed"
    )]
    Decrypt,
    /// A record's length field is impossible.
    #[error("malformed record of {0} bytes")]
    Malformed(usize),
    /// The connection ended inside a record.
    #[error("connection closed in the middle of a record")]
    Truncated,
    /// The handshake message did not open: the peer holds another token (or is no peer of ours).
    #[error("the peer does not hold our cluster token (wrong token?)")]
    WrongToken,
    /// The operating system's random source failed; no ephemeral key without it.
    #[error("no ephemeral key: the operating system's random source failed")]
    Random,
    /// Any other failure inside the Noise state machine.
    #[error("noise: {0}")]
    Noise(String),
}

impl From<snow::Error> for SecureError {
    fn from(e: snow::Error) -> Self {
        match e {
            snow::Error::Decrypt => SecureError::Decrypt,
            snow::Error::Rng => SecureError::Random,
            other => SecureError::Noise(format!("{other:?}")),
        }
    }
}

impl From<SecureError> for io::Error {
    fn from(e: SecureError) -> Self {
        let kind = match e {
            SecureError::Truncated => io::ErrorKind::UnexpectedEof,
            _ => io::ErrorKind::InvalidData,
        };
        io::Error::new(kind, e)
    }
}

/// The pre-shared key of a cluster: SHA-256 over a domain string and the token's key
/// (argon2id of its text, see [`Token::new`]), so the token never crosses the wire.
pub fn psk(token: &Token) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(PSK_DOMAIN);
    h.update([0]);
    h.update(token.secret());
    h.finalize().into()
}

fn builder<'a>(psk: &'a [u8; 32], prologue: &'a [u8]) -> Result<snow::Builder<'a>, SecureError> {
    let params = NOISE_PATTERN.parse()?;
    Ok(snow::Builder::new(params).psk(0, psk)?.prologue(prologue)?)
}

/// The client's side of the handshake, between its first message and the server's answer.
pub struct Initiator(HandshakeState);

impl std::fmt::Debug for Initiator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Initiator")
    }
}

impl Initiator {
    /// Starts a handshake; returns the first message to send. `prologue` binds what was
    /// exchanged in the clear before (both sides must pass the same bytes).
    ///
    /// # Errors
    /// [`SecureError::Random`] when no ephemeral key can be made.
    pub fn start(
        token: &Token,
        prologue: &[u8],
    ) -> Result<(Initiator, [u8; HANDSHAKE_MSG_LEN]), SecureError> {
        let key = psk(token);
        let mut hs = builder(&key, prologue)?.build_initiator()?;
        let mut msg = [0u8; HANDSHAKE_MSG_LEN];
        let n = hs.write_message(&[], &mut msg)?;
        debug_assert_eq!(n, HANDSHAKE_MSG_LEN);
        Ok((Initiator(hs), msg))
    }

    /// Reads the server's answer and derives the transport keys.
    ///
    /// # Errors
    /// [`SecureError::WrongToken`] when the answer does not open under our token.
    pub fn finish(mut self, answer: &[u8]) -> Result<Keys, SecureError> {
        let mut payload = [0u8; 64];
        self.0
            .read_message(answer, &mut payload)
            .map_err(|e| match e {
                snow::Error::Decrypt => SecureError::WrongToken,
                e => e.into(),
            })?;
        Keys::from_handshake(self.0)
    }
}

/// The server's side: reads the client's first message, returns the answer to send and the
/// transport keys. The client is proven to hold the token once its first record opens (a
/// replayed first message gives no one the keys).
///
/// # Errors
/// [`SecureError::WrongToken`] when the message does not open under our token.
pub fn respond(
    token: &Token,
    prologue: &[u8],
    first: &[u8],
) -> Result<([u8; HANDSHAKE_MSG_LEN], Keys), SecureError> {
    let key = psk(token);
    let mut hs = builder(&key, prologue)?.build_responder()?;
    let mut payload = [0u8; 64];
    hs.read_message(first, &mut payload).map_err(|e| match e {
        snow::Error::Decrypt | snow::Error::Input => SecureError::WrongToken,
        e => e.into(),
    })?;
    let mut msg = [0u8; HANDSHAKE_MSG_LEN];
    let n = hs.write_message(&[], &mut msg)?;
    debug_assert_eq!(n, HANDSHAKE_MSG_LEN);
    Ok((msg, Keys::from_handshake(hs)?))
}

/// The transport keys of one connection, both directions.
#[derive(Clone)]
pub struct Keys(Arc<StatelessTransportState>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(<secret>)")
    }
}

impl Keys {
    fn from_handshake(hs: HandshakeState) -> Result<Keys, SecureError> {
        Ok(Keys(Arc::new(hs.into_stateless_transport_mode()?)))
    }

    /// The sealing side (our sends) and the opening side (our receives), each with its own
    /// nonce counter, so the two halves of a connection never share mutable state.
    pub fn split(self) -> (Sealer, Opener) {
        (
            Sealer {
                keys: self.0.clone(),
                nonce: 0,
            },
            Opener {
                keys: self.0,
                nonce: 0,
            },
        )
    }
}

/// Seals outgoing bytes into records.
pub struct Sealer {
    keys: Arc<StatelessTransportState>,
    nonce: u64,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer(nonce {})", self.nonce)
    }
}

impl Sealer {
    /// Seals `plain` in records of at most [`MAX_PLAIN`] payload bytes at the front of
    /// `out`; the bytes written. `out` is a reused buffer: it grows (zeroed) only when too
    /// short, and its bytes past those written are left as they were, so a flush does not
    /// zero a buffer the cipher is about to overwrite anyway.
    ///
    /// # Errors
    /// Only if the nonce counter is exhausted (2^64 records).
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<usize, SecureError> {
        let need = plain.len() + plain.len().div_ceil(MAX_PLAIN) * (2 + TAG_LEN);
        if out.len() < need {
            out.resize(need, 0);
        }
        let mut at = 0;
        for chunk in plain.chunks(MAX_PLAIN) {
            let len = chunk.len() + TAG_LEN;
            let n = self
                .keys
                .write_message(self.nonce, chunk, &mut out[at + 2..at + 2 + len])?;
            debug_assert_eq!(n, len);
            self.nonce += 1;
            out[at..at + 2].copy_from_slice(&(len as u16).to_be_bytes());
            at += 2 + len;
        }
        Ok(at)
    }
}

/// Opens incoming records.
pub struct Opener {
    keys: Arc<StatelessTransportState>,
    nonce: u64,
}

impl std::fmt::Debug for Opener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Opener(nonce {})", self.nonce)
    }
}

impl Opener {
    /// Bytes of the record at the front of `raw` (prefix included), once its length is known.
    fn record_len(raw: &[u8]) -> Result<Option<usize>, SecureError> {
        if raw.len() < 2 {
            return Ok(None);
        }
        let len = u16::from_be_bytes([raw[0], raw[1]]) as usize;
        if len <= TAG_LEN {
            return Err(SecureError::Malformed(len));
        }
        Ok(Some(2 + len))
    }

    /// Opens the record at the front of `raw` if it is whole: its payload goes to the front
    /// of `plain` (a reused buffer, grown only when too short), and the bytes it took from
    /// `raw` and the payload's length are returned.
    ///
    /// # Errors
    /// [`SecureError::Decrypt`] when it does not open, [`SecureError::Malformed`] for an
    /// impossible length.
    pub fn open(
        &mut self,
        raw: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<Option<(usize, usize)>, SecureError> {
        let Some(total) = Self::record_len(raw)? else {
            return Ok(None);
        };
        if raw.len() < total {
            return Ok(None);
        }
        let len = total - 2 - TAG_LEN;
        if plain.len() < len {
            plain.resize(len, 0);
        }
        let n = self
            .keys
            .read_message(self.nonce, &raw[2..total], &mut plain[..len])?;
        self.nonce += 1;
        Ok(Some((total, n)))
    }
}

/// A stream of records, read as the plain bytes they carry.
#[derive(Debug)]
pub struct SecureRead<R> {
    inner: R,
    opener: Opener,
    /// Sealed bytes read so far: `raw[start..end]` waits to be opened. Grown to the size of
    /// the records that arrive (at most one record plus its prefix), then reused.
    raw: Vec<u8>,
    start: usize,
    end: usize,
    /// The payload of the last record opened is `plain[pos..len]`.
    plain: Vec<u8>,
    pos: usize,
    len: usize,
    failed: Option<SecureError>,
}

impl<R> SecureRead<R> {
    /// Reads records from `inner` (positioned right after the handshake).
    pub fn new(inner: R, opener: Opener) -> Self {
        SecureRead {
            inner,
            opener,
            raw: Vec::new(),
            start: 0,
            end: 0,
            plain: Vec::new(),
            pos: 0,
            len: 0,
            failed: None,
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for SecureRead<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if let Some(e) = &this.failed {
                return Poll::Ready(Err(e.clone().into()));
            }
            if this.pos < this.len {
                let n = buf.remaining().min(this.len - this.pos);
                buf.put_slice(&this.plain[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let pending = &this.raw[this.start..this.end];
            match this.opener.open(pending, &mut this.plain) {
                Ok(Some((used, len))) => {
                    this.start += used;
                    (this.pos, this.len) = (0, len);
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    this.failed = Some(e);
                    continue;
                }
            }
            // Room for the rest of the record whose length we know, else for a few: a peer
            // announcing a record cannot make us hold more than one record's worth.
            let need = match Opener::record_len(pending) {
                Ok(Some(total)) => total,
                _ => 16 << 10,
            };
            if this.start > 0 && this.start + need > this.raw.len() {
                this.raw.copy_within(this.start..this.end, 0);
                this.end -= this.start;
                this.start = 0;
            }
            if this.raw.len() < this.start + need {
                this.raw.resize(this.start + need, 0);
            }
            let mut read = ReadBuf::new(&mut this.raw[this.end..]);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                if this.start == this.end {
                    return Poll::Ready(Ok(()));
                }
                this.failed = Some(SecureError::Truncated);
            }
            this.end += n;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn pair(a: &str, b: &str) -> Result<(Keys, Keys), SecureError> {
        let (init, first) = Initiator::start(&Token::new(a), b"prologue")?;
        let (answer, server) = respond(&Token::new(b), b"prologue", &first)?;
        Ok((init.finish(&answer)?, server))
    }

    #[test]
    fn records_round_trip_both_ways_and_large_payloads_split() {
        let (client, server) = pair("t", "t").unwrap();
        let ((mut cs, mut co), (mut ss, mut so)) = (client.split(), server.split());
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut wire = Vec::new();
        let mut out = Vec::new();
        for plain in [&b"hello"[..], &big] {
            let n = cs.seal(plain, &mut out).unwrap();
            wire.extend_from_slice(&out[..n]);
        }
        // 5 bytes in one record, 200,000 in four (three full, one partial).
        let mut plain = Vec::new();
        let mut got = Vec::new();
        let mut at = 0;
        let mut records = 0;
        while let Some((used, len)) = so.open(&wire[at..], &mut plain).unwrap() {
            assert!(used <= 2 + MAX_RECORD);
            got.extend_from_slice(&plain[..len]);
            at += used;
            records += 1;
        }
        assert_eq!((at, records), (wire.len(), 5));
        assert_eq!(&got[..5], b"hello");
        assert_eq!(&got[5..], &big[..]);
        // The other direction has its own keys and counter.
        let mut back = vec![7; 3];
        let n = ss.seal(b"answer", &mut back).unwrap();
        assert_eq!(co.open(&back[..n], &mut plain).unwrap(), Some((n, 6)));
        assert_eq!(&plain[..6], b"answer");
        assert!(
            !wire.windows(5).any(|w| w == b"hello"),
            "sealed bytes hide the payload"
        );
    }

    #[test]
    fn a_changed_byte_a_replay_or_a_reflection_fails_to_open() {
        let (client, server) = pair("t", "t").unwrap();
        let ((mut cs, _), (_, mut so)) = (client.split(), server.split());
        let mut wire = Vec::new();
        let n = cs.seal(b"first", &mut wire).unwrap();
        wire.truncate(n);
        let first = wire.clone();
        let mut plain = Vec::new();
        for at in [2, 10, wire.len() - 1] {
            let mut bad = wire.clone();
            bad[at] ^= 1;
            let mut o = Opener {
                keys: so.keys.clone(),
                nonce: 0,
            };
            assert_eq!(o.open(&bad, &mut plain), Err(SecureError::Decrypt), "{at}");
        }
        assert_eq!(so.open(&wire, &mut plain).unwrap(), Some((wire.len(), 5)));
        // The same record again is a replay: the counter moved on.
        assert_eq!(so.open(&first, &mut plain), Err(SecureError::Decrypt));
        // A length field below a tag is refused before anything is decrypted.
        assert_eq!(
            so.open(&[0, 3, 1, 2, 3], &mut plain),
            Err(SecureError::Malformed(3))
        );
        // Our own record sent back to us does not open either (keys differ per direction).
        let (mut cs2, mut co2) = pair("t", "t").unwrap().0.split();
        let mut own = Vec::new();
        let n = cs2.seal(b"mine", &mut own).unwrap();
        assert_eq!(co2.open(&own[..n], &mut plain), Err(SecureError::Decrypt));
    }

    #[test]
    fn another_token_fails_the_handshake() {
        assert!(matches!(pair("a", "b"), Err(SecureError::WrongToken)));
        let (_, first) = Initiator::start(&Token::new("t"), b"one").unwrap();
        assert!(matches!(
            respond(&Token::new("t"), b"two", &first),
            Err(SecureError::WrongToken)
        ));
    }

    #[tokio::test]
    async fn a_stream_of_records_reads_as_bytes_in_any_piece_sizes() {
        let (client, server) = pair("t", "t").unwrap();
        let (mut cs, _) = client.split();
        let (_, so) = server.split();
        let big: Vec<u8> = (0..150_000u32).map(|i| (i * 7) as u8).collect();
        let (mut wire, mut out) = (Vec::new(), Vec::new());
        for plain in [&big[..], b"tail"] {
            let n = cs.seal(plain, &mut out).unwrap();
            wire.extend_from_slice(&out[..n]);
        }
        let (mut tx, rx) = tokio::io::duplex(1000);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in wire.chunks(777) {
                tx.write_all(piece).await.unwrap();
            }
        });
        let mut reader = SecureRead::new(rx, so);
        let mut got = Vec::new();
        reader.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(got.len(), big.len() + 4);
        assert_eq!(&got[..big.len()], &big[..]);
        assert_eq!(&got[big.len()..], b"tail");
    }

    #[tokio::test]
    async fn a_tampered_or_cut_stream_is_an_error_not_data() {
        let (client, server) = pair("t", "t").unwrap();
        let (mut cs, _) = client.split();
        let (_, so) = server.split();
        let mut wire = Vec::new();
        cs.seal(&[7u8; 1000], &mut wire).unwrap();
        let mut bad = wire.clone();
        bad[500] ^= 0x40;
        let mut reader = SecureRead::new(&bad[..], so);
        let mut got = Vec::new();
        let e = reader.read_to_end(&mut got).await.unwrap_err();
        assert!(got.is_empty(), "nothing of a bad record is handed on");
        let inner = e.into_inner().unwrap().downcast::<SecureError>().unwrap();
        assert_eq!(*inner, SecureError::Decrypt);

        let (client, server) = pair("t", "t").unwrap();
        let (mut cs, _) = client.split();
        let mut wire = Vec::new();
        cs.seal(&[7u8; 1000], &mut wire).unwrap();
        let mut reader = SecureRead::new(&wire[..600], server.split().1);
        let e = reader.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
