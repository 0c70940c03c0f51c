//! `pcluster release NODE…`: frees nodes held by another root (one that is alive but stuck);
//! each node drops its chain, closes the holder's connection and logs who released it.

use std::io::Write as _;
use std::process::ExitCode;

use crate::setup::{Console, NodeList, TokenArg, init_tracing, runtime};

#[derive(clap::Args, Debug)]
pub struct ReleaseArgs {
    #[command(flatten)]
    pub nodes: NodeList,
    #[command(flatten)]
    pub token: TokenArg,
}

pub fn run(args: ReleaseArgs) -> anyhow::Result<ExitCode> {
    init_tracing(Console::Stderr, None, "error");
    runtime(false)?.block_on(async move {
        let options = root::RootOptions {
            token: args.token.token()?,
            ..Default::default()
        };
        let mut failed = false;
        // Written with errors checked: a closed stdout (`| head`) ends the command quietly.
        let mut out = std::io::stdout();
        for addr in args.nodes.resolve().await? {
            match root::release_node(addr, &options).await {
                Ok(Some(holder)) => {
                    writeln!(out, "{addr}: released; it was held by {holder}")?;
                }
                Ok(None) => writeln!(out, "{addr}: was free")?,
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
