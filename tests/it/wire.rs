//! The encrypted wire and a node no stranger can stall, over real TCP on loopback with real
//! wasm: a recording proxy finds none of the items' bytes; a proxy that flips one byte makes
//! the root drop that node and re-dispatch its items; 1,024 connections held open do not keep
//! a root out; a peer that never returns outputs is dropped; a second client with the token
//! cannot reset, pause or close a node another root holds.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::auth::Token;
use protocol::handshake::{self, Role};
use protocol::{ErrorKind, Msg};
use root::{Root, RootOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::common::{assert_same, chain, local_node, scripted_node, setup_collect, setup_done, w1};

const TOKEN: &str = "wire test token";
const DEADLINE: Duration = Duration::from_secs(60);
const MARKER: &str = "zebra-crossing-marker";

fn options(token: Option<&str>) -> RootOptions {
    RootOptions {
        token: token.map(Token::new),
        ..RootOptions::default()
    }
}

/// Items carrying the marker, through a one-task identity chain: outputs are the inputs.
fn marked(n: u64) -> Vec<String> {
    (0..n).map(|i| format!("{MARKER}-{i}")).collect()
}

/// Relays one connection both ways; records what the node sent and what the root sent, and
/// flips one byte of the node's stream once `flip_after` bytes have passed (if set).
async fn relay(
    client: TcpStream,
    node: SocketAddr,
    record: Arc<Mutex<Vec<u8>>>,
    flip_after: Option<usize>,
    flipped: Arc<AtomicBool>,
) {
    let Ok(upstream) = TcpStream::connect(node).await else {
        return;
    };
    let (mut cr, mut cw) = client.into_split();
    let (mut ur, mut uw) = upstream.into_split();
    let rec = record.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        while let Ok(n) = cr.read(&mut buf).await {
            if n == 0 || uw.write_all(&buf[..n]).await.is_err() {
                break;
            }
            rec.lock().unwrap().extend_from_slice(&buf[..n]);
        }
        let _ = uw.shutdown().await;
    });
    let mut buf = vec![0u8; 64 << 10];
    let mut passed = 0usize;
    while let Ok(n) = ur.read(&mut buf).await {
        if n == 0 {
            break;
        }
        if let Some(at) = flip_after
            && passed + n > at
            && !flipped.swap(true, Ordering::SeqCst)
        {
            buf[at.saturating_sub(passed).min(n - 1)] ^= 0x01;
        }
        passed += n;
        record.lock().unwrap().extend_from_slice(&buf[..n]);
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = cw.shutdown().await;
    up.abort();
}

/// A TCP proxy in front of `node`; returns its address.
async fn proxy(
    node: SocketAddr,
    record: Arc<Mutex<Vec<u8>>>,
    flip_after: Option<usize>,
    flipped: Arc<AtomicBool>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(relay(
                client,
                node,
                record.clone(),
                flip_after,
                flipped.clone(),
            ));
        }
    });
    addr
}

