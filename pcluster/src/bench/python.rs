//! `pcluster bench`'s Python rows, with the tasks of `examples/python/task_package` built
//! into a component by componentize-py (skipped, saying so, when it is not installed), and
//! the same tasks in the native runtime on a cluster of its own whose nodes allow it:
//!
//! - W1-py: W1's three tasks in Python through a `pcluster run` process (after a warm-up run
//!   that builds and compiles the component), outputs verified; the floor is plain CPython
//!   running the three functions serially in this run.
//! - W2-py: W2's CPU task in Python through the library root, outputs checked against the
//!   native values; the ideal is plain CPython running the same function serially in this
//!   run, divided by the workers.

use std::io::BufRead as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context as _, bail, ensure};
use kit::{Pcluster, W1Check};
use root::Root;

use super::{BenchArgs, Cluster, Floors, Row};

/// The token of the native cluster (native tasks need one).
const TOKEN: &str = "pcluster bench native token";

/// Where the Python tasks run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Runtime {
    /// Compiled to a component, in the sandbox.
    Component,
    /// In CPython processes on the nodes.
    Native,
}

impl Runtime {
    fn chain_line(self) -> &'static str {
        match self {
            Runtime::Component => "",
            Runtime::Native => "runtime = \"python\"\n",
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            Runtime::Component => "",
            Runtime::Native => " native",
        }
    }
}

/// W1-py and W2-py with native tasks, on a log server and nodes started with a token and
/// `--allow-native` (their environments under `dir`).
pub(super) async fn native(
    pcluster: &Pcluster,
    dir: &Path,
    args: &BenchArgs,
) -> anyhow::Result<Vec<Row>> {
    let cache = dir.join("native-cache");
    let cache = cache.to_string_lossy();
    let node_extra = ["--allow-native", "--cache-dir", &cache];
    let cluster = Cluster::start_with(
        pcluster,
        dir,
        args.nodes,
        args.workers,
        &["--token", TOKEN],
        &node_extra,
    )
    .await?;
    let workers = u64::from(args.nodes * args.workers);
    let options = root::RootOptions {
        token: Some(protocol::auth::Token::new(TOKEN)),
        ..root::RootOptions::default()
    };
    let root = Root::with_nodes(options, &cluster.nodes).await?;
    let w2 = w2_py(&root, dir, workers, Runtime::Native).await?;
    root.close().await?;
    let w1 = w1_py(
        pcluster,
        &cluster,
        dir,
        args.py_items,
        workers,
        Runtime::Native,
    )?;
    Ok(vec![w2, w1])
}

/// W2-py seeds and iterations: about a second of CPython.
const W2_SEEDS: u64 = 200;
const W2_ITERATIONS: u64 = 20_000;

