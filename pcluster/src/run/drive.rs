//! Driving a run: feeding what the reader reads, then waiting for the inputs in flight, and
//! stopping early on a signal, a closed output or `--halt`; then the summary and the exit
//! status (0 all well, 2 some items failed, 1 the run itself failed, 130/143 a signal).
//!
//! Every wait goes through [`Interrupts::until`], so a signal is always seen; each reason to
//! stop fires once, so no wait spins on a reason already taken.

use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::RunArgs;
use super::failures::{FailureLines, say_line};
use super::input;
use super::lines::LineIndex;
use super::memo::MemoBatch;
use super::nodes::{self, Sources};
use super::output::{FailedOut, SinkState};
use super::progress::Progress;
use super::reader::{Read_, ReadBatch, ReaderConfig, Refused};
use crate::setup::{Signal, next_signal};
use protocol::gate::{ByteGate, CloseOnDrop};

/// Why feeding stopped before the input's end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stop {
    /// A first signal: let the inputs in flight finish (bounded), then exit with its code.
    Signal(Signal),
    /// A signal during a drain, `--halt now`, or an output error: stop at once.
    Now(Option<Signal>),
    /// `--halt soon`: let the inputs in flight finish (bounded), then exit 2.
    HaltSoon,
}

impl Stop {
    /// Whether the run lets the inputs in flight finish first.
    fn drains(self) -> bool {
        matches!(self, Stop::Signal(_) | Stop::HaltSoon)
    }

    /// The stop in force once `new` comes on top of `old`: stopping at once wins, and the
    /// first reason to drain is kept (a halt during a signal's drain exits as the signal).
    fn then(old: Option<Stop>, new: Stop) -> Stop {
        match (old, new) {
            (_, Stop::Now(_)) | (None, _) => new,
            (Some(old), _) => old,
        }
    }
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
    pub failure_lines: Arc<FailureLines>,
    pub skip: Option<Arc<super::joblog::LineSet>>,
    pub sources: Sources,
    pub started: Instant,
    /// `--memo`: the lookup goes between the reader and the feeding.
    pub memo: Option<&'a super::memo::RunMemo>,
}

/// Bytes of one batch of read items: each batch goes to a node whole (no copy) within the
/// root's batch cut.
const READ_BATCH_BYTES: usize = 1 << 20;
/// Batches read ahead of the root's queue, and their bytes: two batches of a little over
/// 1 MiB (one to hand over while the next is read), or many small ones. Every buffer more in
/// flight between the reader, the nodes and the writer is memory the kernel copies into and
/// out of after it left the cache: with 100 KB items, 8 MiB here (and 8 MiB queued, 8 MiB of
/// outputs) made `pcluster run` ~10 % slower than two batches (4 MiB, 2 MiB).
const READ_AHEAD_BATCHES: usize = 8;
const READ_AHEAD_BYTES: u64 = 3 << 20;

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

/// What may interrupt a wait. Each reason fires once: the halt and the output's stop are
/// states that stay set, and a wait that kept returning them would never yield.
struct Interrupts<'a> {
    signals: mpsc::Receiver<Signal>,
    state: &'a SinkState,
    halt_now: bool,
    /// The first signal, whose exit code the run keeps.
    first_signal: Option<Signal>,
    /// Inputs in flight are finishing: a signal now stops at once.
    draining: bool,
    halt_taken: bool,
    stop_taken: bool,
}

impl Interrupts<'_> {
    /// Runs `fut` unless something stops the run first.
    async fn until<T>(&mut self, fut: impl Future<Output = T>) -> Result<T, Stop> {
        tokio::select! {
            biased;
            Some(s) = self.signals.recv() => {
                let first = *self.first_signal.get_or_insert(s);
                Err(if self.draining { Stop::Now(Some(first)) } else { Stop::Signal(s) })
            }
            () = self.state.stop.cancelled(), if !self.stop_taken => {
                self.stop_taken = true;
                Err(Stop::Now(self.first_signal))
            }
            () = self.state.halt.cancelled(), if !self.halt_taken => {
                self.halt_taken = true;
                Err(if self.halt_now { Stop::Now(None) } else { Stop::HaltSoon })
            }
            r = fut => Ok(r),
        }
    }
}

