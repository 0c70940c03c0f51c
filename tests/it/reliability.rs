//! Nothing lost, nobody uninvited: with real `pcluster` processes on loopback, nodes killed
//! (SIGKILL), stopped (SIGSTOP) and terminated (SIGTERM) mid-run, the last node lost and
//! replaced, failing and memory-hungry items, a root killed mid-run, malformed input on every
//! port, and token authentication between roots, nodes and the log server.
//!
//! Kill points are chosen by progress (the root's counters, the node's status), never by
//! time; every wait is on a condition with a generous deadline.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::handshake::{self, MAGIC, PROTOCOL_VERSION, Role};
use protocol::{ErrorKind, Msg, NodeState, Packed, ProtocolError};
use root::{ChainSpec, ItemFailure, Limits, Root, RootError, RootOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::common::*;

const LONG: Duration = Duration::from_secs(120);

// ---- helpers -----------------------------------------------------------------------------

/// Waits until the root has completed at least `done` inputs.
async fn wait_completed(root: &Root, done: u64) {
    poll_until(LONG, &format!("{done} inputs completed"), || async {
        root.counters().await.expect("counters").completed >= done
    })
    .await;
}

/// A figure of `/proc/<pid>/status` in KiB.
fn proc_kib(pid: u32, field: Field) -> Option<u64> {
    status_kib(Process::Pid(pid), field)
}

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("socket address")
}

/// Feeds `n` items made by `item` (ids `0..n` in order) from a task of its own, so the test
/// can watch and kill while the root works.
fn feed_in_background(
    root: Arc<Root>,
    n: u64,
    item: fn(u64, &mut Vec<u8>),
) -> tokio::task::JoinHandle<Result<(), RootError>> {
    tokio::spawn(async move {
        let chunk = root.options().batch_items as u64;
        let mut buf = Vec::new();
        let mut start = 0;
        while start < n {
            let end = (start + chunk).min(n);
            let mut batch = Packed::with_capacity((end - start) as usize, 0);
            for i in start..end {
                buf.clear();
                item(i, &mut buf);
                batch.push(&buf);
            }
            root.feed_packed(batch).await?;
            start = end;
        }
        Ok(())
    })
}

/// W1 outputs counted per input id and checked against the input's text as they arrive
/// ([`W1Check`]), and the failures.
#[derive(Clone)]
struct Tally {
    check: Arc<Mutex<W1Check>>,
    failures: Arc<Mutex<Vec<ItemFailure>>>,
}

impl Tally {
    fn new(n: u64) -> Tally {
        Tally {
            check: Arc::new(Mutex::new(W1Check::new(n))),
            failures: Arc::default(),
        }
    }

    /// Sets `chain` up on `root` with handlers that count into this tally.
    async fn setup(&self, root: &Root, chain: ChainSpec) -> Result<(), RootError> {
        let (check, failures) = (self.check.clone(), self.failures.clone());
        root.setup_with(
            chain,
            move |id, item| check.lock().unwrap().add_for(id.0, item),
            move |f| failures.lock().unwrap().push(f),
        )
        .await
    }

    fn failures(&self) -> Vec<ItemFailure> {
        self.failures.lock().unwrap().clone()
    }

    /// No item failed, and the outputs are exactly W1's.
    #[track_caller]
    fn assert_exact_without_failures(&self) {
        let failures = self.failures();
        assert!(failures.is_empty(), "{:?}", failures.first());
        self.assert_exact(|_| false);
    }

    /// W1's outputs exactly: every even input twice, every odd input never, except inputs
    /// `failed(i)`, which have no output at all.
    #[track_caller]
    fn assert_exact(&self, failed: impl Fn(u64) -> bool) {
        if let Err(e) = self.check.lock().unwrap().verify_except(failed) {
            panic!("{e}");
        }
    }
}

// ---- 1. node death: exactly once ------------------------------------------------------------

/// Three nodes, each killed with SIGKILL in turn (at ~10 %, ~50 % and ~90 % of the inputs)
/// and replaced by a fresh node added while the run goes on: every output arrives exactly
/// once, and the inputs the dead nodes held were re-dispatched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_nodes_lose_and_duplicate_nothing() {
    let dir = temp_dir("rel-kill");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    // One port on every address: the first node's.
    let (first, port) = node_process("127.0.11.2", 0, log_port, 1, &[]).await;
    let mut nodes = vec![first];
    for ip in ["127.0.11.3", "127.0.11.4"] {
        nodes.push(node_process(ip, port, log_port, 1, &[]).await.0);
    }
    let addrs: Vec<SocketAddr> = ["127.0.11.2", "127.0.11.3", "127.0.11.4"]
        .iter()
        .map(|ip| addr(ip, port))
        .collect();
    let root = Arc::new(
        Root::with_nodes(RootOptions::default(), &addrs)
            .await
            .unwrap(),
    );
    let n = 3_000_000u64;
    let tally = Tally::new(n);
    tally.setup(&root, w1()).await.unwrap();
    // A batch whose lengths do not fit its bytes is refused by name and takes no id: every
    // id below is checked, and none may be missing or extra.
    let malformed = Packed {
        lens: protocol::U32s(vec![2, 5]),
        data: b"abc".to_vec().into(),
        gaps: protocol::Gaps(vec![0, 1]),
    };
    let refused = root.feed_packed(malformed).await;
    assert!(matches!(refused, Err(RootError::Packed(_))), "{refused:?}");
    let started = Instant::now();
    let feeder = feed_in_background(root.clone(), n, w1_item);

    for (k, (percent, fresh)) in [(10, "127.0.11.5"), (50, "127.0.11.6"), (90, "127.0.11.7")]
        .into_iter()
        .enumerate()
    {
        // Past the mark, and with items queued in the root, so every node's window is full
        // and the victim surely holds inputs when it dies.
        let mark = n * percent / 100;
        poll_until(
            LONG,
            &format!("{percent} % of the inputs completed"),
            || async {
                let c = root.counters().await.unwrap();
                c.completed >= mark && (c.pending > 0 || c.fed == n)
            },
        )
        .await;
        let before = root.counters().await.unwrap();
        nodes[k].signal("-KILL").unwrap();
        let status = nodes[k].wait_exit(LONG).await.unwrap();
        assert!(!status.success(), "SIGKILL ends the node: {status}");
        poll_until(LONG, "the root to notice the lost node", || async {
            root.counters().await.unwrap().nodes == before.nodes - 1
        })
        .await;
        let after = root.counters().await.unwrap();
        eprintln!(
            "killed node {k} at {} of {n} completed ({:?}): {} inputs re-dispatched",
            before.completed,
            started.elapsed(),
            after.redispatched - before.redispatched
        );
        nodes.push(node_process(fresh, port, log_port, 1, &[]).await.0);
        root.add_node(addr(fresh, port)).await.unwrap();
    }
    feeder.await.unwrap().unwrap();
    root.wait_empty().await.unwrap();
    let c = root.counters().await.unwrap();
    eprintln!("{n} inputs in {:?}: {c:?}", started.elapsed());
    tally.assert_exact_without_failures();
    assert_eq!((c.fed, c.completed, c.failed), (n, n, 0));
    assert_eq!(c.outputs, n, "W1 emits one output per input on average");
    assert!(
        c.redispatched > 0,
        "the killed nodes held inputs: they were re-dispatched"
    );
}

