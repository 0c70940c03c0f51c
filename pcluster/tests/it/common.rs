//! Helpers shared by the integration tests: the `pcluster` binary, free loopback ports,
//! waits on a condition with a deadline, a child process guard, and cluster set-ups.

#![allow(dead_code)] // Not every test module uses every helper.

use std::net::{IpAddr, TcpListener};
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The `pcluster` executable that cargo built for this test binary.
pub fn pcluster_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pcluster"))
}

/// A TCP port on `ip` that was free a moment ago.
pub fn free_port(ip: IpAddr) -> u16 {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

/// Polls `f` every few milliseconds until it holds; panics naming `what` after `deadline`.
pub async fn wait_until(deadline: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !f() {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`wait_until`] for a condition that must be awaited.
pub async fn poll_until<F, Fut>(deadline: Duration, what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    while !f().await {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh, empty directory under the system temp dir, named after `name`.
pub fn temp_dir(name: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("pcluster-test-{}-{n}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}

/// A child process that is killed when the guard is dropped, so a failing test leaves no
/// server behind.
#[derive(Debug)]
pub struct Child {
    child: std::process::Child,
}

impl Child {
    /// Starts `command`.
    pub fn spawn(command: &mut Command) -> Child {
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {command:?}: {e}"));
        Child { child }
    }

    /// Sends SIGTERM (through `kill(1)`: the tests do not link libc).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed: {status}");
    }

    /// Waits up to `deadline` for the process to exit.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let mut status = None;
        wait_until(deadline, "the process to exit", || {
            status = self.child.try_wait().expect("try_wait");
            status.is_some()
        })
        .await;
        status.expect("exit status")
    }
}

impl Deref for Child {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.child
    }
}

impl DerefMut for Child {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.child
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---- cluster helpers -------------------------------------------------------------------

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use root::{ChainSpec, ItemFailure, Limits, Root, RootOptions, TaskSpec};
use tokio_util::sync::CancellationToken;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The bytes of `tasks_example.wasm`, built from `tasks-example` when out of date.
pub fn tasks_module() -> Vec<u8> {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    WASM.get_or_init(|| {
        let path = root::chain::build_task_crate(&repo().join("tasks-example"))
            .expect("build tasks-example for wasm32");
        std::fs::read(path).expect("read tasks_example.wasm")
    })
    .clone()
}

/// A chain of example tasks: `(function, generator, args)`.
pub fn chain(name: &str, tasks: &[(&str, bool, &str)]) -> ChainSpec {
    chain_with(name, tasks, Limits::default())
}

/// Like [`chain`] with limits.
pub fn chain_with(name: &str, tasks: &[(&str, bool, &str)], limits: Limits) -> ChainSpec {
    ChainSpec {
        name: name.into(),
        version: "1".into(),
        modules: vec![tasks_module().into()],
        tasks: tasks
            .iter()
            .map(|(f, g, a)| TaskSpec {
                function: (*f).into(),
                module: 0,
                generator: *g,
                args: a.as_bytes().to_vec(),
            })
            .collect(),
        limits,
    }
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

/// Writes `<dir>/<name>.toml`, a one-task chain file over the example task crate.
pub fn chain_file(dir: &Path, name: &str, function: &str, args: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let module = repo().join("tasks-example").display().to_string();
    std::fs::write(
        &path,
        format!("name = {name:?}\nmodule = {module:?}\n[[task]]\nfunction = {function:?}\nargs = {args:?}\n"),
    )
    .expect("write chain file");
    path
}

/// The W1 chain.
pub fn w1() -> ChainSpec {
    chain(
        "w1",
        &[
            ("w1_identity", false, ""),
            ("w1_duplicate", true, ""),
            ("w1_drop_odd", false, ""),
        ],
    )
}

/// The W1 expectation for inputs `item-0 … item-{n-1}`: every even item twice, sorted.
pub fn w1_expected(n: u64) -> Vec<String> {
    let mut v: Vec<String> = (0..n)
        .filter(|i| i % 2 == 0)
        .flat_map(|i| [format!("item-{i}"), format!("item-{i}")])
        .collect();
    v.sort();
    v
}

/// Inputs `item-0 … item-{n-1}`.
pub fn w1_inputs(n: u64) -> Vec<String> {
    (0..n).map(|i| format!("item-{i}")).collect()
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

/// Waits until something accepts TCP connections on `addr`.
pub async fn wait_listening(addr: SocketAddr) {
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(Instant::now() < end, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `pcluster node` as a process on `ip:port`, logging to `log_port`.
pub async fn node_process(
    ip: &str,
    port: u16,
    log_port: u16,
    workers: u32,
    extra: &[&str],
) -> Child {
    let mut cmd = Command::new(pcluster_bin());
    cmd.args([
        "node",
        "--host",
        ip,
        "--port",
        &port.to_string(),
        "--log-host",
        "127.0.0.1",
    ])
    .args([
        "--log-port",
        &log_port.to_string(),
        "--workers",
        &workers.to_string(),
    ])
    .args(extra)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let child = Child::spawn(&mut cmd);
    wait_listening(format!("{ip}:{port}").parse().unwrap()).await;
    child
}

/// Starts `pcluster log` as a process on 127.0.0.1 writing to `file`; returns it and its port.
pub async fn log_process(file: &Path, extra: &[&str]) -> (Child, u16) {
    let port = free_port("127.0.0.1".parse().unwrap());
    let mut cmd = Command::new(pcluster_bin());
    cmd.args([
        "log",
        "--host",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--outfile",
    ])
    .arg(file)
    .args(extra)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    let child = Child::spawn(&mut cmd);
    wait_listening(format!("127.0.0.1:{port}").parse().unwrap()).await;
    (child, port)
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
