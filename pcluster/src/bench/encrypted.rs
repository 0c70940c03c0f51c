//! The encrypted twins of W1 and W4 in `pcluster bench`: the same `pcluster run` workloads on a
//! cluster of their own started with a token, so every connection (root–node, node and root to
//! the log server) runs over the Noise channel, and their rates against the plain rows measured
//! earlier in the same bench run.

use std::path::Path;

use kit::Pcluster;

use super::w4::{self, W4Options, W4Report};
use super::{BenchArgs, Cluster, Floors, Row, w1_process};

/// The token the encrypted cluster and its runs share: a key, as `pcluster key new` writes
/// (a typed token would add its argon2id stretching, ~30 ms, to each run's start).
const TOKEN: &str = "5c1e7d0a9b3f4e2d8c6a1b0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e0d";

/// Items of the unreported W1 run that warms the encrypted cluster up.
const WARM_UP_ITEMS: u64 = 300_000;

/// What the encrypted runs measured.
pub(super) struct Encrypted {
    /// W1 through `pcluster run` with the token, and its rate over the plain row's.
    pub w1: Option<(Row, f64)>,
    /// W4 with the token, and its rate over the plain W4's (all runs together).
    pub w4: Option<(W4Report, f64)>,
}

/// Runs W1 (when `plain_w1_secs` is known) and W4 (when `plain_w4` ran) again on a cluster
/// with a token.
pub(super) async fn encrypted(
    pcluster: &Pcluster,
    dir: &Path,
    args: &BenchArgs,
    floors: Floors,
    plain_w1_secs: Option<f64>,
    plain_w4: Option<&W4Report>,
) -> anyhow::Result<Encrypted> {
    if plain_w1_secs.is_none() && plain_w4.is_none() {
        return Ok(Encrypted { w1: None, w4: None });
    }
    let token = ["--token", TOKEN];
    let cluster = Cluster::start(pcluster, dir, args.nodes, args.workers, &token).await?;
    let run_args: Vec<String> = token.map(String::from).to_vec();
    let w1 = match plain_w1_secs {
        Some(plain) => {
            // The plain row runs on nodes that have already served the library rows (their
            // workers, buffers and allocator warm); give these fresh nodes the same start.
            w1_process(
                pcluster,
                &cluster,
                dir,
                "warm-up",
                args.run_items.min(WARM_UP_ITEMS),
                floors,
                &run_args,
            )?;
            let row = w1_process(
                pcluster,
                &cluster,
                dir,
                "W1 `pcluster run` with a token (encrypted)",
                args.run_items,
                floors,
                &run_args,
            )?;
            let ratio = plain / row.secs;
            Some((row, ratio))
        }
        None => None,
    };
    let w4 = match plain_w4 {
        Some(plain) => {
            let options = W4Options {
                name: "W4 with a token (encrypted)".into(),
                run_args,
                ..plain.options.clone()
            };
            let pids: Vec<u32> = cluster.processes[1..].iter().map(|p| p.id()).collect();
            let report = w4::w4(pcluster, &cluster.nodes_arg(), &pids, dir, &options)?;
            let ratio = total_secs(plain) / total_secs(&report);
            Some((report, ratio))
        }
        None => None,
    };
    Ok(Encrypted { w1, w4 })
}

/// The seconds of all a report's runs together.
fn total_secs(r: &W4Report) -> f64 {
    r.runs.iter().map(|run| run.secs).sum()
}
