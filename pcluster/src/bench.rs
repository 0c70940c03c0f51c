//! `pcluster bench`: starts a log server and nodes on loopback as real processes, runs W1 and
//! W2 through them, verifies every output, and prints a table with the native and
//! in-process-wasm floors measured in the same run.
//!
//! - W1: `item-0 … item-{N-1}` through `w1_identity → w1_duplicate (generator) → w1_drop_odd`;
//!   expected: every even item twice.
//! - W2: seeds `0 … 199` through `w2_cpu` (100,000 iterations); W2-long: seeds `0 … 1999`
//!   with 1,000,000 iterations, long enough to measure scaling over workers.
//!
//! - W1-py and W2-py: the same with the tasks in Python ([`python`]).
//! - W3 and W5 (skewed and slow work, on clusters of their own shapes): [`skew`].
//!
//! One function per measurement; [`bench`] runs them in order and [`report::print_report`] prints
//! what they measured.

mod chaos;
mod encrypted;
mod far;
mod memo;
mod quick;
mod report;
mod scraped;
mod skew;
mod w4;

use std::io::BufRead as _;
use std::io::Write as _;
use std::path::Path;
use std::process::{ExitCode, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use kit::{Pcluster, W1Check, w1_batches, w1_chain};
use protocol::{Limits, Packed};
use root::{Root, RootOptions};

mod cluster;
mod python;

use cluster::Cluster;

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
    /// W4 items of 100 KB through a `pcluster run` process (0: skip).
    #[arg(long, default_value_t = 5_000)]
    pub w4_items: u64,
    /// W4 runs in a row on the same nodes.
    #[arg(long, default_value_t = 3)]
    pub w4_runs: u32,
    /// Skip the scans of 127.0.0.0/24 and 127.0.0.0/16.
    #[arg(long)]
    pub no_scan: bool,
    /// W1-py input items (Python tasks through `pcluster run`; 0: skip W1-py and W2-py).
    #[arg(long, default_value_t = 1_000_000)]
    pub py_items: u64,
    /// Skip W3 and W5 (skewed and slow work on clusters of their own).
    #[arg(long)]
    pub no_skew: bool,
    /// Skip the `--memo` rows (W1 cold and warm, W2-long plain, cold and 1 % changed).
    #[arg(long)]
    pub no_memo: bool,
    /// Skip W1 and W4 through a delay proxy at 0, 10 and 50 ms round trips.
    #[arg(long)]
    pub no_far: bool,
    /// Instead of the table, a chaos soak of this many minutes: 4 nodes in network
    /// namespaces (needs root), W1 runs under overlapping faults, each checked exact.
    #[arg(long, value_name = "MINUTES", default_value_t = 0)]
    pub chaos: u64,
}

/// W1 items measured for the floors (at most).
const FLOOR_ITEMS: u64 = 1_000_000;
/// W2 seeds run in-process for the wasm floor: the whole of W2-long would take seconds more.
const W2_FLOOR_SEEDS: u64 = 100;

/// One line of the table.
struct Row {
    name: String,
    items: u64,
    secs: f64,
    /// Workers it ran on.
    workers: u64,
    /// Nanoseconds per item natively and as in-process wasm, one thread.
    floors: Floors,
    note: String,
}

/// Nanoseconds per item, one thread, no network.
#[derive(Clone, Copy)]
struct Floors {
    native_ns: f64,
    wasm_ns: f64,
}

/// How long setting W1 up took.
struct SetupTimes {
    /// The first setup: the nodes compile the module.
    cold: Duration,
    /// The same chain again: the module comes from the nodes' cache.
    warm: Duration,
}

/// A scan of a loopback network.
struct Scan {
    net: &'static str,
    took: Duration,
    found: usize,
    hosts: u64,
}

/// Everything the report prints.
struct Report {
    nodes: u32,
    workers: u32,
    rows: Vec<Row>,
    w1_floors: Floors,
    setup: SetupTimes,
    node_rss_mib: Vec<f64>,
    scans: Vec<Scan>,
    /// W4 and the loopback limit (MB/s) measured with it.
    w4: Option<(w4::W4Report, f64)>,
    /// W4 with a token, and its rate over W4's without.
    w4_encrypted: Option<(w4::W4Report, f64)>,
    /// W4 through a delay proxy, nearest first.
    w4_far: Vec<w4::W4Report>,
    /// One-item runs.
    quick: Option<quick::Quick>,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    crate::setup::init_tracing(crate::setup::Console::Stderr, None, "error");
    let rt = crate::setup::runtime(false)?;
    rt.block_on(bench(args))
}

async fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let dir = kit::temp_dir("bench")?;
    let result = if args.chaos > 0 {
        let pcluster = Pcluster::new(std::env::current_exe()?);
        chaos::run(&pcluster, &dir, args.chaos).await
    } else {
        bench_in(args, &dir).await
    };
    if result.is_err() {
        // Its inputs, outputs and logs, for the failure to be looked into.
        eprintln!(
            "pcluster bench: its files are kept in {}",
            dir.keep().display()
        );
    }
    result
}

async fn bench_in(args: BenchArgs, dir: &Path) -> anyhow::Result<ExitCode> {
    let pcluster = Pcluster::new(std::env::current_exe()?);
    let module = kit::tasks_example_wasm()?;
    let cluster = Cluster::start(&pcluster, dir, args.nodes, args.workers, &[]).await?;
    let workers = u64::from(args.nodes * args.workers);
    let w1_floors = w1_floors(&module, args.items.min(FLOOR_ITEMS))?;

    let options = RootOptions::default();
    let root = Root::with_nodes(options.clone(), &cluster.nodes).await?;
    let check = Arc::new(Mutex::new(W1Check::new(args.items)));
    let setup = w1_setups(&root, &module, &check).await?;
    let mut rows = vec![w1_library(&root, args.items, &check, w1_floors, workers).await?];
    for (name, seeds, iterations) in [
        ("W2", 200, 100_000),
        ("W2-long", args.w2_long_seeds, args.w2_long_iterations),
    ] {
        root.reset().await?;
        rows.push(w2(&root, &module, name, seeds, iterations, workers).await?);
    }
    let python = args.py_items > 0 && python::available();
    if args.py_items > 0 && !python {
        eprintln!("pcluster bench: componentize-py is not installed: no W1-py and W2-py rows");
    }
    if python {
        root.reset().await?;
        rows.push(python::w2_py(&root, dir, workers, python::Runtime::Component).await?);
    }
    let node_rss_mib = cluster.node_rss_mib();
    root.close().await?;

    let joblog = dir.join("w1-joblog.txt");
    let joblog = [
        "--joblog".to_string(),
        joblog.to_string_lossy().into_owned(),
    ];
    for (name, n, extra) in [
        ("W1 `pcluster run` process", args.run_items, &[][..]),
        ("W1 `pcluster run --joblog`", args.run_items, &joblog[..]),
        ("W1 `pcluster run` (root RSS)", args.rss_items, &[][..]),
    ] {
        if n > 0 {
            rows.push(w1_process(
                &pcluster, &cluster, dir, name, n, w1_floors, extra,
            )?);
        }
    }
    if !args.no_memo {
        if args.run_items > 0 {
            let n = args.run_items;
            rows.extend(memo::w1_rows(&pcluster, &cluster, dir, n, w1_floors)?);
        }
        let (seeds, iterations) = (args.w2_long_seeds, args.w2_long_iterations);
        rows.extend(memo::w2_rows(&pcluster, &cluster, dir, seeds, iterations)?);
    }
    if !args.no_far && args.run_items > 0 {
        rows.extend(far::w1_rows(
            &pcluster,
            &cluster,
            dir,
            args.run_items,
            w1_floors,
        )?);
    }
    let w4_far = if args.no_far || args.w4_items == 0 {
        Vec::new()
    } else {
        far::w4_reports(&pcluster, &cluster, dir, args.w4_items)?
    };
    let quick = Some(quick::one_item(&pcluster, &cluster, dir)?);
    let scraped_items = args.rss_items.max(args.run_items);
    if scraped_items > 0 {
        let row = scraped::w1_dashboard(&pcluster, &cluster, dir, scraped_items, w1_floors);
        rows.push(row.await?);
    }
    let w4 = if args.w4_items > 0 {
        let options = w4::W4Options {
            items: args.w4_items,
            runs: args.w4_runs,
            ..Default::default()
        };
        let pids: Vec<u32> = cluster.processes[1..].iter().map(|p| p.id()).collect();
        let report = w4::w4(&pcluster, &cluster.nodes_arg(), &pids, dir, &options)?;
        let loopback = w4::loopback_mb_per_s(options.items * options.item_bytes as u64)?;
        Some((report, loopback))
    } else {
        None
    };
    if python {
        rows.push(python::w1_py(
            &pcluster,
            &cluster,
            dir,
            args.py_items,
            workers,
            python::Runtime::Component,
        )?);
    }
    let scans = if args.no_scan {
        Vec::new()
    } else {
        scans(cluster.port, &options).await?
    };
    drop(cluster);
    if args.py_items > 0 {
        rows.extend(python::native(&pcluster, dir, &args).await?);
    }
    let plain_w1 = rows
        .iter()
        .find(|r| r.name == "W1 `pcluster run` process")
        .map(|r| r.secs);
    let encrypted = encrypted::encrypted(
        &pcluster,
        dir,
        &args,
        w1_floors,
        plain_w1,
        w4.as_ref().map(|(r, _)| r),
    )
    .await?;
    let w1_ratio = encrypted.w1.map(|(row, ratio)| {
        rows.push(row);
        ratio
    });
    if !args.no_skew {
        rows.extend(skew::rows(&pcluster, dir, &module).await?);
    }

    if let Some(ratio) = w1_ratio {
        let mut out = std::io::stdout();
        writeln!(
            out,
            "W1 `pcluster run` with a token (encrypted: Noise, AES-GCM): {:.0}% of the rate without (goal ≥ 75%)\n",
            100.0 * ratio
        )?;
    }
    report::print_report(&Report {
        nodes: args.nodes,
        workers: args.workers,
        rows,
        w1_floors,
        setup,
        node_rss_mib,
        scans,
        w4,
        w4_encrypted: encrypted.w4,
        w4_far,
        quick,
    })?;
    Ok(ExitCode::SUCCESS)
}