/// A node that stops answering (SIGSTOP: no FIN, no RST, just silence) is lost after the
/// root's heartbeat timeout; its inputs go to the other node and nothing is lost or doubled,
/// even when the stopped node wakes up later and sends what it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_node_is_lost_after_the_heartbeat_timeout() {
    let dir = temp_dir("rel-stop");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (mut a, port) = node_process("127.0.12.2", 0, log_port, 1, &[]).await;
    let (_b, _) = node_process("127.0.12.3", port, log_port, 1, &[]).await;
    let options = RootOptions {
        heartbeat_timeout: Duration::from_secs(2),
        ..RootOptions::default()
    };
    let root = Arc::new(
        Root::with_nodes(
            options,
            &[addr("127.0.12.2", port), addr("127.0.12.3", port)],
        )
        .await
        .unwrap(),
    );
    let n = 2_000_000u64;
    let tally = Tally::new(n);
    tally.setup(&root, w1()).await.unwrap();
    let feeder = feed_in_background(root.clone(), n, w1_item);
    wait_completed(&root, n / 5).await;
    a.signal("-STOP").unwrap();
    let stopped = Instant::now();
    poll_until(LONG, "the root to give up on the stopped node", || async {
        root.counters().await.unwrap().nodes == 1
    })
    .await;
    eprintln!("stopped node lost after {:?}", stopped.elapsed());
    assert!(
        stopped.elapsed() >= Duration::from_millis(1500),
        "lost by timeout, not earlier"
    );
    a.signal("-CONT").unwrap();
    feeder.await.unwrap().unwrap();
    root.wait_empty().await.unwrap();
    let c = root.counters().await.unwrap();
    tally.assert_exact_without_failures();
    assert!(c.redispatched > 0, "{c:?}");
    // The woken node noticed its root left and shuts down cleanly.
    a.terminate().unwrap();
    assert!(a.wait_exit(LONG).await.unwrap().success());
}

/// An input whose node dies under it every time is sent again at most `max_redispatch`
/// times, then reported as a poison item, and the root carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_that_outlives_its_nodes_is_reported_as_poison() {
    let dir = temp_dir("rel-poison");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let root = Root::new(RootOptions::default());
    let max = root.options().max_redispatch;
    // `spin_task` holds its item until the deadline: long enough to be killed under it.
    let limits = Limits {
        deadline_ms: 120_000,
        ..Limits::default()
    };
    let mut c = None;
    let t = Instant::now();
    for k in 0..=max {
        let ip = format!("127.0.20.{}", k + 2);
        let (mut node, port) = node_process(&ip, 0, log_port, 1, &[]).await;
        root.add_node(addr(&ip, port)).await.unwrap();
        if k == 0 {
            let spin = chain_with("spin", &[("spin_task", false, "")], limits.clone());
            c = Some(setup_collect(&root, spin).await.unwrap());
            root.feed(["spin"]).await.unwrap();
        }
        poll_until(LONG, "the node to hold the input", || async {
            let c = root.counters().await.unwrap();
            c.in_flight == 1 && c.nodes == 1
        })
        .await;
        eprintln!(
            "attempt {k}: the node holds the input after {:?}",
            t.elapsed()
        );
        node.signal("-KILL").unwrap();
        node.wait_exit(LONG).await.unwrap();
        poll_until(LONG, "the root to notice the lost node", || async {
            root.counters().await.unwrap().nodes == 0
        })
        .await;
        eprintln!("attempt {k}: node lost after {:?}", t.elapsed());
    }
    let c = c.unwrap();
    let f = c.failures();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].input.0, f[0].task_index), (0, None), "{}", f[0]);
    assert_eq!(f[0].item_start, b"spin");
    assert!(
        f[0].message
            .contains(&format!("poison item: its node was lost {} times", max + 1)),
        "{}",
        f[0]
    );
    let counters = root.counters().await.unwrap();
    assert_eq!(
        (counters.pending, counters.redispatched, counters.failed),
        (0, u64::from(max), 1)
    );
    // Nothing is left to do: no node is needed to say so.
    root.wait_empty().await.unwrap();
}

// ---- 2. SIGTERM: drain ------------------------------------------------------------------

/// A node told to stop (SIGTERM) mid-run says it is draining, finishes what it holds and
/// exits 0; the run completes on the other node with every output exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_terminated_node_drains_and_exits_cleanly() {
    let dir = temp_dir("rel-term");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (mut a, port) = node_process("127.0.13.2", 0, log_port, 1, &[]).await;
    let (_b, _) = node_process("127.0.13.3", port, log_port, 1, &[]).await;
    let root = Arc::new(root_with(&[addr("127.0.13.2", port), addr("127.0.13.3", port)]).await);
    let n = 2_000_000u64;
    let tally = Tally::new(n);
    tally.setup(&root, w1()).await.unwrap();
    let feeder = feed_in_background(root.clone(), n, w1_item);
    wait_completed(&root, n * 3 / 10).await;
    a.terminate().unwrap();
    let status = a.wait_exit(LONG).await.unwrap();
    assert!(status.success(), "a draining node exits 0: {status}");
    let at_exit = root.counters().await.unwrap();
    eprintln!(
        "terminated node exited at {} of {n} completed",
        at_exit.completed
    );
    assert!(at_exit.completed < n, "the node left while the run went on");
    feeder.await.unwrap().unwrap();
    root.wait_empty().await.unwrap();
    let c = root.counters().await.unwrap();
    eprintln!("{c:?}");
    tally.assert_exact_without_failures();
    assert_eq!((c.completed, c.nodes), (n, 1));
}

