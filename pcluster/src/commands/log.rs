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
    /// Connections served at once. A full server closes a guest (a connection that has not
    /// proved the token, or sent no line yet, or has been silent for 5 s) to make room, the
    /// oldest of the address with the most guests.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Largest size of the log file in MiB: past it the file is renamed FILE.1 (FILE.1 to
    /// FILE.2, and so on) and a new one begun. 0: no cap.
    #[arg(long, value_name = "N", default_value_t = logserver::DEFAULT_MAX_FILE_MB)]
    pub max_mb: u64,
    /// Rotated files kept (FILE.1 … FILE.K); older ones are deleted. With the defaults the
    /// log takes at most 600 MiB.
    #[arg(long, value_name = "K", default_value_t = logserver::DEFAULT_KEEP_FILES)]
    pub keep: usize,
    #[command(flatten)]
    pub token: TokenArg,
    /// Listen on a non-loopback address without a token (anyone may write, in the clear).
    #[arg(long)]
    pub insecure: bool,
}

pub fn run(args: LogArgs) -> anyhow::Result<ExitCode> {
    // The records go to stdout; our own diagnostics to stderr.
    init_tracing(Console::Stderr, None, "info");
    crate::setup::raise_open_files_limit();
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
            max_file_bytes: (args.max_mb > 0).then(|| args.max_mb.saturating_mul(1 << 20)),
            keep_files: args.keep,
            token,
            ..Default::default()
        };
        logserver::run(listener, config, shutdown_on_signals()).await?;
        Ok(ExitCode::SUCCESS)
    })
}
