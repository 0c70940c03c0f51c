//! Work that follows its cost, with real node processes on loopback: one input fanning out to
//! hundreds of slow items spreads over both nodes as continuations and survives the SIGKILL
//! of a node running them; a branching chain (examples/diamond.toml) gives each output
//! exactly once through `pcluster run` and through a node killed mid-run; `--dot` draws it.
//!
//! Kill points are chosen by progress (the nodes' counters, the root's), never by time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use root::{ItemFailure, Root, RootOptions};

use crate::common::*;

const LONG: Duration = Duration::from_secs(120);

fn addr(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().expect("socket address")
}

/// Calls of task `index` on the node at `addr` so far (0 when it cannot say).
async fn task_calls(addr: SocketAddr, index: usize) -> u64 {
    root::node_status(addr, &RootOptions::default())
        .await
        .ok()
        .and_then(|s| s.tasks.get(index).map(|t| t.items_in))
        .unwrap_or(0)
}

/// Outputs by input id, and failures.
#[derive(Clone, Default)]
struct ByInput {
    outputs: Arc<Mutex<HashMap<u64, Vec<String>>>>,
    failures: Arc<Mutex<Vec<ItemFailure>>>,
}

impl ByInput {
    async fn setup(&self, root: &Root, chain: root::ChainSpec) {
        let (o, f) = (self.outputs.clone(), self.failures.clone());
        root.setup_with(
            chain,
            move |id, item| {
                o.lock()
                    .unwrap()
                    .entry(id.0)
                    .or_default()
                    .push(String::from_utf8_lossy(item).into_owned());
            },
            move |fail| f.lock().unwrap().push(fail),
        )
        .await
        .expect("setup");
    }

    /// Input `id`'s outputs, sorted.
    fn of(&self, id: u64) -> Vec<String> {
        let mut v = self
            .outputs
            .lock()
            .unwrap()
            .get(&id)
            .cloned()
            .unwrap_or_default();
        v.sort();
        v
    }
}

/// W3 on two nodes: the inputs `150` and `250` fan out through `fan_seeds` to 400 items of
/// `w2_cpu` (2,000,000 iterations, a few ms each). Both nodes run items of them
/// (continuations), then the second is killed while it runs its share: every output arrives
/// exactly once and every input completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_spreads_over_nodes_and_survives_a_killed_one() {
    let dir = temp_dir("sched-w3");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (_a, port) = node_process("127.0.12.2", 0, log_port, 1, &[]).await;
    let (mut b, _) = node_process("127.0.12.3", port, log_port, 1, &[]).await;
    let addrs = [addr("127.0.12.2", port), addr("127.0.12.3", port)];
    let root = Root::with_nodes(RootOptions::default(), &addrs)
        .await
        .unwrap();
    let iterations = 2_000_000u64;
    let spec = chain(
        "w3",
        &[
            ("fan_seeds", true, ""),
            ("w2_cpu", false, &iterations.to_string()),
        ],
    );
    let got = ByInput::default();
    got.setup(&root, spec).await;
    let ids = root.feed(["150", "250"]).await.unwrap();

    // Both nodes run seeds of the fan-out, whichever got the inputs: the surplus went back
    // to the root and on to the other node.
    poll_until(LONG, "both nodes running w2_cpu", || async {
        task_calls(addrs[0], 1).await >= 5 && task_calls(addrs[1], 1).await >= 5
    })
    .await;
    let before = root.counters().await.unwrap();
    assert!(before.completed < 2, "killed before the end: {before:?}");
    b.signal("-KILL").unwrap();
    assert!(!b.wait_exit(LONG).await.unwrap().success());
    root.wait_empty().await.unwrap();

    let c = root.counters().await.unwrap();
    eprintln!("after the kill: {c:?}");
    let failures = got.failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "{:?}", failures.first());
    for (k, n) in [(0u64, 150u64), (1, 250)] {
        let mut expected: Vec<String> = (0..n)
            .map(|s| kit::native_w2(s, iterations).to_string())
            .collect();
        expected.sort();
        assert_same(&got.of(ids.first.0 + k), &expected);
    }
    assert_eq!((c.completed, c.outputs, c.failed), (2, 400, 0));
}

