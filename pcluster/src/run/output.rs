//! Where `pcluster run`'s results go: the output (one item per line or NUL-terminated,
//! optionally tagged with its input's line), the joblog, the failed-items file (raw items,
//! to feed again) and stderr (what failed, by line). A closed output (`| head -1`) or a
//! failure count reaching `--halt` tells the run to stop.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use root::{Handler, InputDone, ItemFailure, ItemId};
use tokio_util::sync::CancellationToken;

use super::joblog;
use super::lines::LineIndex;

/// Raw failed items (`--failed FILE`); without a file only stderr says what failed.
pub struct FailedOut {
    w: Option<Box<dyn Write + Send>>,
    #[cfg(test)]
    mem: Option<Vec<u8>>,
    error: Option<std::io::Error>,
}

impl FailedOut {
    pub fn new(w: Option<Box<dyn Write + Send>>) -> FailedOut {
        FailedOut {
            w,
            #[cfg(test)]
            mem: None,
            error: None,
        }
    }

    #[cfg(test)]
    pub fn memory() -> FailedOut {
        FailedOut {
            w: None,
            mem: Some(Vec::new()),
            error: None,
        }
    }

    #[cfg(test)]
    pub fn memory_bytes(&self) -> Vec<u8> {
        self.mem.clone().unwrap_or_default()
    }

    /// Writes bytes of a failed item, then `end` if given.
    pub fn write_raw(&mut self, bytes: &[u8], end: Option<u8>) {
        #[cfg(test)]
        if let Some(m) = self.mem.as_mut() {
            m.extend_from_slice(bytes);
            m.extend(end);
        }
        if let Some(w) = self.w.as_mut()
            && self.error.is_none()
        {
            let r = w
                .write_all(bytes)
                .and_then(|()| end.map_or(Ok(()), |e| w.write_all(&[e])));
            if let Err(e) = r {
                self.error = Some(e);
            }
        }
    }

    /// Writes a whole failed item in `framing`.
    pub fn write_item(&mut self, framing: super::framing::Framing, item: &[u8]) {
        let mut rec = Vec::with_capacity(item.len() + 4);
        if framing.write_item(&mut rec, &[], item).is_ok() {
            self.write_raw(&rec, None);
        }
    }

    /// Flushes; the first error met, if any.
    pub fn finish(&mut self) -> Option<std::io::Error> {
        if let Some(w) = self.w.as_mut()
            && let Err(e) = w.flush()
        {
            self.error.get_or_insert(e);
        }
        self.error.take()
    }
}

/// What the run's main loop learns from the output side.
#[derive(Debug, Default)]
pub struct SinkState {
    /// Failed items (refused ones included).
    pub failed: AtomicU64,
    /// The output cannot be written: a broken pipe ends the run early and cleanly, other
    /// errors fail it.
    pub stop: CancellationToken,
    pub broken_pipe: std::sync::atomic::AtomicBool,
    pub error: Mutex<Option<std::io::Error>>,
    /// Cancelled when the failure count reaches `--halt`'s.
    pub halt: CancellationToken,
}

impl SinkState {
    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Counts a failure; cancels `halt` at `halt_at`.
    /// Output can no longer be written: a closed pipe ends the run quietly, any other error
    /// is reported; either way the run stops.
    pub fn fail(&self, e: std::io::Error) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            self.broken_pipe.store(true, Ordering::Relaxed);
        } else if let Ok(mut slot) = self.error.lock() {
            slot.get_or_insert(e);
        }
        self.stop.cancel();
    }

    pub fn count_failure(&self, halt_at: Option<u64>) {
        let n = self.failed.fetch_add(1, Ordering::Relaxed) + 1;
        if halt_at.is_some_and(|h| n >= h) {
            self.halt.cancel();
        }
    }
}

/// The joblog being written; see [`joblog`] for the order of writes.
/// Joblog lines not yet handed to the output thread (which owns the file).
pub struct Journal {
    pub buf: String,
    /// Consecutive inputs that went well, not yet in `buf`: they become one line.
    pub run: Option<joblog::Run>,
    pub last_flush: Instant,
}

const JOURNAL_EVERY: Duration = Duration::from_millis(200);
/// Bytes of joblog lines buffered before a write.
const JOURNAL_BYTES: usize = 256 << 10;

pub struct Sink {
    pub out: super::writer::OutWriter,
    pub framing: super::framing::Framing,
    pub tag: bool,
    pub lines: LineIndex,
    /// Bytes written to the output so far (buffered ones included).
    pub written: u64,
    pub journal: Option<Journal>,
    pub failed: Arc<Mutex<FailedOut>>,
    pub state: Arc<SinkState>,
    pub halt_at: Option<u64>,
    /// The input whose raw item was last written to the failed file (an input with several
    /// failing items is written once: its failures come together).
    pub last_failed: Option<ItemId>,
    /// The first error of the input being completed.
    pub first_error: Option<(ItemId, String)>,
    /// Says on stderr what failed (capped).
    pub failure_lines: Arc<super::failures::FailureLines>,
    /// The output failed: nothing more is written. Only this sink stops the output, so a
    /// plain flag does (a `CancellationToken` check takes a lock: too dear per output).
    pub stopped: bool,
    /// `--memo`: stores the outputs of each input that completes without failure.
    pub memo: Option<super::memo::MemoSink>,
}

impl Sink {
    fn fail(&mut self, e: std::io::Error) {
        self.stopped = true;
        self.state.fail(e);
    }

