//! The log server end to end: the real `pcluster log` process, many concurrent plain-TCP
//! clients, SIGTERM, and the file checked record by record; the token handshake; the log
//! client's bounded buffer while no server is there; and 5,000 idle connections (replaying a
//! seen handshake, with a token) that cannot keep a node's task log lines out.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use logserver::LogClient;
use logserver::client::QUEUE_CAPACITY;
use protocol::auth::Token;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Child, new_key, node_process, pcluster, temp_dir, wait_until};

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const DEADLINE: Duration = Duration::from_secs(60);
const CLIENTS: usize = 20;
const LINES_PER_CLIENT: usize = 500;
/// The (client, line) that carries 1 MiB more than the server's line limit allows.
const BIG: (usize, usize) = (7, 250);

/// A `pcluster log` process with its output file in a temp dir of its own.
struct LogServer {
    child: Child,
    addr: SocketAddr,
    dir: kit::TempDir,
}

impl LogServer {
    /// Starts it on `port` of 127.0.0.1 (0: one the OS chooses).
    async fn start(name: &str, port: u16, token: Option<&str>) -> LogServer {
        let dir = temp_dir(name);
        let mut command = pcluster().log_command(port, &dir.join("cluster.log"));
        command
            .env_remove("PCLUSTER_TOKEN")
            .stdin(Stdio::null())
            // Files, not pipes: 10,000 echoed records would fill a pipe nobody reads.
            .stdout(File::create(dir.join("stdout")).expect("stdout file"))
            .stderr(File::create(dir.join("stderr")).expect("stderr file"));
        if let Some(token) = token {
            command.args(["--token", token]);
        }
        match kit::spawn_server(&mut command).await {
            Ok((child, addr)) => LogServer { child, addr, dir },
            Err(e) => panic!("{e}:\n{}", stderr(&dir)),
        }
    }

    fn stderr(&self) -> String {
        stderr(&self.dir)
    }

    /// SIGTERM, wait for a clean exit, and return the output file's contents.
    async fn stop(mut self) -> String {
        self.child.terminate().unwrap();
        let status = self.child.wait_exit(DEADLINE).await.unwrap();
        assert!(
            status.success(),
            "pcluster log exited with {status}:\n{}",
            self.stderr()
        );
        let contents = std::fs::read(self.dir.join("cluster.log")).expect("read the log file");
        String::from_utf8(contents).expect("the log file is UTF-8")
    }
}

/// What a server in `dir` wrote to stderr.
fn stderr(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("stderr")).unwrap_or_default()
}

/// One record of the text format: `<time> <source> <message>`.
#[derive(Debug)]
struct Record {
    source: SocketAddr,
    message: String,
}

fn records(contents: &str) -> Vec<Record> {
    contents
        .lines()
        .map(|line| {
            let mut parts = line.splitn(3, ' ');
            let time = parts.next().unwrap_or_default();
            assert!(is_rfc3339_micros(time), "bad time in {line:.200}");
            let source = parts
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("bad source in {line:.200}"));
            let message = parts.next().unwrap_or_default().to_owned();
            Record { source, message }
        })
        .collect()
}

/// `2024-05-06T07:08:09.123456Z`
fn is_rfc3339_micros(time: &str) -> bool {
    const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:dd.ddddddZ";
    time.len() == SHAPE.len()
        && time.bytes().zip(SHAPE).all(|(b, &s)| match s {
            b'd' => b.is_ascii_digit(),
            s => b == s,
        })
}

/// The bytes client `c` sends as its line `i`, newline included: some with invalid UTF-8,
/// some ending in CRLF, some with multi-byte characters, one far over the line limit.
fn line_bytes(c: usize, i: usize) -> Vec<u8> {
    let mut line = format!("client {c:02} line {i:03}").into_bytes();
    match i % 4 {
        0 => line.extend_from_slice(b" invalid \xff\xfe utf-8"),
        1 => line.extend_from_slice(b" ends in crlf\r"),
        _ => line.extend_from_slice(" plain ünïcode ✓".as_bytes()),
    }
    if (c, i) == BIG {
        line.extend_from_slice(b" big ");
        line.resize(line.len() + (1 << 20), b'x');
    }
    line.push(b'\n');
    line
}

/// The message the server should record for `line_bytes(c, i)` (the big line aside).
fn expected(c: usize, i: usize) -> String {
    let bytes = line_bytes(c, i);
    let text = bytes.strip_suffix(b"\n").unwrap_or(&bytes);
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    String::from_utf8_lossy(text).into_owned()
}

