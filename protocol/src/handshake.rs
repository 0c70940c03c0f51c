//! Opening a connection: a raw preamble (magic, version, role), then, with a token, the
//! Noise handshake that keys the encrypted wire ([`crate::secure`]).
//!
//! The preamble is plain bytes, not a frame, so that a peer of another protocol version, or
//! no pcluster peer at all (an HTTP server on the port), is recognised before anything is
//! decoded. Client → server: `PCLUSTER` + version (u16 BE) + role (u8, with [`SECURE`] set
//! when the client holds a token). Server → client: `PCLUSTER` + its version + a status byte
//! (0 = accepted), then on refusal a u16-length UTF-8 reason, and the server closes. A server
//! refuses a client whose token use differs from its own, saying which side lacks one.
//!
//! With a token, the two Noise messages follow (each a u16 length and the message; a server
//! whose token differs answers with length 0), bound to the preamble by the Noise prologue;
//! from there on every byte is sealed. The client's [`Hello`] is its first sealed frame: a
//! server treats the client as authenticated once it opens. Without a token the client's
//! plain `Hello` is answered with the `Welcome` at once: there is nothing to prove, and a
//! far node's handshake costs two round trips. Either way the
//! frames of the handshake travel on a [`Connection`] whose frame limit is
//! [`HANDSHAKE_MAX_FRAME`], lifted to the caller's limit once the peer is accepted.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::auth::{self, NONCE_LEN, Nonce, Token};
use crate::connection::Connection;
use crate::error::{ErrorKind, ProtocolError};
use crate::ids::SessionId;
use crate::message::{Hello, Msg, Welcome};
use crate::secure::{self, HANDSHAKE_MSG_LEN, Initiator, Keys, SecureError};

/// The magic bytes that open every pcluster connection.
pub const MAGIC: &[u8; 8] = b"PCLUSTER";
/// The protocol version this build speaks (2: the encrypted wire; 3: batches with gaps; 4:
/// setup progress; 5: tokens stretched by argon2id).
pub const PROTOCOL_VERSION: u16 = 6;
/// Set in the role byte by a client that holds a token and so speaks Noise next.
pub const SECURE: u8 = 0x80;

pub use crate::connection::HANDSHAKE_MAX_FRAME;

const STATUS_OK: u8 = 0;
const STATUS_VERSION: u8 = 1;
const STATUS_ROLE: u8 = 2;
const STATUS_TOKEN: u8 = 3;

/// What the client intends to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// A root that will set a chain up and feed items.
    Root,
    /// A scanner or `pcluster status`: asks for status only.
    Probe,
}

impl Role {
    fn byte(self) -> u8 {
        match self {
            Role::Root => 1,
            Role::Probe => 2,
        }
    }

    fn from_byte(b: u8) -> Option<Role> {
        match b {
            1 => Some(Role::Root),
            2 => Some(Role::Probe),
            _ => None,
        }
    }
}

/// What the server learnt about an accepted client.
#[derive(Debug)]
pub struct Accepted {
    /// The framed connection, authenticated.
    pub conn: Connection,
    /// The client's role.
    pub role: Role,
    /// The session a reconnecting root wants to resume.
    pub resume: Option<SessionId>,
}

fn to_nonce(bytes: &[u8]) -> Result<Nonce, ProtocolError> {
    bytes
        .try_into()
        .map_err(|_| ProtocolError::Malformed(format!("nonce must be {NONCE_LEN} bytes")))
}

/// Server side: reads the preamble, answers it and authenticates the client.
/// The caller then sends [`Msg::Welcome`] (or an error) itself.
///
/// # Errors
/// Bad magic, version mismatch, failed authentication, or no answer within `timeout`.
pub async fn accept(
    stream: TcpStream,
    token: Option<&Token>,
    max_frame: usize,
    timeout: Duration,
) -> Result<Accepted, ProtocolError> {
    tokio::time::timeout(timeout, accept_inner(stream, token, max_frame))
        .await
        .map_err(|_| ProtocolError::Timeout("handshake"))?
}

