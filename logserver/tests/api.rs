//! The log server's public API, by use: run a server, send it lines through a [`LogClient`],
//! a one-shot [`pcluster_logserver::log`] and `tracing` events through a [`LogLayer`]; require a
//! token; and split a byte stream with the line codec on its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use pcluster_logserver::codec::{Line, LineCodec};
use pcluster_logserver::{LogClient, LogLayer, ServerConfig};
use protocol::auth::Token;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::codec::Decoder as _;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt as _;

const DEADLINE: Duration = Duration::from_secs(20);

/// A server on a free loopback port writing to a file of its own.
struct Server {
    addr: SocketAddr,
    outfile: PathBuf,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), pcluster_logserver::Error>>,
}

async fn start(name: &str, token: Option<Token>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let outfile = std::env::temp_dir().join(format!(
        "pcluster-logserver-api-{}-{name}.log",
        std::process::id()
    ));
    let _ = std::fs::remove_file(&outfile);
    let config = ServerConfig {
        outfile: outfile.clone(),
        // Records go to the file only, not to the test's stdout.
        echo_stdout: false,
        token,
        ..ServerConfig::default()
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(pcluster_logserver::run(listener, config, shutdown.clone()));
    Server {
        addr,
        outfile,
        shutdown,
        task,
    }
}

impl Server {
    /// Shuts down; `run` returns once every record read is written and flushed.
    async fn stop(self) -> Vec<String> {
        let Server {
            outfile,
            shutdown,
            task,
            ..
        } = self;
        shutdown.cancel();
        task.await.expect("join").expect("the server ran");
        let messages = messages(&outfile);
        let _ = std::fs::remove_file(&outfile);
        messages
    }
}

/// The messages recorded in `outfile` so far: each record is `<time> <source> <message>`.
fn messages(outfile: &Path) -> Vec<String> {
    std::fs::read_to_string(outfile)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.splitn(3, ' ').nth(2).map(str::to_owned))
        .collect()
}

/// `client.flush` blocks the thread until the lines are written, so not on the runtime's.
async fn flush(client: &LogClient, timeout: Duration) -> bool {
    let client = client.clone();
    tokio::task::spawn_blocking(move || client.flush(timeout))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_a_one_shot_line_and_tracing_events_are_recorded() {
    let server = start("plain", None).await;

    // A client sends in the background: `send` never blocks, `flush` waits for the socket.
    let client = LogClient::new(server.addr.to_string(), None);
    assert_eq!(client.addr(), server.addr.to_string());
    client.send("first line");
    client.send("a line\nwith a newline is one record");
    assert!(flush(&client, DEADLINE).await);
    assert_eq!(client.dropped(), 0);

    // One line without keeping a client (blocking, briefly).
    let addr = server.addr.to_string();
    tokio::task::spawn_blocking(move || pcluster_logserver::log("one-shot line", &addr))
        .await
        .expect("join");

    // `tracing` events through the layer: `<tag> <LEVEL> <target>: <message> key=value`.
    let layer = LogLayer::new(client.clone(), "api-test".into());
    let subscriber = tracing_subscriber::registry().with(layer);
    tracing::subscriber::with_default(subscriber, || {
        tracing::info!(target: "api", items = 3, "from tracing");
    });
    assert!(flush(&client, DEADLINE).await);

    // Stopping returns once every record read is written and flushed.
    let mut messages = server.stop().await;
    messages.sort();
    assert_eq!(
        messages,
        [
            "a line with a newline is one record",
            "api-test INFO api: from tracing items=3",
            "first line",
            "one-shot line",
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_token_only_clients_that_hold_it_are_recorded() {
    let server = start("token", Some(Token::new("api secret"))).await;
    let good = LogClient::new(server.addr.to_string(), Some(Token::new("api secret")));
    good.send("proved the token");
    assert!(flush(&good, DEADLINE).await);
    let bad = LogClient::new(server.addr.to_string(), Some(Token::new("a guess")));
    bad.send("did not");
    assert!(!flush(&bad, Duration::from_millis(300)).await);
    assert_eq!(server.stop().await, ["proved the token"]);
}

#[test]
fn the_codec_splits_lines_and_cuts_long_ones() {
    let mut codec = LineCodec::new(8);
    assert_eq!(codec.max_line(), 8);
    let mut buf = BytesMut::from(&b"short\nmuch too long\r\npart"[..]);
    let line = |text: &str, truncated| Line {
        text: text.into(),
        truncated,
    };
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(line("short", 0)));
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(line("much too", 5)));
    // An unfinished line waits for its newline, or for the end of the stream.
    assert_eq!(codec.decode(&mut buf).unwrap(), None);
    assert!(codec.has_partial(&buf));
    assert_eq!(codec.decode_eof(&mut buf).unwrap(), Some(line("part", 0)));
    assert_eq!(codec.decode_eof(&mut buf).unwrap(), None);
}
