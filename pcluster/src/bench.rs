//! `pcluster bench`: W1 and W2 on a local cluster, verified, in a table.

use std::process::ExitCode;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// W1 input items.
    #[arg(long, default_value_t = 1_000_000)]
    pub items: u64,
}

pub fn run(_args: BenchArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("bench is not built yet")
}
