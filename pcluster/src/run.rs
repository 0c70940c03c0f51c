//! `pcluster run`: reads items line by line, streams them through a cluster (given nodes,
//! a scan, or an embedded local cluster) and writes outputs line by line. Stdout carries
//! outputs only; logs and progress go to stderr and the log server.

use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use protocol::Packed;
use tokio_util::sync::CancellationToken;

use crate::cli::{TokenArg, init_tracing, resolve, runtime};

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The chain file (TOML).
    pub chain: PathBuf,
    /// Node addresses, comma-separated (host:port).
    #[arg(long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Scan this network for nodes, e.g. 127.0.0.0/24.
    #[arg(long)]
    pub scan: Option<ipnetwork::IpNetwork>,
    /// Port to scan.
    #[arg(long, default_value_t = protocol::DEFAULT_NODE_PORT)]
    pub port: u16,
    /// Input items, one per line (default: stdin).
    #[arg(long)]
    pub input: Option<PathBuf>,
    /// Output items, one per line (default: stdout).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Write failed items here instead of stderr.
    #[arg(long)]
    pub failed: Option<PathBuf>,
    /// Log server host (default with an embedded cluster: an embedded log server).
    #[arg(long)]
    pub log_host: Option<String>,
    #[arg(long, default_value_t = protocol::DEFAULT_LOG_PORT)]
    pub log_port: u16,
    /// Workers of the embedded node (default: the number of cores).
    #[arg(long)]
    pub workers: Option<u32>,
    /// Log file of the embedded log server.
    #[arg(long, default_value = "pcluster.log")]
    pub log_file: PathBuf,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub token: TokenArg,
}

/// A log server and nodes running inside this process on loopback.
pub struct LocalCluster {
    pub log: SocketAddr,
    pub nodes: Vec<SocketAddr>,
    pub shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl LocalCluster {
    /// Starts a log server writing to `log_file` and `nodes` nodes with `workers` workers
    /// each, all on 127.0.0.1 with free ports.
    pub async fn start(
        log_file: PathBuf,
        nodes: usize,
        workers: u32,
        token: Option<protocol::auth::Token>,
    ) -> anyhow::Result<LocalCluster> {
        let shutdown = CancellationToken::new();
        let mut tasks = Vec::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let log = listener.local_addr()?;
        let config = logserver::ServerConfig {
            outfile: log_file,
            echo_stdout: false,
            // The root's log client proves the cluster token, so the embedded server asks it.
            token: token.clone(),
            ..Default::default()
        };
        let s = shutdown.clone();
        tasks.push(tokio::spawn(async move {
            if let Err(e) = logserver::run(listener, config, s).await {
                tracing::error!("embedded log server: {e}");
            }
        }));
        let mut addrs = Vec::new();
        for _ in 0..nodes {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            addrs.push(listener.local_addr()?);
            let config = node::NodeConfig {
                workers,
                token: token.clone(),
                ..Default::default()
            };
            let s = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                if let Err(e) = node::run(listener, config, s).await {
                    tracing::error!("embedded node: {e}");
                }
            }));
        }
        Ok(LocalCluster {
            log,
            nodes: addrs,
            shutdown,
            tasks,
        })
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

struct OutSink {
    w: std::io::BufWriter<Box<dyn std::io::Write + Send>>,
    failed: bool,
    err: Arc<Mutex<Option<std::io::Error>>>,
}

impl OutSink {
    #[inline]
    fn write(&mut self, item: &[u8]) {
        if self.failed {
            return;
        }
        if let Err(e) = self.w.write_all(item).and_then(|_| self.w.write_all(b"\n")) {
            self.fail(e);
        }
    }

    fn fail(&mut self, e: std::io::Error) {
        self.failed = true;
        if let Ok(mut slot) = self.err.lock() {
            slot.get_or_insert(e);
        }
    }
}

