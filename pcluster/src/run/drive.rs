//! Driving a run: feeding what the reader reads, then waiting for the inputs in flight, and
//! stopping early on a signal, a closed output or `--halt`; then the summary and the exit
//! status (0 all well, 2 some items failed, 1 the run itself failed, 130/143 a signal).

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::RunArgs;
use super::gate::{ByteGate, CloseOnDrop};
use super::input::{self, Read_, ReadBatch, ReaderConfig};
use super::lines::LineIndex;
use super::nodes::{self, Sources};
use super::output::{FailedOut, SinkState};
use crate::setup::{Signal, next_signal};

/// Why feeding stopped before the input's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// A first signal: let the inputs in flight finish (bounded), then exit with its code.
    Signal(Signal),
    /// A second signal, `--halt now`, or an output error: stop at once.
    Now(Option<Signal>),
    /// `--halt soon`: let the inputs in flight finish.
    HaltSoon,
}

pub struct Drive<'a> {
    pub root: Arc<root::Root>,
    pub args: &'a RunArgs,
    pub input: Box<dyn std::io::Read + Send>,
    /// Whether the input is a regular file.
    pub input_is_file: bool,
    pub lines: LineIndex,
    pub state: Arc<SinkState>,
    pub failed: Arc<Mutex<FailedOut>>,
    pub skip: Option<Arc<super::joblog::LineSet>>,
    pub sources: Sources,
    pub started: Instant,
}

/// Bytes of one batch of read items: each batch goes to a node whole (no copy) within the
/// root's batch cut.
const READ_BATCH_BYTES: usize = 1 << 20;
/// Batches read ahead of the root's queue, and their bytes: one 1 MiB batch to hand over
/// while the next is read, or many small ones. Every buffer more in flight between the
/// reader, the nodes and the writer is memory the kernel copies into and out of after it
/// left the cache: with 100 KB items, 8 MiB here (and 8 MiB queued, 8 MiB of outputs) made
/// `pcluster run` ~10 % slower than 2 MiB (4 MiB, 2 MiB).
const READ_AHEAD_BATCHES: usize = 8;
const READ_AHEAD_BYTES: u64 = 2 << 20;

/// Signals, as a stream: a first and a second one mean different things.
fn signals() -> mpsc::Receiver<Signal> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        loop {
            let s = next_signal().await;
            if tx.send(s).await.is_err() {
                return;
            }
        }
    });
    rx
}

/// What may interrupt a wait.
struct Interrupts<'a> {
    signals: &'a mut mpsc::Receiver<Signal>,
    state: &'a SinkState,
    halt_now: bool,
    /// A first signal was already seen: the next one stops at once.
    signalled: Option<Signal>,
}

impl Interrupts<'_> {
    /// Runs `fut` unless something stops the run first.
    async fn until<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, Stop> {
        tokio::select! {
            biased;
            s = self.signals.recv() => Err(match (self.signalled, s) {
                (None, Some(s)) => Stop::Signal(s),
                (first, s) => Stop::Now(first.or(s)),
            }),
            () = self.state.stop.cancelled() => Err(Stop::Now(self.signalled)),
            () = self.state.halt.cancelled(), if self.signalled.is_none() => Err(if self.halt_now {
                Stop::Now(None)
            } else {
                Stop::HaltSoon
            }),
            r = fut => Ok(r),
        }
    }
}