// ---- 3. no node left ------------------------------------------------------------------

/// With its only node gone, `wait_empty` says so, naming the node, while the items stay
/// queued; a fresh node added then takes the run over and everything completes exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_the_last_node_keeps_the_items_for_the_next_one() {
    let dir = temp_dir("rel-last");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (mut a, port) = node_process("127.0.14.2", 0, log_port, 1, &[]).await;
    let root = Arc::new(root_with(&[addr("127.0.14.2", port)]).await);
    let n = 1_000_000u64;
    let tally = Tally::new(n);
    tally.setup(&root, w1()).await.unwrap();
    let feeder = feed_in_background(root.clone(), n, w1_item);
    wait_completed(&root, n / 5).await;
    a.signal("-KILL").unwrap();
    a.wait_exit(LONG).await.unwrap();
    let err = tokio::time::timeout(LONG, root.wait_empty())
        .await
        .expect("wait_empty answers once the node is lost")
        .expect_err("no node is left");
    eprintln!("{err}");
    match &err {
        RootError::NoNodes { pending, lost } => {
            assert!(*pending > 0, "the items stay queued: {err}");
            assert!(lost.contains(&format!("127.0.14.2:{port}")), "{err}");
        }
        other => panic!("expected NoNodes, got {other}"),
    }
    let before = root.counters().await.unwrap();
    assert!(
        before.redispatched > 0 && before.completed < n,
        "{before:?}"
    );

    let (_b, _) = node_process("127.0.14.3", port, log_port, 1, &[]).await;
    root.add_node(addr("127.0.14.3", port)).await.unwrap();
    feeder.await.unwrap().unwrap();
    root.wait_empty().await.unwrap();
    let c = root.counters().await.unwrap();
    tally.assert_exact_without_failures();
    assert_eq!((c.fed, c.completed, c.nodes), (n, n, 1));
}

// ---- 4. failing items -----------------------------------------------------------------

/// Every 100th item makes `panic_task` panic: exactly those are reported failed, with their
/// ids, task and text; every other output is exact and the node serves on. Then a task that
/// eats memory until its cap, again and again, keeps the node's RSS bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_items_fail_alone_and_memory_stays_bounded() {
    let dir = temp_dir("rel-fail");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (node, port) = node_process("127.0.15.2", 0, log_port, 2, &[]).await;
    let root = Arc::new(root_with(&[addr("127.0.15.2", port)]).await);

    let n = 200_000u64;
    let tally = Tally::new(n);
    let panics = chain(
        "panics",
        &[
            ("w1_identity", false, ""),
            ("panic_task", false, ""),
            ("w1_duplicate", true, ""),
            ("w1_drop_odd", false, ""),
        ],
    );
    tally.setup(&root, panics).await.unwrap();
    fn item(i: u64, buf: &mut Vec<u8>) {
        let _ = if i.is_multiple_of(100) {
            write!(buf, "panic-{i}")
        } else {
            write!(buf, "item-{i}")
        };
    }
    let started = Instant::now();
    feed_in_background(root.clone(), n, item)
        .await
        .unwrap()
        .unwrap();
    root.wait_empty().await.unwrap();
    eprintln!("{n} items, 1 % panicking, in {:?}", started.elapsed());
    tally.assert_exact(|i| i % 100 == 0);
    let mut failures = tally.failures();
    failures.sort_by_key(|f| f.input);
    let ids: Vec<u64> = failures.iter().map(|f| f.input.0).collect();
    let want: Vec<u64> = (0..n).step_by(100).collect();
    assert_eq!(ids, want, "exactly the panicking items failed, once each");
    for f in &failures {
        assert_eq!(f.item_start, format!("panic-{}", f.input.0).as_bytes());
        assert_eq!(
            (f.task.as_str(), f.task_index),
            ("panic_task", Some(root::TaskIndex(1))),
            "{f}"
        );
        assert!(f.message.contains("asked for a panic"), "{f}");
        assert_eq!(f.node, format!("127.0.15.2:{port}"));
    }
    let c = root.counters().await.unwrap();
    assert_eq!((c.completed, c.failed, c.redispatched), (n, n / 100, 0));

    // Memory: each `hog_task` call grows its instance to the cap and traps; the instance is
    // rebuilt and its memory returned. Sample the node's RSS the whole time.
    let pid = node.id();
    let sampler = RssSampler::start(pid, Duration::from_millis(2));
    let limits = Limits {
        memory_mb: 64,
        ..Limits::default()
    };
    for round in 0..4 {
        root.reset().await.unwrap();
        let c = setup_collect(
            &root,
            chain_with("hog", &[("hog_task", false, "")], limits.clone()),
        )
        .await
        .unwrap();
        root.feed((0..8).map(|i| format!("eat-{round}-{i}")))
            .await
            .unwrap();
        root.wait_empty().await.unwrap();
        let f = c.failures();
        assert_eq!(f.len(), 8, "every hog fails");
        for f in &f {
            assert!(f.message.contains("memory limit of 64 MiB"), "{f}");
        }
    }
    let max_rss = sampler.finish();
    eprintln!(
        "node RSS: at most {} MiB while hogging; high-water mark {} MiB",
        max_rss / 1024,
        proc_kib(pid, Field::PeakRss).unwrap_or(0) / 1024
    );
    assert!(max_rss > 0, "could read /proc/{pid}/status");
    assert!(max_rss < 512 * 1024, "node RSS {} MiB", max_rss / 1024);
    assert!(proc_kib(pid, Field::PeakRss).unwrap() < 512 * 1024);

    // The node serves on.
    root.reset().await.unwrap();
    let c = setup_collect(&root, w1()).await.unwrap();
    root.feed(w1_inputs(10_000)).await.unwrap();
    root.wait_empty().await.unwrap();
    assert_same(&c.texts(), &w1_expected(10_000));
}

// ---- 5. root death --------------------------------------------------------------------