async fn accept_inner(
    mut stream: TcpStream,
    token: Option<&Token>,
    max_frame: usize,
) -> Result<Accepted, ProtocolError> {
    let mut pre = [0u8; 11];
    stream.read_exact(&mut pre).await?;
    if &pre[..8] != MAGIC {
        // Most likely not a pcluster client at all; a line of text is the most useful answer.
        let _ = stream
            .write_all(b"pcluster node: this port speaks the pcluster protocol\n")
            .await;
        return Err(ProtocolError::BadMagic);
    }
    let theirs = u16::from_be_bytes([pre[8], pre[9]]);
    let role = Role::from_byte(pre[10] & !SECURE);
    let (status, reason) = verdict(&pre, token.is_some());
    let mut answer = Vec::with_capacity(16 + reason.len());
    answer.extend_from_slice(MAGIC);
    answer.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    answer.push(status);
    if status != STATUS_OK {
        let bytes = &reason.as_bytes()[..reason.len().min(u16::MAX as usize)];
        answer.extend_from_slice(&(bytes.len() as u16).to_be_bytes());
        answer.extend_from_slice(bytes);
        let _ = stream.write_all(&answer).await;
        let _ = stream.shutdown().await;
        return Err(match status {
            STATUS_VERSION => ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs,
            },
            STATUS_TOKEN => ProtocolError::Auth(reason),
            _ => ProtocolError::Malformed(reason),
        });
    }
    stream.write_all(&answer).await?;
    let role = role.unwrap_or(Role::Probe);

    let keys = match token {
        Some(token) => Some(respond(&mut stream, token, &pre, &answer).await?),
        None => None,
    };
    let secure = keys.is_some();
    let mut conn = Connection::for_handshake(stream, keys);
    let hello = match conn.expect_message().await? {
        Msg::Hello(h) => h,
        other => return Err(ProtocolError::Unexpected(other.name().into())),
    };
    if !secure {
        // Without a token there is nothing to prove: the nonce only has to be well formed.
        let _ = to_nonce(&hello.nonce)?;
    }
    conn.authenticated(max_frame);
    Ok(Accepted {
        conn,
        role,
        resume: hello.resume,
    })
}

/// The server's answer to a client's preamble: its status and, when it refuses, why.
fn verdict(pre: &[u8; 11], has_token: bool) -> (u8, String) {
    let theirs = u16::from_be_bytes([pre[8], pre[9]]);
    let wants_secure = pre[10] & SECURE != 0;
    if theirs != PROTOCOL_VERSION {
        return (
            STATUS_VERSION,
            format!(
                "protocol version mismatch: node speaks {PROTOCOL_VERSION}, you speak {theirs}"
            ),
        );
    }
    if Role::from_byte(pre[10] & !SECURE).is_none() {
        return (STATUS_ROLE, format!("unknown role {}", pre[10]));
    }
    match (has_token, wants_secure) {
        (true, false) => (
            STATUS_TOKEN,
            "this node requires the cluster token (--token or PCLUSTER_TOKEN)".to_string(),
        ),
        (false, true) => (
            STATUS_TOKEN,
            "this node has no cluster token, so it cannot prove it is yours".to_string(),
        ),
        _ => (STATUS_OK, String::new()),
    }
}

