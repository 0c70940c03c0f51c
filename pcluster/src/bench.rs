//! `pcluster bench`: starts a log server and nodes on loopback as real processes, runs W1 and
//! W2 through them, verifies every output, and prints a table with the native and
//! in-process-wasm floors measured in the same run.
//!
//! - W1: `item-0 … item-{N-1}` through `w1_identity → w1_duplicate (generator) → w1_drop_odd`;
//!   expected: every even item twice.
//! - W2: seeds `0 … 199` through `w2_cpu` (100,000 iterations); W2-long: seeds `0 … 1999`
//!   with 1,000,000 iterations, long enough to measure scaling over workers.

use std::io::{BufRead as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use protocol::{ChainSpec, Limits, Packed, TaskSpec};

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// W1 input items through the library root.
    #[arg(long, default_value_t = 1_000_000)]
    pub items: u64,
    /// W1 input items through a `pcluster run` process (the headline figure).
    #[arg(long, default_value_t = 3_000_000)]
    pub run_items: u64,
    /// W1 items streamed through `pcluster run` to measure the root's peak RSS (0: skip).
    #[arg(long, default_value_t = 10_000_000)]
    pub rss_items: u64,
    /// Node processes.
    #[arg(long, default_value_t = 2)]
    pub nodes: u32,
    /// Workers per node.
    #[arg(long, default_value_t = 1)]
    pub workers: u32,
    /// W2-long seeds.
    #[arg(long, default_value_t = 2000)]
    pub w2_long_seeds: u64,
    /// W2-long iterations per seed.
    #[arg(long, default_value_t = 1_000_000)]
    pub w2_long_iterations: u64,
    /// Skip the scans of 127.0.0.0/24 and 127.0.0.0/16.
    #[arg(long)]
    pub no_scan: bool,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Peak resident memory of a process in MiB (`VmHWM`), Linux only.
pub fn peak_rss_mib(pid: Option<u32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".into(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let line = text.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn native_w2(seed: u64, iterations: u64) -> u64 {
    let mut x = seed;
    for _ in 0..iterations {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x ^= x >> 33;
    }
    x
}

fn trailing_number(item: &[u8]) -> Option<u64> {
    let digits = match item.iter().rposition(|&b| b == b'-') {
        Some(i) => &item[i + 1..],
        None => item,
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// W1 as plain Rust in one thread: the same work and the same output buffer shape.
fn native_w1(items: &Packed) -> usize {
    let mut out = Packed::with_capacity(items.len(), items.bytes());
    for item in items {
        let identity = std::hint::black_box(item);
        for dup in [identity, identity] {
            if trailing_number(dup).is_some_and(|n| n % 2 == 0) {
                out.push(dup);
            }
        }
    }
    out.len()
}

fn chain(module: &[u8], name: &str, tasks: &[(&str, bool, &str)]) -> ChainSpec {
    ChainSpec {
        name: name.into(),
        version: "bench".into(),
        modules: vec![module.to_vec().into()],
        tasks: tasks
            .iter()
            .map(|(f, g, a)| TaskSpec {
                function: (*f).into(),
                module: 0,
                generator: *g,
                args: a.as_bytes().to_vec(),
            })
            .collect(),
        limits: Limits::default(),
    }
}

fn w1_chain(module: &[u8]) -> ChainSpec {
    chain(
        module,
        "w1",
        &[
            ("w1_identity", false, ""),
            ("w1_duplicate", true, ""),
            ("w1_drop_odd", false, ""),
        ],
    )
}

fn w1_batches(n: u64, batch: usize) -> Vec<Packed> {
    let mut out = Vec::new();
    let mut p = Packed::with_capacity(batch, batch * 12);
    let mut buf = String::new();
    for i in 0..n {
        buf.clear();
        use std::fmt::Write as _;
        let _ = write!(buf, "item-{i}");
        p.push(buf.as_bytes());
        if p.len() == batch {
            out.push(std::mem::replace(
                &mut p,
                Packed::with_capacity(batch, batch * 12),
            ));
        }
    }
    if !p.is_empty() {
        out.push(p);
    }
    out
}

/// Counts W1 outputs per input index; verifies every even item twice, odd items never.
struct W1Check {
    counts: Vec<u8>,
    bad: u64,
}

impl W1Check {
    fn new(n: u64) -> Self {
        W1Check {
            counts: vec![0; n as usize],
            bad: 0,
        }
    }

    #[inline]
    fn add(&mut self, item: &[u8]) {
        match item
            .strip_prefix(b"item-")
            .and_then(trailing_number)
            .and_then(|i| self.counts.get_mut(i as usize))
        {
            Some(c) => *c = c.saturating_add(1),
            None => self.bad += 1,
        }
    }

    fn verify(&self) -> anyhow::Result<()> {
        ensure!(self.bad == 0, "{} outputs are not W1 items", self.bad);
        for (i, &c) in self.counts.iter().enumerate() {
            let want = if i % 2 == 0 { 2 } else { 0 };
            ensure!(c == want, "item-{i} came out {c} times, expected {want}");
        }
        Ok(())
    }
}

struct Row {
    name: String,
    items: u64,
    secs: f64,
    native_per_item: Option<f64>,
    wasm_per_item: Option<f64>,
    note: String,
}

struct Procs {
    children: Vec<std::process::Child>,
}

impl Drop for Procs {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn wait_listening(addr: SocketAddr) -> anyhow::Result<()> {
    let end = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        ensure!(Instant::now() < end, "nothing listens on {addr}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn free_port(ip: &str) -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    crate::cli::init_tracing(false, None, "error");
    let rt = crate::cli::runtime(false)?;
    rt.block_on(bench(args))
}

async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let exe = std::env::current_exe()?;
    let dir = std::env::temp_dir().join(format!("pcluster-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let wasm_path =
        root::chain::build_task_crate(&repo().join("tasks-example")).map_err(anyhow::Error::msg)?;
    let module = std::fs::read(&wasm_path)?;

    // The cluster: a log server and node processes on 127.0.0.2, .3, …
    let mut procs = Procs {
        children: Vec::new(),
    };
    let log_port = free_port("127.0.0.1")?;
    procs.children.push(
        Command::new(&exe)
            .args([
                "log",
                "--host",
                "127.0.0.1",
                "--port",
                &log_port.to_string(),
                "--outfile",
            ])
            .arg(dir.join("bench.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    wait_listening(format!("127.0.0.1:{log_port}").parse()?).await?;
    let port = free_port("127.0.0.2")?;
    let mut nodes = Vec::new();
    let mut node_pids = Vec::new();
    for i in 0..args.nodes {
        let ip = format!("127.0.0.{}", 2 + i);
        let child = Command::new(&exe)
            .args(["node", "--host", &ip, "--port", &port.to_string()])
            .args([
                "--log-host",
                "127.0.0.1",
                "--log-port",
                &log_port.to_string(),
            ])
            .args(["--workers", &args.workers.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        node_pids.push(child.id());
        procs.children.push(child);
        let addr: SocketAddr = format!("{ip}:{port}").parse()?;
        wait_listening(addr).await?;
        nodes.push(addr);
    }
    let total_workers = u64::from(args.nodes * args.workers);
    let mut rows = Vec::new();

    // Floors, measured now in this process, one thread.
    let w1_probe = w1_batches(args.items.min(1_000_000), 4096);
    let probe_n: u64 = w1_probe.iter().map(|b| b.len() as u64).sum();
    let t = Instant::now();
    let mut kept = 0;
    for b in &w1_probe {
        kept += native_w1(b);
    }
    let native_w1_ns = t.elapsed().as_nanos() as f64 / probe_n as f64;
    ensure!(kept as u64 == probe_n, "native W1 kept {kept} of {probe_n}");
    let mut local = node::LocalChain::new(&w1_chain(&module)).map_err(anyhow::Error::msg)?;
    let t = Instant::now();
    let mut outs = 0usize;
    for b in &w1_probe {
        outs += local
            .run(b.clone(), 4096)
            .iter()
            .map(|o| o.items.len())
            .sum::<usize>();
    }
    let wasm_w1_ns = t.elapsed().as_nanos() as f64 / probe_n as f64;
    ensure!(
        outs as u64 == probe_n,
        "in-process wasm W1 gave {outs} outputs for {probe_n}"
    );
    drop(local);

    // Setup, cold then warm.
    let options = root::RootOptions::default();
    let root = root::Root::with_nodes(options.clone(), &nodes).await?;
    let check = Arc::new(Mutex::new(W1Check::new(args.items)));
    // Sets W1 up with a handler counting into `check`; returns how long the setup took.
    let timed_setup = || async {
        let c = check.clone();
        let t = Instant::now();
        root.setup(w1_chain(&module), move |_, item| {
            if let Ok(mut c) = c.lock() {
                c.add(item);
            }
        })
        .await
        .map(|()| t.elapsed())
    };
    let cold = timed_setup().await?;
    root.reset().await?;
    let warm = timed_setup().await?;

    // W1 through the library root.
    let batches = w1_batches(args.items, options.batch_items);
    let t = Instant::now();
    for b in batches {
        root.feed_packed(b).await?;
    }
    root.wait_empty().await?;
    let secs = t.elapsed().as_secs_f64();
    check
        .lock()
        .map_err(|_| anyhow::anyhow!("check poisoned"))?
        .verify()
        .context("W1 (library) outputs")?;
    rows.push(Row {
        name: "W1 (library root)".into(),
        items: args.items,
        secs,
        native_per_item: Some(native_w1_ns),
        wasm_per_item: Some(wasm_w1_ns),
        note: "verified".into(),
    });

    // W2 and W2-long.
    for (name, seeds, iterations) in [
        ("W2", 200u64, 100_000u64),
        ("W2-long", args.w2_long_seeds, args.w2_long_iterations),
    ] {
        root.reset().await?;
        let got = Arc::new(Mutex::new(Vec::with_capacity(seeds as usize)));
        let g = got.clone();
        root.setup(
            chain(&module, name, &[("w2_cpu", false, &iterations.to_string())]),
            move |_, item| {
                if let Ok(mut g) = g.lock() {
                    g.push(String::from_utf8_lossy(item).into_owned());
                }
            },
        )
        .await?;
        let t = Instant::now();
        root.feed((0..seeds).map(|s| s.to_string())).await?;
        root.wait_empty().await?;
        let secs = t.elapsed().as_secs_f64();
        // Native, serially, for the expected values and the floor.
        let tn = Instant::now();
        let mut expected: Vec<String> = (0..seeds)
            .map(|s| native_w2(s, iterations).to_string())
            .collect();
        let native_secs = tn.elapsed().as_secs_f64();
        let mut got = got.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.clone();
        got.sort();
        expected.sort();
        ensure!(
            got == expected,
            "{name}: outputs differ from the native values"
        );
        let ideal = native_secs / total_workers as f64;
        // The in-process wasm floor on a sample of seeds (the whole of W2-long would take
        // seconds more).
        let sample = seeds.min(100);
        let spec = chain(&module, name, &[("w2_cpu", false, &iterations.to_string())]);
        let mut local = node::LocalChain::new(&spec).map_err(anyhow::Error::msg)?;
        let items: Packed = (0..sample).map(|s| s.to_string()).collect();
        let tw = Instant::now();
        let outs: usize = local.run(items, 1).iter().map(|o| o.items.len()).sum();
        let wasm_ns = tw.elapsed().as_nanos() as f64 / sample as f64;
        ensure!(
            outs as u64 == sample,
            "in-process wasm {name} gave {outs} outputs"
        );
        rows.push(Row {
            name: name.into(),
            items: seeds,
            secs,
            native_per_item: Some(native_secs * 1e9 / seeds as f64),
            wasm_per_item: Some(wasm_ns),
            note: format!(
                "verified; native serial {native_secs:.3} s, ideal on {total_workers} workers {ideal:.3} s = {:.0}% of ideal",
                100.0 * ideal / secs
            ),
        });
    }
    let node_rss: Vec<f64> = node_pids
        .iter()
        .filter_map(|p| peak_rss_mib(Some(*p)))
        .collect();
    root.close().await?;

    // The headline: `pcluster run` as a whole process over a file.
    let nodes_arg = nodes
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(",");
    for (name, n) in [
        ("W1 `pcluster run` process", args.run_items),
        ("W1 `pcluster run` (root RSS)", args.rss_items),
    ] {
        if n == 0 {
            continue;
        }
        let input = dir.join("w1-input.txt");
        {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&input)?);
            for i in 0..n {
                writeln!(w, "item-{i}")?;
            }
            w.flush()?;
        }
        let output = dir.join("w1-output.txt");
        let t = Instant::now();
        let run = Command::new(&exe)
            .arg("run")
            .arg(repo().join("examples/w1.toml"))
            .args(["--nodes", &nodes_arg, "--quiet"])
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .stderr(Stdio::piped())
            .output()?;
        let secs = t.elapsed().as_secs_f64();
        let stderr = String::from_utf8_lossy(&run.stderr);
        if !run.status.success() {
            bail!("pcluster run failed: {stderr}");
        }
        let mut check = W1Check::new(n);
        let f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(&output)?);
        for line in f.split(b'\n') {
            check.add(&line?);
        }
        check.verify().with_context(|| format!("{name} outputs"))?;
        let rss = stderr
            .lines()
            .find_map(|l| l.split("peak RSS ").nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "?".into());
        rows.push(Row {
            name: name.into(),
            items: n,
            secs,
            native_per_item: Some(native_w1_ns),
            wasm_per_item: Some(wasm_w1_ns),
            note: format!("verified; start-up and setup included; root peak RSS {rss}"),
        });
        let _ = std::fs::remove_file(&input);
        let _ = std::fs::remove_file(&output);
    }

    // Scans.
    let mut scans = Vec::new();
    if !args.no_scan {
        for net in ["127.0.0.0/24", "127.0.0.0/16"] {
            let t = Instant::now();
            let report = root::scan::scan(net.parse()?, port, &options).await;
            scans.push((net, t.elapsed(), report.free.len(), report.hosts));
        }
    }
    drop(procs);
    let _ = std::fs::remove_dir_all(&dir);

    println!(
        "pcluster bench — {} node process(es) × {} worker(s) on loopback, {} cores",
        args.nodes,
        args.workers,
        node::cores()
    );
    println!();
    println!(
        "| {:<30} | {:>10} | {:>8} | {:>12} | {:>9} | {:>9} | notes",
        "workload", "items", "wall s", "items/s", "vs native", "vs wasm"
    );
    println!(
        "|{}|{}|{}|{}|{}|{}|------",
        "-".repeat(32),
        "-".repeat(12),
        "-".repeat(10),
        "-".repeat(14),
        "-".repeat(11),
        "-".repeat(11)
    );
    for r in &rows {
        let rate = r.items as f64 / r.secs;
        // Ratio of our rate to the floor's rate on all workers.
        let ratio = |per_item: Option<f64>| {
            per_item
                .map(|ns| format!("{:.0}%", 100.0 * rate / (1e9 / ns * total_workers as f64)))
                .unwrap_or_else(|| "-".into())
        };
        println!(
            "| {:<30} | {:>10} | {:>8.3} | {:>12.0} | {:>9} | {:>9} | {}",
            r.name,
            r.items,
            r.secs,
            rate,
            ratio(r.native_per_item),
            ratio(r.wasm_per_item),
            r.note
        );
    }
    println!();
    println!(
        "floors (one thread, no network): native W1 {:.1} ns/item ({:.1} M items/s); in-process wasm W1 {:.1} ns/item ({:.1} M items/s)",
        native_w1_ns,
        1e3 / native_w1_ns,
        wasm_w1_ns,
        1e3 / wasm_w1_ns
    );
    println!(
        "setup of the 3-task W1 chain on {} nodes: cold {:.1} ms (compile), warm {:.1} ms (cached module)",
        args.nodes,
        cold.as_secs_f64() * 1e3,
        warm.as_secs_f64() * 1e3
    );
    println!(
        "peak RSS: bench root {:.1} MiB; nodes {}",
        peak_rss_mib(None).unwrap_or(0.0),
        node_rss
            .iter()
            .map(|r| format!("{r:.1} MiB"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for (net, took, found, hosts) in scans {
        println!(
            "scan of {net}: {hosts} hosts in {:.1} ms, {found} nodes found",
            took.as_secs_f64() * 1e3
        );
    }
    Ok(ExitCode::SUCCESS)
}