/// A root (`pcluster run`) killed with SIGKILL mid-run: its nodes show `Orphaned`, and a new
/// root takes them over at once (long before the grace period ends) and runs a chain on them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_a_killed_root_are_free_for_a_new_root_at_once() {
    let dir = temp_dir("rel-root");
    let log_file = dir.join("cluster.log");
    let (_log, log_port) = log_process(&log_file, &[]).await;
    // A grace period longer than the test: taking the nodes over cannot wait for its end.
    let extra = ["--orphan-grace-s", "600"];
    let (_a, port) = node_process("127.0.16.2", 0, log_port, 1, &extra).await;
    let (_b, _) = node_process("127.0.16.3", port, log_port, 1, &extra).await;
    let nodes = [addr("127.0.16.2", port), addr("127.0.16.3", port)];

    // W2 items take long enough that the run is still going when we kill it.
    let chain_file = chain_file(&dir, "w2", "w2_cpu", "20000");
    let input = dir.join("in.txt");
    let seeds: Vec<String> = (0..2_000_000u64).map(|i| i.to_string()).collect();
    std::fs::write(&input, seeds.join("\n") + "\n").unwrap();
    let mut run = spawn(
        pcluster_cmd()
            .arg("run")
            .arg(&chain_file)
            .arg("--nodes")
            .arg(format!("{},{}", nodes[0], nodes[1]))
            .args([
                "--log-host",
                "127.0.0.1",
                "--log-port",
                &log_port.to_string(),
            ])
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(dir.join("out.txt"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let options = RootOptions::default();
    for node in nodes {
        poll_until(LONG, "both nodes to work for the run", || async {
            root::node_status(node, &options).await.is_ok_and(|s| {
                s.state == NodeState::Busy && s.tasks.first().is_some_and(|t| t.items_in > 0)
            })
        })
        .await;
    }
    run.signal("-KILL").unwrap();
    run.wait_exit(LONG).await.unwrap();
    let _ = std::fs::remove_file(&input);

    for node in nodes {
        poll_until(LONG, "the node to be orphaned", || async {
            root::node_status(node, &options)
                .await
                .is_ok_and(|s| s.state == NodeState::Orphaned)
        })
        .await;
    }
    // Orphaned means free: a new root is not told the nodes are busy, and its setup takes
    // them over.
    let root = root_with(&nodes).await;
    let c = setup_collect(&root, w1()).await.unwrap();
    root.feed(w1_inputs(20_000)).await.unwrap();
    root.wait_empty().await.unwrap();
    assert_same(&c.texts(), &w1_expected(20_000));
    for node in nodes {
        let s = root::node_status(node, &options).await.unwrap();
        assert_eq!(s.state, NodeState::Busy);
        assert_eq!(s.chain, Some(("w1".into(), "1".into())));
    }
}

/// A root that goes silent (no message, no heartbeat, its connection still open, as when
/// its machine vanishes) is dropped after the node's root timeout: the node is orphaned,
/// closes the connection, and is free for another root after the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_root_is_dropped_after_the_root_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.19.2:0").await.unwrap();
    let node = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let config = node::NodeConfig {
        workers: 1,
        root_timeout: Duration::from_secs(1),
        orphan_grace: Duration::from_secs(1),
        ..Default::default()
    };
    tokio::spawn(node::run(listener, config, stop.clone()));

    // A root driven by hand: it sets a chain up, then says nothing more.
    let stream = TcpStream::connect(node).await.unwrap();
    let (mut conn, _) = handshake::connect(stream, Role::Root, None, None, 64 << 20, IO)
        .await
        .unwrap();
    let setup = protocol::Setup {
        session: protocol::SessionId(7),
        chain: w1(),
        send_failed_items: false,
        tagged_items: false,
        withheld: Vec::new(),
        rtt_us: 0,
    };
    conn.write_message(&Msg::Setup(Box::new(setup)))
        .await
        .unwrap();
    loop {
        match conn.expect_message().await.unwrap() {
            Msg::SetupDone(_) => break,
            Msg::Heartbeat | Msg::Credit(_) => {}
            other => panic!("unexpected answer to a setup: {other:?}"),
        }
    }
    let silent = Instant::now();
    let options = RootOptions::default();
    poll_until(LONG, "the node to give up on its silent root", || async {
        root::node_status(node, &options)
            .await
            .is_ok_and(|s| s.state == NodeState::Orphaned)
    })
    .await;
    assert!(
        silent.elapsed() >= Duration::from_millis(900),
        "{:?}",
        silent.elapsed()
    );
    let closed = tokio::time::timeout(IO, read_until_closed(&mut conn)).await;
    assert!(
        matches!(closed, Ok(Ok(_))),
        "the node closed the connection"
    );
    poll_until(LONG, "the node to be free", || async {
        root::node_status(node, &options)
            .await
            .is_ok_and(|s| s.state == NodeState::Free)
    })
    .await;
    let root = root_with(&[node]).await;
    let c = setup_collect(&root, w1()).await.unwrap();
    root.feed(w1_inputs(1000)).await.unwrap();
    root.wait_empty().await.unwrap();
    assert_same(&c.texts(), &w1_expected(1000));
    stop.cancel();
}

// ---- 6. bad input on every port ---------------------------------------------------------

/// A small deterministic generator for garbage.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = 1 + (self.next() as usize) % max;
        (0..len).map(|_| self.next() as u8).collect()
    }
}

const IO: Duration = Duration::from_secs(20);

fn preamble(version: u16, role: u8) -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(&version.to_be_bytes());
    p.push(role);
    p
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(payload);
    f
}

fn encoded(msg: &Msg) -> Vec<u8> {
    let mut buf = bytes::BytesMut::new();
    protocol::codec::encode_frame(msg, &mut buf, 1 << 20).unwrap();
    buf.to_vec()
}

/// Writes `bytes` (ignoring a peer that already closed), half-closes, and returns what the
/// peer sent until it closed.
async fn send_and_read(stream: &mut TcpStream, bytes: &[u8]) -> Result<Vec<u8>, String> {
    let _ = stream.write_all(bytes).await;
    let _ = stream.shutdown().await;
    let mut answer = Vec::new();
    match tokio::time::timeout(IO, stream.read_to_end(&mut answer)).await {
        Ok(_) => Ok(answer),
        Err(_) => Err(format!("peer kept the connection open after {:?}", IO)),
    }
}

