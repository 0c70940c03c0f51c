//! Python tasks end to end: chains naming `examples/python/task_package` are built with
//! componentize-py by `pcluster run` and run as components on real `pcluster node`
//! processes; a task importing a package with C extensions fails its build with an error
//! that names the package. Skipped, saying so, when componentize-py is not installed, except
//! in CI (`CI=true`), where that fails. Every node shares one compiled-code cache under the
//! target dir, so the suite compiles the component once.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use crate::common::*;

const LONG: Duration = Duration::from_secs(300);

/// The compiled-code cache shared by the nodes of these tests.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("pcluster-cache")
}

fn package() -> PathBuf {
    repo().join("examples/python/task_package")
}

/// A log server and two single-worker node processes sharing the test cache.
async fn cluster(name: &str) -> Cluster {
    let cache = cache_dir();
    Cluster::start_with(name, &["--cache-dir", cache.to_str().unwrap()]).await
}

/// `pcluster run <chain> --input <input>` against the cluster's nodes.
fn run(c: &Cluster, chain: &Path, input: &Path, extra: &[&str]) -> Output {
    pcluster_cmd()
        .arg("run")
        .arg(chain)
        .args(["--scan", "127.0.0.0/24", "--port", &c.port.to_string()])
        .args([
            "--log-host",
            "127.0.0.1",
            "--log-port",
            &c.log_port.to_string(),
        ])
        .arg("--input")
        .arg(input)
        .args(extra)
        .output()
        .unwrap()
}

