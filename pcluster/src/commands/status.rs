//! `pcluster status`: one table row per node, with per-task counters.

use std::process::ExitCode;

use crate::setup::{Console, TokenArg, init_tracing, node_addr, runtime};
use crate::table;

#[derive(clap::Args, Debug)]
pub struct StatusArgs {
    /// Node addresses (`host[:port]`, `[v6]:port`).
    #[arg(required = true)]
    pub nodes: Vec<String>,
    /// Port of entries that name none.
    #[arg(short, long, default_value_t = protocol::DEFAULT_NODE_PORT)]
    pub port: u16,
    #[command(flatten)]
    pub token: TokenArg,
}

pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    init_tracing(Console::Stderr, None, "error");
    runtime(false)?.block_on(async move {
        let options = root::RootOptions {
            token: args.token.token(),
            ..Default::default()
        };
        let mut rows = Vec::new();
        let mut failed = false;
        for n in &args.nodes {
            let addr = node_addr(n, args.port).await?;
            let st = root::node_status(addr, &options).await;
            failed |= st.is_err();
            rows.push(table::status_row(addr, st));
        }
        table::print_status(&rows);
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}
