//! Helpers shared by the integration tests: the helpers of this crate's `kit` library (shared
//! with the bench) in panicking form, which is what a test wants, plus in-process nodes, roots
//! with collecting handlers, and a readable comparison of long output lists.

#![allow(dead_code)] // Not every test module uses every helper.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub use kit::{
    Child, Field, Process, RssSampler, TaskDef, W1Check, repo, status_kib, w1_expected, w1_inputs,
    w1_item,
};
use root::{ChainSpec, ItemFailure, Limits, Root, RootOptions};
use tokio_util::sync::CancellationToken;

/// The `pcluster` executable that cargo built for this test binary.
pub fn pcluster() -> kit::Pcluster {
    kit::Pcluster::new(kit::pcluster_exe().unwrap_or_else(|e| panic!("{e}")))
}

/// A command running the `pcluster` executable.
pub fn pcluster_cmd() -> std::process::Command {
    pcluster().command()
}

/// An address on `ip` that refuses connections while the returned socket lives.
pub fn refusing_addr(ip: &str) -> (tokio::net::TcpSocket, SocketAddr) {
    kit::refusing_addr(ip.parse().expect("an IP address")).expect("a bound port")
}

/// Polls `f` until it holds; panics naming `what` after `deadline`.
pub async fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    if let Err(e) = kit::poll(deadline, what, || std::future::ready(f())).await {
        panic!("{e}");
    }
}

/// Like [`wait_until`] for a condition that must be awaited.
pub async fn poll_until<F, Fut>(deadline: Duration, what: &str, f: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    if let Err(e) = kit::poll(deadline, what, f).await {
        panic!("{e}");
    }
}

/// A fresh, empty directory under the system temp dir, named after `name`: removed when the
/// test passes; kept when it fails.
pub fn temp_dir(name: &str) -> kit::TempDir {
    kit::temp_dir(name).expect("a temp dir")
}