pub async fn drive(d: Drive<'_>) -> anyhow::Result<ExitCode> {
    let args = d.args;
    let skipped = d.skip.as_ref().map_or(0, |s| s.len());
    let (tx, mut rx) = mpsc::channel(READ_AHEAD_BATCHES);
    let read_ahead = ByteGate::new(READ_AHEAD_BYTES);
    // However the feeding ends, a reader waiting for room stops.
    let _close = CloseOnDrop(read_ahead.clone());
    input::spawn(
        d.input,
        ReaderConfig {
            framing: args.framing(),
            batch_items: d.root.options().batch_items,
            batch_bytes: READ_BATCH_BYTES,
            regular_file: d.input_is_file,
            max_item_bytes: d.root.options().max_item_bytes,
            skip: d.skip,
            failed: d.failed.clone(),
            read_ahead,
        },
        tx,
    );
    let elastic_stop = CancellationToken::new();
    let elastic = {
        let (root, src, stop) = (d.root.clone(), d.sources.clone(), elastic_stop.clone());
        let rescan = (args.rescan > 0).then(|| Duration::from_secs(args.rescan));
        tokio::spawn(async move {
            nodes::keep_elastic(&root, &src, Duration::from_secs(1), rescan, stop).await;
        })
    };
    let mut sigs = signals();
    let mut int = Interrupts {
        signals: &mut sigs,
        state: &d.state,
        halt_now: args.halt.is_some_and(|h| h.now),
        signalled: None,
    };
    let progress = super::progress::Progress::new(args, d.started, &d.root, skipped);
    let mut next_id = 0u64;
    let mut refused = 0u64;
    let mut read_error = None;
    let mut feed_error: Option<root::RootError> = None;
    // Feed until the input ends or something stops the run.
    let mut stop: Option<Stop> = None;
    loop {
        let r = match int.until(rx.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => break,
            Err(s) => {
                stop = Some(s);
                break;
            }
        };
        match r {
            Read_::Batch(ReadBatch { items, lines, held }) => {
                let n = items.len() as u64;
                // Ids are consecutive in feed order and this loop is the only feeder.
                d.lines.add(next_id, &lines);
                let fed = int.until(d.root.feed_packed(items)).await;
                // Handed over: the reader may read the next batch.
                drop(held);
                match fed {
                    Ok(Ok(fed)) => {
                        debug_assert_eq!(fed.first.0, next_id);
                        next_id += n;
                    }
                    Ok(Err(e)) => {
                        // No node for too long (or the root is gone): the run failed, but
                        // what completed is kept and the nodes are freed all the same.
                        feed_error = Some(e);
                        break;
                    }
                    Err(s) => {
                        stop = Some(s);
                        break;
                    }
                }
                progress.tick(&d.root).await;
            }
            Read_::Refused(r) => {
                refused += 1;
                d.state.count_failure(args.halt.map(|h| h.fail));
                eprintln!(
                    "pcluster run: line {}: item of {} bytes exceeds the limit of {} bytes; not run{}",
                    r.line,
                    r.bytes,
                    d.root.options().max_item_bytes,
                    if args.failed.is_some() {
                        ", written to --failed"
                    } else {
                        ""
                    }
                );
            }
            Read_::Error(e) => {
                read_error = Some(e);
                break;
            }
        }
    }
    // Wait for what is in flight, unless told to stop at once or feeding already failed.
    let mut wait_error = feed_error;
    while wait_error.is_none() {
        let deadline = match stop {
            Some(Stop::Now(_)) => break,
            Some(Stop::Signal(s)) => {
                int.signalled = Some(s);
                Some(Duration::from_secs_f64(args.drain_timeout))
            }
            Some(Stop::HaltSoon) | None => None,
        };
        let wait = async {
            match deadline {
                Some(t) => tokio::time::timeout(t, progress.wait_empty(&d.root))
                    .await
                    .ok(),
                None => Some(progress.wait_empty(&d.root).await),
            }
        };
        match int.until(wait).await {
            Ok(Some(Ok(()))) => break,
            Ok(Some(Err(root::RootError::NoNodes { .. }))) => {
                // No node: wait for one to come back or join, up to --no-node-timeout.
                match int.until(d.root.wait_for_node()).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(e)) => {
                        wait_error = Some(e);
                        break;
                    }
                    Err(s) => stop = Some(s),
                }
            }
            Ok(Some(Err(e))) => {
                wait_error = Some(e);
                break;
            }
            Ok(None) => {
                eprintln!(
                    "pcluster run: inputs still in flight after --drain-timeout {} s; stopping",
                    args.drain_timeout
                );
                break;
            }
            Err(s) => stop = Some(s),
        }
    }
    progress.finish();
    elastic_stop.cancel();
    let _ = elastic.await;
    let c = d.root.counters().await.unwrap_or_default();
    let failed = d.state.failed();
    let secs = d.started.elapsed().as_secs_f64();
    {
        // One write: stderr is unbuffered, and a line written piece by piece could be cut by
        // another writer's (a log line's).
        let line = format!(
            "pcluster run: {} inputs done of {} read, {} outputs, {} failed ({} refused), {} re-dispatched, {:.2} s ({:.0} inputs/s), peak RSS {:.1} MiB\n",
            c.completed,
            c.fed + refused,
            c.outputs,
            failed,
            refused,
            c.redispatched,
            secs,
            c.completed as f64 / secs.max(1e-9),
            kit::peak_rss_mib(kit::Process::Current).unwrap_or(0.0)
        );
        let _ = std::io::Write::write_all(&mut std::io::stderr().lock(), line.as_bytes());
    }
    let not_done = c.fed - c.completed.min(c.fed);
    if let Some(e) = read_error {
        return Err(anyhow::Error::new(e).context(format!(
            "reading the input ({not_done} inputs fed but not done)"
        )));
    }
    if let Some(e) = d.state.error.lock().ok().and_then(|mut e| e.take()) {
        return Err(anyhow::Error::new(e).context("writing outputs"));
    }
    if let Some(e) = d.failed.lock().ok().and_then(|mut f| f.finish()) {
        return Err(anyhow::Error::new(e).context("writing --failed"));
    }
    match stop {
        Some(Stop::Signal(s) | Stop::Now(Some(s))) => return Ok(ExitCode::from(s.exit_code())),
        Some(Stop::Now(None))
            if d.state
                .broken_pipe
                .load(std::sync::atomic::Ordering::Relaxed) =>
        {
            return Ok(ExitCode::SUCCESS);
        }
        Some(Stop::Now(None) | Stop::HaltSoon) => {
            eprintln!("pcluster run: halted after {failed} failed items");
            return Ok(ExitCode::from(2));
        }
        None => {}
    }
    if let Some(e) = wait_error {
        return Err(e).with_context(|| format!("the run ended with {not_done} inputs not done"));
    }
    Ok(if failed > 0 {
        ExitCode::from(2)
    } else {
        ExitCode::SUCCESS
    })
}
