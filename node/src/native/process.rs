//! [`Runner`]: one native task in a CPython process of its own, fed batches of items over
//! its standard input and answering with frames of results (the frames are in `runner.py`). A
//! reader thread moves the process's output into a bounded channel, so every wait for it
//! has a deadline: a process silent past the task's deadline (plus a grace) is killed.

use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use super::NativeCode;
use crate::engine::LogCtx;

/// How long a process may take to start and build its task (imports included).
const STARTUP: Duration = Duration::from_secs(120);
/// Time past the task's deadline before a silent process is killed: the runner fails a late
/// item itself, this catches one stuck outside Python.
const GRACE: Duration = Duration::from_millis(1000);
/// Chunks of output read ahead of the worker (each at most `CHUNK` bytes).
const CHUNKS: usize = 32;
const CHUNK: usize = 64 << 10;

/// What the task gets at start.
pub struct Init<'a> {
    /// The function or class.
    pub name: &'a str,
    /// Whether it may emit several items.
    pub generator: bool,
    /// Its args (codec byte, then a tagged list).
    pub args: &'a [u8],
    /// Per-item deadline.
    pub deadline_ms: u64,
    /// Memory an item may take beyond what the task holds after init.
    pub memory_mb: u64,
    /// Largest output item.
    pub max_item: u64,
}

/// One item's result: its outputs, or why it failed.
pub enum ItemResult<'a> {
    /// The outputs (none: dropped).
    Outputs(Vec<&'a [u8]>),
    /// The task raised; the message.
    Failed(String),
}

/// Why a process stopped answering; the caller replaces it.
#[derive(Debug, thiserror::Error)]
pub enum Broken {
    /// Silent past the deadline and the grace.
    #[error("deadline of {0} ms exceeded (the Python process stopped answering and was killed)")]
    Deadline(u64),
    /// It exited (a crash, `os._exit`, a signal).
    #[error("the Python process exited ({0})")]
    Exited(String),
    /// It wrote something that is not a frame, or a frame over the limit.
    #[error("the Python process broke the protocol: {0}")]
    Protocol(String),
    /// Writing to it failed.
    #[error("cannot write to the Python process: {0}")]
    Write(String),
}