/// The server's Noise message: reads the client's, answers it (or refuses a wrong token).
async fn respond(
    stream: &mut TcpStream,
    token: &Token,
    pre: &[u8],
    answer: &[u8],
) -> Result<Keys, ProtocolError> {
    let mut first = [0u8; 2 + HANDSHAKE_MSG_LEN];
    stream.read_exact(&mut first[..2]).await?;
    let len = u16::from_be_bytes([first[0], first[1]]) as usize;
    if len != HANDSHAKE_MSG_LEN {
        return Err(ProtocolError::Malformed(format!(
            "noise handshake message of {len} bytes"
        )));
    }
    stream.read_exact(&mut first[2..]).await?;
    let prologue = [pre, answer].concat();
    match secure::respond(token, &prologue, &first[2..]) {
        Ok((msg, keys)) => {
            let mut out = [0u8; 2 + HANDSHAKE_MSG_LEN];
            out[..2].copy_from_slice(&(HANDSHAKE_MSG_LEN as u16).to_be_bytes());
            out[2..].copy_from_slice(&msg);
            stream.write_all(&out).await?;
            Ok(keys)
        }
        Err(SecureError::WrongToken) => {
            let _ = stream.write_all(&[0, 0]).await;
            let _ = stream.shutdown().await;
            Err(ProtocolError::Auth("wrong cluster token".into()))
        }
        Err(e) => Err(e.into()),
    }
}

/// Client side: sends the preamble, authenticates both ways and reads the [`Welcome`].
///
/// # Errors
/// The peer is no pcluster node, speaks another version, fails authentication (either way),
/// refuses us, or does not answer within `timeout`.
pub async fn connect(
    stream: TcpStream,
    role: Role,
    token: Option<&Token>,
    resume: Option<SessionId>,
    max_frame: usize,
    timeout: Duration,
) -> Result<(Connection, Welcome), ProtocolError> {
    tokio::time::timeout(
        timeout,
        connect_inner(stream, role, token, resume, max_frame),
    )
    .await
    .map_err(|_| ProtocolError::Timeout("handshake"))?
}

async fn connect_inner(
    mut stream: TcpStream,
    role: Role,
    token: Option<&Token>,
    resume: Option<SessionId>,
    max_frame: usize,
) -> Result<(Connection, Welcome), ProtocolError> {
    let _ = stream.set_nodelay(true);
    let mut pre = Vec::with_capacity(11);
    pre.extend_from_slice(MAGIC);
    pre.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
    pre.push(role.byte() | if token.is_some() { SECURE } else { 0 });
    let sent = std::time::Instant::now();
    stream.write_all(&pre).await?;
    let mut answer = [0u8; 11];
    stream.read_exact(&mut answer).await.map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtocolError::BadMagic
        } else {
            ProtocolError::Io(e)
        }
    })?;
    // The node answers the preamble at once: one round trip, before any cryptography.
    let rtt = sent.elapsed();
    if &answer[..8] != MAGIC {
        return Err(ProtocolError::BadMagic);
    }
    if answer[10] != STATUS_OK {
        return Err(refused(&mut stream, &answer, token.is_some()).await);
    }

    let keys = match token {
        Some(token) => Some(initiate(&mut stream, token, &pre, &answer).await?),
        None => None,
    };
    let secure = keys.is_some();
    let mut conn = Connection::for_handshake(stream, keys);
    conn.set_handshake_rtt(rtt);
    // Sealed, the nonce is of no use: the keys are fresh. In the clear it stays as it was.
    let nonce = if secure {
        Vec::new()
    } else {
        auth::nonce()?.to_vec()
    };
    conn.write_message(&Msg::Hello(Hello { nonce, resume }))
        .await?;
    match conn.expect_message().await {
        Ok(Msg::Welcome(w)) => {
            conn.authenticated(max_frame);
            Ok((conn, w))
        }
        Ok(Msg::Error(e)) if e.kind == ErrorKind::Unauthorized => {
            Err(ProtocolError::Auth(e.message))
        }
        Ok(Msg::Error(e)) => Err(ProtocolError::Remote(e)),
        Ok(other) => Err(ProtocolError::Unexpected(other.name().into())),
        Err(e) => Err(e),
    }
}

