//! `pcluster bench`'s rows of skewed and slow work, each on clusters of its own shape:
//!
//! - W3 (skew): one input `400` → `fan_seeds` (400 seeds) → `w2_cpu` (2,000,000 iterations),
//!   on 1 node × 1 worker, 2 nodes × 1 worker and 1 node × 2 workers; the goal is ≤ 0.6× the
//!   1 × 1 time on either of the two-worker shapes.
//! - W5 (slow): 20 seeds → `w2_cpu` with iterations making one item about 300 ms natively,
//!   on 2 nodes × 1 worker; ideal = native serial time ÷ 2, goal ≤ 1.3× the ideal.
//!
//! Every output is checked against the native values, computed in the same run. Each row is
//! the median of [`RUNS`] runs, the 1 × 1 and 2 × 1 runs of W3 interleaved, so that a burst
//! of load from other processes on a shared machine moves one run, not the ratio.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::ensure;
use kit::Pcluster;
use protocol::{ChainSpec, Limits};
use root::{Root, RootOptions};

use super::{Cluster, Floors, Row};

/// W3's one input: the number of seeds `fan_seeds` emits.
const W3_SEEDS: u64 = 400;
/// W3's iterations per seed.
const W3_ITERATIONS: u64 = 2_000_000;
/// W5's seeds.
const W5_SEEDS: u64 = 20;
/// W5's target time per item, natively.
const W5_ITEM_SECS: f64 = 0.3;
/// Runs of each row; the row shows their median.
const RUNS: usize = 3;

/// The median of `runs` (sorted in place).
fn median(runs: &mut [f64]) -> f64 {
    runs.sort_by(f64::total_cmp);
    runs.get(runs.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The W3 and W5 rows.
pub(super) async fn rows(
    pcluster: &Pcluster,
    dir: &Path,
    module: &[u8],
) -> anyhow::Result<Vec<Row>> {
    let w3 = kit::chain_spec(
        "w3",
        module,
        &[
            ("fan_seeds", true, ""),
            ("w2_cpu", false, &W3_ITERATIONS.to_string()),
        ],
        Limits::default(),
    );
    let (w3_expected, w3_native) = native(W3_SEEDS, W3_ITERATIONS);
    let w3_floors = Floors {
        native_ns: w3_native * 1e9 / W3_SEEDS as f64,
        wasm_ns: f64::NAN,
    };
    let mut rows = Vec::new();

    let two = Cluster::start(pcluster, dir, 2, 1, &[]).await?;
    let (mut ones, mut twos) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        ones.push(timed(&two.nodes[..1], &w3, &["400"], &w3_expected).await?);
        twos.push(timed(&two.nodes, &w3, &["400"], &w3_expected).await?);
    }
    let (one_by_one, two_by_one) = (median(&mut ones), median(&mut twos));
    rows.push(w3_row(
        "W3 skew, 1 node × 1 worker",
        1,
        one_by_one,
        one_by_one,
        w3_floors,
    ));
    rows.push(w3_row(
        "W3 skew, 2 nodes × 1 worker",
        2,
        two_by_one,
        one_by_one,
        w3_floors,
    ));

    // W5: iterations making one item ~300 ms natively.
    let probe = 20_000_000;
    let t = Instant::now();
    std::hint::black_box(kit::native_w2(1, probe));
    let per_iteration = t.elapsed().as_secs_f64() / probe as f64;
    let iterations = ((W5_ITEM_SECS / per_iteration) as u64).max(1);
    let (w5_expected, w5_native) = native(W5_SEEDS, iterations);
    let w5 = kit::chain_spec(
        "w5",
        module,
        &[("w2_cpu", false, &iterations.to_string())],
        Limits::default(),
    );
    let seeds: Vec<String> = (0..W5_SEEDS).map(|s| s.to_string()).collect();
    let seeds: Vec<&str> = seeds.iter().map(String::as_str).collect();
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(timed(&two.nodes, &w5, &seeds, &w5_expected).await?);
    }
    let secs = median(&mut runs);
    drop(two);
    let ideal = w5_native / 2.0;
    rows.push(Row {
        name: "W5 slow, 2 nodes × 1 worker".into(),
        items: W5_SEEDS,
        secs,
        workers: 2,
        floors: Floors {
            native_ns: w5_native * 1e9 / W5_SEEDS as f64,
            wasm_ns: f64::NAN,
        },
        note: format!(
            "verified; {iterations} iterations, {:.0} ms an item natively; ideal {ideal:.3} s; {:.2}× the ideal (goal ≤ 1.3)",
            w5_native * 1e3 / W5_SEEDS as f64,
            secs / ideal
        ),
    });

    let wide = Cluster::start(pcluster, dir, 1, 2, &[]).await?;
    let mut runs = Vec::new();
    for _ in 0..RUNS {
        runs.push(timed(&wide.nodes, &w3, &["400"], &w3_expected).await?);
    }
    let one_by_two = median(&mut runs);
    drop(wide);
    rows.push(w3_row(
        "W3 skew, 1 node × 2 workers",
        2,
        one_by_two,
        one_by_one,
        w3_floors,
    ));
    Ok(rows)
}

fn w3_row(name: &str, workers: u64, secs: f64, base: f64, floors: Floors) -> Row {
    Row {
        name: name.into(),
        items: W3_SEEDS,
        secs,
        workers,
        floors,
        note: if workers == 1 {
            "verified; one input fanning out to 400 items of ~5 ms".into()
        } else {
            format!("verified; {:.2}× the 1 × 1 time (goal ≤ 0.6)", secs / base)
        },
    }
}

/// The native outputs of `seeds` seeds of `iterations` (sorted) and their serial time.
fn native(seeds: u64, iterations: u64) -> (Vec<String>, f64) {
    let t = Instant::now();
    let mut out: Vec<String> = (0..seeds)
        .map(|s| kit::native_w2(s, iterations).to_string())
        .collect();
    let secs = t.elapsed().as_secs_f64();
    out.sort();
    (out, secs)
}

/// Runs `inputs` through `spec` on `nodes` with a root of their own; checks the outputs
/// against `expected` (sorted) and returns the time from the first feed to the last output.
async fn timed(
    nodes: &[SocketAddr],
    spec: &ChainSpec,
    inputs: &[&str],
    expected: &[String],
) -> anyhow::Result<f64> {
    let root = Root::with_nodes(RootOptions::default(), nodes).await?;
    let got = Arc::new(Mutex::new(Vec::new()));
    let g = got.clone();
    root.setup(spec.clone(), move |_, item| {
        if let Ok(mut g) = g.lock() {
            g.push(String::from_utf8_lossy(item).into_owned());
        }
    })
    .await?;
    let t = Instant::now();
    root.feed(inputs.iter().copied()).await?;
    root.wait_empty().await?;
    let secs = t.elapsed().as_secs_f64();
    root.close().await?;
    let mut got = got
        .lock()
        .map_err(|_| anyhow::anyhow!("the {} outputs were poisoned", spec.name))?
        .clone();
    got.sort();
    ensure!(
        got == expected,
        "{}: {} outputs differ from the {} native values",
        spec.name,
        got.len(),
        expected.len()
    );
    Ok(secs)
}