/// Reads messages until the node closes; returns them.
async fn read_until_closed(conn: &mut protocol::Connection) -> Result<Vec<Msg>, String> {
    let mut got = Vec::new();
    loop {
        match tokio::time::timeout(IO, conn.read_message()).await {
            Ok(Ok(Some(Msg::Heartbeat))) => {}
            Ok(Ok(Some(m))) => got.push(m),
            Ok(Ok(None)) | Ok(Err(_)) => return Ok(got),
            Err(_) => return Err("the node kept a broken connection open".into()),
        }
    }
}

fn is_error(msgs: &[Msg], kind: ErrorKind) -> bool {
    msgs.iter()
        .any(|m| matches!(m, Msg::Error(e) if e.kind == kind))
}

/// One malformed conversation with a node, chosen by `i`; checks the node's answer.
async fn abuse_node(node: SocketAddr, i: u64) -> Result<(), String> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    let connect = || async {
        tokio::time::timeout(IO, TcpStream::connect(node))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| format!("connect: {e}"))
    };
    let handshake = |role| async move {
        let stream = connect().await?;
        handshake::connect(stream, role, None, None, 1 << 20, IO)
            .await
            .map(|(conn, _)| conn)
            .map_err(|e| format!("handshake: {e}"))
    };
    let accepted = preamble(PROTOCOL_VERSION, 0).len();
    match i % 14 {
        // Random bytes, then a clean close.
        0 => {
            let mut s = connect().await?;
            send_and_read(&mut s, &rng.bytes(64)).await?;
        }
        // Random bytes, then gone without waiting for anything.
        1 => {
            let mut s = connect().await?;
            let _ = s.write_all(&rng.bytes(4096)).await;
        }
        // Another protocol: told so in plain text.
        2 => {
            let mut s = connect().await?;
            let answer = send_and_read(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await?;
            if !answer.starts_with(b"pcluster node: this port speaks the pcluster protocol") {
                return Err(format!(
                    "answer to HTTP: {:?}",
                    String::from_utf8_lossy(&answer)
                ));
            }
        }
        // A 4 GiB length prefix right after the preamble.
        3 => {
            let mut s = connect().await?;
            let mut bytes = preamble(PROTOCOL_VERSION, 1);
            bytes.extend_from_slice(&[0xFF; 4]);
            bytes.extend_from_slice(&rng.bytes(100));
            let answer = send_and_read(&mut s, &bytes).await?;
            if answer.len() != accepted {
                return Err(format!("answer to a 4 GiB frame: {answer:?}"));
            }
        }
        // A truncated frame.
        4 => {
            let mut s = connect().await?;
            let mut bytes = preamble(PROTOCOL_VERSION, 1);
            bytes.extend_from_slice(&100u32.to_be_bytes());
            bytes.extend_from_slice(&rng.bytes(99));
            send_and_read(&mut s, &bytes).await?;
        }
        // A whole frame of garbage.
        5 => {
            let mut s = connect().await?;
            let mut bytes = preamble(PROTOCOL_VERSION, 2);
            bytes.extend(frame(&rng.bytes(200)));
            send_and_read(&mut s, &bytes).await?;
        }
        // Another protocol version: refused with a status byte and a reason.
        6 => {
            let mut s = connect().await?;
            let answer = send_and_read(&mut s, &preamble(99, 1)).await?;
            let reason =
                format!("protocol version mismatch: node speaks {PROTOCOL_VERSION}, you speak 99");
            let mut want = preamble(PROTOCOL_VERSION, 1);
            want.extend_from_slice(&(reason.len() as u16).to_be_bytes());
            want.extend_from_slice(reason.as_bytes());
            if answer != want {
                return Err(format!(
                    "answer to version 99: {:?}",
                    String::from_utf8_lossy(&answer)
                ));
            }
        }
        // An unknown role.
        7 => {
            let mut s = connect().await?;
            let answer = send_and_read(&mut s, &preamble(PROTOCOL_VERSION, 9)).await?;
            if answer.get(10) != Some(&2)
                || !String::from_utf8_lossy(&answer).contains("unknown role 9")
            {
                return Err(format!("answer to role 9: {answer:?}"));
            }
        }
        // The wrong message where the proof belongs.
        8 => {
            let mut s = connect().await?;
            let mut bytes = preamble(PROTOCOL_VERSION, 1);
            bytes.extend(encoded(&Msg::Hello(protocol::Hello {
                nonce: vec![7; 32],
                resume: None,
            })));
            bytes.extend(encoded(&Msg::Heartbeat));
            send_and_read(&mut s, &bytes).await?;
        }
        // A pre-authentication frame claiming a 1 GiB nonce in a few bytes.
        9 => {
            let mut s = connect().await?;
            let mut bytes = preamble(PROTOCOL_VERSION, 1);
            bytes.extend(frame(&[0x00, 0xFC, 0xFF, 0xFF, 0xFF, 0x3F, 1, 2, 3]));
            send_and_read(&mut s, &bytes).await?;
        }
        // Authenticated (no token in use), then a garbage frame: an error, then closed.
        10 => {
            let mut conn = handshake(Role::Root).await?;
            conn.writer.feed_frame(&frame(&rng.bytes(300)));
            conn.writer.shutdown().await;
            let got = read_until_closed(&mut conn).await?;
            if !is_error(&got, ErrorKind::BadRequest) {
                return Err(format!("answer to a garbage frame: {got:?}"));
            }
        }
        // Items before any setup: refused, the connection stays; then a 4 GiB frame.
        11 => {
            let mut conn = handshake(Role::Root).await?;
            let mut items = Packed::new();
            items.push(b"x");
            let msg = Msg::Items(protocol::Items {
                seq: 0,
                ids: protocol::Ids::Range { start: 0, count: 1 },
                items,
                stage: protocol::TaskIndex(0),
            });
            conn.write_message(&msg).await.map_err(|e| e.to_string())?;
            loop {
                match tokio::time::timeout(IO, conn.read_message()).await {
                    Ok(Ok(Some(Msg::Heartbeat))) => continue,
                    Ok(Ok(Some(Msg::Error(e)))) if e.kind == ErrorKind::NotSetUp => break,
                    other => return Err(format!("answer to items before setup: {other:?}")),
                }
            }
            conn.writer.feed_frame(&[0xFF; 4]);
            conn.writer.shutdown().await;
            let got = read_until_closed(&mut conn).await?;
            // An oversized frame is `TooLarge` (items and frames alike), then the node closes.
            if !is_error(&got, ErrorKind::TooLarge) {
                return Err(format!("answer to a 4 GiB frame: {got:?}"));
            }
        }
        // A status connection asking for a setup, then random bytes.
        12 => {
            let mut conn = handshake(Role::Probe).await?;
            conn.write_message(&Msg::StatusRequest)
                .await
                .map_err(|e| e.to_string())?;
            let status = tokio::time::timeout(IO, conn.expect_message()).await;
            if !matches!(status, Ok(Ok(Msg::Status(_)))) {
                return Err(format!("answer to a status request: {status:?}"));
            }
            conn.write_message(&Msg::Reset)
                .await
                .map_err(|e| e.to_string())?;
            let refused = tokio::time::timeout(IO, conn.expect_message()).await;
            if !matches!(&refused, Ok(Ok(Msg::Error(e))) if e.kind == ErrorKind::BadRequest) {
                return Err(format!(
                    "answer to a reset on a status connection: {refused:?}"
                ));
            }
            conn.writer.feed_frame(&rng.bytes(500));
            conn.writer.shutdown().await;
            read_until_closed(&mut conn).await?;
        }
        // A setup with a module that is not wasm: a clear setup error (or busy, when another
        // of these holds the node right now).
        _ => {
            let mut conn = handshake(Role::Root).await?;
            let mut spec = chain("garbage", &[("w1_identity", false, "")]);
            spec.modules = vec![rng.bytes(1000).into()];
            let msg = Msg::Setup(Box::new(protocol::Setup {
                session: protocol::SessionId(i),
                chain: spec,
                send_failed_items: false,
                tagged_items: false,
                withheld: Vec::new(),
                rtt_us: 0,
            }));
            conn.write_message(&msg).await.map_err(|e| e.to_string())?;
            loop {
                match tokio::time::timeout(IO, conn.read_message()).await {
                    Ok(Ok(Some(Msg::Heartbeat))) => continue,
                    Ok(Ok(Some(Msg::Error(e))))
                        if matches!(e.kind, ErrorKind::Setup | ErrorKind::Busy(_)) =>
                    {
                        break;
                    }
                    other => return Err(format!("answer to a garbage setup: {other:?}")),
                }
            }
        }
    }
    Ok(())
}