/// Why the node refused us (`answer` holds its status), reading its reason when it gave one.
async fn refused(stream: &mut TcpStream, answer: &[u8; 11], has_token: bool) -> ProtocolError {
    let theirs = u16::from_be_bytes([answer[8], answer[9]]);
    let mut len = [0u8; 2];
    let reason = match stream.read_exact(&mut len).await {
        Ok(_) => {
            let mut r = vec![0u8; u16::from_be_bytes(len) as usize];
            match stream.read_exact(&mut r).await {
                Ok(_) => String::from_utf8_lossy(&r).into_owned(),
                Err(_) => String::new(),
            }
        }
        Err(_) => String::new(),
    };
    match answer[10] {
        STATUS_VERSION => ProtocolError::VersionMismatch {
            ours: PROTOCOL_VERSION,
            theirs,
        },
        STATUS_TOKEN if has_token => ProtocolError::Auth(
            "the node has no cluster token, so it cannot prove it is ours; refusing to use it"
                .into(),
        ),
        STATUS_TOKEN => ProtocolError::Auth(
            "the node requires the cluster token (--token or PCLUSTER_TOKEN)".into(),
        ),
        _ => ProtocolError::Unexpected(format!("node refused the connection: {reason}")),
    }
}

/// The client's Noise messages: sends the first, reads and checks the server's answer.
async fn initiate(
    stream: &mut TcpStream,
    token: &Token,
    pre: &[u8],
    answer: &[u8],
) -> Result<Keys, ProtocolError> {
    let prologue = [pre, answer].concat();
    let (init, first) = Initiator::start(token, &prologue)?;
    let mut out = [0u8; 2 + HANDSHAKE_MSG_LEN];
    out[..2].copy_from_slice(&(HANDSHAKE_MSG_LEN as u16).to_be_bytes());
    out[2..].copy_from_slice(&first);
    stream.write_all(&out).await?;
    let refused =
        || ProtocolError::Auth("the node refused our cluster token (wrong token?)".into());
    let mut len = [0u8; 2];
    match stream.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(refused()),
        Err(e) => return Err(e.into()),
    }
    let len = u16::from_be_bytes(len) as usize;
    if len == 0 {
        return Err(refused());
    }
    if len != HANDSHAKE_MSG_LEN {
        return Err(ProtocolError::Malformed(format!(
            "noise handshake message of {len} bytes"
        )));
    }
    let mut msg = [0u8; HANDSHAKE_MSG_LEN];
    stream.read_exact(&mut msg).await?;
    init.finish(&msg).map_err(|e| match e {
        SecureError::WrongToken => ProtocolError::Auth(
            "the node failed to prove it holds our cluster token (wrong token?)".into(),
        ),
        e => e.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_preamble_is_judged_by_version_role_and_token() {
        let pre = |version: u16, role: u8| {
            let mut p = [0u8; 11];
            p[..8].copy_from_slice(MAGIC);
            p[8..10].copy_from_slice(&version.to_be_bytes());
            p[10] = role;
            p
        };
        let (v, root) = (PROTOCOL_VERSION, Role::Root.byte());
        assert_eq!(verdict(&pre(v, root), false).0, STATUS_OK);
        assert_eq!(verdict(&pre(v, root | SECURE), true).0, STATUS_OK);
        assert_eq!(verdict(&pre(v + 1, root), false).0, STATUS_VERSION);
        assert_eq!(verdict(&pre(v, 9), false).0, STATUS_ROLE);
        let (status, why) = verdict(&pre(v, root), true);
        assert_eq!(status, STATUS_TOKEN);
        assert!(why.contains("requires the cluster token"), "{why}");
        assert_eq!(verdict(&pre(v, root | SECURE), false).0, STATUS_TOKEN);
    }
    use crate::error::WireError;
    use tokio::net::TcpListener;

    const T: Duration = Duration::from_secs(5);

    /// A message over the handshake's frame limit.
    fn big() -> Msg {
        Msg::Error(WireError::new(
            ErrorKind::Internal,
            "x".repeat(4 * HANDSHAKE_MAX_FRAME),
        ))
    }

    /// A server accepting one connection with `token`, and a client connecting with `ours`.
    async fn pair(
        token: Option<&str>,
        ours: Option<&str>,
    ) -> (
        Result<Accepted, ProtocolError>,
        Result<(Connection, Welcome), ProtocolError>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let token = token.map(Token::new);
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut accepted = accept(s, token.as_ref(), 1 << 20, T).await;
            if let Ok(a) = &mut accepted {
                let welcome = Msg::Welcome(Welcome {
                    node: "n".into(),
                    busy_with: None,
                    workers: 1,
                    labels: Vec::new(),
                });
                a.conn.write_message(&welcome).await.unwrap();
                // Something right behind the Welcome must reach the client's connection, and
                // after authentication frames may exceed the handshake's limit.
                a.conn.write_message(&Msg::Heartbeat).await.unwrap();
                a.conn.write_message(&big()).await.unwrap();
            }
            accepted
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let ours = ours.map(Token::new);
        let client = connect(stream, Role::Root, ours.as_ref(), None, 1 << 20, T).await;
        (server.await.unwrap(), client)
    }

    #[tokio::test]
    async fn both_sides_agree_with_the_same_token_or_none() {
        for token in [None, Some("s3cret")] {
            let (server, client) = pair(token, token).await;
            assert_eq!(server.unwrap().role, Role::Root);
            let (mut conn, welcome) = client.unwrap();
            assert_eq!(welcome.workers, 1);
            assert_eq!(conn.is_encrypted(), token.is_some());
            assert_eq!(conn.expect_message().await.unwrap(), Msg::Heartbeat);
            assert_eq!(conn.expect_message().await.unwrap(), big());
        }
    }

    #[tokio::test]
    async fn a_missing_or_wrong_token_fails_on_both_sides() {
        for (server_token, client_token) in [
            (Some("s3cret"), None),
            (Some("s3cret"), Some("wrong")),
            (None, Some("s3cret")),
        ] {
            let (server, client) = pair(server_token, client_token).await;
            assert!(
                matches!(client, Err(ProtocolError::Auth(_))),
                "{server_token:?}/{client_token:?}: {:?}",
                client.map(|c| c.1)
            );
            if server_token.is_some() {
                assert!(server.is_err(), "{server_token:?}/{client_token:?}");
            }
        }
    }

    #[tokio::test]
    async fn an_unauthenticated_peer_cannot_announce_a_big_frame() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            accept(s, None, 64 << 20, T).await
        });
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&PROTOCOL_VERSION.to_be_bytes());
        bytes.push(1);
        // Under the connection's limit, over the handshake's.
        bytes.extend_from_slice(&(1u32 << 20).to_be_bytes());
        stream.write_all(&bytes).await.unwrap();
        match server.await.unwrap() {
            Err(ProtocolError::FrameTooLarge { size, limit }) => {
                assert_eq!((size, limit), (1 << 20, HANDSHAKE_MAX_FRAME));
            }
            other => panic!("expected FrameTooLarge, got {:?}", other.map(|a| a.role)),
        }
    }

    #[tokio::test]
    async fn another_version_is_refused_with_a_reason() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            accept(s, None, 1 << 20, T).await
        });
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut bytes = MAGIC.to_vec();
        bytes.extend_from_slice(&99u16.to_be_bytes());
        bytes.push(1);
        stream.write_all(&bytes).await.unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await.unwrap();
        assert_eq!(&answer[..8], MAGIC);
        assert_eq!(answer[10], STATUS_VERSION);
        let reason = format!("node speaks {PROTOCOL_VERSION}, you speak 99");
        assert!(String::from_utf8_lossy(&answer[13..]).contains(&reason));
        assert!(matches!(
            server.await.unwrap(),
            Err(ProtocolError::VersionMismatch {
                ours: PROTOCOL_VERSION,
                theirs: 99
            })
        ));
    }
}
