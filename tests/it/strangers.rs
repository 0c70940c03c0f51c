//! Strangers cannot take a node from its root. 1,024 connections to a real `pcluster node`
//! process without a token complete the handshake, announce 60 MiB frames and send their bytes
//! slowly, while a W1 `pcluster run` through that node stays exact and the node's peak RSS
//! (`VmHWM`) stays within 256 MiB. And a flood of 2,000 new connections a second from one
//! address cannot evict a root from another whose handshake is in flight on a slow link (a
//! proxy delaying each way by 25 ms): guests are evicted per source, the flood's own first.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use protocol::MessageWriter;
use protocol::handshake::{self, Role};
use tokio::net::{TcpSocket, TcpStream};

use crate::bytes::run_on;
use crate::common::*;

const CONNECTIONS: usize = 1024;
/// The frame length every stranger announces.
const ANNOUNCED: u32 = 60 << 20;
/// Bytes each live stranger sends per round, and the rounds' pace: slowly (a slow-loris
/// sender's behaviour, not a wait for anything).
const CHUNK: usize = 4 << 10;
const ROUND_PAUSE: Duration = Duration::from_millis(10);
const DEADLINE: Duration = Duration::from_secs(120);

/// New connections a second of the flood, opened in rounds every [`FLOOD_ROUND`].
const FLOOD_RATE: u64 = 2_000;
const FLOOD_ROUND: Duration = Duration::from_millis(10);
/// The flood's newest connections held open (far more than a node's 64 guests); older ones
/// are reset, so the flood takes neither the test's file descriptors nor its ports.
const FLOOD_HELD: usize = 512;

/// Raises this process's limit on open files to `need` when it can (past the hard limit
/// only as root), else as far as the hard limit; returns the soft limit it has then.
pub fn raise_open_files(need: u64) -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if current >= need {
        return current;
    }
    let wanted = Rlimit {
        current: Some(need),
        maximum: limit.maximum.map(|max| max.max(need)),
    };
    if setrlimit(Resource::Nofile, wanted).is_ok() {
        return need;
    }
    match limit.maximum {
        Some(max)
            if setrlimit(
                Resource::Nofile,
                Rlimit {
                    current: Some(max),
                    ..limit
                },
            )
            .is_ok() =>
        {
            max
        }
        _ => current,
    }
}

/// Whether this process may open `need` files (raising its limit if it can); says why not.
pub fn may_open_files(need: u64) -> bool {
    let limit = raise_open_files(need);
    if limit < need {
        eprintln!(
            "skipped: this process may open {limit} files, the test needs {need} (raise `ulimit -Hn`)"
        );
    }
    limit >= need
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_announcing_big_frames_cannot_take_a_nodes_memory_nor_stall_a_run() {
    // The strangers' sockets, the run's pipes and the test binary's own files.
    if !may_open_files(CONNECTIONS as u64 + 256) {
        return;
    }
    let dir = temp_dir("strangers");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let ip = "127.0.0.6";
    let (node, port) = node_process(ip, 0, log_port, 1, &[]).await;
    let pid = node.id();
    let addr: std::net::SocketAddr = format!("{ip}:{port}").parse().unwrap();

    // Every stranger completes the handshake (no token: a status connection), then
    // announces a 60 MiB frame.
    let mut strangers: Vec<MessageWriter> = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let (conn, _) = handshake::connect(stream, Role::Probe, None, None, 1 << 20, DEADLINE)
            .await
            .unwrap_or_else(|e| panic!("handshake of stranger {i}: {e}"));
        let (reader, mut writer) = conn.split();
        // The reading half is dropped: a stranger reads nothing.
        drop(reader);
        writer.feed_frame(&ANNOUNCED.to_be_bytes());
        if writer.flush().await.is_ok() {
            strangers.push(writer);
        }
    }

    // They send the frames' bytes slowly, round after round, until the run is over; a
    // stranger the node has closed (evicted, or past the bytes strangers may hold) is gone.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (stop, rounds, sent) = (stop.clone(), rounds.clone(), sent.clone());
        tokio::spawn(async move {
            let chunk = vec![0x5a_u8; CHUNK];
            let mut pace = tokio::time::interval(ROUND_PAUSE);
            while !stop.load(Ordering::Relaxed) {
                pace.tick().await;
                let mut live = Vec::with_capacity(strangers.len());
                for mut w in strangers {
                    w.feed_frame(&chunk);
                    if let Ok(Ok(())) =
                        tokio::time::timeout(Duration::from_secs(1), w.flush()).await
                    {
                        sent.fetch_add(CHUNK as u64, Ordering::Relaxed);
                        live.push(w);
                    }
                }
                strangers = live;
                rounds.fetch_add(1, Ordering::Relaxed);
            }
            strangers.len()
        })
    };
    wait_until(DEADLINE, "the strangers' first round", || {
        rounds.load(Ordering::Relaxed) >= 1
    })
    .await;

    // A W1 run through the node meanwhile: exact.
    let n = 200_000u64;
    let input = dir.join("in.txt");
    kit::write_w1_input(&input, n).unwrap();
    let output = dir.join("out.txt");
    let chain = kit::write_chain_file(&dir, "w1", &kit::W1_TASKS).unwrap();
    let stderr = run_on(&chain, &addr.to_string(), &input, &output, &[], DEADLINE).await;
    let rounds_during_run = rounds.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let live = sender.await.expect("the strangers' task");
    assert_same(&sorted_lines(&output), &w1_expected(n));

    let peak_kib = status_kib(Process::Pid(pid), Field::PeakRss).expect("the node's VmHWM");
    let sent = sent.load(Ordering::Relaxed);
    eprintln!(
        "strangers: {CONNECTIONS} handshakes, {} MiB sent in {rounds_during_run} rounds, {live} \
         still open at the end; node peak RSS {} MiB; {stderr}",
        sent >> 20,
        peak_kib / 1024
    );
    assert!(
        rounds_during_run >= 2,
        "the strangers kept sending while the run went on"
    );
    assert!(
        peak_kib <= 256 << 10,
        "node peak RSS {} MiB > 256 MiB",
        peak_kib / 1024
    );
}