impl Drop for OutSink {
    fn drop(&mut self) {
        if !self.failed
            && let Err(e) = self.w.flush()
        {
            self.fail(e);
        }
    }
}

fn open_out(path: Option<&PathBuf>) -> anyhow::Result<Box<dyn std::io::Write + Send>> {
    Ok(match path {
        Some(p) => Box::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    })
}

/// Reads lines on a thread of its own into packed batches.
fn spawn_reader(
    input: Option<PathBuf>,
    batch: usize,
    tx: tokio::sync::mpsc::Sender<std::io::Result<Packed>>,
) {
    std::thread::spawn(move || {
        let result = (|| -> std::io::Result<()> {
            let mut r: Box<dyn std::io::Read> = match &input {
                Some(p) => Box::new(std::fs::File::open(p).map_err(|e| {
                    std::io::Error::new(e.kind(), format!("cannot open {}: {e}", p.display()))
                })?),
                None => Box::new(std::io::stdin().lock()),
            };
            let mut buf = vec![0u8; 1 << 20];
            let mut filled = 0usize;
            let mut packed = Packed::with_capacity(batch, batch * 16);
            loop {
                let n = r.read(&mut buf[filled..])?;
                let eof = n == 0;
                filled += n;
                let mut start = 0;
                for nl in memchr::memchr_iter(b'\n', &buf[..filled]) {
                    packed.push(&buf[start..nl]);
                    start = nl + 1;
                    if packed.len() >= batch {
                        let full = std::mem::replace(
                            &mut packed,
                            Packed::with_capacity(batch, batch * 16),
                        );
                        if tx.blocking_send(Ok(full)).is_err() {
                            return Ok(());
                        }
                    }
                }
                if eof {
                    if start < filled {
                        packed.push(&buf[start..filled]);
                    }
                    break;
                }
                buf.copy_within(start..filled, 0);
                filled -= start;
                if filled == buf.len() {
                    // A line longer than the buffer: grow (items are bounded by the root).
                    buf.resize(buf.len() * 2, 0);
                }
            }
            if !packed.is_empty() {
                let _ = tx.blocking_send(Ok(packed));
            }
            Ok(())
        })();
        if let Err(e) = result {
            let _ = tx.blocking_send(Err(e));
        }
    });
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let rt = runtime(false)?;
    let started = Instant::now();
    rt.block_on(async move {
        let chain = root::chain::load(&args.chain)?;
        let embedded = args.nodes.is_empty() && args.scan.is_none();
        // An embedded cluster without a given token gets a fresh random one: only this
        // process can use its node and log server.
        let token = match args.token.token() {
            None if embedded => {
                let n = protocol::auth::nonce()?;
                Some(protocol::auth::Token::new(hex::encode(n)))
            }
            given => given,
        };
        let local = if embedded {
            let workers = args.workers.unwrap_or_else(node::cores).max(1);
            Some(LocalCluster::start(args.log_file.clone(), 1, workers, token.clone()).await?)
        } else {
            None
        };
        let log_addr = match (&args.log_host, &local) {
            (Some(h), _) => Some(format!("{h}:{}", args.log_port)),
            (None, Some(l)) => Some(l.log.to_string()),
            (None, None) => None,
        };
        let log_client = init_tracing(false, log_addr.map(|a| (a, format!("root pid {}", std::process::id()), token.clone())), "warn");
        let options = root::RootOptions {
            token,
            ..Default::default()
        };
        let root = root::Root::new(options);
        if let Some(l) = &local {
            for n in &l.nodes {
                root.add_node(*n).await?;
            }
        }
        for n in &args.nodes {
            let (host, port) = match n.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), p.parse().with_context(|| format!("bad port in {n}"))?),
                None => (n.clone(), protocol::DEFAULT_NODE_PORT),
            };
            root.add_node(resolve(&host, port).await?).await?;
        }
        if let Some(net) = args.scan {
            let t = Instant::now();
            let report = root.search_nodes(net, args.port).await?;
            eprintln!(
                "scan of {net} port {}: {} nodes added in {:.1} ms ({} busy, {} not authenticated)",
                args.port,
                report.free.len(),
                t.elapsed().as_secs_f64() * 1000.0,
                report.busy.len(),
                report.unauthenticated.len()
            );
            for (a, why) in &report.unauthenticated {
                eprintln!("  could not authenticate {a}: {why}");
            }
        }
        if root.counters().await?.nodes == 0 {
            bail!("no nodes to run on");
        }

        let out_err = Arc::new(Mutex::new(None));
        let mut sink = OutSink {
            w: std::io::BufWriter::with_capacity(1 << 20, open_out(args.output.as_ref())?),
            failed: false,
            err: out_err.clone(),
        };
        let failed = Arc::new(AtomicU64::new(0));
        let failed_h = failed.clone();
        let mut failed_out: Box<dyn std::io::Write + Send> = match &args.failed {
            Some(p) => Box::new(std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?),
            None => Box::new(std::io::stderr()),
        };
        root.setup_with(
            chain,
            move |_, item| sink.write(item),
            move |f| {
                failed_h.fetch_add(1, Ordering::Relaxed);
                let _ = writeln!(failed_out, "failed: {f}");
            },
        )
        .await?;

        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        spawn_reader(args.input.clone(), root.options().batch_items, tx);
        let progress = (!args.quiet && std::io::IsTerminal::is_terminal(&std::io::stderr())).then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_style(
                indicatif::ProgressStyle::with_template("{spinner} {elapsed} {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
            );
            bar
        });
        let mut last_tick = Instant::now();
        while let Some(batch) = rx.recv().await {
            root.feed_packed(batch.context("reading input")?).await?;
            if let Some(bar) = &progress
                && last_tick.elapsed() > Duration::from_millis(200)
            {
                last_tick = Instant::now();
                let c = root.counters().await?;
                bar.set_message(progress_line(&c, started));
                bar.tick();
            }
        }
        if let Some(bar) = &progress {
            loop {
                let done = tokio::time::timeout(Duration::from_millis(200), root.wait_empty()).await;
                let c = root.counters().await?;
                bar.set_message(progress_line(&c, started));
                match done {
                    Ok(r) => {
                        r?;
                        break;
                    }
                    Err(_) => continue,
                }
            }
            bar.finish_and_clear();
        } else {
            root.wait_empty().await?;
        }
        let c = root.counters().await?;
        root.close().await?;
        // Flush our log lines while the embedded log server still runs, off this thread:
        // the server may share this runtime.
        if let Some(client) = log_client {
            let _ = tokio::task::spawn_blocking(move || client.flush(Duration::from_secs(2))).await;
        }
        if let Some(l) = local {
            l.stop().await;
        }
        if let Some(e) = out_err.lock().ok().and_then(|mut e| e.take()) {
            return Err(anyhow::Error::new(e).context("writing outputs"));
        }
        let secs = started.elapsed().as_secs_f64();
        eprintln!(
            "pcluster run: {} items in, {} outputs, {} failed, {} re-dispatched, {:.2} s ({:.0} items/s), peak RSS {:.1} MiB",
            c.fed,
            c.outputs,
            failed.load(Ordering::Relaxed),
            c.redispatched,
            secs,
            c.fed as f64 / secs.max(1e-9),
            crate::bench::peak_rss_mib(None).unwrap_or(0.0)
        );
        Ok(if failed.load(Ordering::Relaxed) > 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        })
    })
}

fn progress_line(c: &root::Counters, started: Instant) -> String {
    format!(
        "fed {}  outputs {}  failed {}  {:.0} items/s",
        c.fed,
        c.outputs,
        c.failed,
        c.completed as f64 / started.elapsed().as_secs_f64().max(1e-9)
    )
}