/// W1's floors over `n` items in this thread: natively through the example tasks' own
/// functions, and as wasm through the node's chain code without network or threads.
fn w1_floors(module: &[u8], n: u64) -> anyhow::Result<Floors> {
    let probe = w1_batches(n, 4096);
    let n = probe.iter().map(|b| b.len() as u64).sum::<u64>().max(1);

    let t = Instant::now();
    let mut kept = 0;
    for b in &probe {
        let mut out = Packed::with_capacity(b.len(), b.bytes());
        kit::native_w1(b, &mut out);
        kept += out.len() as u64;
    }
    let native_ns = t.elapsed().as_nanos() as f64 / n as f64;
    ensure!(kept == n, "native W1 kept {kept} of {n}");

    let mut local = node::LocalChain::new(&w1_chain(module))?;
    let t = Instant::now();
    let mut outs = 0;
    for b in &probe {
        let units = local.run(b.clone(), 4096);
        outs += units.iter().map(|o| o.items.len() as u64).sum::<u64>();
    }
    let wasm_ns = t.elapsed().as_nanos() as f64 / n as f64;
    ensure!(outs == n, "in-process wasm W1 gave {outs} outputs for {n}");
    Ok(Floors { native_ns, wasm_ns })
}

/// Sets W1 up twice, cold (the nodes compile) and after a reset warm (cached module), with a
/// handler counting outputs into `check`; W1 stays set up.
async fn w1_setups(
    root: &Root,
    module: &[u8],
    check: &Arc<Mutex<W1Check>>,
) -> anyhow::Result<SetupTimes> {
    let timed_setup = || async {
        let check = check.clone();
        let t = Instant::now();
        root.setup(w1_chain(module), move |_, item| {
            if let Ok(mut c) = check.lock() {
                c.add(item);
            }
        })
        .await
        .map(|()| t.elapsed())
    };
    let cold = timed_setup().await?;
    root.reset().await?;
    let warm = timed_setup().await?;
    Ok(SetupTimes { cold, warm })
}

/// W1 through the library root (set up by [`w1_setups`]), every output verified.
async fn w1_library(
    root: &Root,
    items: u64,
    check: &Mutex<W1Check>,
    floors: Floors,
    workers: u64,
) -> anyhow::Result<Row> {
    let batches = w1_batches(items, root.options().batch_items);
    let t = Instant::now();
    for b in batches {
        root.feed_packed(b).await?;
    }
    root.wait_empty().await?;
    let secs = t.elapsed().as_secs_f64();
    check
        .lock()
        .map_err(|_| anyhow::anyhow!("the W1 check was poisoned"))?
        .verify()
        .context("W1 (library) outputs")?;
    Ok(Row {
        name: "W1 (library root)".into(),
        items,
        secs,
        workers,
        floors,
        note: "verified".into(),
    })
}

