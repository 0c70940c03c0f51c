//! Round trips through a real server on 127.0.0.1:0: client to file, the token handshake both
//! ways (a replayed one proves nothing), shutdown keeping buffered lines, the connection limit
//! and guests' eviction, the file's rotation, and the tracing layer.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use protocol::auth::Token;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::client::{self, LogClient, QUEUE_CAPACITY};
use crate::error::HandshakeError;
use crate::{Error, LogLayer, ServerConfig, handshake, run};

const DEADLINE: Duration = Duration::from_secs(20);

fn temp_path(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!(
        "pcluster-logserver-test-{}-{n}-{name}.log",
        std::process::id()
    ))
}

struct TestServer {
    addr: SocketAddr,
    path: PathBuf,
    shutdown: CancellationToken,
    handle: JoinHandle<Result<(), Error>>,
}

impl TestServer {
    async fn start(name: &str, configure: impl FnOnce(&mut ServerConfig)) -> TestServer {
        Self::start_on("127.0.0.1:0", name, configure).await
    }

    async fn start_on(
        addr: &str,
        name: &str,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> TestServer {
        let listener = TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let path = temp_path(name);
        let _ = std::fs::remove_file(&path);
        let mut config = ServerConfig {
            outfile: path.clone(),
            echo_stdout: false,
            ..ServerConfig::default()
        };
        configure(&mut config);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(run(listener, config, shutdown.clone()));
        TestServer {
            addr,
            path,
            shutdown,
            handle,
        }
    }

    fn contents(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// Waits until the file (flushed at least every second) satisfies `f`.
    async fn wait_for(&self, what: &str, f: impl Fn(&str) -> bool) {
        let holds = || std::future::ready(f(&self.contents()));
        if let Err(e) = kit::poll(DEADLINE, what, holds).await {
            panic!("{e}");
        }
    }

    async fn stop(self) -> String {
        self.shutdown.cancel();
        self.handle.await.expect("join").expect("server result");
        let contents = std::fs::read_to_string(&self.path).unwrap_or_default();
        let _ = std::fs::remove_file(&self.path);
        contents
    }
}

/// The message part of each text record, after checking its time and source.
fn messages(contents: &str) -> Vec<String> {
    contents
        .lines()
        .map(|record| {
            let mut parts = record.splitn(3, ' ');
            let time = parts.next().expect("time");
            humantime::parse_rfc3339(time).expect("RFC 3339 time");
            let source: SocketAddr = parts.next().expect("source").parse().expect("source");
            assert!(source.ip().is_loopback());
            parts.next().unwrap_or("").to_owned()
        })
        .collect()
}

async fn flush(client: &LogClient) -> bool {
    let client = client.clone();
    tokio::task::spawn_blocking(move || client.flush(DEADLINE))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_lines_reach_the_file_in_order() {
    let server = TestServer::start("roundtrip", |_| {}).await;
    let client = LogClient::new(server.addr.to_string(), None);
    for i in 0..500 {
        client.send(format!("line {i}"));
    }
    client.send("two\nlines");
    assert!(flush(&client).await);
    let got = messages(&server.stop().await);
    let mut want: Vec<String> = (0..500).map(|i| format!("line {i}")).collect();
    want.push("two lines".into());
    assert_eq!(got, want);
    assert_eq!(client.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_tcp_lines_split_crlf_and_partial_last_line() {
    let server = TestServer::start("plain", |_| {}).await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    for chunk in [
        &b"hel"[..],
        b"lo\r",
        b"\nbad \xff\n",
        b"no newline at the end",
    ] {
        s.write_all(chunk).await.expect("write");
        s.flush().await.expect("flush");
    }
    s.shutdown().await.expect("shutdown");
    // The server closes once it has handed everything over.
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("read");
    assert_eq!(
        messages(&server.stop().await),
        ["hello", "bad \u{fffd}", "no newline at the end"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlong_lines_are_one_truncated_record() {
    let server = TestServer::start("truncate", |c| c.max_line = 10).await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let long = vec![b'x'; 100_000];
    s.write_all(&long).await.expect("write");
    s.write_all(b"\nshort\n").await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.expect("read");
    assert_eq!(
        messages(&server.stop().await),
        ["xxxxxxxxxx [truncated 99990 bytes]", "short"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_records_carry_time_source_and_message() {
    let server = TestServer::start("json", |c| c.json = true).await;
    let client = LogClient::new(server.addr.to_string(), None);
    client.send("quote \" and tab \t");
    assert!(flush(&client).await);
    let contents = server.stop().await;
    let record: serde_json::Value = serde_json::from_str(contents.trim_end()).expect("json");
    assert_eq!(record["message"], "quote \" and tab \t");
    humantime::parse_rfc3339(record["time"].as_str().expect("time")).expect("time");
    assert!(
        record["source"]
            .as_str()
            .expect("source")
            .starts_with("127.0.0.1:")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_keeps_lines_already_read_including_a_partial_one() {
    let server = TestServer::start("shutdown", |_| {}).await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"complete\npartial").await.expect("write");
    // Once the complete line is on disk, the partial one has been read too (same write).
    server
        .wait_for("the complete line", |c| c.contains("complete"))
        .await;
    let contents = server.stop().await;
    assert_eq!(messages(&contents), ["complete", "partial"]);
    drop(s);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_accepted_round_trip() {
    let token = Token::new("cluster secret");
    let server = TestServer::start("token-ok", |c| c.token = Some(token.clone())).await;
    let client = LogClient::new(server.addr.to_string(), Some(token));
    client.send("authenticated line");
    assert!(flush(&client).await);
    assert_eq!(messages(&server.stop().await), ["authenticated line"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_is_refused_and_writes_nothing() {
    let server = TestServer::start("token-bad", |c| c.token = Some(Token::new("right"))).await;

    // Raw: the server greets, then says why and closes.
    let s = TcpStream::connect(server.addr).await.expect("connect");
    let mut s = BufReader::new(s);
    let mut greeting = String::new();
    s.read_line(&mut greeting).await.expect("greeting");
    assert_eq!(greeting, format!("{}\n", handshake::GREETING));
    let (_, first) = handshake::start(&Token::new("wrong")).expect("start");
    s.get_mut()
        .write_all(format!("{first}sneaked in\n").as_bytes())
        .await
        .expect("answer");
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.expect("reply");
    assert_eq!(reply, "ERR wrong token\n");

    // Through the client's connect.
    let addr = server.addr.to_string();
    let refused = tokio::task::spawn_blocking(move || {
        client::connect(&addr, Some(&Token::new("wrong"))).map(|_| ())
    })
    .await
    .expect("join");
    assert!(
        matches!(refused, Err(HandshakeError::Refused(ref r)) if r == "wrong token"),
        "{refused:?}"
    );

    // Our client without a token sees the greeting and says it needs the token.
    let addr = server.addr.to_string();
    let plain = tokio::task::spawn_blocking(move || client::connect(&addr, None).map(|_| ()))
        .await
        .expect("join");
    assert!(
        matches!(plain, Err(HandshakeError::TokenRequired)),
        "{plain:?}"
    );

    // nc without a token gets the greeting and a refusal.
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"hello without token\n").await.expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).await.expect("reply");
    assert!(
        reply.ends_with("ERR malformed handshake message\n"),
        "{reply}"
    );

    assert_eq!(server.stop().await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_a_token_refuses_a_server_without_one_and_seals_with_one() {
    let plain = TestServer::start("token-none", |_| {}).await;
    let addr = plain.addr.to_string();
    let refused = tokio::task::spawn_blocking(move || {
        client::connect(&addr, Some(&Token::new("t"))).map(|_| ())
    })
    .await
    .expect("join");
    assert!(
        matches!(refused, Err(HandshakeError::ServerWithoutToken)),
        "{refused:?}"
    );
    let addr = plain.addr.to_string();
    let conn = tokio::task::spawn_blocking(move || client::connect(&addr, None))
        .await
        .expect("join")
        .expect("plain connect");
    assert!(!conn.is_encrypted());
    plain.stop().await;

    let token = Token::new("t");
    let sealed = TestServer::start("token-sealed", |c| c.token = Some(token.clone())).await;
    let addr = sealed.addr.to_string();
    let conn = tokio::task::spawn_blocking(move || client::connect(&addr, Some(&token)))
        .await
        .expect("join")
        .expect("sealed connect");
    assert!(conn.is_encrypted());
    sealed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_has_a_deadline() {
    let server = TestServer::start("token-slow", |c| {
        c.token = Some(Token::new("t"));
        c.handshake_timeout = Duration::from_millis(200);
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let mut reply = String::new();
    tokio::time::timeout(DEADLINE, s.read_to_string(&mut reply))
        .await
        .expect("server closes a silent client")
        .expect("read");
    assert!(reply.ends_with("ERR handshake timed out\n"), "{reply}");
    server.stop().await;
}

#[test]
fn client_refuses_a_server_with_the_wrong_token() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let impostor = std::thread::spawn(move || {
        use std::io::{BufRead, Write};
        let (mut s, _) = listener.accept().expect("accept");
        s.write_all(format!("{}\n", handshake::GREETING).as_bytes())
            .expect("greeting");
        let mut first = String::new();
        std::io::BufReader::new(&s)
            .read_line(&mut first)
            .expect("first");
        // It cannot open the client's message; it answers with one of its own.
        let impostor = Token::new("not the token");
        let (_, own) = handshake::start(&impostor).expect("start");
        let (reply, _) = handshake::respond(&impostor, own.trim_end()).expect("respond");
        s.write_all(reply.as_bytes()).expect("reply");
    });
    let result = client::connect(&addr, Some(&Token::new("the token")));
    assert!(
        matches!(result, Err(HandshakeError::BadProof)),
        "{:?}",
        result.map(|_| ())
    );
    impostor.join().expect("impostor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_are_closed() {
    let server = TestServer::start("limit", |c| c.max_connections = 1).await;
    let mut first = TcpStream::connect(server.addr).await.expect("connect");
    first.write_all(b"first\n").await.expect("write");
    server
        .wait_for("the first line", |c| c.contains("first"))
        .await;
    let mut second = TcpStream::connect(server.addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(DEADLINE, second.read(&mut buf))
        .await
        .expect("second connection closed");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    drop(first);
    assert_eq!(messages(&server.stop().await), ["first"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_lines_are_reported_once_the_server_is_back() {
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let client = LogClient::new(addr.to_string(), None);
    for i in 0..2 * QUEUE_CAPACITY {
        client.send(format!("early {i}"));
    }
    let dropped = client.dropped();
    assert!(dropped > 0);
    let server = TestServer::start_on(&addr.to_string(), "dropped", |_| {}).await;
    // The queue drains once the client's backoff lets it reconnect.
    assert!(flush(&client).await);
    client.send("after");
    assert!(flush(&client).await);
    let got = messages(&server.stop().await);
    assert_eq!(got.len() as u64, 2 * QUEUE_CAPACITY as u64 - dropped + 1);
    // The sender thread may take a batch out while drops go on, so a line in the middle can
    // report some; the last sends were dropped, so "after" reports the rest.
    let reported: u64 = got
        .iter()
        .filter_map(|m| m.split_once(" [pcluster-log: "))
        .map(|(_, n)| {
            n.trim_end_matches(" lines dropped]")
                .parse::<u64>()
                .expect("count")
        })
        .sum();
    assert_eq!(reported, dropped);
    assert!(
        got.last()
            .is_some_and(|m| m.starts_with("after [pcluster-log: ")),
        "{:?}",
        got.last()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_layer_formats_events_with_tag_level_target_and_fields() {
    use tracing_subscriber::layer::SubscriberExt;
    let server = TestServer::start("layer", |_| {}).await;
    let client = LogClient::new(server.addr.to_string(), None);
    let subscriber = tracing_subscriber::registry()
        .with(LogLayer::new(client.clone(), "node 127.0.0.2:6000".into()));
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(worker = 1, task = "simple_task", "task started");
        tracing::warn!(reason = "out of fuel", "task failed");
        tracing::error!(target: "pcluster_logserver::client", "never sent");
    });
    assert!(flush(&client).await);
    let target = module_path!();
    assert_eq!(
        messages(&server.stop().await),
        [
            format!("node 127.0.0.2:6000 INFO {target}: task started worker=1 task=simple_task"),
            format!("node 127.0.0.2:6000 WARN {target}: task failed reason=\"out of fuel\""),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_config_and_unwritable_file_are_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let config = ServerConfig {
        max_connections: 0,
        ..ServerConfig::default()
    };
    let result = run(listener, config, CancellationToken::new()).await;
    assert!(matches!(result, Err(Error::Config(_))), "{result:?}");

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let config = ServerConfig {
        outfile: temp_path("missing-dir").join("log"),
        ..ServerConfig::default()
    };
    let result = run(listener, config, CancellationToken::new()).await;
    assert!(
        matches!(result, Err(Error::OpenOutfile { .. })),
        "{result:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_after_the_idle_timeout() {
    let server = TestServer::start("idle", |c| {
        c.idle_timeout = Some(Duration::from_millis(200));
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(b"then silence\nhalf").await.expect("write");
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, s.read_to_end(&mut rest))
        .await
        .expect("the server closes an idle connection")
        .expect("read");
    assert_eq!(messages(&server.stop().await), ["then silence", "half"]);
}

/// A client that replays a first handshake message it saw (it has not the ephemeral key that
/// made it): connects, reads the greeting, sends `first`, and reads the server's `OK`.
async fn replayer(addr: SocketAddr, first: &str) -> BufReader<TcpStream> {
    let s = TcpStream::connect(addr).await.expect("connect");
    let mut s = BufReader::new(s);
    let mut line = String::new();
    s.read_line(&mut line).await.expect("greeting");
    assert_eq!(line, format!("{}\n", handshake::GREETING));
    s.get_mut()
        .write_all(first.as_bytes())
        .await
        .expect("replay");
    line.clear();
    s.read_line(&mut line).await.expect("reply");
    assert!(
        line.starts_with("OK "),
        "the server cannot tell a replay: {line}"
    );
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_handshake_is_a_guest_evicted_for_a_client_with_the_key() {
    let token = Token::new("cluster secret");
    let server = TestServer::start("replay", |c| {
        c.token = Some(token.clone());
        c.max_connections = 1;
    })
    .await;
    // A first message as a real client sends it, seen on the wire and replayed.
    let (_, first) = handshake::start(&token).expect("start");
    let mut replayed = replayer(server.addr, &first).await;
    // The only slot is the replayer's, but it has proved nothing: the real client gets in.
    let client = LogClient::new(server.addr.to_string(), Some(token.clone()));
    client.send("from the key's holder");
    assert!(flush(&client).await);
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, replayed.read_to_end(&mut rest))
        .await
        .expect("the replayer is evicted")
        .expect("read");
    server
        .wait_for("the client's line", |c| c.contains("from the key's holder"))
        .await;
    drop(client);
    assert_eq!(messages(&server.stop().await), ["from the key's holder"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayer_must_prove_the_key_within_the_handshake_timeout() {
    let token = Token::new("cluster secret");
    let server = TestServer::start("replay-deadline", |c| {
        c.token = Some(token.clone());
        c.handshake_timeout = Duration::from_millis(300);
    })
    .await;
    let (_, first) = handshake::start(&token).expect("start");
    // Silent after the handshake: closed at the deadline.
    let mut silent = replayer(server.addr, &first).await;
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, silent.read_to_end(&mut rest))
        .await
        .expect("closed at the deadline")
        .expect("read");
    // Sending what it cannot seal: closed at once, nothing written.
    let mut forger = replayer(server.addr, &first).await;
    forger
        .get_mut()
        .write_all(&[0u8, 0, 0, 40].repeat(16))
        .await
        .expect("write");
    tokio::time::timeout(DEADLINE, forger.read_to_end(&mut rest))
        .await
        .expect("closed")
        .ok();
    assert_eq!(server.stop().await, "");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_server_evicts_a_silent_stranger_for_a_newcomer() {
    let server = TestServer::start("evict", |c| c.max_connections = 1).await;
    let mut stranger = TcpStream::connect(server.addr).await.expect("connect");
    // Accepted in order: the stranger holds the only slot, as a guest (it sent no line).
    let mut newcomer = TcpStream::connect(server.addr).await.expect("connect");
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(DEADLINE, stranger.read(&mut buf))
        .await
        .expect("the older stranger is evicted");
    assert!(matches!(closed, Ok(0) | Err(_)), "{closed:?}");
    newcomer.write_all(b"newcomer\n").await.expect("write");
    server
        .wait_for("the newcomer's line", |c| c.contains("newcomer"))
        .await;
    drop(newcomer);
    assert_eq!(messages(&server.stop().await), ["newcomer"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_is_rotated_past_its_cap_keeping_so_many() {
    use std::os::unix::fs::PermissionsExt as _;
    let server = TestServer::start("rotate", |c| {
        c.max_file_bytes = Some(2_000);
        c.keep_files = 2;
    })
    .await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let lines: String = (0..200).map(|i| format!("line {i:04}\n")).collect();
    s.write_all(lines.as_bytes()).await.expect("write");
    drop(s);
    server
        .wait_for("the last line", |c| c.contains("line 0199"))
        .await;
    let path = server.path.clone();
    let rotated = |n: usize| crate::rotation::numbered(&path, n);
    let current = server.stop().await;
    let mut files = vec![current];
    for n in 1..=2 {
        let meta = std::fs::metadata(rotated(n)).expect("a rotated file");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        files.push(std::fs::read_to_string(rotated(n)).expect("read"));
    }
    assert!(!rotated(3).exists(), "only two are kept");
    for (n, text) in files.iter().enumerate() {
        assert!(text.len() <= 2_000, "file {n}: {} bytes", text.len());
        assert!(!text.is_empty(), "file {n} is empty");
    }
    // Newest first, and every record whole: the kept files end where the next begins.
    let kept: Vec<String> = files.iter().rev().flat_map(|t| messages(t)).collect();
    let last = kept.last().expect("records");
    assert_eq!(last, "line 0199");
    let first: usize = kept[0]["line ".len()..].parse().expect("number");
    let want: Vec<String> = (first..200).map(|i| format!("line {i:04}")).collect();
    assert_eq!(kept, want);
    for n in 1..=2 {
        let _ = std::fs::remove_file(rotated(n));
    }
}