/// Whether componentize-py is installed.
pub(super) fn available() -> bool {
    Command::new("componentize-py")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn package_dir() -> std::path::PathBuf {
    kit::repo().join("examples/python")
}

/// A script running `body` (Python statements using `task_package`), printing the seconds it
/// took and then what it put in `_out`.
fn cpython_script(body: &str) -> String {
    format!(
        "import sys, time, types\n\
         sys.path.insert(0, {dir:?})\n\
         sys.modules['pcluster'] = types.SimpleNamespace(log=lambda *a, **k: None)\n\
         import task_package as t\n\
         _out = []\n\
         _t = time.perf_counter()\n\
         {body}\n\
         print(time.perf_counter() - _t)\n\
         print('\\n'.join(_out))\n",
        dir = package_dir().display().to_string(),
    )
}

/// Seconds plain CPython takes for `body` (Python statements using `task_package`), timed
/// inside the interpreter, and what the body printed after the time.
fn cpython(body: &str) -> anyhow::Result<(f64, String)> {
    let script = cpython_script(body);
    let out = Command::new("python3")
        .args(["-c", &script])
        .output()
        .context("cannot run python3 for the CPython floor")?;
    if !out.status.success() {
        bail!("python3 failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8(out.stdout)?;
    let (secs, rest) = text.split_once('\n').unwrap_or((&text, ""));
    Ok((secs.trim().parse()?, rest.to_string()))
}

/// Seconds `workers` plain CPython processes take side by side for W2-py's seeds, each its
/// share (timed inside each; the slowest counts).
fn cpython_parallel(workers: u64) -> anyhow::Result<f64> {
    let children: Vec<_> = (0..workers.max(1))
        .map(|k| {
            let body = format!(
                "for s in range({k}, {W2_SEEDS}, {}):\n    t.w2_mix(s, {W2_ITERATIONS})",
                workers.max(1)
            );
            Command::new("python3")
                .args(["-c", &cpython_script(&body)])
                .stdout(Stdio::piped())
                .spawn()
        })
        .collect::<Result<_, _>>()
        .context("cannot run python3 for the CPython floor")?;
    let mut slowest: f64 = 0.0;
    for child in children {
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "python3 failed");
        let text = String::from_utf8(out.stdout)?;
        let secs: f64 = text.lines().next().unwrap_or("").trim().parse()?;
        slowest = slowest.max(secs);
    }
    Ok(slowest)
}

/// W1-py over `n` items through `pcluster run` on the cluster's nodes.
pub(super) fn w1_py(
    pcluster: &Pcluster,
    cluster: &Cluster,
    dir: &Path,
    n: u64,
    workers: u64,
    runtime: Runtime,
) -> anyhow::Result<Row> {
    let chain = dir.join("w1py.toml");
    let example = std::fs::read_to_string(kit::repo().join("examples/python/w1.toml"))?;
    let module = package_dir().join("task_package");
    let example = example.replace(
        "module = \"task_package\"\n",
        &format!(
            "module = {:?}\n{}",
            module.display().to_string(),
            runtime.chain_line()
        ),
    );
    std::fs::write(&chain, example)?;
    let token: &[&str] = match runtime {
        Runtime::Component => &[],
        Runtime::Native => &["--token", TOKEN],
    };
    let run = |input: &Path, output: &Path| -> anyhow::Result<f64> {
        let t = Instant::now();
        let run = pcluster
            .command()
            .arg("run")
            .arg(&chain)
            .args(token)
            .args(["--nodes", &cluster.nodes_arg(), "--quiet"])
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(output)
            .stderr(Stdio::piped())
            .output()?;
        if !run.status.success() {
            bail!(
                "pcluster run failed: {}",
                String::from_utf8_lossy(&run.stderr)
            );
        }
        Ok(t.elapsed().as_secs_f64())
    };
    let input = dir.join("w1py-input.txt");
    let output = dir.join("w1py-output.txt");
    // Warm-up: builds the component if needed and has the nodes compile (or load) it.
    kit::write_w1_input(&input, 100)?;
    run(&input, &output)?;
    kit::write_w1_input(&input, n)?;
    let secs = run(&input, &output)?;
    let mut check = W1Check::new(n);
    let f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&output)?);
    for line in f.split(b'\n') {
        check.add(&line?);
    }
    check.verify().context("W1-py outputs")?;
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    let floor_n = n.min(200_000);
    let (cpython_secs, _) = cpython(&format!(
        "for i in range({floor_n}):\n    \
         x = t.w1_identity(f'item-{{i}}')\n    \
         for y in t.w1_duplicate(x):\n        \
         t.w1_drop_odd(y)"
    ))?;
    let ns = cpython_secs * 1e9 / floor_n as f64;
    let (how, goal) = match runtime {
        Runtime::Component => ("Python tasks as a component", "100,000"),
        Runtime::Native => ("native Python tasks (CPython processes)", "150,000"),
    };
    Ok(Row {
        name: format!("W1-py{} (`pcluster run`)", runtime.suffix()),
        items: n,
        secs,
        workers,
        floors: Floors {
            native_ns: ns,
            wasm_ns: f64::NAN,
        },
        note: format!(
            "verified; {how}; start-up and setup included; \
             \"vs native\" = plain CPython serially ({:.0} items/s per thread); goal ≥ {goal} items/s",
            1e9 / ns
        ),
    })
}

