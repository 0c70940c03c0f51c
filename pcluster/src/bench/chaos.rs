//! `pcluster bench --chaos MINUTES`: the kit's chaos soak for as long as asked, instead of the
//! table: four nodes in network namespaces of their own (as root), W1 runs with `--joblog`
//! back to back, and overlapping faults every few seconds (SIGKILL, SIGSTOP, SIGTERM, links
//! down, links capped at 1 Mbit/s); every run, resumed where it gave up, checked exact.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use kit::{ChaosOptions, Hosts, Pcluster};

/// Nodes of the soak.
const NODES: usize = 4;
/// W1 inputs per run.
const ITEMS: u64 = 2_000_000;
/// The mean pause between two faults.
const EVERY: Duration = Duration::from_secs(4);

/// Runs the soak for `minutes` and prints its report.
pub async fn run(pcluster: &Pcluster, dir: &Path, minutes: u64) -> anyhow::Result<ExitCode> {
    let hosts = Hosts::new(NODES)?;
    let seed = std::env::var("PCLUSTER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let options = ChaosOptions {
        workers: 1,
        duration: Duration::from_secs(minutes * 60),
        items: ITEMS,
        every: EVERY,
        seed,
    };
    eprintln!("pcluster bench: chaos soak of {minutes} min on {NODES} nodes in namespaces");
    let report = kit::soak(pcluster, hosts, dir, &options).await?;
    println!("{report}");
    Ok(ExitCode::SUCCESS)
}
