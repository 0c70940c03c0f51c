//! `pcluster status`: one table row per node, with per-task counters (or, with `--json`,
//! the dashboard's snapshot of the nodes).

use std::process::ExitCode;

use crate::setup::{Console, NodeList, TokenArg, init_tracing, runtime};
use crate::table;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub nodes: NodeList,
    /// Print one JSON document (the fields of the dashboard's /api/status) instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub token: TokenArg,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    init_tracing(Console::Stderr, None, "error");
    runtime(false)?.block_on(async move {
        let options = root::RootOptions {
            token: args.token.token()?,
            ..Default::default()
        };
        let mut probes = Vec::new();
        for addr in args.nodes.resolve().await? {
            probes.push((addr, root::node_status(addr, &options).await));
        }
        let failed = probes.iter().any(|(_, st)| st.is_err());
        if args.json {
            let views = probes
                .iter()
                .map(|(a, st)| (*a, crate::json::node_view(*a, st)))
                .collect();
            crate::json::print(&crate::json::snapshot(views))?;
        } else {
            let rows: Vec<table::Row> = probes
                .into_iter()
                .map(|(a, st)| table::status_row(a, st))
                .collect();
            table::print_status(&rows)?;
        }
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}