/// One malformed conversation with a log server, chosen by `i`.
async fn abuse_log(log: SocketAddr, i: u64) -> Result<(), String> {
    let mut rng = Rng(0xD1B5_4A32_D192_ED03 ^ (i + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut s = tokio::time::timeout(IO, TcpStream::connect(log))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    match i % 6 {
        0 => {
            send_and_read(&mut s, &rng.bytes(2048)).await?;
        }
        1 => {
            let _ = s.write_all(&rng.bytes(2048)).await;
        }
        2 => {
            let mut bytes = vec![0xFF; 4];
            bytes.extend(rng.bytes(64));
            send_and_read(&mut s, &bytes).await?;
        }
        3 => {
            send_and_read(&mut s, &preamble(PROTOCOL_VERSION, 1)).await?;
        }
        4 => {
            send_and_read(&mut s, b"").await?;
        }
        _ => {
            send_and_read(&mut s, format!("malformed test line {i}\r\n").as_bytes()).await?;
        }
    }
    Ok(())
}

/// Runs `count` conversations, `concurrency` at a time; returns the failures.
async fn flood<F, Fut>(count: u64, concurrency: usize, f: F) -> Vec<String>
where
    F: Fn(u64) -> Fut,
    Fut: Future<Output = Result<(), String>> + Send + 'static,
{
    let limit = Arc::new(Semaphore::new(concurrency));
    let mut set = JoinSet::new();
    let mut failures = Vec::new();
    for i in 0..count {
        let permit = limit.clone().acquire_owned().await.unwrap();
        let conversation = f(i);
        set.spawn(async move {
            let r = conversation
                .await
                .map_err(|e| format!("conversation {i}: {e}"));
            drop(permit);
            r
        });
        while let Some(r) = set.try_join_next() {
            if let Err(e) = r.unwrap() {
                failures.push(e);
            }
        }
    }
    while let Some(r) = set.join_next().await {
        if let Err(e) = r.unwrap() {
            failures.push(e);
        }
    }
    failures
}

/// Opens `count` connections (64 at a time) and holds them; some send half a preamble.
/// Returns the connections and the errors of those that could not be opened.
async fn hold_idle(to: SocketAddr, count: usize) -> (Vec<TcpStream>, Vec<String>) {
    let limit = Arc::new(Semaphore::new(64));
    let mut set = JoinSet::new();
    for i in 0..count {
        let permit = limit.clone().acquire_owned().await.unwrap();
        set.spawn(async move {
            let mut s = match tokio::time::timeout(IO, TcpStream::connect(to)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("idle connection {i} to {to}: {e}")),
                Err(_) => return Err(format!("idle connection {i} to {to}: timed out")),
            };
            if i % 2 == 0 {
                let _ = s.write_all(&MAGIC[..5]).await;
            }
            drop(permit);
            Ok(s)
        });
    }
    let (mut held, mut errors) = (Vec::with_capacity(count), Vec::new());
    while let Some(s) = set.join_next().await {
        match s.unwrap() {
            Ok(s) => held.push(s),
            Err(e) => errors.push(e),
        }
    }
    (held, errors)
}

/// The soft limit on open files of this process.
fn open_files_limit() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse().ok())
        })
        .unwrap_or(1024)
}

