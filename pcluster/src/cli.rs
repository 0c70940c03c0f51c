//! Argument parsing (clap derive) and the small commands: `log`, `node`, `scan`, `status`.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use protocol::auth::Token;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// pcluster: run WebAssembly taskchains over many machines.
#[derive(Parser, Debug)]
#[command(name = "pcluster", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(clap::Args, Debug, Clone)]
pub struct TokenArg {
    /// Cluster token: peers prove they hold it (HMAC challenge–response; it never crosses
    /// the wire). Without it, anyone who reaches the port can use the server.
    #[arg(long, env = "PCLUSTER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl TokenArg {
    pub fn token(&self) -> Option<Token> {
        self.token
            .as_ref()
            .filter(|t| !t.is_empty())
            .map(Token::new)
    }
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the log server: collects log lines over TCP and writes them, stamped, to a file
    /// and stdout.
    Log {
        #[arg(long, default_value = "localhost")]
        host: String,
        #[arg(long, default_value_t = protocol::DEFAULT_LOG_PORT)]
        port: u16,
        #[arg(long, default_value = "pcluster.log")]
        outfile: PathBuf,
        /// Write JSON lines {time, source, message}.
        #[arg(long)]
        json: bool,
        #[arg(long, default_value_t = 4096)]
        max_connections: usize,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Run a node server: accepts a chain from a root and runs it on a pool of workers.
    Node {
        #[arg(long, default_value = "localhost")]
        host: String,
        #[arg(long, default_value_t = protocol::DEFAULT_NODE_PORT)]
        port: u16,
        #[arg(long, default_value = "localhost")]
        log_host: String,
        #[arg(long, default_value_t = protocol::DEFAULT_LOG_PORT)]
        log_port: u16,
        /// Worker threads (default: the number of cores).
        #[arg(long)]
        workers: Option<u32>,
        /// Seconds a chain is kept after its root vanished without saying goodbye.
        #[arg(long, default_value_t = 30)]
        orphan_grace_s: u64,
        /// Seconds without any message (heartbeats included) after which a root counts as gone.
        #[arg(long, default_value_t = 30)]
        root_timeout_s: u64,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Run a chain: items from --input (or stdin), one per line; outputs to --output (or
    /// stdout), one per line. Without --nodes or --scan, runs on an embedded local cluster.
    Run(crate::run::RunArgs),
    /// Scan a network for nodes and print a table.
    Scan {
        /// Network to scan, e.g. 127.0.0.0/24.
        network: ipnetwork::IpNetwork,
        #[arg(long, default_value_t = protocol::DEFAULT_NODE_PORT)]
        port: u16,
        /// Connect timeout per host, in milliseconds.
        #[arg(long, default_value_t = 300)]
        connect_timeout_ms: u64,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Print the status of nodes.
    Status {
        /// Node addresses (host:port).
        #[arg(required = true)]
        nodes: Vec<String>,
        #[command(flatten)]
        token: TokenArg,
    },
    /// Benchmark W1/W2 on a local cluster and print a table.
    Bench(crate::bench::BenchArgs),
}

/// Logging: stderr (or stdout for servers) plus, when given, the log server as
/// `(address, tag, token)`; the token answers a log server that requires one.
pub fn init_tracing(
    to_stdout: bool,
    log_server: Option<(String, String, Option<Token>)>,
    default_level: &str,
) -> Option<logserver::LogClient> {
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("PCLUSTER_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level))
    };
    let fmt: Box<dyn tracing_subscriber::Layer<_> + Send + Sync> = if to_stdout {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stdout)
            .with_filter(filter())
            .boxed()
    } else {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed()
    };
    let (remote, client) = match log_server {
        Some((addr, tag, token)) => {
            let client = logserver::LogClient::new(addr, token);
            let layer = logserver::LogLayer::new(client.clone(), tag)
                .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
            (Some(layer), Some(client))
        }
        None => (None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(fmt)
        .with(remote)
        .try_init();
    client
}

pub fn runtime(multi: bool) -> anyhow::Result<tokio::runtime::Runtime> {
    let rt = if multi {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    rt.context("cannot start the async runtime")
}

/// Cancels the token on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        t.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        t.cancel();
    });
    token
}

pub async fn resolve(host: &str, port: u16) -> anyhow::Result<SocketAddr> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, port));
    }
    tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .next()
        .with_context(|| format!("{host} has no address"))
}