/// A running task process.
pub struct Runner {
    child: Child,
    stdin: ChildStdin,
    chunks: Receiver<Vec<u8>>,
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf`.
    at: usize,
    log: LogCtx,
    deadline_ms: u64,
    max_frame: usize,
    request: Vec<u8>,
}

impl Drop for Runner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Runner {
    /// Starts the process and builds the task in it.
    ///
    /// # Errors
    /// Why it could not start, or the task's own error (its message and traceback's end).
    pub fn start(code: &NativeCode, init: &Init<'_>, log: LogCtx) -> Result<Runner, String> {
        let mut cmd = Command::new(&code.python);
        cmd.arg(&code.runner)
            .arg(&code.module)
            .env("PYTHONPATH", &code.code_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        // One process per worker: libraries' own thread pools would only fight the others.
        for var in ["OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"] {
            if std::env::var_os(var).is_none() {
                cmd.env(var, "1");
            }
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", code.python.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("the Python process has no pipes".into());
        };
        let (tx, rx) = std::sync::mpsc::sync_channel(CHUNKS);
        std::thread::Builder::new()
            .name("pcluster-python".into())
            .spawn(move || read_chunks(stdout, &tx))
            .map_err(|e| format!("cannot start a reader thread: {e}"))?;
        let mut runner = Runner {
            child,
            stdin,
            chunks: rx,
            buf: Vec::new(),
            at: 0,
            log,
            deadline_ms: init.deadline_ms,
            max_frame: usize::try_from(init.max_item.saturating_mul(2))
                .unwrap_or(usize::MAX)
                .max(64 << 20),
            request: Vec::new(),
        };
        runner.init(init)?;
        Ok(runner)
    }

    fn init(&mut self, init: &Init<'_>) -> Result<(), String> {
        let mut body = vec![b'I'];
        body.extend_from_slice(&(init.name.len() as u32).to_le_bytes());
        body.extend_from_slice(init.name.as_bytes());
        body.push(u8::from(init.generator));
        for n in [init.deadline_ms, init.memory_mb, init.max_item] {
            body.extend_from_slice(&(n.min(u64::from(u32::MAX)) as u32).to_le_bytes());
        }
        body.extend_from_slice(init.args);
        self.send(&body).map_err(|e| e.to_string())?;
        let until = Instant::now() + STARTUP.max(Duration::from_millis(self.deadline_ms));
        loop {
            let (kind, range) = self.frame(until).map_err(|e| e.to_string())?;
            match kind {
                b'R' => return Ok(()),
                b'E' => return Err(String::from_utf8_lossy(&self.buf[range]).into_owned()),
                b'L' => self.log_frame(range),
                other => return Err(format!("unexpected frame {:?} at start", other as char)),
            }
        }
    }

    /// Runs `items` through the task, calling `each(position, result)` in order.
    ///
    /// # Errors
    /// [`Broken`] when the process died or went silent: it must be replaced, and the items
    /// without a result run again.
    pub fn batch(
        &mut self,
        items: &[(u32, &[u8])],
        mut each: impl FnMut(usize, ItemResult<'_>),
    ) -> Result<(), Broken> {
        let mut body = std::mem::take(&mut self.request);
        body.clear();
        body.push(b'B');
        body.extend_from_slice(&(items.len() as u32).to_le_bytes());
        for (_, item) in items {
            body.extend_from_slice(&(item.len() as u32).to_le_bytes());
        }
        for (_, item) in items {
            body.extend_from_slice(item);
        }
        let sent = self.send(&body);
        self.request = body;
        sent?;
        let patience = Duration::from_millis(self.deadline_ms) + GRACE;
        let mut n = 0;
        while n < items.len() {
            let (kind, range) = self.frame(Instant::now() + patience)?;
            match kind {
                b'P' => {
                    let results = Results::parse(&self.buf[range], items.len() - n)?;
                    for result in results {
                        each(n, result);
                        n += 1;
                    }
                }
                b'L' => self.log_frame(range),
                other => return Err(Broken::Protocol(format!("frame {:?}", other as char))),
            }
        }
        Ok(())
    }

    fn send(&mut self, body: &[u8]) -> Result<(), Broken> {
        let len = (body.len() as u32).to_le_bytes();
        let written = self
            .stdin
            .write_all(&len)
            .and_then(|()| self.stdin.write_all(body))
            .and_then(|()| self.stdin.flush());
        written.map_err(|e| Broken::Write(e.to_string()))
    }

    fn log_frame(&self, range: std::ops::Range<usize>) {
        let frame = &self.buf[range];
        if let Some((&level, text)) = frame.split_first() {
            self.log
                .line(u32::from(level), &String::from_utf8_lossy(text));
        }
    }

    /// The next frame: its kind and where its payload lies in `buf`. Waits for output
    /// until `until`, then kills the process.
    fn frame(&mut self, until: Instant) -> Result<(u8, std::ops::Range<usize>), Broken> {
        loop {
            let unread = &self.buf[self.at..];
            if let Some(head) = unread.first_chunk::<4>() {
                let len = u32::from_le_bytes(*head) as usize;
                if len == 0 || len > self.max_frame {
                    self.kill();
                    return Err(Broken::Protocol(format!("a frame of {len} bytes")));
                }
                if unread.len() >= 4 + len {
                    let start = self.at + 4;
                    self.at = start + len;
                    return Ok((self.buf[start], start + 1..start + len));
                }
            }
            self.fill(until)?;
        }
    }

    /// Appends the next chunk of output to `buf`.
    fn fill(&mut self, until: Instant) -> Result<(), Broken> {
        if self.at > 0 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        let left = until.saturating_duration_since(Instant::now());
        match self.chunks.recv_timeout(left) {
            Ok(chunk) if !chunk.is_empty() => {
                self.buf.extend_from_slice(&chunk);
                Ok(())
            }
            Ok(_) | Err(RecvTimeoutError::Disconnected) => {
                // Its output closed: it exited, or closed the pipe and must not live on.
                // Killing first, so the wait is never long; an exit already made is kept.
                self.kill();
                let status = self.child.try_wait().ok().flatten();
                Err(Broken::Exited(status.map_or_else(
                    || "status unknown".to_owned(),
                    |s| s.to_string(),
                )))
            }
            Err(RecvTimeoutError::Timeout) => {
                self.kill();
                Err(Broken::Deadline(self.deadline_ms))
            }
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Marks a failed item in a `P` frame's counts.
const FAILED: u32 = u32::MAX;

/// The results in a `P` frame: per item a count of outputs (or [`FAILED`]), a length per
/// output (a failure's message counts as one), then the outputs back to back.
struct Results<'a> {
    counts: &'a [u8],
    lens: &'a [u8],
    data: &'a [u8],
}

impl<'a> Results<'a> {
    /// Checks a frame of at most `most` items whose lengths add up to its data.
    fn parse(frame: &'a [u8], most: usize) -> Result<Results<'a>, Broken> {
        let bad = |what: &str| Broken::Protocol(format!("a malformed results frame ({what})"));
        let (head, rest) = frame
            .split_first_chunk::<4>()
            .ok_or_else(|| bad("no count"))?;
        let k = u32::from_le_bytes(*head) as usize;
        if k == 0 || k > most || rest.len() < 4 * k {
            return Err(bad("item count"));
        }
        let (counts, rest) = rest.split_at(4 * k);
        let outputs: usize = u32s(counts)
            .map(|c| if c == FAILED { 1 } else { c as usize })
            .sum();
        if rest.len() < 4 * outputs {
            return Err(bad("output count"));
        }
        let (lens, data) = rest.split_at(4 * outputs);
        let total: usize = u32s(lens).map(|l| l as usize).sum();
        if total != data.len() {
            return Err(bad("lengths"));
        }
        Ok(Results { counts, lens, data })
    }
}

impl<'a> IntoIterator for Results<'a> {
    type Item = ItemResult<'a>;
    type IntoIter = std::vec::IntoIter<ItemResult<'a>>;

    /// Each item's result, in order (the frame was checked whole by `parse`).
    fn into_iter(self) -> Self::IntoIter {
        let mut lens = u32s(self.lens);
        let mut data = self.data;
        let mut take = || {
            let len = lens.next().unwrap_or(0) as usize;
            let (out, rest) = data.split_at(len.min(data.len()));
            data = rest;
            out
        };
        let mut results = Vec::with_capacity(self.counts.len() / 4);
        for count in u32s(self.counts) {
            if count == FAILED {
                let message = String::from_utf8_lossy(take()).into_owned();
                results.push(ItemResult::Failed(message));
            } else {
                results.push(ItemResult::Outputs((0..count).map(|_| take()).collect()));
            }
        }
        results.into_iter()
    }
}

/// Little-endian u32s.
fn u32s(bytes: &[u8]) -> impl Iterator<Item = u32> + '_ {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
}

/// The reader thread: the process's output in chunks, an empty chunk at its end.
fn read_chunks(mut stdout: impl Read, tx: &SyncSender<Vec<u8>>) {
    let mut buf = vec![0; CHUNK];
    loop {
        match stdout.read(&mut buf) {
            Ok(0) | Err(_) => {
                let _ = tx.send(Vec::new());
                return;
            }
            Ok(n) => {
                if tx.send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(counts: &[u32], outputs: &[&[u8]]) -> Vec<u8> {
        let mut f = (counts.len() as u32).to_le_bytes().to_vec();
        for c in counts {
            f.extend_from_slice(&c.to_le_bytes());
        }
        for o in outputs {
            f.extend_from_slice(&(o.len() as u32).to_le_bytes());
        }
        for o in outputs {
            f.extend_from_slice(o);
        }
        f
    }

    #[test]
    fn results_frames_are_split_or_refused() {
        let f = frame(&[2, FAILED, 0], &[b"sa", b"jbc", b"ValueError: no"]);
        let results: Vec<_> = Results::parse(&f, 3).ok().unwrap().into_iter().collect();
        assert!(matches!(&results[0], ItemResult::Outputs(o) if o == &[&b"sa"[..], b"jbc"]));
        assert!(matches!(&results[1], ItemResult::Failed(m) if m == "ValueError: no"));
        assert!(matches!(&results[2], ItemResult::Outputs(o) if o.is_empty()));
        for end in 0..f.len() {
            assert!(Results::parse(&f[..end], 3).is_err(), "cut at {end}");
        }
        // More items than the batch has left, or outputs that claim more bytes than sent.
        assert!(Results::parse(&f, 2).is_err());
        let mut long = f.clone();
        long.push(0);
        assert!(Results::parse(&long, 3).is_err());
        assert!(Results::parse(&frame(&[u32::MAX - 1], &[]), 1).is_err());
    }
}