/// examples/diamond.toml over `item-0 … item-{n-1}`: every even item exactly three times.
fn diamond_expected(n: u64) -> Vec<String> {
    let mut v: Vec<String> = (0..n)
        .filter(|i| i % 2 == 0)
        .flat_map(|i| std::iter::repeat_n(format!("item-{i}"), 3))
        .collect();
    v.sort();
    v
}

/// `pcluster run examples/diamond.toml` on an embedded cluster: the branches meet in
/// `w1_drop_odd`, so every even item comes out three times; `--dot` draws the graph without
/// any node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_diamond_chain_gives_every_even_item_three_times() {
    let dir = temp_dir("sched-diamond");
    let n = 2_000u64;
    let input = dir.join("in.txt");
    kit::write_w1_input(&input, n).unwrap();
    let chain = repo().join("examples/diamond.toml");
    let run = pcluster_cmd()
        .arg("run")
        .arg(&chain)
        .args(["--quiet", "--input"])
        .arg(&input)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "pcluster run failed: {stderr}");
    let mut outputs: Vec<String> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(String::from)
        .collect();
    outputs.sort();
    assert_same(&outputs, &diamond_expected(n));

    let dot = pcluster_cmd()
        .arg("run")
        .arg(&chain)
        .arg("--dot")
        .output()
        .unwrap();
    assert!(dot.status.success());
    let dot = String::from_utf8_lossy(&dot.stdout);
    for edge in [
        "\"w1_identity\" -> \"w1_duplicate\";",
        "\"w1_identity\" -> \"copy\";",
        "\"w1_duplicate\" -> \"w1_drop_odd\";",
        "\"copy\" -> \"w1_drop_odd\";",
    ] {
        assert!(dot.contains(edge), "{edge} in {dot}");
    }

    // A cycle is refused at load, naming a task on it.
    let bad = dir.join("cycle.toml");
    std::fs::write(
        &bad,
        format!(
            "name = \"c\"\nmodule = \"{}\"\n[[task]]\nfunction = \"w1_identity\"\nnext = [\"b\"]\n\
             [[task]]\nname = \"b\"\nfunction = \"w1_identity\"\nnext = [\"w1_identity\"]\n",
            repo().join("tasks-example").display()
        ),
    )
    .unwrap();
    let run = pcluster_cmd()
        .arg("run")
        .arg(&bad)
        .arg("--dot")
        .output()
        .unwrap();
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("is on a cycle"), "{stderr}");
}