/// One plain-TCP client: sends its lines (every third split over three writes), closes its
/// side, and waits for the server to close, which it does once every line is handed over.
async fn plain_client(addr: SocketAddr, c: usize) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // Separate segments for the split writes.
    stream.set_nodelay(true).expect("nodelay");
    for i in 0..LINES_PER_CLIENT {
        let line = line_bytes(c, i);
        if i % 3 == 0 {
            let (a, b) = (line.len() / 3, 2 * line.len() / 3);
            for piece in [&line[..a], &line[a..b], &line[b..]] {
                stream.write_all(piece).await.expect("write");
                stream.flush().await.expect("flush");
            }
        } else {
            stream.write_all(&line).await.expect("write");
        }
    }
    stream.shutdown().await.expect("shutdown");
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("read to end");
    assert!(rest.is_empty(), "the server sent {rest:?}");
}

async fn flush(client: &LogClient, timeout: Duration) -> bool {
    let client = client.clone();
    tokio::task::spawn_blocking(move || client.flush(timeout))
        .await
        .expect("join")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_line_from_many_clients_survives_sigterm() {
    let server = LogServer::start("many-clients", 0, None).await;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|c| tokio::spawn(plain_client(server.addr, c)))
        .collect();
    for client in clients {
        client.await.expect("client task");
    }
    let contents = server.stop().await;
    let records = records(&contents);
    assert_eq!(records.len(), CLIENTS * LINES_PER_CLIENT);

    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut big = Vec::new();
    let big_prefix = format!("client {:02} line {:03} ", BIG.0, BIG.1);
    for record in &records {
        assert_eq!(record.source.ip(), LOCALHOST);
        if record.message.starts_with(&big_prefix) {
            big.push(record);
        } else {
            *seen.entry(&record.message).or_default() += 1;
        }
    }
    for c in 0..CLIENTS {
        for i in 0..LINES_PER_CLIENT {
            if (c, i) == BIG {
                continue;
            }
            let want = expected(c, i);
            assert_eq!(seen.get(want.as_str()), Some(&1), "record {want:?}");
        }
    }

    assert_eq!(big.len(), 1, "the 1 MiB line is one record");
    let big = &big[0].message;
    assert!(big.contains(" big xxxx"), "{big:.200}");
    assert!(
        big.contains(" [truncated "),
        "{:.200}",
        &big[big.len() - 100..]
    );
    assert!(big.len() < 1 << 20, "cut to the line limit");

    // Each client's records come from its one connection, and no two clients share one.
    let mut sources: HashMap<usize, SocketAddr> = HashMap::new();
    for record in &records {
        let c: usize = record.message[7..9].parse().expect("client number");
        assert_eq!(*sources.entry(c).or_insert(record.source), record.source);
    }
    let mut distinct: Vec<_> = sources.values().collect();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), CLIENTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_clients_with_the_token_are_logged() {
    let server = LogServer::start("token", 0, Some("integration secret")).await;
    let addr = server.addr.to_string();

    let good = LogClient::new(addr.clone(), Some(Token::new("integration secret")));
    good.send("from a client with the token");
    assert!(flush(&good, DEADLINE).await);

    let bad = LogClient::new(addr, Some(Token::new("a guess")));
    bad.send("from a client with a wrong token");
    assert!(!flush(&bad, Duration::from_millis(500)).await);

    let mut plain = TcpStream::connect(server.addr).await.expect("connect");
    plain
        .write_all(b"from nc without a token\n")
        .await
        .expect("write");
    let mut reply = String::new();
    plain.read_to_string(&mut reply).await.expect("reply");
    assert!(reply.starts_with("PCLUSTER-LOG-NOISE\n"), "{reply}");
    assert!(reply.contains("\nERR "), "{reply}");

    let messages: Vec<String> = records(&server.stop().await)
        .into_iter()
        .map(|r| r.message)
        .collect();
    assert_eq!(messages, ["from a client with the token"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_counts_dropped_lines_while_no_server_is_there() {
    // A port the server had and gave up (it stopped), so that the client starts with no
    // server there; the server comes back on it below, as a restarted log server does.
    let first = LogServer::start("dropped-first", 0, None).await;
    let port = first.addr.port();
    assert_eq!(first.stop().await, "");
    let client = LogClient::new(format!("127.0.0.1:{port}"), None);
    let total = 3 * QUEUE_CAPACITY;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 0..total {
        let t = Instant::now();
        client.send(format!("early {i}"));
        slowest = slowest.max(t.elapsed());
    }
    // Generous bounds: the point is that no send waits on the network.
    assert!(slowest < Duration::from_secs(1), "a send took {slowest:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let dropped = client.dropped();
    assert!(
        dropped > 0 && dropped as usize >= total - 2 * QUEUE_CAPACITY,
        "{dropped} dropped"
    );
    assert!(!flush(&client, Duration::from_millis(200)).await);

    // The server comes up; the client finds it on its own and reports what it dropped.
    let server = LogServer::start("dropped", port, None).await;
    assert!(flush(&client, DEADLINE).await);
    client.send("after");
    assert!(flush(&client, DEADLINE).await);
    let messages: Vec<String> = records(&server.stop().await)
        .into_iter()
        .map(|r| r.message)
        .collect();
    assert_eq!(messages.len() as u64, total as u64 - dropped + 1);
    let reported: u64 = messages
        .iter()
        .filter_map(|m| m.split_once(" [pcluster-log: "))
        .map(|(_, n)| {
            n.trim_end_matches(" lines dropped]")
                .parse::<u64>()
                .expect("dropped count")
        })
        .sum();
    assert_eq!(reported, dropped);
    assert!(
        messages
            .last()
            .is_some_and(|m| m.starts_with("after [pcluster-log: ")),
        "{:?}",
        messages.last()
    );
}

/// Connections held open, idle, against one log server: more than its 4,096 slots.
const IDLE_CONNECTIONS: usize = 5_000;
/// How soon a node's task log lines must be in the file once its run is over.
const LINES_WITHIN: Duration = Duration::from_secs(2);

/// The first handshake line a node sends its log server with `keyed` (its `--token-file`),
/// as a stranger who saw it on the wire could replay it: caught by a listener posing as the
/// log server for a node started only for that.
async fn seen_first_message(keyed: &[&str]) -> String {
    let listener = tokio::net::TcpListener::bind((LOCALHOST, 0))
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let (_node, _) = node_process("127.0.0.6", 0, port, 1, keyed).await;
    let (stream, _) = tokio::time::timeout(DEADLINE, listener.accept())
        .await
        .expect("the node's log client connects")
        .expect("accept");
    let mut stream = tokio::io::BufReader::new(stream);
    let greeting = format!("{}\n", logserver::handshake::GREETING);
    stream
        .get_mut()
        .write_all(greeting.as_bytes())
        .await
        .expect("greet");
    let mut first = String::new();
    tokio::time::timeout(
        DEADLINE,
        tokio::io::AsyncBufReadExt::read_line(&mut stream, &mut first),
    )
    .await
    .expect("the node's first message")
    .expect("read");
    assert!(first.len() > 64 && first.ends_with('\n'), "{first:?}");
    first
}

/// 5,000 idle connections to a `pcluster log` (with a token, each replaying a first
/// handshake message seen on the wire), then a node that logs to it runs a chain whose task
/// logs every item: the lines are in the file within 2 s of the run's end.
async fn idle_connections_cannot_keep_a_nodes_lines_out(keyed: bool) {
    let need = IDLE_CONNECTIONS as u64 + 512;
    if !crate::strangers::may_open_files(need) {
        return;
    }
    let dir = temp_dir(if keyed { "idle-keyed" } else { "idle-open" });
    let key = new_key(&dir);
    let extra: Vec<&str> = match keyed {
        true => vec!["--token-file", key.to_str().unwrap()],
        false => Vec::new(),
    };
    let log_file = dir.join("cluster.log");
    let (_log, log_port) = crate::common::log_process(&log_file, &extra).await;
    let replay = match keyed {
        true => Some(seen_first_message(&extra).await),
        false => None,
    };
    let addr = SocketAddr::new(LOCALHOST, log_port);
    let mut idle = Vec::with_capacity(IDLE_CONNECTIONS);
    for _ in 0..IDLE_CONNECTIONS {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        if let Some(first) = &replay {
            // May fail: the server may have evicted this one already.
            let _ = s.write_all(first.as_bytes()).await;
        }
        idle.push(s);
    }

    // The node's log client connects only now, to a server full of idle connections.
    let (_node, port) = node_process("127.0.0.7", 0, log_port, 1, &extra).await;
    let items: Vec<String> = (0..10).map(|i| format!("idle-{i}")).collect();
    let input = dir.join("in.txt");
    std::fs::write(&input, items.join("\n") + "\n").unwrap();
    let chain = kit::write_chain_file(&dir, "logs", &[("simple_task", false, "")]).unwrap();
    let output = dir.join("out.txt");
    let nodes = format!("127.0.0.7:{port}");
    crate::bytes::run_on(&chain, &nodes, &input, &output, &extra, DEADLINE).await;
    let ended = Instant::now();
    wait_until(LINES_WITHIN, "the task's log lines in the file", || {
        let text = std::fs::read_to_string(&log_file).unwrap_or_default();
        items
            .iter()
            .all(|item| text.contains(&format!("simple_task: {item}")))
    })
    .await;
    eprintln!(
        "idle connections ({}): the task's lines were in the file {:?} after the run",
        if keyed {
            "replaying a handshake"
        } else {
            "no token"
        },
        ended.elapsed()
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_keep_a_nodes_lines_out_of_a_log_server_without_a_token() {
    idle_connections_cannot_keep_a_nodes_lines_out(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_replayers_cannot_keep_a_nodes_lines_out_of_a_log_server_with_a_token() {
    idle_connections_cannot_keep_a_nodes_lines_out(true).await;
}
