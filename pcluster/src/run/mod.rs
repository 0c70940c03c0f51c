//! `pcluster run`: reads items, streams them through a cluster (given nodes, a scan, or an
//! embedded local cluster) and writes outputs. Stdout carries outputs only; logs, failures
//! and progress go to stderr and the log server.
//!
//! Every exit path frees the nodes and keeps every finished output: a first SIGINT/SIGTERM
//! stops reading and lets the inputs in flight finish (up to `--drain-timeout`), a second one
//! stops at once; either way only whole lines of completed inputs are written.
//!
//! - `args`: the command line (`bounds`: its memory bounds); `input`: the reader; `lines`:
//!   id → line numbers; `output`: the sink (outputs, failures, joblog); `joblog`: its format
//!   and resuming; `nodes`: membership; `drive`: feeding, draining and stopping.

mod args;
mod binary;
mod bounds;
mod buffers;
mod drive;
mod failures;
mod framing;
mod input;
mod joblog;
mod lines;
mod memo;
mod nodes;
mod output;
mod progress;
mod reader;
mod writer;

use std::io::Write as _;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub use args::RunArgs;
use output::{FailedOut, Journal, Sink, SinkState};

use crate::embedded::LocalCluster;
use crate::setup::{Console, fresh_token, init_tracing, runtime};

/// Files opened before any node is contacted, so a typo costs nothing.
struct Files {
    input: Box<dyn std::io::Read + Send>,
    /// Whether the input is a regular file (read a big buffer at a time without waiting).
    input_is_file: bool,
    output: Box<dyn std::io::Write + Send>,
    /// Bytes already in the output (a resumed run appends).
    output_bytes: u64,
    failed: Option<Box<dyn std::io::Write + Send>>,
    journal: Option<std::fs::File>,
    resume: Option<joblog::Resume>,
    /// `--memo`'s store, open.
    memo: Option<memo::RunMemo>,
}

fn open_files(args: &RunArgs, chain: &protocol::ChainSpec) -> anyhow::Result<Files> {
    let (input, input_is_file): (Box<dyn std::io::Read + Send>, bool) = match &args.input {
        Some(p) => {
            let f = std::fs::File::open(p)
                .with_context(|| format!("cannot open --input {}", p.display()))?;
            let is_file = f.metadata().is_ok_and(|m| m.is_file());
            (Box::new(f), is_file)
        }
        None => {
            use std::os::fd::AsFd as _;
            let stdin = std::io::stdin();
            let is_file = stdin
                .as_fd()
                .try_clone_to_owned()
                .and_then(|fd| std::fs::File::from(fd).metadata())
                .is_ok_and(|m| m.is_file());
            (Box::new(stdin), is_file)
        }
    };
    let mut resume = None;
    let mut output_bytes = 0;
    let mut journal = None;
    if let Some(jpath) = &args.joblog {
        let input_hash = match &args.input {
            Some(p) => joblog::file_hash(p)?,
            None => "stdin".to_string(),
        };
        let chain_hash = joblog::chain_hash(chain);
        if args.resume {
            let (Some(out), Some(_)) = (&args.output, &args.input) else {
                bail!("--resume needs --output FILE and --input FILE (the same as the first run)");
            };
            let r = joblog::read(jpath, &chain_hash, &input_hash)?;
            let out_len = std::fs::metadata(out).map(|m| m.len()).unwrap_or(0);
            if out_len < r.output_bytes {
                bail!(
                    "{} holds {out_len} bytes but the joblog names {}: is it the output of that run?",
                    out.display(),
                    r.output_bytes
                );
            }
            // Outputs past the last joblog line belong to inputs that will run again.
            truncate(out, r.output_bytes)?;
            truncate(jpath, r.joblog_bytes)?;
            output_bytes = r.output_bytes;
            eprintln!(
                "pcluster run: resuming: {} inputs done ({} failed), {} output bytes kept",
                r.done.len(),
                r.failed,
                r.output_bytes
            );
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(jpath)
                .with_context(|| format!("cannot open {}", jpath.display()))?;
            journal = Some(f);
            resume = Some(r);
        } else {
            let mut f = std::fs::File::create(jpath)
                .with_context(|| format!("cannot create --joblog {}", jpath.display()))?;
            f.write_all(joblog::header(&chain_hash, &input_hash).as_bytes())
                .with_context(|| format!("cannot write --joblog {}", jpath.display()))?;
            journal = Some(f);
        }
    } else if args.resume {
        bail!("--resume needs --joblog FILE");
    }
    let output: Box<dyn std::io::Write + Send> = match &args.output {
        Some(p) if resume.is_some() => Box::new(
            std::fs::OpenOptions::new()
                .append(true)
                .open(p)
                .with_context(|| format!("cannot open --output {}", p.display()))?,
        ),
        Some(p) => Box::new(
            std::fs::File::create(p)
                .with_context(|| format!("cannot create --output {}", p.display()))?,
        ),
        None => Box::new(std::io::stdout()),
    };
    let failed: Option<Box<dyn std::io::Write + Send>> = match &args.failed {
        Some(p) => Some(Box::new(std::io::BufWriter::new(
            std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(args.resume)
                .truncate(!args.resume)
                .open(p)
                .with_context(|| format!("cannot create --failed {}", p.display()))?,
        ))),
        None => None,
    };
    Ok(Files {
        input,
        input_is_file,
        output,
        output_bytes,
        failed,
        journal,
        resume,
        memo: None,
    })
}

