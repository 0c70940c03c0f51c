//! `pcluster node`: a node server.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;

use crate::setup::{
    Console, PortFileArg, TokenArg, check_exposure, init_tracing, resolve, runtime,
    shutdown_on_signals,
};

#[derive(clap::Args, Debug)]
pub struct NodeArgs {
    #[arg(long, default_value = "localhost")]
    pub host: String,
    /// Port to listen on (0: one the OS chooses; see --port-file).
    #[arg(long, default_value_t = protocol::DEFAULT_NODE_PORT)]
    pub port: u16,
    #[command(flatten)]
    pub port_file: PortFileArg,
    #[arg(long, default_value = "localhost")]
    pub log_host: String,
    #[arg(long, default_value_t = protocol::DEFAULT_LOG_PORT)]
    pub log_port: u16,
    /// Worker threads (default: the number of cores).
    #[arg(short = 'j', long)]
    pub workers: Option<u32>,
    /// Labels of this node, comma-separated (free-form words, e.g. `cpu,io`): a task with
    /// `labels = [...]` in its chain entry runs only on nodes carrying all of them.
    #[arg(long, value_delimiter = ',')]
    pub labels: Vec<String>,
    /// Seconds a chain is kept for a root that vanished without saying goodbye (only that
    /// root may take it back meanwhile; any other root may claim the node at once).
    #[arg(long, default_value_t = 30)]
    pub orphan_grace_s: u64,
    /// Seconds without any message (heartbeats included) after which a root counts as gone.
    #[arg(long, default_value_t = 30)]
    pub root_timeout_s: u64,
    /// MiB this node may give a chain: setup refuses a chain whose workers × tasks × its
    /// `memory_mb` plus the node's buffers exceed it (default: 3/4 of the machine's memory).
    #[arg(long)]
    pub memory_mb: Option<u64>,
    /// Directory of compiled modules and components kept across runs and node processes
    /// (default: $XDG_CACHE_HOME/pcluster or ~/.cache/pcluster; `off` keeps them in memory).
    #[arg(long, env = "PCLUSTER_CACHE_DIR")]
    pub cache_dir: Option<std::path::PathBuf>,
    /// MiB of compiled code the cache directory keeps, least recently used out (shared by
    /// the node processes using the directory); code larger than that is kept in memory only.
    #[arg(long, value_name = "MIB", default_value_t = node::NodeConfig::DEFAULT_CACHE_MB)]
    pub cache_mb: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. `0.0.0.0:9464`): per-task
    /// counters over the node's life, workers, items and bytes in flight, credit, the
    /// compile cache, guests evicted, memory. Read-only; needs no token.
    #[arg(long, value_name = "HOST:PORT")]
    pub metrics: Option<String>,
    #[command(flatten)]
    pub token: TokenArg,
    /// Listen on a non-loopback address without a token (unauthenticated, unencrypted).
    #[arg(long)]
    pub insecure: bool,
    #[command(flatten)]
    pub native: NativeArgs,
}

/// Native Python tasks (`runtime = "python"`): off unless asked for.
#[derive(clap::Args, Debug)]
pub struct NativeArgs {
    /// Run native Python tasks: CPython processes outside the sandbox, which can do
    /// anything this user can. Needs a token; only token holders can send code.
    #[arg(long)]
    pub allow_native: bool,
    /// The Python interpreter of native tasks (and of their environments' venvs).
    #[arg(long, default_value = "python3", value_name = "PATH")]
    pub python: std::path::PathBuf,
    /// Extra arguments of `pip install` for native tasks' requirements, space-separated
    /// (e.g. "--no-index --find-links /srv/wheels" where there is no package index).
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub pip_args: Option<String>,
}

impl NativeArgs {
    fn config(&self) -> node::native::NativeConfig {
        node::native::NativeConfig {
            allow: self.allow_native,
            python: self.python.clone(),
            pip_args: self
                .pip_args
                .as_deref()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_owned)
                .collect(),
        }
    }
}

pub fn run(args: NodeArgs) -> anyhow::Result<ExitCode> {
    crate::setup::raise_open_files_limit();
    runtime(false)?.block_on(async move {
        let addr = resolve(&args.host, args.port).await?;
        let token = args.token.token()?;
        if args.native.allow_native && token.is_none() {
            anyhow::bail!("{}", node::NodeError::NativeWithoutToken);
        }
        check_exposure(
            addr,
            token.is_some(),
            args.insecure,
            "run code on this node",
        )?;
        let metrics = match &args.metrics {
            Some(m) => {
                let (host, port) = crate::setup::split_host_port(m, 9464)?;
                Some(resolve(&host, port).await?)
            }
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr()?;
        let log = (
            format!("{}:{}", args.log_host, args.log_port),
            format!("node {local}"),
            token.clone(),
        );
        let client = init_tracing(Console::Stdout, Some(log), "info");
        eprintln!("pcluster node: listening on {local}");
        args.port_file.write(local)?;
        let config = node::NodeConfig {
            workers: args.workers.unwrap_or_else(node::cores).max(1),
            token,
            memory_mb: args
                .memory_mb
                .unwrap_or_else(node::budget::default_memory_mb),
            orphan_grace: Duration::from_secs(args.orphan_grace_s),
            root_timeout: Duration::from_secs(args.root_timeout_s.max(1)),
            cache_dir: match args.cache_dir {
                Some(dir) if dir.as_os_str() == "off" => None,
                Some(dir) => Some(dir),
                None => node::default_cache_dir(),
            },
            cache_mb: args.cache_mb,
            labels: args
                .labels
                .iter()
                .filter(|l| !l.is_empty())
                .cloned()
                .collect(),
            native: args.native.config(),
            metrics,
            ..Default::default()
        };
        node::run(listener, config, shutdown_on_signals()).await?;
        if let Some(c) = client {
            c.flush(Duration::from_secs(2));
        }
        Ok(ExitCode::SUCCESS)
    })
}