async fn run_items(root: &Root, items: &[String]) -> Vec<String> {
    let collected = setup_collect(root, chain("identity", &[("w1_identity", false, "")]))
        .await
        .expect("setup");
    for chunk in items.chunks(5_000) {
        root.feed(chunk).await.expect("feed");
    }
    tokio::time::timeout(DEADLINE, root.wait_empty())
        .await
        .expect("run ends")
        .expect("run succeeds");
    collected.texts()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_proxy_finds_none_of_the_items() {
    let (node, stop) = local_node("127.0.0.2", 0, 1, Some(TOKEN)).await;
    let record = Arc::new(Mutex::new(Vec::new()));
    let via = proxy(node, record.clone(), None, Arc::default()).await;
    let root = Root::with_nodes(options(Some(TOKEN)), &[via])
        .await
        .expect("root");
    let items = marked(20_000);
    let got = run_items(&root, &items).await;
    assert_same(&got, &sorted(items));
    root.close().await.expect("close");
    let bytes = record.lock().unwrap().clone();
    assert!(bytes.len() > 20_000 * MARKER.len(), "{} bytes", bytes.len());
    assert!(
        !bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "the marker crossed the wire in the clear"
    );
    // The same run without a token shows the marker: the check can fail.
    let (plain, stop_plain) = local_node("127.0.0.2", 0, 1, None).await;
    let record = Arc::new(Mutex::new(Vec::new()));
    let via = proxy(plain, record.clone(), None, Arc::default()).await;
    let root = Root::with_nodes(options(None), &[via]).await.expect("root");
    run_items(&root, &marked(100)).await;
    root.close().await.expect("close");
    let bytes = record.lock().unwrap().clone();
    assert!(bytes.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()));
    stop.cancel();
    stop_plain.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flipped_byte_loses_that_node_and_its_items_are_redone_exactly() {
    let (a, stop_a) = local_node("127.0.0.2", 0, 1, Some(TOKEN)).await;
    let (b, stop_b) = local_node("127.0.0.3", 0, 1, Some(TOKEN)).await;
    let flipped = Arc::new(AtomicBool::new(false));
    // Past the handshake, the welcome and the setup answer (well under 1 KiB), early in b's
    // outputs.
    let via = proxy(b, Arc::default(), Some(4_096), flipped.clone()).await;
    let root = Root::with_nodes(options(Some(TOKEN)), &[via])
        .await
        .expect("root");
    let collected = setup_collect(&root, chain("identity", &[("w1_identity", false, "")]))
        .await
        .expect("setup");
    let items = marked(200_000);
    let mut chunks = items.chunks(5_000);
    // b alone takes the first items, so it surely holds some when its outputs are corrupted
    // (with both nodes from the start, a could take nearly all of them).
    root.feed(chunks.next().unwrap()).await.expect("feed");
    root.add_node(a).await.expect("a joins");
    for chunk in chunks {
        root.feed(chunk).await.expect("feed");
    }
    tokio::time::timeout(DEADLINE, root.wait_empty())
        .await
        .expect("run ends")
        .expect("run succeeds");
    let got = collected.texts();
    assert!(flipped.load(Ordering::SeqCst), "the proxy flipped a byte");
    assert_same(&got, &sorted(items));
    let counters = root.counters().await.expect("counters");
    assert!(
        counters.redispatched > 0 && counters.nodes == 1,
        "{counters:?}"
    );
    root.close().await.expect("close");
    stop_a.cancel();
    stop_b.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connections_held_open_do_not_keep_a_root_out() {
    for token in [None, Some(TOKEN)] {
        let (node, stop) = local_node("127.0.0.2", 0, 1, token).await;
        let mut held = Vec::new();
        for _ in 0..1024 {
            let stream = TcpStream::connect(node).await.expect("connect");
            if token.is_none() {
                // Without a token anyone completes the handshake: a status connection.
                let (conn, _) =
                    handshake::connect(stream, Role::Probe, None, None, 1 << 20, DEADLINE)
                        .await
                        .expect("probe handshake");
                held.push(Ok(conn));
            } else {
                // A stranger without the token: opens and says nothing.
                held.push(Err(stream));
            }
        }
        let root = Root::with_nodes(options(token), &[node])
            .await
            .expect("the root gets in");
        let collected = setup_collect(&root, w1()).await.expect("setup");
        let n = 50_000;
        root.feed(kit::w1_inputs(n)).await.expect("feed");
        tokio::time::timeout(DEADLINE, root.wait_empty())
            .await
            .expect("run ends")
            .expect("run succeeds");
        assert_same(&collected.texts(), &kit::w1_expected(n));
        root.close().await.expect("close");
        drop(held);
        stop.cancel();
    }
}

/// A peer that completes the handshake, answers setup and heartbeats, takes items and never
/// returns outputs. Counts the items it swallowed.
async fn black_hole(swallowed: Arc<AtomicU64>) -> SocketAddr {
    scripted_node("127.0.0.4", "black hole", move |conn| {
        let swallowed = swallowed.clone();
        async move {
            let (mut reader, mut writer) = conn.split();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Msg>(16);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(200));
                loop {
                    let msg = tokio::select! {
                        m = rx.recv() => match m { Some(m) => m, None => return },
                        _ = tick.tick() => Msg::Heartbeat,
                    };
                    if writer.write_message(&msg).await.is_err() {
                        return;
                    }
                }
            });
            while let Ok(Some(msg)) = reader.read_message().await {
                match msg {
                    Msg::Setup(_) => {
                        let _ = tx.send(setup_done(4096, 16 << 20)).await;
                    }
                    Msg::Items(items) => {
                        swallowed.fetch_add(items.items.len() as u64, Ordering::SeqCst);
                    }
                    _ => {}
                }
            }
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_never_returns_outputs_is_dropped_and_its_items_redone() {
    let (real, stop) = local_node("127.0.0.2", 0, 1, None).await;
    let swallowed = Arc::new(AtomicU64::new(0));
    let hole = black_hole(swallowed.clone()).await;
    let options = RootOptions {
        heartbeat_timeout: Duration::from_secs(2),
        ..RootOptions::default()
    };
    // The black hole alone first, so it surely takes items; the real node joins after.
    let root = Root::with_nodes(options, &[hole]).await.expect("root");
    let mut spec = chain("identity", &[("w1_identity", false, "")]);
    spec.limits.deadline_ms = 500;
    let collected = setup_collect(&root, spec).await.expect("setup");
    let items = marked(20_000);
    root.feed(&items).await.expect("feed");
    crate::common::wait_until(DEADLINE, "the black hole takes items", || {
        swallowed.load(Ordering::SeqCst) > 0
    })
    .await;
    root.add_node(real).await.expect("add the real node");
    tokio::time::timeout(DEADLINE, root.wait_empty())
        .await
        .expect("the run does not hang on the black hole")
        .expect("run succeeds");
    assert!(
        swallowed.load(Ordering::SeqCst) > 0,
        "the black hole got items"
    );
    assert_same(&collected.texts(), &sorted(items));
    let counters = root.counters().await.expect("counters");
    assert!(
        counters.redispatched > 0 && counters.nodes == 1,
        "{counters:?}"
    );
    root.close().await.expect("close");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_client_with_the_token_cannot_reset_pause_or_close_a_held_node() {
    let (node, stop) = local_node("127.0.0.2", 0, 1, Some(TOKEN)).await;
    let owner = Root::with_nodes(options(Some(TOKEN)), &[node])
        .await
        .expect("root");
    let collected = setup_collect(&owner, w1()).await.expect("setup");
    let token = Token::new(TOKEN);
    let stream = TcpStream::connect(node).await.unwrap();
    let (mut other, welcome) =
        handshake::connect(stream, Role::Root, Some(&token), None, 1 << 20, DEADLINE)
            .await
            .expect("the second client authenticates");
    assert!(welcome.busy_with.is_some(), "the node says who holds it");
    for msg in [Msg::Reset, Msg::Pause, Msg::Resume] {
        other.write_message(&msg).await.unwrap();
        let answer = loop {
            match tokio::time::timeout(DEADLINE, other.expect_message()).await {
                Ok(Ok(Msg::Heartbeat)) => continue,
                Ok(answer) => break answer,
                Err(_) => panic!("no answer to {}", msg.name()),
            }
        };
        assert!(
            matches!(&answer, Ok(Msg::Error(e)) if matches!(e.kind, ErrorKind::Busy(_))),
            "{}: {answer:?}",
            msg.name()
        );
    }
    other.write_message(&Msg::Bye).await.unwrap();
    drop(other);
    // The owner's run goes on, on a node that still has its chain.
    let n = 20_000;
    owner.feed(kit::w1_inputs(n)).await.expect("feed");
    tokio::time::timeout(DEADLINE, owner.wait_empty())
        .await
        .expect("run ends")
        .expect("run succeeds");
    assert_same(&collected.texts(), &kit::w1_expected(n));
    let status = root::node_status(node, &options(Some(TOKEN)))
        .await
        .expect("status");
    assert!(status.chain.is_some(), "{status:?}");
    owner.close().await.expect("close");
    stop.cancel();
}