/// What the output thread does with a write error: it stops the run, with an error that
/// names the file that failed (on a full disk, the output or the joblog).
fn on_write_error(
    args: &RunArgs,
    state: Arc<SinkState>,
) -> impl Fn(writer::Stream, std::io::Error) + Send + 'static {
    let output = args.output.as_ref().map_or_else(
        || "stdout".to_string(),
        |p| format!("--output {}", p.display()),
    );
    let joblog = args
        .joblog
        .as_ref()
        .map(|p| format!("--joblog {}", p.display()));
    move |stream, e| {
        let name = match (stream, &joblog) {
            (writer::Stream::Joblog, Some(j)) => j,
            _ => &output,
        };
        state.fail(std::io::Error::new(
            e.kind(),
            format!("writing {name}: {e}"),
        ));
    }
}

/// A write that failed after the run's outcome was decided: in the last flush, when close
/// dropped the handlers (the last joblog lines on a full disk). It fails the run.
fn late_write_error(state: &SinkState) -> Option<anyhow::Error> {
    let e = state.error.lock().ok()?.take()?;
    Some(anyhow::Error::new(e).context("the results could not be written"))
}

fn truncate(path: &std::path::Path, len: u64) -> anyhow::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .with_context(|| format!("cannot cut {} back to {len} bytes", path.display()))
}

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let started = Instant::now();
    if args.dot {
        let dot = root::chain::dot(&args.chain)?;
        std::io::stdout().write_all(dot.as_bytes())?;
        return Ok(ExitCode::SUCCESS);
    }
    args.check()?;
    // Everything that can fail on the user's side fails before any node is contacted.
    let modules = crate::setup::builder().prebuilt_only(args.no_build);
    let chain = root::chain::load(&args.chain, &modules)?;
    let mut files = open_files(&args, &chain)?;
    files.memo = memo::RunMemo::open(&args.memo, &chain)?;
    let rt = runtime(std::env::var_os("PCL_MT").is_some())?;
    rt.block_on(run_on_cluster(args, chain, files, started))
}