/// The diamond on two node processes, one killed (SIGKILL) at a third of the inputs and
/// replaced: every even item still comes out exactly three times, every odd one never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_branching_chain_survives_a_killed_node() {
    let dir = temp_dir("sched-diamond-kill");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (_a, port) = node_process("127.0.13.2", 0, log_port, 1, &[]).await;
    let (mut b, _) = node_process("127.0.13.3", port, log_port, 1, &[]).await;
    let root = Arc::new(
        Root::with_nodes(
            RootOptions::default(),
            &[addr("127.0.13.2", port), addr("127.0.13.3", port)],
        )
        .await
        .unwrap(),
    );
    let n = 600_000u64;
    let counts = Arc::new(Mutex::new(vec![0u8; n as usize]));
    let bad = Arc::new(Mutex::new(0u64));
    let (c, w) = (counts.clone(), bad.clone());
    root.setup_with(
        root::chain::load(
            &repo().join("examples/diamond.toml"),
            &pcluster_build::Builder::new(),
        )
        .unwrap(),
        move |id, item| {
            if item == format!("item-{}", id.0).as_bytes() {
                c.lock().unwrap()[id.0 as usize] += 1;
            } else {
                *w.lock().unwrap() += 1;
            }
        },
        |f| panic!("no item fails: {f}"),
    )
    .await
    .unwrap();
    let feeder = {
        let root = root.clone();
        tokio::spawn(async move {
            for chunk in kit::w1_batches(n, 4096) {
                root.feed_packed(chunk).await?;
            }
            Ok::<_, root::RootError>(())
        })
    };
    poll_until(LONG, "a third of the inputs completed", || async {
        let c = root.counters().await.unwrap();
        c.completed >= n / 3 && (c.pending > 0 || c.fed == n)
    })
    .await;
    b.signal("-KILL").unwrap();
    assert!(!b.wait_exit(LONG).await.unwrap().success());
    let (_c, _) = node_process("127.0.13.4", port, log_port, 1, &[]).await;
    root.add_node(addr("127.0.13.4", port)).await.unwrap();
    feeder.await.unwrap().unwrap();
    root.wait_empty().await.unwrap();
    let c = root.counters().await.unwrap();
    eprintln!("{c:?}");
    assert_eq!(*bad.lock().unwrap(), 0, "outputs are their inputs' text");
    let counts = counts.lock().unwrap();
    let wrong = (0..n as usize).find(|&i| counts[i] != if i % 2 == 0 { 3 } else { 0 });
    assert_eq!(
        wrong,
        None,
        "input {wrong:?} has {:?} outputs",
        wrong.map(|i| counts[i])
    );
    assert_eq!((c.completed, c.outputs), (n, 3 * n / 2));
}

/// Two nodes labelled `a` and `b`, and W1 with `w1_identity` needing `a` and the two tasks
/// after it needing `b`, the `b` tasks in a module of their own: the outputs are exact, each
/// node's counters show only its own tasks ran there, and each node received and compiled
/// (or found cached) only its own module. Without node `b`, setup fails naming the task and
/// the label. A node carrying both labels gets both modules and runs the whole chain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_run_only_on_nodes_with_their_labels() {
    let dir = temp_dir("sched-labels");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (_a, port) = node_process("127.0.14.2", 0, log_port, 1, &["--labels", "a"]).await;
    let (_b, _) = node_process("127.0.14.3", port, log_port, 1, &["--labels", "b"]).await;
    let (_ab, _) = node_process("127.0.14.4", port, log_port, 1, &["--labels", "b,a"]).await;
    let (a, b, ab) = (
        addr("127.0.14.2", port),
        addr("127.0.14.3", port),
        addr("127.0.14.4", port),
    );
    let mut spec = w1();
    // The `b` tasks' module: the same code with a custom section (name `x`, payload `b`)
    // appended, so its bytes (and hash) differ.
    let mut module_b = spec.modules[0].to_vec();
    module_b.extend_from_slice(&[0x00, 0x03, 0x01, b'x', b'b']);
    spec.modules.push(module_b.into());
    spec.tasks[0].labels = vec!["a".into()];
    for t in &mut spec.tasks[1..] {
        t.labels = vec!["b".into()];
        t.module = 1;
    }

    let alone = Root::with_nodes(RootOptions::default(), &[a])
        .await
        .unwrap();
    let e = alone.setup(spec.clone(), |_, _| {}).await.unwrap_err();
    assert!(
        e.to_string().contains("w1_duplicate") && e.to_string().contains("`b`"),
        "{e}"
    );
    alone.close().await.unwrap();

    let n = 50_000u64;
    let run = |nodes: Vec<SocketAddr>| {
        let spec = spec.clone();
        async move {
            let root = Root::with_nodes(RootOptions::default(), &nodes)
                .await
                .unwrap();
            let check = Arc::new(Mutex::new(kit::W1Check::new(n)));
            let c = check.clone();
            root.setup_with(
                spec,
                move |id, item| c.lock().unwrap().add_for(id.0, item),
                |f| panic!("no item fails: {f}"),
            )
            .await
            .unwrap();
            for chunk in kit::w1_batches(n, 4096) {
                root.feed_packed(chunk).await.unwrap();
            }
            root.wait_empty().await.unwrap();
            check.lock().unwrap().verify().unwrap();
            let mut status = Vec::new();
            for node in nodes {
                status.push(
                    root::node_status(node, &RootOptions::default())
                        .await
                        .unwrap(),
                );
            }
            root.close().await.unwrap();
            status
        }
    };
    let status = run(vec![a, b]).await;
    let (status_a, status_b) = (&status[0], &status[1]);
    let calls = |s: &protocol::NodeStatus| s.tasks.iter().map(|t| t.items_in).collect::<Vec<_>>();
    assert_eq!(calls(status_a), [n, 0, 0], "{status_a:?}");
    assert_eq!(calls(status_b), [0, n, 2 * n], "{status_b:?}");
    assert_eq!(status_a.labels, ["a"]);
    // One setup each, and one module looked up each: its own.
    let modules = |s: &protocol::NodeStatus| s.modules_compiled + s.module_cache_hits;
    assert_eq!((modules(status_a), modules(status_b)), (1, 1), "{status:?}");

    let status = run(vec![ab]).await;
    assert_eq!(calls(&status[0]), [n, n, 2 * n], "{status:?}");
    assert_eq!(modules(&status[0]), 2, "{status:?}");
}

