//! The optional token handshake, as text lines so that it fits the plain-line protocol:
//!
//! ```text
//! server: PCLUSTER-LOG-AUTH <server_nonce_hex>
//! client: <client_nonce_hex> <hex(proof(LOG_CLIENT, server_nonce, client_nonce))>
//! server: OK <hex(proof(LOG_SERVER, client_nonce, server_nonce))>   or   ERR <reason>
//! ```
//!
//! Only message formatting and parsing live here; each side drives its own socket.

use protocol::auth::{Nonce, Token, label};

use crate::error::HandshakeError;

/// The first word of the server's challenge.
pub const CHALLENGE: &str = "PCLUSTER-LOG-AUTH";

/// Longest handshake line either side accepts: hex of two 32-byte values plus words.
pub(crate) const MAX_LINE: usize = 256;

/// `PCLUSTER-LOG-AUTH <server_nonce_hex>\n`
pub(crate) fn challenge(server_nonce: &Nonce) -> String {
    format!("{CHALLENGE} {}\n", hex::encode(server_nonce))
}

pub(crate) fn parse_challenge(line: &str) -> Result<Nonce, HandshakeError> {
    let rest = line
        .strip_prefix(CHALLENGE)
        .and_then(|r| r.strip_prefix(' '))
        .ok_or(HandshakeError::Malformed)?;
    parse_nonce(rest)
}

/// The client's answer: its nonce and its proof.
pub(crate) fn answer(token: &Token, server_nonce: &Nonce, client_nonce: &Nonce) -> String {
    let proof = token.proof(label::LOG_CLIENT, server_nonce, client_nonce);
    format!("{} {}\n", hex::encode(client_nonce), hex::encode(proof))
}

/// Checks the client's answer; returns its nonce when the proof is right.
pub(crate) fn check_answer(
    token: &Token,
    server_nonce: &Nonce,
    line: &str,
) -> Result<Nonce, HandshakeError> {
    let (nonce, proof) = line.split_once(' ').ok_or(HandshakeError::Malformed)?;
    let client_nonce = parse_nonce(nonce)?;
    let proof = hex::decode(proof.trim()).map_err(|_| HandshakeError::Malformed)?;
    if token.verify(label::LOG_CLIENT, server_nonce, &client_nonce, &proof) {
        Ok(client_nonce)
    } else {
        Err(HandshakeError::BadProof)
    }
}

/// `OK <server proof>\n`
pub(crate) fn accept(token: &Token, client_nonce: &Nonce, server_nonce: &Nonce) -> String {
    let proof = token.proof(label::LOG_SERVER, client_nonce, server_nonce);
    format!("OK {}\n", hex::encode(proof))
}

/// `ERR <reason>\n`
pub(crate) fn refuse(reason: &str) -> String {
    format!("ERR {reason}\n")
}

/// Checks the server's reply to our answer.
pub(crate) fn check_reply(
    token: &Token,
    client_nonce: &Nonce,
    server_nonce: &Nonce,
    line: &str,
) -> Result<(), HandshakeError> {
    if let Some(reason) = line.strip_prefix("ERR") {
        return Err(HandshakeError::Refused(reason.trim().to_owned()));
    }
    let proof = line.strip_prefix("OK ").ok_or(HandshakeError::Malformed)?;
    let proof = hex::decode(proof.trim()).map_err(|_| HandshakeError::Malformed)?;
    if token.verify(label::LOG_SERVER, client_nonce, server_nonce, &proof) {
        Ok(())
    } else {
        Err(HandshakeError::BadProof)
    }
}

fn parse_nonce(text: &str) -> Result<Nonce, HandshakeError> {
    let mut nonce = Nonce::default();
    hex::decode_to_slice(text.trim(), &mut nonce).map_err(|_| HandshakeError::Malformed)?;
    Ok(nonce)
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::auth::nonce;

    #[test]
    fn both_sides_accept_with_the_same_token() {
        let token = Token::new("s3cret");
        let (sn, cn) = (nonce().unwrap(), nonce().unwrap());
        let got = parse_challenge(challenge(&sn).trim_end()).expect("challenge");
        assert_eq!(got, sn);
        let reply = answer(&token, &got, &cn);
        let client_nonce = check_answer(&token, &sn, reply.trim_end()).expect("answer");
        assert_eq!(client_nonce, cn);
        let ok = accept(&token, &cn, &sn);
        check_reply(&token, &cn, &sn, ok.trim_end()).expect("reply");
    }

    #[test]
    fn wrong_tokens_and_garbage_are_refused() {
        let (sn, cn) = (nonce().unwrap(), nonce().unwrap());
        let reply = answer(&Token::new("wrong"), &sn, &cn);
        let right = Token::new("right");
        assert!(matches!(
            check_answer(&right, &sn, reply.trim_end()),
            Err(HandshakeError::BadProof)
        ));
        for garbage in ["", "hello", "zz zz", "00 00"] {
            assert!(check_answer(&right, &sn, garbage).is_err(), "{garbage:?}");
        }
        let impostor = accept(&Token::new("wrong"), &cn, &sn);
        assert!(matches!(
            check_reply(&right, &cn, &sn, impostor.trim_end()),
            Err(HandshakeError::BadProof)
        ));
        assert!(matches!(
            check_reply(&right, &cn, &sn, "ERR wrong token"),
            Err(HandshakeError::Refused(r)) if r == "wrong token"
        ));
        assert!(parse_challenge("PCLUSTER-LOG-AUTH xyz").is_err());
    }
}
