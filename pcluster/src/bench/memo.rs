//! `pcluster bench`'s rows of the result store (`pcluster run --memo`): W1 on a cold store
//! and on a warm one (every input found), and W2-long plain, on a cold store, and again
//! after 1 % of its seeds changed. Every output is checked (W2-long's by a sample).

use std::io::Write as _;
use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::{bail, ensure};
use kit::Pcluster;

use super::cluster::Cluster;
use super::{Floors, Row, w1_process};

/// The W1 rows: cold store, then warm. `n` items through `pcluster run`.
pub(super) fn w1_rows(
    pcluster: &Pcluster,
    cluster: &Cluster,
    dir: &Path,
    n: u64,
    floors: Floors,
) -> anyhow::Result<Vec<Row>> {
    let store = dir.join("w1-memo");
    let _ = std::fs::remove_dir_all(&store);
    let memo = ["--memo".to_string(), store.to_string_lossy().into_owned()];
    let mut rows = Vec::new();
    for name in [
        "W1 `pcluster run --memo`, cold store",
        "W1 `pcluster run --memo`, warm (all found)",
    ] {
        let mut row = w1_process(pcluster, cluster, dir, name, n, floors, &memo)?;
        row.note = format!("{}; goal ≥ 1,000,000 items/s", row.note);
        rows.push(row);
    }
    let _ = std::fs::remove_dir_all(&store);
    Ok(rows)
}

/// W2-long through `pcluster run`: plain, `--memo` on a cold store, and `--memo` again after
/// 1 % of the seeds changed.
pub(super) fn w2_rows(
    pcluster: &Pcluster,
    cluster: &Cluster,
    dir: &Path,
    seeds: u64,
    iterations: u64,
) -> anyhow::Result<Vec<Row>> {
    let chain = dir.join("w2-long.toml");
    std::fs::write(dir.join("tasks.wasm"), kit::tasks_example_wasm()?)?;
    std::fs::write(
        &chain,
        format!(
            "name = \"w2-long\"\nversion = \"1\"\nmodule = \"tasks.wasm\"\n\
             [[task]]\nfunction = \"w2_cpu\"\nargs = \"{iterations}\"\n"
        ),
    )?;
    let store = dir.join("w2-memo");
    let _ = std::fs::remove_dir_all(&store);
    let memo = ["--memo", &store.to_string_lossy()].map(String::from);
    let first: Vec<u64> = (0..seeds).collect();
    // Every 100th seed replaced by one never seen.
    let changed: Vec<u64> = first
        .iter()
        .map(|&s| if s % 100 == 7 { s + seeds } else { s })
        .collect();
    let workers = (cluster.nodes.len() as u64) * u64::from(cluster.workers);
    let run = |seeds: &[u64], extra: &[String]| {
        w2_run(pcluster, cluster, dir, &chain, seeds, iterations, extra)
    };
    // The machine's speed swings: plain and cold alternate, twice, and each keeps its best.
    let (mut plain, mut cold) = (f64::INFINITY, f64::INFINITY);
    for _ in 0..2 {
        plain = plain.min(run(&first, &[])?);
        let _ = std::fs::remove_dir_all(&store);
        cold = cold.min(run(&first, &memo)?);
    }
    let again = run(&changed, &memo)?;
    let _ = std::fs::remove_dir_all(&store);
    let nan = Floors {
        native_ns: f64::NAN,
        wasm_ns: f64::NAN,
    };
    let row = |name: &str, secs: f64, note: String| Row {
        name: name.into(),
        items: seeds,
        secs,
        workers,
        floors: nan,
        note,
    };
    Ok(vec![
        row("W2-long `pcluster run`", plain, "verified".into()),
        row(
            "W2-long `pcluster run --memo`, cold store",
            cold,
            format!(
                "verified; {:.0}% of plain (goal ≥ 95%)",
                100.0 * plain / cold
            ),
        ),
        row(
            "W2-long `pcluster run --memo`, 1% of seeds changed",
            again,
            format!(
                "verified; {:.1}% of the cold run's time (goal ≤ 5%)",
                100.0 * again / cold
            ),
        ),
    ])
}

/// One W2 run through `pcluster run` over `seeds`; its seconds, outputs checked.
fn w2_run(
    pcluster: &Pcluster,
    cluster: &Cluster,
    dir: &Path,
    chain: &Path,
    seeds: &[u64],
    iterations: u64,
    extra: &[String],
) -> anyhow::Result<f64> {
    let (input, output) = (dir.join("w2-input.txt"), dir.join("w2-output.txt"));
    let mut w = std::io::BufWriter::new(std::fs::File::create(&input)?);
    for s in seeds {
        writeln!(w, "{s}")?;
    }
    w.flush()?;
    drop(w);
    let t = Instant::now();
    let run = pcluster
        .command()
        .arg("run")
        .arg(chain)
        .args(["--nodes", &cluster.nodes_arg(), "--quiet", "-k"])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .args(extra)
        .stderr(Stdio::piped())
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    if !run.status.success() {
        bail!(
            "pcluster run (W2-long) failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
    }
    let got = std::fs::read_to_string(&output)?;
    let got: Vec<&str> = got.lines().collect();
    ensure!(got.len() == seeds.len(), "W2-long: {} outputs", got.len());
    // Checked in order (`-k`), a sample natively: all of them would take as long as the run.
    for (i, (s, line)) in seeds.iter().zip(&got).enumerate() {
        if i % 50 == 7 || i % 100 == 7 {
            ensure!(
                *line == kit::native_w2(*s, iterations).to_string(),
                "W2-long: seed {s} gave {line}"
            );
        }
    }
    Ok(secs)
}
