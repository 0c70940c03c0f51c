//! How quick a quick run is: one item through a whole `pcluster run` process on warm nodes,
//! logging to the cluster's log server, timed from start to exit, twenty times.

use std::path::Path;
use std::process::Stdio;
use std::time::Instant;

use anyhow::ensure;
use kit::Pcluster;

use super::cluster::Cluster;

/// Runs timed.
const RUNS: usize = 20;

/// Wall times of one-item runs, sorted, in ms.
pub struct Quick {
    pub ms: Vec<f64>,
}

impl Quick {
    /// The median, in ms.
    pub fn median(&self) -> f64 {
        self.ms.get(self.ms.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// The report's line.
    pub fn line(&self) -> String {
        format!(
            "one item through `pcluster run --log-host` on warm nodes: median {:.1} ms, fastest {:.1}, slowest {:.1} over {} runs (goal: median ≤ 40 ms)",
            self.median(),
            self.ms.first().copied().unwrap_or(f64::NAN),
            self.ms.last().copied().unwrap_or(f64::NAN),
            self.ms.len()
        )
    }
}

/// Times [`RUNS`] one-item W1 runs on `cluster`, each checked for its two outputs.
pub fn one_item(pcluster: &Pcluster, cluster: &Cluster, dir: &Path) -> anyhow::Result<Quick> {
    let input = dir.join("one-item.txt");
    kit::write_w1_input(&input, 1)?;
    let mut ms = Vec::with_capacity(RUNS);
    // One run first, so the nodes have the chain compiled and cached.
    for i in 0..=RUNS {
        let t = Instant::now();
        let out = pcluster
            .command()
            .arg("run")
            .arg(kit::repo().join("examples/w1.toml"))
            .args([
                "--nodes",
                &cluster.nodes_arg(),
                "-q",
                "--log-host",
                "127.0.0.1",
            ])
            .args(["--log-port", &cluster.log_port.to_string()])
            .arg("--input")
            .arg(&input)
            .stderr(Stdio::piped())
            .output()?;
        let took = t.elapsed().as_secs_f64() * 1e3;
        ensure!(
            out.status.success(),
            "one-item run failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ensure!(
            out.stdout == b"item-0\nitem-0\n",
            "one-item run gave {:?}",
            out.stdout
        );
        if i > 0 {
            ms.push(took);
        }
    }
    ms.sort_by(f64::total_cmp);
    Ok(Quick { ms })
}