/// The labelled chain of the test above, with node `b` killed (SIGKILL) mid-run: node `a`
/// runs on, the items that reached the `b` stage wait at the root, and a new node labelled
/// `b` started on the same address and port takes them. Every output arrives exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_labelled_stage_waits_for_a_replaced_node() {
    let dir = temp_dir("sched-labels-kill");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (_a, port) = node_process("127.0.21.2", 0, log_port, 1, &["--labels", "a"]).await;
    let (mut old_b, _) = node_process("127.0.21.3", port, log_port, 1, &["--labels", "b"]).await;
    let (a, b) = (addr("127.0.21.2", port), addr("127.0.21.3", port));
    let mut spec = w1();
    spec.tasks[0].labels = vec!["a".into()];
    for t in &mut spec.tasks[1..] {
        t.labels = vec!["b".into()];
    }
    let root = Arc::new(
        Root::with_nodes(RootOptions::default(), &[a, b])
            .await
            .unwrap(),
    );
    let n = 300_000u64;
    let check = Arc::new(Mutex::new(kit::W1Check::new(n)));
    let c = check.clone();
    root.setup_with(
        spec,
        move |id, item| c.lock().unwrap().add_for(id.0, item),
        |f| panic!("no item fails: {f}"),
    )
    .await
    .unwrap();
    // The last third is fed only after the kill, so the kill always lands mid-run however
    // fast the first part goes.
    let mut chunks = kit::w1_batches(n, 4096);
    let rest = chunks.split_off(chunks.len() * 2 / 3);
    for chunk in chunks {
        root.feed_packed(chunk).await.unwrap();
    }
    poll_until(LONG, "a third of the inputs completed", || async {
        let c = root.counters().await.unwrap();
        c.completed >= n / 3
    })
    .await;
    old_b.signal("-KILL").unwrap();
    assert!(!old_b.wait_exit(LONG).await.unwrap().success());
    let feeder = {
        let root = root.clone();
        tokio::spawn(async move {
            for chunk in rest {
                root.feed_packed(chunk).await?;
            }
            Ok::<_, root::RootError>(())
        })
    };
    // Node `a` still takes fresh inputs; what reached the `b` stage waits at the root.
    let stalled = root.counters().await.unwrap();
    assert!(stalled.completed < n, "killed before the end: {stalled:?}");

    let (_new_b, _) = node_process("127.0.21.3", port, log_port, 1, &["--labels", "b"]).await;
    root.add_node(b).await.unwrap();
    feeder.await.unwrap().unwrap();
    root.wait_empty().await.unwrap();
    let c = root.counters().await.unwrap();
    eprintln!("{c:?}");
    check.lock().unwrap().verify().unwrap();
    assert_eq!((c.fed, c.completed, c.failed), (n, n, 0));
    let status_a = root::node_status(a, &RootOptions::default()).await.unwrap();
    let calls = |s: &protocol::NodeStatus| s.tasks.iter().map(|t| t.items_in).collect::<Vec<_>>();
    // Node `a` ran the first task of every input exactly once (its node was never lost) and
    // nothing else; the `b` tasks' work is split over the old and the new node.
    assert_eq!(calls(&status_a), [n, 0, 0], "{status_a:?}");
}