/// How feeding ended.
#[derive(Default)]
struct Fed {
    stop: Option<Stop>,
    refused: u64,
    read_error: Option<std::io::Error>,
    /// No node for too long (or the root is gone).
    feed_error: Option<root::RootError>,
}

pub async fn drive(mut d: Drive<'_>) -> anyhow::Result<ExitCode> {
    let args = d.args;
    let input = std::mem::replace(&mut d.input, Box::new(std::io::empty()));
    let skipped = d.skip.as_ref().map_or(0, |s| s.len());
    let read_ahead = ByteGate::new(READ_AHEAD_BYTES);
    // However the feeding ends, a reader waiting for room stops.
    let _close = CloseOnDrop(read_ahead.clone());
    let rx = spawn_reader(&d, input, read_ahead);
    let rx = match d.memo {
        Some(m) => m.spawn_lookup(rx),
        None => rx,
    };
    let elastic_stop = CancellationToken::new();
    let elastic = {
        let (root, src, stop) = (d.root.clone(), d.sources.clone(), elastic_stop.clone());
        let rescan = (args.rescan > 0).then(|| Duration::from_secs(args.rescan));
        tokio::spawn(async move {
            nodes::keep_elastic(&root, &src, Duration::from_secs(1), rescan, stop).await;
        })
    };
    let mut int = Interrupts {
        signals: signals(),
        state: &d.state,
        halt_now: args.halt.is_some_and(|h| h.now),
        first_signal: None,
        draining: false,
        halt_taken: false,
        stop_taken: false,
    };
    let progress = Progress::new(args, d.started, &d.root, skipped);
    let fed = feed(&d, &mut int, rx, &progress).await;
    let (stop, wait_error) = drain(&d, &mut int, &progress, fed.stop, fed.feed_error).await;
    progress.finish();
    elastic_stop.cancel();
    let _ = elastic.await;
    d.failure_lines.finish();
    let c = d.root.counters().await.unwrap_or_default();
    summary(&d, &c, fed.refused);
    let not_done = c.fed - c.completed.min(c.fed);
    if let Some(e) = fed.read_error {
        return Err(anyhow::Error::new(e).context(format!(
            "reading the input ({not_done} inputs fed but not done)"
        )));
    }
    exit(&d, stop, wait_error, not_done)
}

fn spawn_reader(
    d: &Drive<'_>,
    input: Box<dyn std::io::Read + Send>,
    read_ahead: Arc<ByteGate>,
) -> mpsc::Receiver<Read_> {
    let (tx, rx) = mpsc::channel(READ_AHEAD_BATCHES);
    input::spawn(
        input,
        ReaderConfig {
            framing: d.args.framing(),
            batch_items: d.root.options().batch_items,
            batch_bytes: READ_BATCH_BYTES,
            regular_file: d.input_is_file,
            // The chain's own limit when it is smaller: a node refuses a batch over it.
            max_item_bytes: d.root.max_item_bytes(),
            skip: d.skip.clone(),
            failed: d.failed.clone(),
            read_ahead,
        },
        tx,
    );
    rx
}

