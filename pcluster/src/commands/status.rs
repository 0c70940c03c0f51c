//! `pcluster status`: one table row per node, with per-task counters.

use std::process::ExitCode;

use crate::setup::{Console, NodeList, TokenArg, init_tracing, runtime};
use crate::table;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    pub nodes: NodeList,
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
        let mut rows = Vec::new();
        let mut failed = false;
        for addr in args.nodes.resolve().await? {
            let st = root::node_status(addr, &options).await;
            failed |= st.is_err();
            rows.push(table::status_row(addr, st));
        }
        table::print_status(&rows)?;
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}