/// `seeds` W2 seeds of `iterations` each through the cluster, checked against the native
/// values, with the native and in-process wasm floors.
async fn w2(
    root: &Root,
    module: &[u8],
    name: &str,
    seeds: u64,
    iterations: u64,
    workers: u64,
) -> anyhow::Result<Row> {
    let spec = kit::chain_spec(
        name,
        module,
        &[("w2_cpu", false, &iterations.to_string())],
        Limits::default(),
    );
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    root.setup(spec.clone(), move |_, item| {
        if let Ok(mut g) = g.lock() {
            g.push(String::from_utf8_lossy(item).into_owned());
        }
    })
    .await?;
    let t = Instant::now();
    root.feed((0..seeds).map(|s| s.to_string())).await?;
    root.wait_empty().await?;
    let secs = t.elapsed().as_secs_f64();

    // Native, serially: the expected values and the floor.
    let t = Instant::now();
    let mut expected: Vec<String> = (0..seeds)
        .map(|s| kit::native_w2(s, iterations).to_string())
        .collect();
    let native_secs = t.elapsed().as_secs_f64();
    let mut got = got
        .lock()
        .map_err(|_| anyhow::anyhow!("the {name} outputs were poisoned"))?
        .clone();
    got.sort();
    expected.sort();
    ensure!(
        got == expected,
        "{name}: outputs differ from the native values"
    );

    let sample = seeds.clamp(1, W2_FLOOR_SEEDS);
    let mut local = node::LocalChain::new(&spec)?;
    let items: Packed = (0..sample).map(|s| s.to_string()).collect();
    let t = Instant::now();
    let outs: usize = local.run(items, 1).iter().map(|o| o.items.len()).sum();
    let wasm_ns = t.elapsed().as_nanos() as f64 / sample as f64;
    ensure!(
        outs as u64 == sample,
        "in-process wasm {name} gave {outs} outputs"
    );

    let ideal = native_secs / workers as f64;
    Ok(Row {
        name: name.into(),
        items: seeds,
        secs,
        workers,
        floors: Floors {
            native_ns: native_secs * 1e9 / seeds.max(1) as f64,
            wasm_ns,
        },
        note: format!(
            "verified; native serial {native_secs:.3} s, ideal on {workers} workers {ideal:.3} s = {:.0}% of ideal",
            100.0 * ideal / secs
        ),
    })
}

/// W1 over `n` items through a whole `pcluster run` process on the cluster's nodes: start-up,
/// setup, reading and writing files included; outputs verified, the root's peak RSS noted.
/// `extra` options go to `pcluster run` (a joblog, a dashboard).
fn w1_process(
    pcluster: &Pcluster,
    cluster: &dyn cluster::Target,
    dir: &Path,
    name: &str,
    n: u64,
    floors: Floors,
    extra: &[String],
) -> anyhow::Result<Row> {
    let input = dir.join("w1-input.txt");
    let output = dir.join("w1-output.txt");
    let journal = dir.join("w1-joblog.txt");
    kit::write_w1_input(&input, n)?;
    let t = Instant::now();
    let mut cmd = pcluster.command();
    cmd.arg("run")
        .arg(kit::repo().join("examples/w1.toml"))
        .args(["--nodes", &cluster.nodes_arg(), "--quiet"])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .stderr(Stdio::piped());
    cmd.args(extra);
    let run = cmd.output()?;
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
        .map_or_else(|| "?".into(), |s| s.trim().to_owned());
    let _ = std::fs::remove_file(&input);
    let _ = std::fs::remove_file(&output);
    let _ = std::fs::remove_file(&journal);
    Ok(Row {
        name: name.into(),
        items: n,
        secs,
        workers: cluster.workers(),
        floors,
        note: format!("verified; start-up and setup included; root peak RSS {rss}"),
    })
}

/// Scans of 127.0.0.0/24 and 127.0.0.0/16 for the cluster's nodes on `port`.
async fn scans(port: u16, options: &RootOptions) -> anyhow::Result<Vec<Scan>> {
    let mut scans = Vec::new();
    for net in ["127.0.0.0/24", "127.0.0.0/16"] {
        let t = Instant::now();
        let report = root::scan::scan(net.parse()?, port, options).await;
        scans.push(Scan {
            net,
            took: t.elapsed(),
            found: report.free.len(),
            hosts: report.hosts,
        });
    }
    Ok(scans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_shows_rates_and_ratios_to_the_floors() {
        let rows = [Row {
            name: "W1".into(),
            items: 1_000_000,
            secs: 0.5,
            workers: 2,
            floors: Floors {
                native_ns: 50.0,
                wasm_ns: 250.0,
            },
            note: "verified".into(),
        }];
        // 2 M items/s on 2 workers against 20 M and 4 M items/s per worker.
        let text = report::rows_table(&rows).to_string();
        let row = text.lines().nth(2).expect("a row under the header");
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        assert_eq!(
            cells,
            [
                "", "W1", "1000000", "0.500", "2000000", "5%", "25%", "verified", ""
            ]
        );
    }
}