    /// The tag of `input`'s outputs (its line and a tab) into `buf`; its length.
    #[inline]
    fn tag(&self, input: ItemId, buf: &mut [u8; 24]) -> usize {
        if !self.tag {
            return 0;
        }
        let mut b = itoa::Buffer::new();
        let line = b.format(self.lines.line(input.0)).as_bytes();
        buf[..line.len()].copy_from_slice(line);
        buf[line.len()] = b'\t';
        line.len() + 1
    }

    /// Hands the joblog lines gathered so far to the output thread, which writes them after
    /// the outputs they count.
    fn flush_journal(&mut self) {
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        if let Some(run) = j.run.take() {
            run.write(&mut j.buf);
        }
        if j.buf.is_empty() {
            return;
        }
        let lines = std::mem::take(&mut j.buf).into_bytes();
        j.last_flush = Instant::now();
        self.out.journal(lines);
    }
}

impl Handler for Sink {
    /// A node building a Python environment says so on stderr: setup may take minutes.
    fn progress(&mut self, node: std::net::SocketAddr, message: &str) {
        eprintln!("pcluster run: node {node}: {message}");
    }

    #[inline]
    fn output(&mut self, input: ItemId, item: &[u8]) {
        if let Some(m) = self.memo.as_mut() {
            m.output(input, item);
        }
        if self.stopped || self.out.failed() {
            self.stopped = true;
            return;
        }
        let mut tag = [0u8; 24];
        let n = self.tag(input, &mut tag);
        match self.framing.write_item(&mut self.out, &tag[..n], item) {
            Ok(n) => self.written += n,
            Err(e) => self.fail(e),
        }
    }

    fn output_shared(&mut self, input: ItemId, item: bytes::Bytes) {
        if let Some(m) = self.memo.as_mut() {
            m.output(input, &item);
        }
        if self.stopped || self.out.failed() {
            self.stopped = true;
            return;
        }
        let mut tag = [0u8; 24];
        let n = self.tag(input, &mut tag);
        let len = item.len() + n;
        match self.framing.separator() {
            Some(sep) => {
                self.out.write_shared(&tag[..n], item, &[sep]);
                self.written += len as u64 + 1;
            }
            None => {
                let Ok(len32) = u32::try_from(len) else {
                    self.fail(std::io::Error::new(
                        std::io::ErrorKind::InvalidInput,
                        "item over 4 GiB",
                    ));
                    return;
                };
                let mut head = len32.to_le_bytes().to_vec();
                head.extend_from_slice(&tag[..n]);
                self.out.write_shared(&head, item, &[]);
                self.written += len as u64 + 4;
            }
        }
    }

    fn failure(&mut self, f: ItemFailure) {
        self.state.count_failure(self.halt_at);
        let line = self.lines.line(f.input.0);
        self.failure_lines
            .report(|| format!("line {line}: {}", f.cause()));
        if self.last_failed != Some(f.input) {
            self.last_failed = Some(f.input);
            if let Ok(mut w) = self.failed.lock() {
                w.write_item(self.framing, &f.input_item);
            }
        }
        if self.first_error.as_ref().is_none_or(|(i, _)| *i != f.input) {
            let what = if f.task.is_empty() {
                f.message
            } else {
                format!("{}: {}", f.task, f.message)
            };
            self.first_error = Some((f.input, what));
        }
    }

    fn done(&mut self, d: InputDone) {
        if let Some(m) = self.memo.as_mut() {
            m.done(&d);
        }
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        let error = match &self.first_error {
            Some((i, e)) if *i == d.input => e.as_str(),
            _ => "",
        };
        let line = self.lines.line(d.input.0);
        let clean = d.failed == 0 && d.attempts == 1 && error.is_empty();
        if clean
            && let Some(run) = j.run.as_mut()
            && run.extend(line, d.elapsed, self.written)
        {
            return;
        }
        if let Some(run) = j.run.take() {
            run.write(&mut j.buf);
        }
        if clean {
            j.run = Some(joblog::Run::new(line, d.elapsed, self.written));
        } else {
            joblog::Entry {
                line,
                failed: d.failed,
                attempts: d.attempts,
                took: d.elapsed,
                output_bytes: self.written,
                error,
            }
            .write(&mut j.buf);
        }
        // By size only: a clock read per input costs as much as the entry. `idle`, called
        // at least every few milliseconds, flushes by age.
        if j.buf.len() >= JOURNAL_BYTES {
            self.flush_journal();
        }
    }

    fn wants_done(&self) -> bool {
        self.journal.is_some() || self.memo.is_some()
    }

    /// No room while the output thread holds its bound (a reader that does not read): the
    /// root then waits for it without blocking its runtime.
    fn room(&mut self) -> Option<root::Room> {
        if self.stopped {
            return None;
        }
        self.out
            .room()
            .or_else(|| self.memo.as_ref().and_then(super::memo::MemoSink::room))
    }

    /// Outputs leave as their inputs complete: what is gathered goes to the output thread
    /// now (the joblog at most every [`JOURNAL_EVERY`]).
    fn idle(&mut self) {
        if let Some(m) = self.memo.as_mut() {
            m.idle();
        }
        if self.stopped {
            return;
        }
        if self
            .journal
            .as_ref()
            .is_some_and(|j| j.last_flush.elapsed() >= JOURNAL_EVERY)
        {
            self.flush_journal();
        } else {
            self.out.ship();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some(m) = self.memo.as_mut() {
            m.finish();
        }
        if self.stopped && self.state.broken_pipe.load(Ordering::Relaxed) {
            return;
        }
        // The last joblog lines go after the last outputs; the sync makes the joblog durable.
        self.flush_journal();
        if let Err(e) = self.out.flush() {
            self.fail(e);
        }
    }
}