/// Feeds what the reader reads until the input ends or something stops the run.
async fn feed(
    d: &Drive<'_>,
    int: &mut Interrupts<'_>,
    mut rx: mpsc::Receiver<Read_>,
    progress: &Progress,
) -> Fed {
    let mut fed = Fed::default();
    let mut next_id = 0u64;
    loop {
        let r = match int.until(rx.recv()).await {
            Ok(Some(r)) => r,
            Ok(None) => return fed,
            Err(s) => {
                fed.stop = Some(s);
                return fed;
            }
        };
        let (n, sent) = match r {
            Read_::Batch(ReadBatch { items, lines, held }) => {
                // Ids are consecutive in feed order and this loop is the only feeder.
                d.lines.add(next_id, &lines);
                let n = items.len() as u64;
                let sent = int.until(d.root.feed_packed(items)).await;
                // Handed over: the reader may read the next batch.
                drop(held);
                (n, sent)
            }
            Read_::Memo(m) => {
                d.lines.add(next_id, &m.lines);
                (m.count(), feed_memo(d, int, next_id, m).await)
            }
            Read_::Refused(r) => {
                fed.refused += 1;
                refused(d, &r);
                continue;
            }
            Read_::Error(e) => {
                fed.read_error = Some(e);
                return fed;
            }
        };
        match sent {
            Ok(Ok(ids)) => {
                debug_assert_eq!(ids.first.0, next_id);
                next_id += n;
            }
            Ok(Err(e)) => {
                // What completed is kept and the nodes are freed all the same.
                fed.feed_error = Some(e);
                return fed;
            }
            Err(s) => {
                fed.stop = Some(s);
                return fed;
            }
        }
        progress.tick(&d.root).await;
    }
}

/// Feeds a batch split by `--memo`: the keys of the inputs to run are kept first (their
/// completion may come as soon as they are fed), then inputs and answers go to the root.
async fn feed_memo(
    d: &Drive<'_>,
    int: &mut Interrupts<'_>,
    first: u64,
    m: MemoBatch,
) -> Result<Result<root::FedIds, root::RootError>, Stop> {
    let MemoBatch {
        items,
        answers,
        keys,
        positions,
        held,
        ..
    } = m;
    if let Some(memo) = d.memo
        && !int
            .until(memo.keys.register(first, keys, positions))
            .await?
    {
        return Ok(Err(root::RootError::Closed));
    }
    let sent = int.until(d.root.feed_answered(items, answers)).await;
    // Handed over: the reader and the lookup may go on.
    drop(held);
    sent
}

/// An input over the item limit: it fails alone, by its line.
fn refused(d: &Drive<'_>, r: &Refused) {
    d.state.count_failure(d.args.halt.map(|h| h.fail));
    let to_failed = if d.args.failed.is_some() {
        ", written to --failed"
    } else {
        ""
    };
    d.failure_lines.report(|| {
        format!(
            "line {}: item of {} bytes exceeds the limit of {} bytes; not run{to_failed}",
            r.line,
            r.bytes,
            d.root.max_item_bytes()
        )
    });
}

/// Waits for the inputs in flight: all of them, or on a draining stop those nodes hold, up
/// to `--drain-timeout`; at once on [`Stop::Now`]. Returns the stop in force and the error
/// that ended the wait, if any.
async fn drain(
    d: &Drive<'_>,
    int: &mut Interrupts<'_>,
    progress: &Progress,
    mut stop: Option<Stop>,
    feed_error: Option<root::RootError>,
) -> (Option<Stop>, Option<root::RootError>) {
    if feed_error.is_some() {
        return (stop, feed_error);
    }
    let mut deadline = None;
    loop {
        match stop {
            Some(Stop::Now(_)) => return (stop, None),
            Some(s) if s.drains() && !int.draining => {
                int.draining = true;
                let timeout = Duration::from_secs_f64(d.args.drain_timeout);
                deadline = Some(tokio::time::Instant::now() + timeout);
                begin_drain(d, s).await;
            }
            _ => {}
        }
        let wait = async {
            match deadline {
                Some(t) => tokio::time::timeout_at(t, progress.wait_empty(&d.root))
                    .await
                    .ok(),
                None => Some(progress.wait_empty(&d.root).await),
            }
        };
        match int.until(wait).await {
            Ok(Some(Ok(()))) => return (stop, None),
            Ok(Some(Err(root::RootError::NoNodes { .. }))) => {
                // No node: wait for one to come back or join, up to --no-node-timeout.
                match int.until(d.root.wait_for_node()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return (stop, Some(e)),
                    Err(s) => stop = Some(Stop::then(stop, s)),
                }
            }
            Ok(Some(Err(e))) => return (stop, Some(e)),
            Ok(None) => {
                say_line(&format!(
                    "pcluster run: inputs still in flight after --drain-timeout {} s; stopping\n",
                    d.args.drain_timeout
                ));
                return (stop, None);
            }
            Err(s) => stop = Some(Stop::then(stop, s)),
        }
    }
}