fn sorted_lines(bytes: &[u8]) -> Vec<String> {
    let mut lines: Vec<String> = String::from_utf8_lossy(bytes)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

fn log_text(c: &Cluster) -> String {
    std::fs::read_to_string(c.dir.join("cluster.log")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_w1_and_the_readme_chain_run_on_node_processes() {
    if !componentize_py() {
        return;
    }
    let c = cluster("py-w1").await;
    let n = 5_000;
    let input = c.dir.join("in.txt");
    kit::write_w1_input(&input, n).unwrap();
    let out = run(&c, &repo().join("examples/python/w1.toml"), &input, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(&sorted_lines(&out.stdout), &w1_expected(n));

    // pipeline-cluster's README example: every item logged by two tasks, then dropped with
    // the class's message; log lines tagged with node and task.
    let hello = c.dir.join("hello.txt");
    std::fs::write(&hello, "hello world!\nits me an input item!\n").unwrap();
    let out = run(&c, &repo().join("examples/python/hello.toml"), &hello, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty(), "every item is dropped");
    wait_until(LONG, "the Python tasks' log lines, tagged", || {
        let text = log_text(&c);
        let tagged = |needle: &str, task: &str| {
            text.lines()
                .filter(|l| {
                    l.contains(needle)
                        && l.contains(&format!("task={task}"))
                        && l.contains("node 127.0.0.")
                })
                .count()
        };
        tagged("hello world!", "simple_task") == 1
            && tagged("its me an input item!", "generator_task") == 1
            && tagged("item dropped", "DropItem") == 4
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raising_item_and_a_looping_item_fail_alone_and_the_node_serves_on() {
    if !componentize_py() {
        return;
    }
    let c = cluster("py-fail").await;
    let chain = c.dir.join("chain.toml");
    std::fs::write(
        &chain,
        format!(
            "name = \"py-fail\"\nmodule = {:?}\n\n\
             [[task]]\nfunction = \"w1_identity\"\nmodule = {rust:?}\n\n\
             [[task]]\nfunction = \"spin\"\n\n\
             [[task]]\nfunction = \"fail_on\"\nargs = [\"bad\"]\n\n\
             [[task]]\nfunction = \"w1_identity\"\nname = \"last\"\nmodule = {rust:?}\n\n\
             [limits]\ndeadline_ms = 1500\n",
            package().display().to_string(),
            rust = repo().join("tasks-example").display().to_string(),
        ),
    )
    .unwrap();
    // Rust → Python → Python → Rust: each side sees plain text.
    let input = c.dir.join("in.txt");
    std::fs::write(&input, "a\nbad one\nforever\nb\n").unwrap();
    let out = run(&c, &chain, &input, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "failed items: exit 2; {stderr}");
    assert_eq!(sorted_lines(&out.stdout), ["A", "B"]);
    assert!(
        stderr.contains("ValueError: refusing 'bad one'"),
        "the exception's message: {stderr}"
    );
    assert!(
        stderr.contains("line 3:") && stderr.contains("deadline of 1500 ms exceeded"),
        "the looping item failed at its deadline: {stderr}"
    );
    // The same nodes take the next run at once.
    let good = c.dir.join("good.txt");
    std::fs::write(&good, "x\ny\n").unwrap();
    let out = run(&c, &chain, &good, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sorted_lines(&out.stdout), ["X", "Y"]);
}

/// Threads of process `pid` now.
fn threads(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, Iterator::count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_item_fails_at_its_deadline_and_leaves_no_thread_behind() {
    if !componentize_py() {
        return;
    }
    let c = cluster("py-sleep").await;
    let chain = c.dir.join("chain.toml");
    std::fs::write(
        &chain,
        format!(
            "name = \"py-sleep\"\nmodule = {:?}\n\n[[task]]\nfunction = \"doze\"\n\n\
             [limits]\ndeadline_ms = 1000\n",
            package().display().to_string(),
        ),
    )
    .unwrap();
    let warm = c.dir.join("warm.txt");
    std::fs::write(&warm, "x\ny\n").unwrap();
    let out = run(&c, &chain, &warm, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let before: Vec<usize> = c.nodes.iter().map(|n| threads(n.id())).collect();

    // `time.sleep(1e6)` blocks in a WASI call, where no epoch check runs: the clock the
    // task sees ends at its deadline.
    let input = c.dir.join("in.txt");
    std::fs::write(&input, "a\nnap\nb\nc\nd\n").unwrap();
    let started = std::time::Instant::now();
    let out = run(&c, &chain, &input, &[]);
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "failed items: exit 2; {stderr}");
    assert_eq!(sorted_lines(&out.stdout), ["a", "b", "c", "d"]);
    assert!(
        stderr.contains("line 2:") && stderr.contains("deadline of 1000 ms exceeded"),
        "the sleeping item failed at its deadline: {stderr}"
    );
    assert!(!stderr.contains("lost"), "no node was lost: {stderr}");
    assert!(took < Duration::from_secs(8), "the run took {took:?}");
    wait_until(
        Duration::from_secs(30),
        "the nodes' threads back to before",
        || {
            c.nodes
                .iter()
                .zip(&before)
                .all(|(n, &b)| threads(n.id()) <= b)
        },
    )
    .await;
    let out = run(&c, &chain, &warm, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sorted_lines(&out.stdout), ["x", "y"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_loads_the_component_from_the_disk_cache() {
    if !componentize_py() {
        return;
    }
    let mut c = cluster("py-restart").await;
    let input = c.dir.join("in.txt");
    kit::write_w1_input(&input, 100).unwrap();
    let chain = repo().join("examples/python/w1.toml");
    let out = run(&c, &chain, &input, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Restart the node on 127.0.0.2: a new process with an empty memory cache.
    let mut old = c.nodes.remove(0);
    old.terminate().unwrap();
    assert!(old.wait_exit(LONG).await.unwrap().success());
    let cache = cache_dir();
    let extra = ["--cache-dir", cache.to_str().unwrap()];
    c.nodes.push(
        node_process("127.0.0.2", c.port, c.log_port, 1, &extra)
            .await
            .0,
    );
    let out = run(&c, &chain, &input, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_same(&sorted_lines(&out.stdout), &w1_expected(100));
    let node = format!("node 127.0.0.2:{}", c.port);
    wait_until(
        LONG,
        "the restarted node's setup, served from the disk cache",
        || {
            let text = log_text(&c);
            let setups: Vec<&str> = text
                .lines()
                .filter(|l| l.contains(&node) && l.contains("chain set up"))
                .collect();
            setups.len() == 2 && setups[1].contains("compiled=0") && setups[1].contains("cached=1")
        },
    )
    .await;
}

/// A root that asked for tagged items (as the Python package's roots do) feeds and gets
/// tagged items: Python sees the types it was fed, a Rust task's outputs come back as `b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tagged_root_keeps_item_types_across_python_and_rust_tasks() {
    if !componentize_py() {
        return;
    }
    let c = cluster("py-tagged").await;
    // (function, in Python, generator)
    let chain = |name: &str, tasks: &[(&str, bool, bool)]| {
        let mut text = format!("name = {name:?}\n");
        for (function, python, generator) in tasks {
            let module = if *python {
                package()
            } else {
                repo().join("tasks-example")
            };
            text += &format!(
                "[[task]]\nfunction = {function:?}\nmodule = {:?}\ngenerator = {generator}\n",
                module.display().to_string()
            );
        }
        let file = c.dir.join(format!("{name}.toml"));
        std::fs::write(&file, text).unwrap();
        root::chain::load(&file, &pcluster_build::Builder::new()).unwrap()
    };
    let options = root::RootOptions {
        tagged_items: true,
        ..root::RootOptions::default()
    };
    let nodes: Vec<std::net::SocketAddr> = c.addrs().iter().map(|a| a.parse().unwrap()).collect();
    let root = root::Root::with_nodes(options, &nodes).await.unwrap();

    // Python then Rust: the str "x" upper-cased by Python, passed through Rust as text,
    // handed back as bytes.
    let got = setup_collect(
        &root,
        chain(
            "py-rust",
            &[("simple_task", true, false), ("w1_identity", false, false)],
        ),
    )
    .await
    .unwrap();
    root.feed([&b"sx-1"[..], b"j[1, 2]", b"b\xff\x00"])
        .await
        .unwrap();
    root.wait_empty().await.unwrap();
    let mut outputs = got.outputs.lock().unwrap().clone();
    outputs.sort();
    assert_eq!(
        outputs,
        [b"b[1, 2]".to_vec(), b"bx-1".to_vec(), b"b\xff\x00".to_vec()]
    );
    root.reset().await.unwrap();

    // Rust then Python: Rust's raw output reaches Python as `r` (a str when UTF-8, bytes
    // otherwise) and Python's outputs stay tagged with their type.
    let got = setup_collect(
        &root,
        chain(
            "rust-py",
            &[
                ("w1_identity", false, false),
                ("generator_task", true, true),
            ],
        ),
    )
    .await
    .unwrap();
    root.feed([&b"stext"[..], b"b\xfe"]).await.unwrap();
    root.wait_empty().await.unwrap();
    let mut outputs = got.outputs.lock().unwrap().clone();
    outputs.sort();
    assert_eq!(
        outputs,
        [
            b"b\xfe".to_vec(),
            b"b\xfe".to_vec(),
            b"stext".to_vec(),
            b"stext".to_vec()
        ]
    );
    root.close().await.unwrap();
}

/// A node that ran a Python chain does not keep its component once a Rust chain follows:
/// the memory cache keeps the current chain's code and only a small budget of others
/// (the disk cache keeps the rest), and compiling leaves no heap behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_gives_back_the_python_component_when_a_rust_chain_follows() {
    if !componentize_py() {
        return;
    }
    let c = cluster("py-then-rust").await;
    let rss_mib = |node: &Child| {
        status_kib(Process::Pid(node.id()), Field::Rss).expect("the node's RSS") / 1024
    };
    // The Python W1 chain, set up and run by a library root that keeps it set up while the
    // nodes' memory is read.
    let options = root::RootOptions {
        tagged_items: true,
        ..root::RootOptions::default()
    };
    let nodes: Vec<std::net::SocketAddr> = c.addrs().iter().map(|a| a.parse().unwrap()).collect();
    let py_root = root::Root::with_nodes(options, &nodes).await.unwrap();
    let chain = root::chain::load(
        &repo().join("examples/python/w1.toml"),
        &pcluster_build::Builder::new(),
    )
    .unwrap();
    let got = setup_collect(&py_root, chain).await.unwrap();
    py_root
        .feed((0..1_000).map(|i| format!("sitem-{i}").into_bytes()))
        .await
        .unwrap();
    py_root.wait_empty().await.unwrap();
    assert_eq!(
        got.outputs.lock().unwrap().len(),
        1_000,
        "every even item twice"
    );
    let with_python: Vec<u64> = c.nodes.iter().map(rss_mib).collect();
    py_root.close().await.unwrap();

    let input = c.dir.join("in.txt");
    kit::write_w1_input(&input, 1_000).unwrap();
    let rust = chain_file(&c.dir, "identity", "w1_identity", "");
    let out = run(&c, &rust, &input, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(sorted_lines(&out.stdout).len(), 1_000);
    // The component's image alone is ~35 MB; with wasmtime's tables of it and the Python
    // instance, a node holds ~37 MiB more while it has it (measured).
    let what = format!(
        "the nodes' RSS (MiB, {with_python:?} with the Python chain set up) to fall by 24 MiB"
    );
    wait_until(LONG, &what, || {
        c.nodes
            .iter()
            .zip(&with_python)
            .all(|(n, &held)| rss_mib(n) + 24 <= held)
    })
    .await;
    let after: Vec<u64> = c.nodes.iter().map(rss_mib).collect();
    eprintln!("nodes' RSS (MiB): {with_python:?} with the Python chain set up, {after:?} after");
}

/// A task importing a package with C extensions fails to build, and the error names the
/// package and says why. The package is a stand-in for numpy in a virtual environment made
/// here (an extension module built for this machine beside its `__init__.py`, as pip installs
/// one), so the test needs no numpy; `pcluster run` takes packages from the active virtual
/// environment (`VIRTUAL_ENV`) and, with no componentize-py in it, runs the one on PATH.
#[test]
fn a_package_with_c_extensions_fails_the_build_naming_it() {
    if !componentize_py() {
        return;
    }
    let dir = temp_dir("py-native");
    let venv = dir.join("venv");
    let fastmath = venv.join("lib/python3.14/site-packages/fastmath");
    std::fs::create_dir_all(&fastmath).unwrap();
    std::fs::write(venv.join("pyvenv.cfg"), "home = /usr/bin\n").unwrap();
    std::fs::write(fastmath.join("__init__.py"), "from ._speedups import add\n").unwrap();
    // Its bytes do not matter: componentize-py bundles only extensions built for WebAssembly.
    std::fs::write(
        fastmath.join("_speedups.cpython-311-x86_64-linux-gnu.so"),
        b"\x7fELF",
    )
    .unwrap();
    let task = dir.join("uses_fastmath");
    std::fs::create_dir_all(&task).unwrap();
    std::fs::write(
        task.join("__init__.py"),
        "import fastmath\n\n\ndef add_one(item):\n    return str(fastmath.add(int(item), 1))\n",
    )
    .unwrap();
    let chain = dir.join("chain.toml");
    std::fs::write(
        &chain,
        format!(
            "name = \"native\"\nmodule = {:?}\n\n[[task]]\nfunction = \"add_one\"\n",
            task.display().to_string()
        ),
    )
    .unwrap();
    let input = dir.join("in.txt");
    std::fs::write(&input, "1\n").unwrap();
    // The chain is built before any node is contacted: no cluster is needed.
    let out = pcluster_cmd()
        .current_dir(&*dir)
        .arg("run")
        .arg(&chain)
        .arg("--input")
        .arg(&input)
        .args(["--nodes", "127.0.0.1:1"])
        .env("VIRTUAL_ENV", &venv)
        .env_remove("COMPONENTIZE_PY")
        .env_remove("PCLUSTER_PYTHON")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the build must fail: {stderr}");
    assert!(
        stderr.contains(&format!(
            "packages from the virtual environment {}",
            venv.display()
        )),
        "the build takes packages from VIRTUAL_ENV: {stderr}"
    );
    assert!(
        stderr.contains("the task imports `fastmath`, which has C extensions"),
        "the package is named: {stderr}"
    );
    assert!(
        stderr.contains(
            "C extensions cannot be bundled into the sandboxed component runtime; they need \
             a native Python runtime"
        ),
        "and why it cannot be built: {stderr}"
    );
    assert!(
        !stderr.contains("trapping stub"),
        "no trap hides the cause: {stderr}"
    );
}