/// Starts `command` with a guard that kills it when the test ends.
pub fn spawn(command: &mut std::process::Command) -> Child {
    Child::spawn(command).unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `pcluster node` as a process on `ip:port`, logging to `log_port`; returns it and its
/// port (with `port` 0, the one the OS chose: the way to start a first node).
pub async fn node_process(
    ip: &str,
    port: u16,
    log_port: u16,
    workers: u32,
    extra: &[&str],
) -> (Child, u16) {
    let ip = ip.parse().expect("an IP address");
    pcluster()
        .start_node(ip, port, log_port, workers, extra)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Starts `pcluster log` as a process on 127.0.0.1 writing to `file`; returns it and its port.
pub async fn log_process(file: &Path, extra: &[&str]) -> (Child, u16) {
    pcluster()
        .start_log(file, extra)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// The bytes of `tasks_example.wasm`, built from `tasks-example` when out of date.
pub fn tasks_module() -> Vec<u8> {
    kit::tasks_example_wasm().unwrap_or_else(|e| panic!("{e}"))
}

/// A chain of example tasks.
pub fn chain(name: &str, tasks: &[TaskDef<'_>]) -> ChainSpec {
    chain_with(name, tasks, Limits::default())
}

/// Like [`chain`] with limits.
pub fn chain_with(name: &str, tasks: &[TaskDef<'_>], limits: Limits) -> ChainSpec {
    kit::chain_spec(name, &tasks_module(), tasks, limits)
}

/// pipeline-cluster's README chain: log, duplicate, drop with a message.
pub fn hello() -> ChainSpec {
    chain(
        "hello",
        &[
            ("simple_task", false, ""),
            ("generator_task", true, ""),
            ("drop_item", false, "item dropped"),
        ],
    )
}

/// The W1 chain.
pub fn w1() -> ChainSpec {
    kit::w1_chain(&tasks_module())
}

/// Writes `<dir>/<name>.toml`, a one-task chain file over the example task crate.
pub fn chain_file(dir: &Path, name: &str, function: &str, args: &str) -> PathBuf {
    kit::write_chain_file(dir, name, &[(function, false, args)]).unwrap_or_else(|e| panic!("{e}"))
}

/// A node running in this process on `ip` (port 0 unless given), with `workers` workers.
pub async fn local_node(
    ip: &str,
    port: u16,
    workers: u32,
    token: Option<&str>,
) -> (SocketAddr, CancellationToken) {
    let listener = tokio::net::TcpListener::bind((ip, port))
        .await
        .expect("bind node");
    let addr = listener.local_addr().expect("node addr");
    let shutdown = CancellationToken::new();
    let config = node::NodeConfig {
        workers,
        token: token.map(protocol::auth::Token::new),
        // In memory only: these tests count what the node itself compiled and cached.
        cache_dir: None,
        ..Default::default()
    };
    let s = shutdown.clone();
    tokio::spawn(async move {
        node::run(listener, config, s).await.expect("node runs");
    });
    (addr, shutdown)
}

/// What the handlers of a root received.
#[derive(Clone, Default)]
pub struct Collected {
    pub outputs: Arc<Mutex<Vec<Vec<u8>>>>,
    pub failures: Arc<Mutex<Vec<ItemFailure>>>,
}

impl Collected {
    pub fn texts(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .outputs
            .lock()
            .unwrap()
            .iter()
            .map(|o| String::from_utf8_lossy(o).into_owned())
            .collect();
        v.sort();
        v
    }

    pub fn failures(&self) -> Vec<ItemFailure> {
        self.failures.lock().unwrap().clone()
    }
}

/// Sets `chain` up with handlers collecting outputs and failures.
pub async fn setup_collect(root: &Root, chain: ChainSpec) -> Result<Collected, root::RootError> {
    let c = Collected::default();
    let (o, f) = (c.outputs.clone(), c.failures.clone());
    root.setup_with(
        chain,
        move |_, item| o.lock().unwrap().push(item.to_vec()),
        move |fail| f.lock().unwrap().push(fail),
    )
    .await?;
    Ok(c)
}

/// A root with default options and these nodes.
pub async fn root_with(nodes: &[SocketAddr]) -> Root {
    Root::with_nodes(RootOptions::default(), nodes)
        .await
        .expect("add nodes")
}

/// Asserts two sorted lists are equal, reporting sizes and the first difference rather than
/// printing thousands of items.
#[track_caller]
pub fn assert_same(actual: &[String], expected: &[String]) {
    if actual == expected {
        return;
    }
    let first = actual.iter().zip(expected).position(|(a, e)| a != e);
    panic!(
        "outputs differ: {} outputs, {} expected; first difference at {:?}: {:?} vs {:?}",
        actual.len(),
        expected.len(),
        first,
        first.and_then(|i| actual.get(i)),
        first.and_then(|i| expected.get(i)),
    );
}

/// A log server and two node processes (one worker each) on 127.0.0.2 and 127.0.0.3, as the
/// end-to-end tests of `pcluster run` use them; each test module adds its own helpers.
pub struct Cluster {
    pub log: Child,
    pub log_port: u16,
    pub port: u16,
    pub nodes: Vec<Child>,
    /// Last, so that the processes are gone before their directory is.
    pub dir: kit::TempDir,
}

impl Cluster {
    pub async fn start(name: &str) -> Cluster {
        Cluster::start_with(name, &[]).await
    }

    /// The same, with `node_args` added to each node's command line.
    pub async fn start_with(name: &str, node_args: &[&str]) -> Cluster {
        let dir = temp_dir(name);
        let (log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
        // One port for both, so that a scan of that port finds them.
        let (a, port) = node_process("127.0.0.2", 0, log_port, 1, node_args).await;
        let (b, _) = node_process("127.0.0.3", port, log_port, 1, node_args).await;
        Cluster {
            log,
            log_port,
            port,
            nodes: vec![a, b],
            dir,
        }
    }

    /// The nodes' addresses, `ip:port`.
    pub fn addrs(&self) -> Vec<String> {
        ["127.0.0.2", "127.0.0.3"]
            .iter()
            .map(|ip| format!("{ip}:{}", self.port))
            .collect()
    }
}

/// A scripted peer posing as a node on `ip` (no token): for each connection it completes the
/// handshake, greets as `name` with one worker, and hands the connection to `serve`. Returns
/// its address. Tests use it for peers that misbehave in ways a real node never does.
pub async fn scripted_node<F, Fut>(ip: &str, name: &'static str, serve: F) -> SocketAddr
where
    F: Fn(protocol::Connection) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let serve = serve.clone();
            tokio::spawn(async move {
                let Ok(accepted) =
                    protocol::handshake::accept(stream, None, 64 << 20, Duration::from_secs(5))
                        .await
                else {
                    return;
                };
                let mut conn = accepted.conn;
                let welcome = protocol::Welcome {
                    node: name.into(),
                    busy_with: None,
                    workers: 1,
                    labels: Vec::new(),
                };
                if conn
                    .write_message(&protocol::Msg::Welcome(welcome))
                    .await
                    .is_ok()
                {
                    serve(conn).await;
                }
            });
        }
    });
    addr
}

/// A node's answer to setup, granting `items` and `bytes` of credit.
pub fn setup_done(items: u32, bytes: u64) -> protocol::Msg {
    protocol::Msg::SetupDone(protocol::SetupDone {
        compiled: 0,
        cached: 0,
        credit: protocol::Credit { items, bytes },
    })
}

/// The lines of an output file, sorted.
pub fn sorted_lines(path: &Path) -> Vec<String> {
    let mut lines: Vec<String> = std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

/// A new cluster key at `dir/cluster.key`, written by `pcluster key new`.
pub fn new_key(dir: &Path) -> PathBuf {
    let key = dir.join("cluster.key");
    let made = pcluster_cmd()
        .args(["key", "new"])
        .arg(&key)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    key
}

/// Whether componentize-py can build components here; panics in CI when it cannot.
pub fn componentize_py() -> bool {
    let found = std::process::Command::new("componentize-py")
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "componentize-py is not installed (pip install componentize-py): CI must run the Python tests"
        );
        eprintln!("SKIPPED: componentize-py is not installed (pip install componentize-py)");
    }
    found
}

/// Checks W1's outputs for `n` inputs, one per line, exactly.
#[track_caller]
pub fn assert_w1(stdout: &[u8], n: u64) {
    let mut check = W1Check::new(n);
    for line in stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        check.add(line);
    }
    if let Err(e) = check.verify() {
        panic!("W1 outputs are not exact: {e:?}");
    }
}

/// Inputs the node at `addr` took (its first task's `items_in`), and whether a root holds it.
pub async fn taken(addr: SocketAddr) -> Option<(u64, bool)> {
    let s = root::node_status(addr, &RootOptions::default())
        .await
        .ok()?;
    let held = s.state == protocol::NodeState::Busy;
    Some((s.tasks.first().map_or(0, |t| t.items_in), held))
}