pub fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Log {
            host,
            port,
            outfile,
            json,
            max_connections,
            token,
        } => {
            // The records go to stdout; our own diagnostics to stderr.
            init_tracing(false, None, "info");
            runtime(true)?.block_on(async move {
                let addr = resolve(&host, port).await?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                eprintln!("pcluster log: listening on {}", listener.local_addr()?);
                let config = logserver::ServerConfig {
                    outfile,
                    json,
                    max_connections,
                    token: token.token(),
                    ..Default::default()
                };
                logserver::run(listener, config, shutdown_on_signals()).await?;
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Node {
            host,
            port,
            log_host,
            log_port,
            workers,
            orphan_grace_s,
            root_timeout_s,
            token,
        } => {
            let rt = runtime(false)?;
            rt.block_on(async move {
                let addr = resolve(&host, port).await?;
                let listener = tokio::net::TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr}"))?;
                let local = listener.local_addr()?;
                let token = token.token();
                let client = init_tracing(
                    true,
                    Some((
                        format!("{log_host}:{log_port}"),
                        format!("node {local}"),
                        token.clone(),
                    )),
                    "info",
                );
                eprintln!("pcluster node: listening on {local}");
                let config = node::NodeConfig {
                    workers: workers.unwrap_or_else(node::cores).max(1),
                    token,
                    orphan_grace: Duration::from_secs(orphan_grace_s),
                    root_timeout: Duration::from_secs(root_timeout_s.max(1)),
                    ..Default::default()
                };
                node::run(listener, config, shutdown_on_signals()).await?;
                if let Some(c) = client {
                    c.flush(Duration::from_secs(2));
                }
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Run(args) => crate::run::run(args),
        Command::Scan {
            network,
            port,
            connect_timeout_ms,
            token,
        } => {
            init_tracing(false, None, "error");
            runtime(false)?.block_on(async move {
                let options = root::RootOptions {
                    token: token.token(),
                    connect_timeout: Duration::from_millis(connect_timeout_ms),
                    ..Default::default()
                };
                let started = Instant::now();
                let report = root::scan::scan(network, port, &options).await;
                let took = started.elapsed();
                let mut rows = Vec::new();
                for addr in &report.free {
                    rows.push(crate::table::status_row(*addr, root::node_status(*addr, &options).await));
                }
                for (addr, holder) in &report.busy {
                    rows.push(crate::table::note_row(*addr, &format!("busy with {holder}")));
                }
                for (addr, why) in report.unauthenticated.iter().chain(&report.failed) {
                    rows.push(crate::table::note_row(*addr, &format!("not authenticated: {why}")));
                }
                crate::table::print_status(&rows);
                eprintln!(
                    "scanned {} hosts of {network} on port {port} in {:.1} ms: {} free, {} busy, {} could not be authenticated",
                    report.hosts,
                    took.as_secs_f64() * 1000.0,
                    report.free.len(),
                    report.busy.len(),
                    report.unauthenticated.len()
                );
                Ok(ExitCode::SUCCESS)
            })
        }
        Command::Status { nodes, token } => {
            init_tracing(false, None, "error");
            runtime(false)?.block_on(async move {
                let options = root::RootOptions {
                    token: token.token(),
                    ..Default::default()
                };
                let mut rows = Vec::new();
                let mut failed = false;
                for n in &nodes {
                    let (host, port) = match n.rsplit_once(':') {
                        Some((h, p)) => (
                            h.to_string(),
                            p.parse().with_context(|| format!("bad port in {n}"))?,
                        ),
                        None => (n.clone(), protocol::DEFAULT_NODE_PORT),
                    };
                    let addr = resolve(&host, port).await?;
                    let st = root::node_status(addr, &options).await;
                    failed |= st.is_err();
                    rows.push(crate::table::status_row(addr, st));
                }
                crate::table::print_status(&rows);
                Ok(if failed {
                    ExitCode::FAILURE
                } else {
                    ExitCode::SUCCESS
                })
            })
        }
        Command::Bench(args) => crate::bench::run(args),
    }
}
