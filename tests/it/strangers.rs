//! Strangers who announce big frames cannot take a node's memory: 1,024 connections to a
//! real `pcluster node` process without a token complete the handshake, announce 60 MiB
//! frames and send their bytes slowly, while a W1 `pcluster run` through that node stays
//! exact and the node's peak RSS (`VmHWM`) stays within 256 MiB.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use protocol::MessageWriter;
use protocol::handshake::{self, Role};
use tokio::net::TcpStream;

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

/// The soft limit on open files of this process, from `/proc/self/limits`.
fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_announcing_big_frames_cannot_take_a_nodes_memory_nor_stall_a_run() {
    // The strangers' sockets, the run's pipes and the test binary's own files.
    let need = CONNECTIONS as u64 + 256;
    match open_files_limit() {
        Some(limit) if limit >= need => {}
        limit => {
            eprintln!(
                "skipped: this process may open {limit:?} files, the test needs {need} \
                 (raise `ulimit -n`)"
            );
            return;
        }
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