async fn run_on_cluster(
    args: RunArgs,
    chain: protocol::ChainSpec,
    mut files: Files,
    started: Instant,
) -> anyhow::Result<ExitCode> {
    let run_memo = files.memo.take();
    let discovery = crate::discovery::Sources {
        nodes_file: args.nodes_file.clone(),
        nodes_dns: args.nodes_dns.clone(),
        port: args.port,
        rescan: (args.rescan > 0).then(|| Duration::from_secs(args.rescan)),
    };
    let embedded = args.nodes.is_empty() && args.scan.is_none() && !discovery.any();
    // An embedded cluster without a given token gets a fresh random one: only this process
    // can use its node and log server.
    let token = match args.token.token()? {
        Some(t) => Some(t),
        None if embedded => Some(fresh_token()?),
        None => None,
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
    let tag = format!("root pid {}", std::process::id());
    // The embedded node runs in this process: its tasks' log lines show here too.
    let level = if embedded && !args.quiet {
        "warn,task=info"
    } else {
        "warn"
    };
    let log_client = init_tracing(
        Console::Stderr,
        log_addr.map(|a| (a, tag, token.clone())),
        level,
    );
    let options = root::RootOptions {
        token,
        keep_order: args.keep_order,
        retries: args.retries,
        no_node_timeout: Duration::from_secs_f64(args.no_node_timeout),
        min_nodes: args.min_nodes,
        heartbeat_timeout: Duration::from_secs_f64(args.node_timeout),
        // A node that does not even finish its handshake is skipped as soon as a silent one.
        handshake_timeout: Duration::from_secs_f64(args.node_timeout.min(5.0)),
        ..args.bounds.options()
    };
    let root = Arc::new(root::Root::new(options));
    let sources = nodes::Sources {
        nodes: match &local {
            Some(l) => l.nodes.clone(),
            None => nodes::resolve_all(&args.nodes, args.port).await?,
        },
        scan: args.scan.map(|n| (n, args.port)),
        listings: discovery.start().await?,
    };
    let state = Arc::new(SinkState::default());
    let result = async {
        nodes::attach(&root, &sources, args.min_nodes).await?;
        let failure_lines = Arc::new(failures::FailureLines::new(files.failed.is_some()));
        let failed = Arc::new(Mutex::new(FailedOut::new(files.failed)));
        let lines = lines::LineIndex::default();
        let has_journal = files.journal.is_some();
        let sink = Sink {
            out: writer::OutWriter::new(
                files.output,
                files.journal,
                on_write_error(&args, state.clone()),
            ),
            framing: args.framing(),
            tag: args.tag,
            lines: lines.clone(),
            written: files.output_bytes,
            journal: has_journal.then(|| Journal {
                buf: String::new(),
                run: None,
                last_flush: Instant::now(),
            }),
            failed: failed.clone(),
            state: state.clone(),
            halt_at: args.halt.map(|h| h.fail),
            last_failed: None,
            first_error: None,
            failure_lines: failure_lines.clone(),
            stopped: false,
            memo: run_memo.as_ref().map(memo::RunMemo::sink).transpose()?,
        };
        root.setup_handlers(chain, root::Handlers::from_handler(sink))
            .await?;
        if let Some(addr) = args.dashboard {
            // One numbering for the user: the input's line, as stderr and the joblog say.
            let lines = lines.clone();
            root.set_input_numbers(move |id| lines.line(id.0));
            let bound = root.serve_dashboard(addr, args.dashboard_public).await?;
            eprintln!("pcluster run: dashboard on http://{bound}/");
        }
        let skip = files.resume.map(|r| Arc::new(r.done));
        drive::drive(drive::Drive {
            root: root.clone(),
            args: &args,
            input: files.input,
            input_is_file: files.input_is_file,
            lines,
            state: state.clone(),
            failed,
            failure_lines,
            skip,
            sources: sources.clone(),
            started,
            memo: run_memo.as_ref(),
        })
        .await
    }
    .await;
    // Whatever happened: free the nodes, and let the handlers flush (close drops them).
    let _ = tokio::time::timeout(Duration::from_secs(10), root.close_shared()).await;
    let result = result.and_then(|code| late_write_error(&state).map_or(Ok(code), Err));
    // Flush our log lines while the embedded log server still runs, off this thread: the
    // server may share this runtime.
    if let Some(client) = log_client {
        let _ = tokio::task::spawn_blocking(move || client.flush(Duration::from_millis(500))).await;
    }
    if let Some(l) = local {
        l.stop().await;
        if !args.quiet {
            eprintln!(
                "pcluster run: task and node logs are in {}",
                args.log_file.display()
            );
        }
    }
    result
}
