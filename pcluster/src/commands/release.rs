//! `pcluster release NODE…`: frees nodes held by another root (one that is alive but stuck);
//! each node drops its chain, closes the holder's connection and logs who released it.

use std::process::ExitCode;

use crate::setup::{Console, TokenArg, init_tracing, node_addr, runtime};

#[derive(clap::Args, Debug)]
pub struct ReleaseArgs {
    /// Node addresses (`host[:port]`, `[v6]:port`).
    #[arg(required = true)]
    pub nodes: Vec<String>,
    /// Port of entries that name none.
    #[arg(short, long, default_value_t = protocol::DEFAULT_NODE_PORT)]
    pub port: u16,
    #[command(flatten)]
    pub token: TokenArg,
}

pub fn run(args: ReleaseArgs) -> anyhow::Result<ExitCode> {
    init_tracing(Console::Stderr, None, "error");
    runtime(false)?.block_on(async move {
        let options = root::RootOptions {
            token: args.token.token(),
            ..Default::default()
        };
        let mut failed = false;
        for n in &args.nodes {
            let addr = node_addr(n, args.port).await?;
            match root::release_node(addr, &options).await {
                Ok(Some(holder)) => println!("{addr}: released; it was held by {holder}"),
                Ok(None) => println!("{addr}: was free"),
                Err(e) => {
                    failed = true;
                    eprintln!("pcluster release: {e}");
                }
            }
        }
        Ok(if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}
