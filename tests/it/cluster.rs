//! The node and the root library together, in this process, over real TCP on loopback with
//! real wasm built from `tasks-example`: chains, failing tasks, setup errors, busy nodes,
//! the module cache, the feed/wait/reset cycle and the scan.

use std::net::SocketAddr;
use std::time::Duration;

use root::{Limits, Root, RootError, RootOptions};
use tokio::time::timeout;

use crate::common::*;

const LONG: Duration = Duration::from_secs(60);
/// One request and its answer.
const IO: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_chain_runs_and_every_item_is_dropped() {
    let (node, stop) = local_node("127.0.0.1", 0, 2, None).await;
    let root = root_with(&[node]).await;
    let c = setup_collect(&root, hello()).await.unwrap();
    root.feed(["a", "b", "c"]).await.unwrap();
    root.wait_empty().await.unwrap();
    assert!(c.texts().is_empty(), "drop_item drops everything");
    assert!(c.failures().is_empty());
    let counters = root.counters().await.unwrap();
    assert_eq!(counters.completed, 3);
    let status = root::node_status(node, &RootOptions::default())
        .await
        .unwrap();
    let names: Vec<_> = status
        .tasks
        .iter()
        .map(|t| (t.name.as_str(), t.items_in, t.items_out))
        .collect();
    assert_eq!(
        names,
        [
            ("simple_task", 3, 3),
            ("generator_task", 3, 6),
            ("drop_item", 6, 0)
        ]
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_written_by_hand_in_wat_runs() {
    // Identity plus a generator, with a fixed input buffer at 1024: any language that can
    // produce this module can write tasks.
    let wat = r#"(module
      (import "pcluster" "emit" (func $emit (param i32 i32)))
      (memory (export "memory") 1)
      (func (export "pcluster_abi_version") (result i32) i32.const 1)
      (func (export "pcluster_input") (param i32) (result i32) i32.const 1024)
      (func (export "identity") (param $len i32) (result i32)
        (call $emit (i32.const 1024) (local.get $len))
        i32.const 0)
      (func (export "twice") (param $len i32) (result i32)
        (call $emit (i32.const 1024) (local.get $len))
        (call $emit (i32.const 1024) (local.get $len))
        i32.const 0))"#;
    let module = wat::parse_str(wat).unwrap();
    let (node, stop) = local_node("127.0.0.1", 0, 1, None).await;
    let root = root_with(&[node]).await;
    let mut spec = chain("wat", &[]);
    spec.modules = vec![module.into()];
    spec.tasks = vec![
        root::TaskSpec {
            function: "identity".into(),
            module: 0,
            generator: false,
            args: vec![],
            next: None,
            labels: Vec::new(),
        },
        root::TaskSpec {
            function: "twice".into(),
            module: 0,
            generator: true,
            args: vec![],
            next: None,
            labels: Vec::new(),
        },
    ];
    let c = setup_collect(&root, spec).await.unwrap();
    root.feed(["x", "yy"]).await.unwrap();
    root.wait_empty().await.unwrap();
    assert_eq!(c.texts(), ["x", "x", "yy", "yy"]);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_looping_and_allocating_tasks_fail_only_their_own_items() {
    let (node, stop) = local_node("127.0.0.1", 0, 2, None).await;
    let root = root_with(&[node]).await;

    let c = setup_collect(&root, chain("panics", &[("panic_task", false, "")]))
        .await
        .unwrap();
    root.feed(["ok-1", "please panic", "ok-2"]).await.unwrap();
    root.wait_empty().await.unwrap();
    assert_eq!(c.texts(), ["ok-1", "ok-2"]);
    let f = c.failures();
    assert_eq!(f.len(), 1);
    assert_eq!(f[0].task, "panic_task");
    assert_eq!(f[0].item_start, b"please panic");
    assert!(f[0].message.contains("panic"), "{}", f[0].message);

    let limits = Limits {
        deadline_ms: 300,
        memory_mb: 32,
        ..Limits::default()
    };
    let c = setup_collect(
        &root,
        chain_with("spin", &[("spin_task", false, "")], limits.clone()),
    )
    .await
    .unwrap();
    root.feed(["spin"]).await.unwrap();
    root.wait_empty().await.unwrap();
    let f = c.failures();
    assert_eq!(f.len(), 1);
    assert!(
        f[0].message.contains("deadline of 300 ms exceeded"),
        "{}",
        f[0].message
    );

    let c = setup_collect(&root, chain_with("hog", &[("hog_task", false, "")], limits))
        .await
        .unwrap();
    root.feed(["eat"]).await.unwrap();
    root.wait_empty().await.unwrap();
    let f = c.failures();
    assert_eq!(f.len(), 1);
    assert!(
        f[0].message.contains("memory limit of 32 MiB"),
        "{}",
        f[0].message
    );

    // The node serves on, with the same instances rebuilt after the traps.
    let c = setup_collect(&root, w1()).await.unwrap();
    root.feed(w1_inputs(1000)).await.unwrap();
    root.wait_empty().await.unwrap();
    assert_same(&c.texts(), &w1_expected(1000));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setup_errors_are_clear_and_the_node_stays_ready() {
    let (node, stop) = local_node("127.0.0.1", 0, 1, None).await;
    let root = root_with(&[node]).await;
    let mut bad = chain("bad", &[("w1_identity", false, "")]);
    bad.modules = vec![b"not wasm at all".to_vec().into()];
    let err = setup_collect(&root, bad)
        .await
        .err()
        .expect("invalid module fails");
    assert!(matches!(err, RootError::Setup { .. }), "{err}");
    assert!(err.to_string().contains("does not compile"), "{err}");

    let err = setup_collect(&root, chain("missing", &[("no_such_task", false, "")]))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("no_such_task"), "{err}");

    let err = setup_collect(&root, chain("init", &[("w2_cpu", false, "not a number")]))
        .await
        .err()
        .unwrap();
    assert!(err.to_string().contains("init failed"), "{err}");

    let c = setup_collect(&root, w1()).await.unwrap();
    root.feed(w1_inputs(10)).await.unwrap();
    root.wait_empty().await.unwrap();
    assert_same(&c.texts(), &w1_expected(10));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_root_is_told_the_node_is_busy() {
    let (node, stop) = local_node("127.0.0.1", 0, 1, None).await;
    let first = root_with(&[node]).await;
    setup_collect(&first, w1()).await.unwrap();
    let second = Root::new(RootOptions::default());
    let err = timeout(IO, second.add_node(node))
        .await
        .expect("the node answers")
        .expect_err("busy");
    assert!(matches!(err, RootError::Busy { .. }), "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
    // Once the first root leaves, the node is free again: at once, not after the grace
    // period an orphaned node waits (30 s); the node may take a moment to notice the goodbye,
    // so the second root asks again until it gets in.
    first.close().await.unwrap();
    poll_until(IO, "the node to take the second root", || async {
        match timeout(IO, second.add_node(node)).await {
            Ok(Ok(())) => true,
            Ok(Err(RootError::Busy { .. })) => false,
            other => panic!("adding the freed node: {other:?}"),
        }
    })
    .await;
    let c = setup_collect(&second, w1()).await.unwrap();
    second.feed(w1_inputs(10)).await.unwrap();
    second.wait_empty().await.unwrap();
    assert_same(&c.texts(), &w1_expected(10));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn setting_the_same_chain_up_twice_compiles_once() {
    let (node, stop) = local_node("127.0.0.1", 0, 1, None).await;
    let root = root_with(&[node]).await;
    setup_collect(&root, w1()).await.unwrap();
    root.reset().await.unwrap();
    setup_collect(&root, w1()).await.unwrap();
    let status = root::node_status(node, &RootOptions::default())
        .await
        .unwrap();
    assert_eq!(status.modules_compiled, 1);
    assert_eq!(status.module_cache_hits, 1);
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_wait_input_wait_empty_reset_and_a_second_chain() {
    let (a, stop_a) = local_node("127.0.0.1", 0, 1, None).await;
    let (b, stop_b) = local_node("127.0.0.1", 0, 1, None).await;
    let options = RootOptions {
        queue_items: 4096,
        ..RootOptions::default()
    };
    let root = Root::with_nodes(options, &[a, b]).await.unwrap();
    let c = setup_collect(&root, w1()).await.unwrap();
    let n = 50_000u64;
    for chunk in w1_inputs(n).chunks(1000) {
        root.wait_input().await.unwrap();
        root.feed(chunk).await.unwrap();
    }
    root.wait_empty().await.unwrap();
    // wait_empty returned: every output is already with the handler.
    assert_same(&c.texts(), &w1_expected(n));

    root.reset().await.unwrap();
    let c2 = setup_collect(&root, chain("fan", &[("fan_out", true, "")]))
        .await
        .unwrap();
    root.feed(["3", "1"]).await.unwrap();
    root.wait_empty().await.unwrap();
    assert_eq!(c2.texts(), ["1-0", "3-0", "3-1", "3-2"]);
    assert_eq!(
        c.texts().len(),
        w1_expected(n).len(),
        "the first chain's handler got nothing more"
    );
    stop_a.cancel();
    stop_b.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_finds_exactly_the_nodes_and_skips_other_listeners() {
    // One port on every address: the scan's.
    let (a, stop_a) = local_node("127.0.0.2", 0, 1, None).await;
    let port = a.port();
    let (_, stop_b) = local_node("127.0.0.3", port, 1, None).await;
    // Not a pcluster node: answers HTTP-ish bytes and closes.
    let other = tokio::net::TcpListener::bind(("127.0.0.4", port))
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = other.accept().await {
            use tokio::io::AsyncWriteExt;
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    let root = Root::new(RootOptions::default());
    let started = std::time::Instant::now();
    let report = root
        .search_nodes("127.0.0.0/24".parse().unwrap(), port)
        .await
        .unwrap();
    eprintln!("scan of 127.0.0.0/24 took {:?}", started.elapsed());
    let found: Vec<String> = report.free.iter().map(|a| a.ip().to_string()).collect();
    assert_eq!(found, ["127.0.0.2", "127.0.0.3"]);
    assert!(report.busy.is_empty() && report.unauthenticated.is_empty());
    let c = setup_collect(&root, w1()).await.unwrap();
    root.feed(w1_inputs(2000)).await.unwrap();
    root.wait_empty().await.unwrap();
    assert_same(&c.texts(), &w1_expected(2000));
    stop_a.cancel();
    stop_b.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_calls_keep_per_item_semantics() {
    // Fast tasks run many items per guest call; an item error, a panic or a non-generator
    // emitting twice must still fail only its own item.
    let (node, stop) = local_node("127.0.0.1", 0, 2, None).await;
    let root = root_with(&[node]).await;
    let c = setup_collect(
        &root,
        chain(
            "errs",
            &[("w1_duplicate", true, ""), ("w1_drop_odd", false, "")],
        ),
    )
    .await
    .unwrap();
    let inputs: Vec<String> = (0..5000)
        .map(|i| {
            if i % 10 == 3 {
                format!("bad-x{i}")
            } else {
                format!("item-{i}")
            }
        })
        .collect();
    root.feed(&inputs).await.unwrap();
    root.wait_empty().await.unwrap();
    let mut expected: Vec<String> = (0..5000u64)
        .filter(|i| i % 10 != 3 && i % 2 == 0)
        .flat_map(|i| [format!("item-{i}"), format!("item-{i}")])
        .collect();
    expected.sort();
    assert_same(&c.texts(), &expected);
    let f = c.failures();
    assert_eq!(f.len(), 1000, "both copies of each bad item fail");
    assert!(
        f.iter()
            .all(|f| f.task == "w1_drop_odd" && f.item_start.starts_with(b"bad-x"))
    );

    let c = setup_collect(&root, chain("panics", &[("panic_task", false, "")]))
        .await
        .unwrap();
    let inputs: Vec<String> = (0..3000)
        .map(|i| {
            if i % 100 == 7 {
                format!("panic {i}")
            } else {
                format!("ok {i}")
            }
        })
        .collect();
    root.feed(&inputs).await.unwrap();
    root.wait_empty().await.unwrap();
    assert_eq!(c.texts().len(), 2970);
    let mut failed: Vec<String> = c
        .failures()
        .iter()
        .map(|f| String::from_utf8_lossy(&f.item_start).into_owned())
        .collect();
    failed.sort();
    let mut want: Vec<String> = (0..3000)
        .filter(|i| i % 100 == 7)
        .map(|i| format!("panic {i}"))
        .collect();
    want.sort();
    assert_eq!(failed, want);

    // The module says `w1_duplicate` is a generator: setup refuses a chain that says not.
    let Err(e) = setup_collect(&root, chain("not-gen", &[("w1_duplicate", false, "")])).await
    else {
        panic!("setup took a generator without `generator = true`");
    };
    assert!(
        e.to_string().contains("task `w1_duplicate` is a generator"),
        "{e}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_fan_out_is_spread_and_delivered_exactly_once() {
    let (node, stop) = local_node("127.0.0.1", 0, 2, None).await;
    let root = root_with(&[node]).await;
    let c = setup_collect(
        &root,
        chain(
            "fan",
            &[
                ("fan_out", true, ""),
                ("w1_identity", false, ""),
                ("w1_duplicate", true, ""),
            ],
        ),
    )
    .await
    .unwrap();
    root.feed(["50000", "3", "20000"]).await.unwrap();
    root.wait_empty().await.unwrap();
    let mut expected: Vec<String> = [50000u64, 3, 20000]
        .iter()
        .flat_map(|&n| (0..n).flat_map(move |i| [format!("{n}-{i}"), format!("{n}-{i}")]))
        .collect();
    expected.sort();
    assert_same(&c.texts(), &expected);
    assert!(c.failures().is_empty());
    let status = root::node_status(node, &RootOptions::default())
        .await
        .unwrap();
    assert_eq!(status.tasks[1].items_in, 70003);
    stop.cancel();
}

/// What moves when a node processes items: its per-task counters and the root's completed
/// inputs; plus what the root holds.
#[derive(Debug)]
struct Progress {
    /// `(items_in, items_out)` of each task on the node.
    node: Vec<(u64, u64)>,
    completed: u64,
    outputs: u64,
    /// Inputs the node holds and has not answered.
    in_flight: u64,
    /// Inputs queued in the root.
    pending: u64,
}

impl Progress {
    async fn read(root: &Root, node: SocketAddr) -> Progress {
        let status = root::node_status(node, &RootOptions::default())
            .await
            .expect("node status");
        let c = root.counters().await.expect("counters");
        Progress {
            node: status
                .tasks
                .iter()
                .map(|t| (t.items_in, t.items_out))
                .collect(),
            completed: c.completed,
            outputs: c.outputs,
            in_flight: c.in_flight,
            pending: c.pending,
        }
    }

    /// Whether no item was processed between `self` and `later`.
    fn same_work(&self, later: &Progress) -> bool {
        (&self.node, self.completed, self.outputs) == (&later.node, later.completed, later.outputs)
    }
}

/// Waits until `node` has sent `n` more heartbeats (one a second): its uptime is the clock.
async fn heartbeats(node: SocketAddr, n: u64) {
    let uptime = || async {
        root::node_status(node, &RootOptions::default())
            .await
            .expect("node status")
            .uptime_s
    };
    let start = uptime().await;
    poll_until(LONG, &format!("{n} heartbeats of {node}"), || async {
        uptime().await >= start + n
    })
    .await;
}

/// Reads the progress across `n` heartbeats until nothing moved in between; returns the last.
async fn settled(root: &Root, node: SocketAddr, n: u64) -> Progress {
    let mut last = Progress::read(root, node).await;
    let deadline = std::time::Instant::now() + LONG;
    loop {
        heartbeats(node, n).await;
        let now = Progress::read(root, node).await;
        if last.same_work(&now) {
            return now;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "work went on for {LONG:?} after the pause: {last:?} then {now:?}"
        );
        last = now;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_and_resume_lose_nothing() {
    let (node, stop) = local_node("127.0.0.1", 0, 2, None).await;
    let root = root_with(&[node]).await;
    // Items of about a millisecond each: the node holds a window of many, so a paused node
    // has work it could do.
    let iterations = 400_000u64;
    let spec = chain("w2", &[("w2_cpu", false, &iterations.to_string())]);
    let c = setup_collect(&root, spec).await.unwrap();
    let (first, more) = (1_000u64, 500u64);
    root.feed((0..first).map(|s| s.to_string())).await.unwrap();
    poll_until(LONG, "work under way", || async {
        root.counters().await.unwrap().completed >= 20
    })
    .await;
    root.pause().await.unwrap();

    // The calls running when the pause came finish; after that nothing moves, though the node
    // holds inputs it has not run.
    let paused = settled(&root, node, 2).await;
    eprintln!("paused: {paused:?}");
    assert!(
        paused.in_flight > 0 && paused.completed < first,
        "the paused node ran what it held: {paused:?}"
    );
    // Items fed while paused wait in the root.
    root.feed((first..first + more).map(|s| s.to_string()))
        .await
        .unwrap();
    heartbeats(node, 2).await;
    let later = Progress::read(&root, node).await;
    assert!(
        paused.same_work(&later),
        "items were processed while paused: {paused:?} then {later:?}"
    );
    assert_eq!(later.pending, paused.pending + more, "{later:?}");
    let status = root::node_status(node, &RootOptions::default())
        .await
        .unwrap();
    assert_eq!(status.chain, Some(("w2".to_string(), "1".to_string())));

    root.resume().await.unwrap();
    root.wait_empty().await.unwrap();
    assert!(c.failures().is_empty(), "{:?}", c.failures());
    let mut expected: Vec<String> = (0..first + more)
        .map(|s| kit::native_w2(s, iterations).to_string())
        .collect();
    expected.sort();
    assert_same(&c.texts(), &expected);
    stop.cancel();
}

#[test]
fn the_blocking_root_runs_a_chain_without_async() {
    // The node runs on a runtime of its own; the caller below is plain blocking code.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (node, stop) = rt.block_on(local_node("127.0.0.1", 0, 1, None));
    let root = root::blocking::BlockingRoot::new(RootOptions::default()).unwrap();
    root.add_node(node).unwrap();
    let c = Collected::default();
    let (o, f) = (c.outputs.clone(), c.failures.clone());
    root.setup_with(
        w1(),
        move |_, item| o.lock().unwrap().push(item.to_vec()),
        move |fail| f.lock().unwrap().push(fail),
    )
    .unwrap();
    for chunk in w1_inputs(10_000).chunks(1000) {
        root.wait_input().unwrap();
        root.feed(chunk).unwrap();
    }
    root.wait_empty().unwrap();
    assert_same(&c.texts(), &w1_expected(10_000));
    root.close().unwrap();
    stop.cancel();
}

/// A root dropped without `close` (and a `BlockingRoot` dropped the same way) frees its node
/// at once; `feed` gives each item an id that the output handler names; with `keep_order`
/// the handler sees inputs in feed order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_roots_free_their_nodes_and_ids_name_inputs_in_order() {
    let (node, stop) = local_node("127.0.0.1", 0, 2, None).await;
    let options = RootOptions {
        keep_order: true,
        ..Default::default()
    };
    let root = Root::with_nodes(options, &[node]).await.unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let s = seen.clone();
    root.setup(
        chain("ids", &[("w1_identity", false, "")]),
        move |id, item| {
            s.lock()
                .unwrap()
                .push((id.0, String::from_utf8_lossy(item).into_owned()));
        },
    )
    .await
    .unwrap();
    let first = root.feed(["a", "b"]).await.unwrap();
    let second = root.feed(w1_inputs(20_000)).await.unwrap();
    assert_eq!((first.first.0, first.count), (0, 2));
    assert_eq!((second.first.0, second.count), (2, 20_000));
    root.wait_empty().await.unwrap();
    let seen = seen.lock().unwrap().clone();
    let want: Vec<(u64, String)> = ["a".to_string(), "b".to_string()]
        .into_iter()
        .chain(w1_inputs(20_000))
        .enumerate()
        .map(|(i, s)| (i as u64, s))
        .collect();
    assert!(seen == want, "outputs in feed order, named by their ids");
    let free = || async {
        root::node_status(node, &RootOptions::default())
            .await
            .is_ok_and(|s| s.state == protocol::NodeState::Free)
    };
    assert!(!free().await, "held while the root lives");
    drop(root);
    poll_until(Duration::from_secs(2), "the node to be free", free).await;

    let blocking = tokio::task::spawn_blocking(move || {
        let b = root::blocking::BlockingRoot::new(RootOptions::default()).unwrap();
        b.add_node(node).unwrap();
        b.setup_with(
            chain("ids", &[("w1_identity", false, "")]),
            |_, _| {},
            |_| {},
        )
        .unwrap();
        drop(b);
    });
    blocking.await.unwrap();
    poll_until(Duration::from_secs(2), "the node to be free again", free).await;
    stop.cancel();
}
