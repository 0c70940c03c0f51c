//! The token handshake of the log server, as text lines so that it fits the plain-line
//! protocol, keying the same Noise pattern as the nodes ([`protocol::secure`]):
//!
//! ```text
//! server: PCLUSTER-LOG-NOISE                       (at once, only with a token)
//! client: <hex(noise message 1)>
//! server: OK <hex(noise message 2)>   or   ERR <reason>
//! client: records (sealed lines), as on a node connection
//! ```
//!
//! The `OK` proves nothing about the client: a first message seen on the wire and replayed
//! gets one too. The client proves it holds the token with its first record, which opens only
//! with keys derived from the ephemeral key it alone has; until then the server keeps it a
//! guest, evicted for newcomers and closed at the handshake deadline (`connection.rs`).
//!
//! A server without a token says nothing and takes plain lines (so `nc` works). A client with
//! a token that gets no greeting refuses the server; a client without one that gets a
//! greeting knows it lacks the token. Only message formatting and checking live here; each
//! side drives its own socket.

use protocol::auth::Token;
use protocol::secure::{self, HANDSHAKE_MSG_LEN, Initiator, Keys, SecureError};

use crate::error::HandshakeError;

/// The line a log server with a token greets every client with.
pub const GREETING: &str = "PCLUSTER-LOG-NOISE";

/// Binds the Noise handshake to this protocol: a node's handshake cannot be replayed here.
const PROLOGUE: &[u8] = b"pcluster/2 log";

/// Longest handshake line either side accepts: the hex of a Noise message plus a word.
pub(crate) const MAX_LINE: usize = 256;

/// `PCLUSTER-LOG-NOISE\n`
pub(crate) fn greeting() -> String {
    format!("{GREETING}\n")
}

fn wrong_token(e: SecureError) -> HandshakeError {
    match e {
        SecureError::WrongToken => HandshakeError::BadProof,
        e => HandshakeError::Secure(e),
    }
}

fn parse_msg(text: &str) -> Result<[u8; HANDSHAKE_MSG_LEN], HandshakeError> {
    let mut msg = [0u8; HANDSHAKE_MSG_LEN];
    hex::decode_to_slice(text.trim(), &mut msg).map_err(|_| HandshakeError::Malformed)?;
    Ok(msg)
}

/// Client: starts the handshake; returns its state and the line to send.
pub(crate) fn start(token: &Token) -> Result<(Initiator, String), HandshakeError> {
    let (init, msg) = Initiator::start(token, PROLOGUE).map_err(HandshakeError::Secure)?;
    Ok((init, format!("{}\n", hex::encode(msg))))
}

/// Server: the reply to the client's line, and the keys of the connection.
pub(crate) fn respond(token: &Token, line: &str) -> Result<(String, Keys), HandshakeError> {
    let first = parse_msg(line)?;
    let (msg, keys) = secure::respond(token, PROLOGUE, &first).map_err(wrong_token)?;
    Ok((format!("OK {}\n", hex::encode(msg)), keys))
}

/// `ERR <reason>\n`
pub(crate) fn refuse(reason: &str) -> String {
    format!("ERR {reason}\n")
}

/// Client: checks the server's reply and derives the keys.
pub(crate) fn finish(init: Initiator, line: &str) -> Result<Keys, HandshakeError> {
    if let Some(reason) = line.strip_prefix("ERR") {
        return Err(HandshakeError::Refused(reason.trim().to_owned()));
    }
    let msg = parse_msg(line.strip_prefix("OK ").ok_or(HandshakeError::Malformed)?)?;
    init.finish(&msg).map_err(wrong_token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_get_the_same_keys_with_the_same_token() {
        let token = Token::new("s3cret");
        let (init, first) = start(&token).expect("start");
        assert!(first.len() <= MAX_LINE);
        let (reply, server) = respond(&token, first.trim_end()).expect("respond");
        let client = finish(init, reply.trim_end()).expect("finish");
        let ((mut sealer, _), (_, mut opener)) = (client.split(), server.split());
        let mut wire = Vec::new();
        let n = sealer.seal(b"a line\n", &mut wire).expect("seal");
        let mut plain = Vec::new();
        let opened = opener.open(&wire[..n], &mut plain).expect("open");
        assert_eq!(opened, Some((n, 7)));
        assert_eq!(&plain[..7], b"a line\n");
    }

    #[test]
    fn wrong_tokens_and_garbage_are_refused() {
        let (init, first) = start(&Token::new("wrong")).expect("start");
        let right = Token::new("right");
        assert!(matches!(
            respond(&right, first.trim_end()),
            Err(HandshakeError::BadProof)
        ));
        for garbage in ["", "hello", "zz zz", "00 00"] {
            assert!(respond(&right, garbage).is_err(), "{garbage:?}");
        }
        assert!(matches!(
            finish(init, "ERR wrong token"),
            Err(HandshakeError::Refused(r)) if r == "wrong token"
        ));
        // A server answering with another token's message is caught by the client.
        let (init, first) = start(&right).expect("start");
        let (_, impostor_first) = start(&Token::new("impostor")).expect("start");
        let (reply, _) = respond(&Token::new("impostor"), impostor_first.trim_end()).unwrap();
        let _ = first;
        assert!(matches!(
            finish(init, reply.trim_end()),
            Err(HandshakeError::BadProof)
        ));
    }
}