/// Opens [`FLOOD_RATE`] connections a second from `from` to `target` until `stop`, holding
/// the newest [`FLOOD_HELD`]; counts them in `opened`. They send nothing: guests in their
/// handshake, as a root's is on a slow link.
async fn flood(target: SocketAddr, from: IpAddr, stop: Arc<AtomicBool>, opened: Arc<AtomicU64>) {
    let per_round = FLOOD_RATE * FLOOD_ROUND.as_millis() as u64 / 1000;
    let mut held = VecDeque::with_capacity(FLOOD_HELD + 1);
    // Rounds missed while connecting are caught up at once, so the rate holds on average.
    let mut pace = tokio::time::interval(FLOOD_ROUND);
    while !stop.load(Ordering::Relaxed) {
        pace.tick().await;
        for _ in 0..per_round {
            let Ok(socket) = TcpSocket::new_v4() else {
                continue;
            };
            if socket.bind(SocketAddr::new(from, 0)).is_err() {
                continue;
            }
            if let Ok(stream) = socket.connect(target).await {
                opened.fetch_add(1, Ordering::Relaxed);
                // Dropped with a reset: no TIME_WAIT left behind to run out of ports.
                let _ = stream.set_zero_linger();
                held.push_back(stream);
                if held.len() > FLOOD_HELD {
                    held.pop_front();
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_cannot_evict_a_root_on_a_slow_link() {
    if !may_open_files(FLOOD_HELD as u64 + 512) {
        return;
    }
    let dir = temp_dir("flood");
    let key = new_key(&dir);
    let keyed = ["--token-file", key.to_str().unwrap()];
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &keyed).await;
    let (_node, port) = node_process("127.0.0.8", 0, log_port, 1, &keyed).await;
    let node: SocketAddr = format!("127.0.0.8:{port}").parse().unwrap();
    // The root's link: 25 ms each way, so its Noise handshake stays in flight for a while.
    let slow = kit::DelayProxy::start(
        IpAddr::from([127, 0, 0, 1]),
        node,
        Duration::from_millis(25),
    )
    .await
    .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let opened = Arc::new(AtomicU64::new(0));
    let from = IpAddr::from([127, 0, 0, 9]);
    let flooder = tokio::spawn(flood(node, from, stop.clone(), opened.clone()));
    wait_until(DEADLINE, "the flood under way", || {
        opened.load(Ordering::Relaxed) >= FLOOD_HELD as u64
    })
    .await;

    let n = 20_000u64;
    let input = dir.join("in.txt");
    kit::write_w1_input(&input, n).unwrap();
    let output = dir.join("out.txt");
    let chain = kit::write_chain_file(&dir, "w1", &kit::W1_TASKS).unwrap();
    let (started, before) = (Instant::now(), opened.load(Ordering::Relaxed));
    let stderr = run_on(
        &chain,
        &slow.addr().to_string(),
        &input,
        &output,
        &keyed,
        DEADLINE,
    )
    .await;
    let rate = (opened.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    flooder.await.expect("the flood's task");
    assert_same(&sorted_lines(&output), &w1_expected(n));
    eprintln!(
        "flood: {rate:.0} new connections/s from {from} during a {:.1} s run through a 50 ms \
         round trip; {stderr}",
        started.elapsed().as_secs_f64()
    );
    // A loaded box may open fewer than asked; half the rate still fills 64 guests in 64 ms,
    // well within one handshake on this link.
    assert!(
        rate >= FLOOD_RATE as f64 / 2.0,
        "the flood ran at {rate:.0}/s"
    );
}