/// A draining stop begins: nothing queued is sent any more, and the user is told what
/// happens now.
async fn begin_drain(d: &Drive<'_>, stop: Stop) {
    let _ = d.root.unqueue().await;
    let c = d.root.counters().await.unwrap_or_default();
    let secs = d.args.drain_timeout;
    let line = match stop {
        Stop::Signal(_) => format!(
            "pcluster run: stopping: {} inputs in flight, up to {secs} s; Ctrl-C again to stop now\n",
            c.in_flight
        ),
        _ => format!(
            "pcluster run: halting after {} failed items: {} inputs in flight finish first, up to {secs} s; Ctrl-C to stop now\n",
            d.state.failed(),
            c.in_flight
        ),
    };
    say_line(&line);
}

fn summary(d: &Drive<'_>, c: &root::Counters, refused: u64) {
    let secs = d.started.elapsed().as_secs_f64();
    say_line(&format!(
        "pcluster run: {} inputs done of {} read, {} outputs, {} failed ({} refused), {} retried, {} re-dispatched, {:.2} s ({:.0} inputs/s), peak RSS {:.1} MiB\n",
        c.completed,
        c.fed + refused,
        c.outputs,
        d.state.failed(),
        refused,
        c.retried,
        c.redispatched,
        secs,
        c.completed as f64 / secs.max(1e-9),
        node::peak_rss_bytes().unwrap_or(0) as f64 / f64::from(1 << 20)
    ));
    if let Some(m) = d.memo {
        use std::sync::atomic::Ordering::Relaxed;
        say_line(&format!(
            "pcluster run: --memo {}: {} inputs found there, {} stored\n",
            m.dir.display(),
            m.counts.hits.load(Relaxed),
            m.counts.stored.load(Relaxed),
        ));
    }
}

/// The exit status, or the error that failed the run.
fn exit(
    d: &Drive<'_>,
    stop: Option<Stop>,
    wait_error: Option<root::RootError>,
    not_done: u64,
) -> anyhow::Result<ExitCode> {
    if let Some(e) = d.state.error.lock().ok().and_then(|mut e| e.take()) {
        // The error names the file (`writing --joblog PATH: …`).
        return Err(anyhow::Error::new(e).context("the results could not be written"));
    }
    if let Some(e) = d.failed.lock().ok().and_then(|mut f| f.finish()) {
        return Err(anyhow::Error::new(e).context("writing --failed"));
    }
    let failed = d.state.failed();
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
            say_line(&format!(
                "pcluster run: halted after {failed} failed items\n"
            ));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stopping_at_once_wins_and_the_first_drain_is_kept() {
        let int = Stop::Signal(Signal::Interrupt);
        assert_eq!(Stop::then(None, Stop::HaltSoon), Stop::HaltSoon);
        assert_eq!(Stop::then(Some(int), Stop::HaltSoon), int);
        assert_eq!(Stop::then(Some(Stop::HaltSoon), int), Stop::HaltSoon);
        let now = Stop::Now(Some(Signal::Terminate));
        assert_eq!(Stop::then(Some(Stop::HaltSoon), now), now);
        assert!(int.drains() && Stop::HaltSoon.drains() && !now.drains());
    }
}
