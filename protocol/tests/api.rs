//! The protocol crate's public API, by use: what a root and a node agree on. A server and a
//! client open a connection with the handshake (token authentication both ways), then talk
//! in framed messages through [`Connection`]; item batches travel packed; errors carry a
//! kind a program can act on. Everything on 127.0.0.1.

use std::time::Duration;

use bytes::BytesMut;
use pcluster_protocol::auth::Token;
use pcluster_protocol::codec::encode_frame;
use pcluster_protocol::framing::MessageCodec;
use pcluster_protocol::handshake::{self, Role};
use pcluster_protocol::{
    DEFAULT_MAX_FRAME, ErrorKind, Holder, Ids, Items, Msg, Outputs, Packed, ProtocolError, U32s,
    Welcome, WireError,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Decoder;

const DEADLINE: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_root_and_a_node_authenticate_and_exchange_a_batch() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let token = Token::new("cluster secret");

    // The node's side: accept, check the role, welcome, answer one batch, see the close.
    let node_token = token.clone();
    let node = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let accepted = handshake::accept(stream, Some(&node_token), DEFAULT_MAX_FRAME, DEADLINE)
            .await
            .unwrap();
        assert_eq!(accepted.role, Role::Root);
        assert_eq!(accepted.resume, None);
        let mut conn = accepted.conn;
        let welcome = Welcome {
            node: addr.to_string(),
            busy_with: None,
            workers: 4,
            labels: Vec::new(),
        };
        conn.write_message(&Msg::Welcome(welcome)).await.unwrap();
        let Msg::Items(batch) = conn.expect_message().await.unwrap() else {
            panic!("expected items");
        };
        batch.items.validate().unwrap();
        // Each input emitted once, upper-cased.
        let outputs = Outputs {
            seq: batch.seq,
            first: 0,
            counts: U32s(vec![1; batch.items.len()]),
            items: batch.items.iter().map(|i| i.to_ascii_uppercase()).collect(),
            failures: vec![],
            continuations: vec![],
        };
        conn.write_message(&Msg::Outputs(outputs)).await.unwrap();
        // `Ok(None)`: the root closed cleanly.
        assert_eq!(conn.read_message().await.unwrap(), None);
    });

    // The root's side: connect, read the welcome, send a batch, read its outputs.
    let stream = TcpStream::connect(addr).await.unwrap();
    let (conn, welcome) = handshake::connect(
        stream,
        Role::Root,
        Some(&token),
        None,
        DEFAULT_MAX_FRAME,
        DEADLINE,
    )
    .await
    .unwrap();
    assert_eq!((welcome.workers, welcome.busy_with), (4, None));
    assert_eq!(conn.peer(), addr);
    // Halves can live in different tasks: here a writer that batches frames, and a reader.
    let (mut reader, mut writer) = conn.split();
    let items: Packed = ["item-1", "item-2"].into_iter().collect();
    writer
        .feed(&Msg::Items(Items {
            seq: 7,
            ids: Ids::Range {
                start: 100,
                count: 2,
            },
            items,
            stage: pcluster_protocol::TaskIndex(0),
        }))
        .unwrap();
    assert!(writer.buffered() > 0);
    writer.flush().await.unwrap();
    let Msg::Outputs(out) = reader.expect_message().await.unwrap() else {
        panic!("expected outputs");
    };
    assert_eq!(out.seq, 7);
    let texts: Vec<&[u8]> = out.items.iter().collect();
    assert_eq!(texts, [&b"ITEM-1"[..], b"ITEM-2"]);
    writer.shutdown().await;
    drop(reader);
    node.await.unwrap();
}

#[tokio::test]
async fn a_wrong_token_fails_the_handshake_on_both_sides() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let node = tokio::spawn(async move {
        let (stream, _) = listener.accept().await.unwrap();
        let token = Token::new("right");
        handshake::accept(stream, Some(&token), DEFAULT_MAX_FRAME, DEADLINE)
            .await
            .map(|_| ())
    });
    let stream = TcpStream::connect(addr).await.unwrap();
    let wrong = Token::new("wrong");
    let client = handshake::connect(
        stream,
        Role::Probe,
        Some(&wrong),
        None,
        DEFAULT_MAX_FRAME,
        DEADLINE,
    )
    .await;
    // The client checks the node's proof first, finds it wrong and leaves: the node sees the
    // handshake end unfinished. Neither side ever sees the other's token.
    assert!(matches!(client, Err(ProtocolError::Auth(_))));
    assert!(node.await.unwrap().is_err());
}

#[test]
fn frames_encode_and_decode_without_a_socket() {
    let mut wire = BytesMut::new();
    encode_frame(&Msg::Heartbeat, &mut wire, DEFAULT_MAX_FRAME).unwrap();
    encode_frame(&Msg::StatusRequest, &mut wire, DEFAULT_MAX_FRAME).unwrap();
    let mut codec = MessageCodec::new(DEFAULT_MAX_FRAME);
    assert_eq!(codec.decode(&mut wire).unwrap(), Some(Msg::Heartbeat));
    assert_eq!(codec.decode(&mut wire).unwrap(), Some(Msg::StatusRequest));
    assert_eq!(codec.decode(&mut wire).unwrap(), None);
}

#[test]
fn a_busy_error_says_who_holds_the_node() {
    let holder = Holder {
        root: "10.0.0.5:40000".into(),
        held_s: 90,
    };
    let err = WireError::new(ErrorKind::Busy(holder.clone()), "node is busy");
    // A program matches the kind; a person reads the message.
    match &err.kind {
        ErrorKind::Busy(h) => assert_eq!(h, &holder),
        other => panic!("{other}"),
    }
    assert_eq!(err.to_string(), "Busy: node is busy");
}