/// 10,000 malformed conversations with a node process and 10,000 with a log server process
/// (random bytes, truncated frames, 4 GiB length prefixes, wrong magic, wrong version, wrong
/// role, messages out of place, an allocation bomb), thousands of idle and half-open
/// connections held at once, endless lines without a newline: both processes stay up with
/// bounded memory, and a correct W1 run on them succeeds afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_on_every_port_is_shrugged_off() {
    let dir = temp_dir("rel-bad");
    let log_file = dir.join("cluster.log");
    // Both servers' own output goes to files: should one die or panic, the test says why.
    let start = |name: &str, mut command: std::process::Command| {
        command
            .stdout(std::fs::File::create(dir.join(format!("{name}.out"))).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("{name}.err"))).unwrap());
        async move {
            kit::spawn_server(&mut command)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
        }
    };
    let (mut log, log_addr) = start("log", pcluster().log_command(0, &log_file)).await;
    let node_ip = "127.0.17.2".parse().unwrap();
    let node_command = pcluster().node_command(node_ip, 0, log_addr.port(), 1);
    let (mut node, node_addr) = start("node", node_command).await;
    let stderr =
        |name: &str| std::fs::read_to_string(dir.join(format!("{name}.err"))).unwrap_or_default();
    let alive = |node: &mut Child, log: &mut Child, when: &str| {
        for (name, child) in [("node", node), ("log", log)] {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "the {name} server died {when}: {status}; stderr: {}",
                    stderr(name)
                );
            }
            assert!(
                !stderr(name).contains("panicked"),
                "the {name} server panicked {when}: {}",
                stderr(name)
            );
        }
    };
    let started = Instant::now();

    let failures = flood(10_000, 64, |i| abuse_node(node_addr, i)).await;
    alive(&mut node, &mut log, "during the malformed conversations");
    assert!(
        failures.is_empty(),
        "{} failed, first: {}",
        failures.len(),
        failures[0]
    );
    eprintln!(
        "10,000 malformed node conversations in {:?}",
        started.elapsed()
    );
    let t = Instant::now();
    let failures = flood(10_000, 64, |i| abuse_log(log_addr, i)).await;
    alive(
        &mut node,
        &mut log,
        "during the malformed log conversations",
    );
    assert!(
        failures.is_empty(),
        "{} failed, first: {}",
        failures.len(),
        failures[0]
    );
    eprintln!("10,000 malformed log conversations in {:?}", t.elapsed());

    // Endless lines: 16 MiB each without a newline.
    let t = Instant::now();
    let mut endless = JoinSet::new();
    for _ in 0..8 {
        endless.spawn(async move {
            let mut s = TcpStream::connect(log_addr).await.unwrap();
            let chunk = vec![b'x'; 64 << 10];
            for _ in 0..256 {
                s.write_all(&chunk).await.unwrap();
            }
        });
    }
    while let Some(r) = endless.join_next().await {
        r.unwrap();
    }
    eprintln!("8 endless lines of 16 MiB in {:?}", t.elapsed());
    alive(&mut node, &mut log, "after the endless lines");

    // Idle and half-open connections, thousands at once (within our file limit).
    let t = Instant::now();
    let budget = open_files_limit().saturating_sub(512) / 2;
    let (on_node, on_log) = (1500.min(budget), 3000.min(budget));
    let (idle_node, errors) = hold_idle(node_addr, on_node).await;
    alive(&mut node, &mut log, "while idle connections were opened");
    assert!(
        errors.is_empty(),
        "{} failed, first: {}",
        errors.len(),
        errors[0]
    );
    eprintln!(
        "{on_node} idle connections to the node open after {:?}",
        t.elapsed()
    );
    let (idle_log, errors) = hold_idle(log_addr, on_log).await;
    alive(&mut node, &mut log, "while idle connections were opened");
    assert!(
        errors.is_empty(),
        "{} failed, first: {}",
        errors.len(),
        errors[0]
    );
    eprintln!(
        "{on_log} idle connections to the log server open after {:?}",
        t.elapsed()
    );
    let probe = Instant::now();
    // Idle handshakes time out: the node answers a probe again within that bound.
    let status = root::node_status(
        node_addr,
        &RootOptions {
            connect_timeout: LONG,
            ..RootOptions::default()
        },
    )
    .await;
    eprintln!("status during the idle flood after {:?}", probe.elapsed());
    assert!(status.is_ok(), "{status:?}");
    alive(&mut node, &mut log, "while idle connections were held");
    drop(idle_node);
    drop(idle_log);
    eprintln!(
        "{on_node} idle connections to the node and {on_log} to the log server held and \
         dropped in {:?}",
        t.elapsed()
    );

    // Version mismatch as a client sees it: a clear, typed error.
    let fake = tokio::net::TcpListener::bind("127.0.17.9:0").await.unwrap();
    let fake_addr = fake.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = fake.accept().await.unwrap();
        let mut pre = [0u8; 11];
        s.read_exact(&mut pre).await.unwrap();
        let reason = format!(
            "protocol version mismatch: node speaks {}, you speak {PROTOCOL_VERSION}",
            PROTOCOL_VERSION + 1
        );
        let reason = reason.as_bytes();
        let mut answer = preamble(PROTOCOL_VERSION + 1, 1);
        answer.extend_from_slice(&(reason.len() as u16).to_be_bytes());
        answer.extend_from_slice(reason);
        s.write_all(&answer).await.unwrap();
    });
    let err = Root::new(RootOptions::default())
        .add_node(fake_addr)
        .await
        .expect_err("a node of another version is refused");
    assert!(
        matches!(
            err,
            RootError::Node {
                source: ProtocolError::VersionMismatch {
                    ours: PROTOCOL_VERSION,
                    theirs
                },
                ..
            } if theirs == PROTOCOL_VERSION + 1
        ),
        "{err}"
    );
    let mismatch = format!(
        "protocol version mismatch: we speak {PROTOCOL_VERSION}, peer speaks {}",
        PROTOCOL_VERSION + 1
    );
    assert!(err.to_string().contains(&mismatch), "{err}");

    // Both processes are alive, small, and serve a real run.
    alive(&mut node, &mut log, "after the flood");
    for (name, pid) in [("node", node.id()), ("log server", log.id())] {
        let hwm = proc_kib(pid, Field::PeakRss).unwrap();
        eprintln!("{name} peak RSS {} MiB", hwm / 1024);
        assert!(hwm < 512 * 1024, "{name} peak RSS {} MiB", hwm / 1024);
    }
    // The connections dropped above may still sit in the node's accept queue for a moment.
    poll_until(LONG, "the node to answer a status request", || async {
        root::node_status(node_addr, &RootOptions::default())
            .await
            .is_ok()
    })
    .await;
    let root = root_with(&[node_addr]).await;
    let c = setup_collect(&root, w1()).await.unwrap();
    root.feed(w1_inputs(20_000)).await.unwrap();
    root.wait_empty().await.unwrap();
    assert_same(&c.texts(), &w1_expected(20_000));
    root.close().await.unwrap();
    wait_until(LONG, "the node's log lines after the flood", || {
        std::fs::read_to_string(&log_file)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.contains(&format!("node {node_addr}")) && l.contains("w1_drop_odd: first item")
            })
    })
    .await;
    node.terminate().unwrap();
    log.terminate().unwrap();
    assert!(node.wait_exit(LONG).await.unwrap().success());
    assert!(log.wait_exit(LONG).await.unwrap().success());
    eprintln!("malformed input test in {:?}", started.elapsed());
}