/// `pcluster run` on a chain whose second task needs label `b`, with the only `b` node
/// killed (SIGKILL) mid-run and none coming back: after `--no-node-timeout` the run ends
/// with an error naming the task and the label, and every input that completed has its
/// output written exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pcluster_run_ends_when_no_node_can_run_a_labelled_stage() {
    let dir = temp_dir("sched-labels-timeout");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (_a, port) = node_process("127.0.21.4", 0, log_port, 1, &["--labels", "a"]).await;
    let (mut b, _) = node_process("127.0.21.5", port, log_port, 1, &["--labels", "b"]).await;
    let (a_addr, b_addr) = (addr("127.0.21.4", port), addr("127.0.21.5", port));
    let iterations = 20_000u64;
    let chain = dir.join("labelled.toml");
    std::fs::write(
        &chain,
        format!(
            "name = \"labelled\"\nmodule = \"{}\"\n\
             [[task]]\nfunction = \"w1_identity\"\nlabels = [\"a\"]\n\
             [[task]]\nfunction = \"w2_cpu\"\nargs = \"{iterations}\"\nlabels = [\"b\"]\n",
            repo().join("tasks-example").display()
        ),
    )
    .unwrap();
    let n = 200_000u64;
    let input = dir.join("in.txt");
    let seeds: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    std::fs::write(&input, seeds.join("\n") + "\n").unwrap();
    let (out, err) = (dir.join("out.txt"), dir.join("err.txt"));
    let mut run = spawn(
        pcluster_cmd()
            .arg("run")
            .arg(&chain)
            .arg("--nodes")
            .arg(format!("{a_addr},{b_addr}"))
            .args(["--no-node-timeout", "2", "--quiet", "--input"])
            .arg(&input)
            .arg("--output")
            .arg(&out)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&err).unwrap()),
    );
    poll_until(LONG, "node b to run part of the inputs", || async {
        task_calls(b_addr, 1).await >= 2_000
    })
    .await;
    b.signal("-KILL").unwrap();
    assert!(!b.wait_exit(LONG).await.unwrap().success());
    let status = run.wait_exit(LONG).await.unwrap();
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(!status.success(), "the run cannot finish: {stderr}");
    assert!(
        stderr.contains("w2_cpu") && stderr.contains("label `b`"),
        "the error names the task and the label: {stderr}"
    );
    // "the run ended with N inputs not done": the others are written, each exactly once.
    let not_done: u64 = stderr
        .split("the run ended with ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("how many inputs are not done: {stderr}"));
    assert!(not_done > 0 && not_done < n, "{stderr}");
    let mut expected: HashMap<String, i64> = HashMap::new();
    for s in 0..n {
        *expected
            .entry(kit::native_w2(s, iterations).to_string())
            .or_default() += 1;
    }
    let written = std::fs::read_to_string(&out).unwrap();
    let mut lines = 0u64;
    for line in written.lines() {
        lines += 1;
        let left = expected.entry(line.to_string()).or_default();
        *left -= 1;
        assert!(
            *left >= 0,
            "output {line} is not owed (duplicated or wrong)"
        );
    }
    assert_eq!(lines, n - not_done, "one output per completed input");
}
