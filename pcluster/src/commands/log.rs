//! `pcluster log`: the log server.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

use crate::setup::{
    Console, PortFileArg, TokenArg, check_exposure, init_tracing, resolve, runtime,
    shutdown_on_signals,
};

#[derive(clap::Args, Debug)]
pub struct LogArgs {
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// Port to listen on (0: one the OS chooses; see --port-file).
    #[arg(long, default_value_t = protocol::DEFAULT_LOG_PORT)]
    pub port: u16,
    #[command(flatten)]
    pub port_file: PortFileArg,
    #[arg(long, default_value = "pcluster.log")]
    pub outfile: PathBuf,
    /// Write JSON lines {time, source, message}.
    #[arg(long)]
    pub json: bool,
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    #[command(flatten)]
    pub token: TokenArg,
    /// Listen on a non-loopback address without a token (anyone may write, in the clear).
    #[arg(long)]
    pub insecure: bool,
}

pub fn run(args: LogArgs) -> anyhow::Result<ExitCode> {
    // The records go to stdout; our own diagnostics to stderr.
    init_tracing(Console::Stderr, None, "info");
    runtime(true)?.block_on(async move {
        let addr = resolve(&args.host, args.port).await?;
        let token = args.token.token()?;
        check_exposure(addr, token.is_some(), args.insecure, "write to the log")?;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        eprintln!("pcluster log: listening on {local}");
        args.port_file.write(local)?;
        let config = logserver::ServerConfig {
            outfile: args.outfile,
            json: args.json,
            max_connections: args.max_connections,
            token,
            ..Default::default()
        };
        logserver::run(listener, config, shutdown_on_signals()).await?;
        Ok(ExitCode::SUCCESS)
    })
}