// ---- 7. authentication ------------------------------------------------------------------

fn with_token(token: &str) -> RootOptions {
    RootOptions {
        token: Some(protocol::auth::Token::new(token)),
        ..RootOptions::default()
    }
}

/// The `ProtocolError::Auth` reason of `err`, or a panic naming what it was instead.
#[track_caller]
fn auth_reason(err: &RootError) -> &str {
    match err {
        RootError::Node {
            source: ProtocolError::Auth(why),
            ..
        } => why,
        other => panic!("expected an authentication error, got: {other}"),
    }
}

/// A node with `--token`: roots without the token or with a wrong one are refused with a
/// clear error; scans report it as unauthenticated; a root with the token refuses a node
/// without one; `pcluster status` without the token fails clearly. The node's log lines
/// reach a log server that requires the same token, and a node without it is not logged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_holders_of_the_token_get_in() {
    let dir = temp_dir("rel-auth");
    let log_file = dir.join("cluster.log");
    let (_log, log_port) = log_process(&log_file, &["--token", "s3cret-s3cret-s3cret"]).await;
    // One port for both: the scans below are of one port.
    let (_secured, port) = node_process(
        "127.0.18.2",
        0,
        log_port,
        1,
        &["--token", "s3cret-s3cret-s3cret"],
    )
    .await;
    let (_open, _) = node_process("127.0.18.3", port, log_port, 1, &[]).await;
    let (secured, open) = (addr("127.0.18.2", port), addr("127.0.18.3", port));

    // No token, wrong token: refused, saying why.
    let err = Root::new(RootOptions::default())
        .add_node(secured)
        .await
        .expect_err("a root without the token is refused");
    let why = auth_reason(&err);
    assert!(why.contains("requires the cluster token"), "{err}");
    let err = Root::new(with_token("wrong"))
        .add_node(secured)
        .await
        .expect_err("a root with a wrong token is refused");
    assert!(auth_reason(&err).contains("wrong token"), "{err}");
    let err = root::node_status(secured, &RootOptions::default())
        .await
        .expect_err("no status without the token");
    auth_reason(&err);

    // Scans: each side sees the other kind of node as unauthenticated.
    let net = "127.0.18.0/29".parse().unwrap();
    let report = root::scan::scan(net, port, &RootOptions::default()).await;
    assert_eq!(report.free, [open]);
    assert_eq!(report.unauthenticated.len(), 1, "{report:?}");
    assert_eq!(report.unauthenticated[0].0, secured);
    let report = root::scan::scan(net, port, &with_token("s3cret-s3cret-s3cret")).await;
    assert_eq!(report.free, [secured]);
    assert_eq!(report.unauthenticated.len(), 1, "{report:?}");
    assert_eq!(report.unauthenticated[0].0, open);
    assert!(
        report.unauthenticated[0].1.contains("cannot prove"),
        "{:?}",
        report.unauthenticated[0]
    );
    let lone = Root::new(RootOptions::default());
    let report = lone.search_nodes(net, port).await.unwrap();
    assert_eq!(report.free, [open], "search_nodes adds only the open node");
    assert_eq!(report.unauthenticated.len(), 1);
    lone.close().await.unwrap();

    // The right token works; a node without a token cannot prove itself to such a root.
    let root = Root::new(with_token("s3cret-s3cret-s3cret"));
    root.add_node(secured).await.unwrap();
    let err = root
        .add_node(open)
        .await
        .expect_err("a root with a token refuses a node without one");
    assert!(auth_reason(&err).contains("has no cluster token"), "{err}");
    let c = setup_collect(&root, w1()).await.unwrap();
    root.feed(w1_inputs(10_000)).await.unwrap();
    root.wait_empty().await.unwrap();
    assert_same(&c.texts(), &w1_expected(10_000));
    let status = root::node_status(secured, &with_token("s3cret-s3cret-s3cret"))
        .await
        .unwrap();
    assert_eq!(status.state, NodeState::Busy);

    // The command line: without the token a clear failure, with it (flag or environment) a table.
    let status_cmd = |token: Option<&str>, env: Option<&str>| {
        let mut cmd = pcluster_cmd();
        cmd.arg("status")
            .arg(secured.to_string())
            .env_remove("PCLUSTER_TOKEN");
        if let Some(t) = token {
            cmd.args(["--token", t]);
        }
        if let Some(t) = env {
            cmd.env("PCLUSTER_TOKEN", t);
        }
        cmd.output().unwrap()
    };
    let out = status_cmd(None, None);
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "status without the token must fail: {text}"
    );
    assert!(
        text.contains("authentication failed") && text.contains("requires the cluster token"),
        "{text}"
    );
    for out in [
        status_cmd(Some("s3cret-s3cret-s3cret"), None),
        status_cmd(None, Some("s3cret-s3cret-s3cret")),
    ] {
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains(&secured.to_string()) && text.contains("busy"),
            "{text}"
        );
    }
    // A token short enough to guess offline is refused, saying how to make a key.
    let out = status_cmd(Some("short"), None);
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 5-character token must be refused");
    assert!(
        text.contains("5 characters") && text.contains("pcluster key new"),
        "{text}"
    );

    // The secured node logs to the secured log server; the open node is turned away there.
    wait_until(LONG, "the secured node's log lines", || {
        std::fs::read_to_string(&log_file)
            .unwrap_or_default()
            .lines()
            .any(|l| {
                l.contains(&format!("node {secured}")) && l.contains("w1_drop_odd: first item")
            })
    })
    .await;
    let text = std::fs::read_to_string(&log_file).unwrap();
    assert!(
        !text.contains(&format!("node {open}")),
        "a node without the token got into the log"
    );
}