/// Nanoseconds one call of `task` took inside the nodes' instances, on average (the nodes'
/// own counters of the current chain).
async fn component_ns_per_item(root: &Root, task: &str) -> anyhow::Result<f64> {
    let (mut items, mut busy_ns) = (0u64, 0u64);
    for (addr, status) in root.status().await? {
        let status = status.with_context(|| format!("status of {addr}"))?;
        for t in status.tasks.iter().filter(|t| t.name == task) {
            items += t.items_in;
            busy_ns += t.busy_ns;
        }
    }
    ensure!(items > 0, "the nodes counted no call of {task}");
    Ok(busy_ns as f64 / items as f64)
}

/// W2-py: W2's task in Python through the library root.
pub(super) async fn w2_py(
    root: &Root,
    dir: &Path,
    workers: u64,
    runtime: Runtime,
) -> anyhow::Result<Row> {
    let chain_file = dir.join("w2py.toml");
    std::fs::write(
        &chain_file,
        format!(
            "name = \"w2-py\"\nmodule = {:?}\n{}\n[[task]]\nfunction = \"W2Cpu\"\nargs = [{W2_ITERATIONS}]\n",
            package_dir().join("task_package").display().to_string(),
            runtime.chain_line()
        ),
    )?;
    let spec = root::chain::load(&chain_file, &crate::setup::builder())?;
    let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let g = got.clone();
    root.setup(spec, move |_, item| {
        if let Ok(mut g) = g.lock() {
            g.push(String::from_utf8_lossy(item).into_owned());
        }
    })
    .await?;
    // One item first, so the measured run does not include the workers' first instances.
    root.feed(["0"]).await?;
    root.wait_empty().await?;
    got.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clear();
    let t = Instant::now();
    root.feed((0..W2_SEEDS).map(|s| s.to_string())).await?;
    root.wait_empty().await?;
    let secs = t.elapsed().as_secs_f64();
    let component_ns = component_ns_per_item(root, "W2Cpu").await?;
    let mut got = got.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
    got.sort();
    let mut expected: Vec<String> = (0..W2_SEEDS)
        .map(|s| kit::native_w2(s, W2_ITERATIONS).to_string())
        .collect();
    expected.sort();
    ensure!(
        got == expected,
        "W2-py: outputs differ from the native values"
    );
    let (serial, printed) = cpython(&format!(
        "for s in range({W2_SEEDS}):\n    _out.append(str(t.w2_mix(s, {W2_ITERATIONS})))"
    ))?;
    let mut cpython_out: Vec<String> = printed.lines().map(String::from).collect();
    cpython_out.sort();
    ensure!(
        cpython_out == expected,
        "W2-py: CPython's values differ from the native ones"
    );
    let ideal = serial / workers as f64;
    let parallel = cpython_parallel(workers)?;
    let native_ns = serial * 1e9 / W2_SEEDS as f64;
    let (runs_in, goal) = match runtime {
        Runtime::Component => ("the component", "2"),
        Runtime::Native => ("the native process", "1.15"),
    };
    Ok(Row {
        name: format!("W2-py{}", runtime.suffix()),
        items: W2_SEEDS,
        secs,
        workers,
        floors: Floors {
            native_ns,
            wasm_ns: component_ns,
        },
        note: format!(
            "verified; {W2_ITERATIONS} iterations; CPython serial {serial:.3} s, ideal on {workers} workers {ideal:.3} s; \
             time = {:.2}× ideal (goal ≤ {goal}×); {workers} plain CPython processes side by side \
             {parallel:.3} s ({:.2}× ideal: what this machine gives in parallel); one item: {:.2} ms in {runs_in} (as the nodes timed it), \
             {:.2} ms in plain CPython ({:.1}×); \"vs wasm\" = the rate against {runs_in}'s",
            secs / ideal,
            parallel / ideal,
            component_ns / 1e6,
            native_ns / 1e6,
            component_ns / native_ns
        ),
    })
}
