//! `pcluster run`'s output writer: outputs are written on a thread of their own, so the
//! root's thread (which reads the nodes' sockets) never waits on the file. Small outputs
//! are gathered in a buffer; big ones are handed over as shared slices of the frame they
//! arrived in and written from there (vectored writes), never copied. What is gathered is
//! handed over whenever the root has nothing more at hand ([`OutWriter::ship`] from the
//! sink's `idle`), and the thread flushes whenever nothing more waits: outputs leave as
//! their inputs complete. What is handed over and not yet written is bounded in bytes: a
//! handover never waits (the root's thread also sends the nodes their heartbeats), it takes
//! its room even past the bound, and [`OutWriter::room`] then tells the root to take no
//! more outputs until the thread has written some. The joblog is written by the same
//! thread, each part after the outputs it counts, so the root's thread never waits for a
//! flush.

use std::io::{self, IoSlice, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;

use protocol::gate::{ByteGate, CloseOnDrop, Held};

/// Bytes gathered before they go to the thread.
const BATCH: usize = 1 << 20;
/// Bytes handed to the thread and not yet written: past it, [`OutWriter::room`] says to
/// wait. Four handovers of a little over [`BATCH`] fit.
pub const IN_FLIGHT: usize = 5 << 20;
/// The least a handover counts against [`IN_FLIGHT`], so that the handovers queued for the
/// thread are few however small: past the bound no more come, so [`QUEUED`] is never
/// reached and a handover never waits for the channel.
const MIN_CHARGE: usize = IN_FLIGHT / 64;
/// Handovers the channel to the thread holds: far more than [`IN_FLIGHT`] /
/// [`MIN_CHARGE`] plus what one message of the nodes adds past the bound.
const QUEUED: usize = 1024;
/// Slices per vectored write.
const IOV: usize = 64;

/// The file a write of the output thread failed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Output,
    Joblog,
}

enum Cmd {
    Write(Vec<Bytes>, Held),
    /// Joblog lines: written once everything before is in the output.
    Journal(Vec<u8>, Held),
    /// Everything before has been written (or failed): answer with the outcome.
    Flush(SyncSender<io::Result<()>>),
}

/// Writes outputs to `out` on a thread of its own; implements [`Write`] for small pieces and
/// takes big outputs as shared slices ([`OutWriter::write_shared`]).
pub struct OutWriter {
    buf: Vec<u8>,
    parts: Vec<Bytes>,
    parts_bytes: usize,
    tx: Option<SyncSender<Cmd>>,
    gate: Arc<ByteGate>,
    /// Set by the thread when a write failed.
    failed: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl OutWriter {
    /// Starts the thread writing to `out`; it calls `on_error` with the first write error
    /// and the file it hit as soon as it meets it (and drops every write after).
    pub fn new(
        out: Box<dyn Write + Send>,
        journal: Option<std::fs::File>,
        on_error: impl Fn(Stream, io::Error) + Send + 'static,
    ) -> OutWriter {
        let (tx, rx) = sync_channel(QUEUED);
        let gate = ByteGate::new(IN_FLIGHT as u64);
        let failed = Arc::new(AtomicBool::new(false));
        let thread = {
            let (gate, failed) = (gate.clone(), failed.clone());
            std::thread::Builder::new()
                .name("pcluster-output".into())
                .spawn(move || {
                    // However the thread ends, a handover waiting for room stops waiting.
                    let _close = CloseOnDrop(gate);
                    let on_error = |stream, e: io::Error| {
                        failed.store(true, Ordering::Relaxed);
                        on_error(stream, e);
                    };
                    serve(out, journal, &rx, &on_error);
                })
                .expect("spawn the output thread")
        };
        OutWriter {
            failed,
            buf: Vec::with_capacity(BATCH),
            parts: Vec::new(),
            parts_bytes: 0,
            tx: Some(tx),
            gate,
            thread: Some(thread),
        }
    }

    /// Whether a write has failed (outputs handed over since are dropped).
    #[inline]
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::Relaxed)
    }

    /// Writes `head`, then `item` from where it lies, then `tail`.
    pub fn write_shared(&mut self, head: &[u8], item: Bytes, tail: &[u8]) {
        self.buf.extend_from_slice(head);
        self.seal_buf();
        self.parts_bytes += item.len();
        self.parts.push(item);
        self.buf.extend_from_slice(tail);
        if self.parts_bytes + self.buf.len() >= BATCH {
            self.ship();
        }
    }

    /// Moves the gathered bytes into the parts to ship.
    fn seal_buf(&mut self) {
        if !self.buf.is_empty() {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(BATCH));
            self.parts_bytes += full.len();
            self.parts.push(Bytes::from(full));
        }
    }

    /// Hands everything gathered to the thread, which writes it as soon as it has written
    /// what came before. Never waits: past the bound, [`OutWriter::room`] says so.
    pub fn ship(&mut self) {
        self.seal_buf();
        if self.parts.is_empty() {
            return;
        }
        let held = self.gate.take(self.parts_bytes.max(MIN_CHARGE) as u64);
        let parts = std::mem::take(&mut self.parts);
        self.parts_bytes = 0;
        // No room ever again (the thread is gone): the outputs are dropped, as a failed
        // write drops them.
        if let (Some(held), Some(tx)) = (held, &self.tx) {
            let _ = tx.send(Cmd::Write(parts, held));
        }
    }

    /// Appends `lines` to the joblog once every output handed over before is written.
    pub fn journal(&mut self, lines: Vec<u8>) {
        self.ship();
        let charge = lines.len().max(MIN_CHARGE) as u64;
        if let (Some(held), Some(tx)) = (self.gate.take(charge), &self.tx) {
            let _ = tx.send(Cmd::Journal(lines, held));
        }
    }

    /// `None` while the thread has room; else a future that ends once it has written enough
    /// to take more (or has stopped: failed outputs are dropped, not waited for).
    pub fn room(&self) -> Option<root::Room> {
        let gone = self.failed() || self.thread.as_ref().is_none_or(JoinHandle::is_finished);
        if gone || self.gate.held() < IN_FLIGHT as u64 {
            return None;
        }
        let gate = self.gate.clone();
        Some(Box::pin(async move {
            // Room for one byte is room below the bound; it is given back at once.
            drop(gate.acquire_async(1).await);
        }))
    }

    /// Writes everything handed over so far (and makes the joblog durable); the first error
    /// the thread met, if any.
    pub fn sync(&mut self) -> io::Result<()> {
        self.ship();
        let (ack, done) = sync_channel(1);
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Cmd::Flush(ack)).is_ok());
        if !sent {
            return Err(io::Error::other("the output thread is gone"));
        }
        done.recv()
            .unwrap_or_else(|_| Err(io::Error::other("the output thread is gone")))
    }
}

impl Write for OutWriter {
    #[inline]
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= BATCH {
            self.ship();
        }
        Ok(b.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sync()
    }
}

impl Drop for OutWriter {
    fn drop(&mut self) {
        self.ship();
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The thread: writes what comes, in order; after an error it drops writes and reports the
/// error at each flush.
fn serve(
    mut out: Box<dyn Write + Send>,
    mut journal: Option<std::fs::File>,
    rx: &Receiver<Cmd>,
    on_error: &dyn Fn(Stream, io::Error),
) {
    let mut error: Option<io::Error> = None;
    // Written since the last flush: a buffered `out` (stdout keeps what follows its last
    // newline) is flushed whenever nothing more waits, so outputs leave as they come.
    let mut dirty = false;
    loop {
        let cmd = match rx.try_recv() {
            Ok(cmd) => cmd,
            Err(TryRecvError::Disconnected) => break,
            Err(TryRecvError::Empty) => {
                if dirty && error.is_none() {
                    dirty = false;
                    if let Err(e) = out.flush() {
                        on_error(Stream::Output, io::Error::new(e.kind(), e.to_string()));
                        error = Some(e);
                    }
                }
                match rx.recv() {
                    Ok(cmd) => cmd,
                    Err(_) => break,
                }
            }
        };
        match cmd {
            // The `Held` of each command gives its bytes back once it is written.
            Cmd::Write(parts, _held) => {
                dirty = true;
                if error.is_none()
                    && let Err(e) = write_all_parts(&mut out, parts)
                {
                    on_error(Stream::Output, io::Error::new(e.kind(), e.to_string()));
                    error = Some(e);
                }
            }
            Cmd::Journal(lines, _held) => {
                if error.is_none()
                    && let Some(j) = journal.as_mut()
                    && let Err((stream, e)) = flush_then(&mut out, j, |j| j.write_all(&lines))
                {
                    on_error(stream, io::Error::new(e.kind(), e.to_string()));
                    error = Some(e);
                }
            }
            Cmd::Flush(ack) => {
                let r = match &error {
                    Some(e) => Err(io::Error::new(e.kind(), e.to_string())),
                    None => match journal.as_mut() {
                        Some(j) => flush_then(&mut out, j, |j| j.sync_data()),
                        None => out.flush().map_err(|e| (Stream::Output, e)),
                    }
                    .map_err(|(stream, e)| {
                        on_error(stream, io::Error::new(e.kind(), e.to_string()));
                        error = Some(io::Error::new(e.kind(), e.to_string()));
                        e
                    }),
                };
                let _ = ack.send(r);
            }
        }
    }
    if error.is_none() {
        let _ = out.flush();
    }
}

/// Flushes the output, then does `then` to the joblog; a failure names its file.
fn flush_then(
    out: &mut dyn Write,
    journal: &mut std::fs::File,
    then: impl FnOnce(&mut std::fs::File) -> io::Result<()>,
) -> Result<(), (Stream, io::Error)> {
    out.flush().map_err(|e| (Stream::Output, e))?;
    then(journal).map_err(|e| (Stream::Joblog, e))
}

/// Writes every part, many per system call.
fn write_all_parts(out: &mut dyn Write, mut parts: Vec<Bytes>) -> io::Result<()> {
    let mut at = 0;
    while at < parts.len() {
        if parts[at].is_empty() {
            at += 1;
            continue;
        }
        let n = {
            let slices: Vec<IoSlice<'_>> = parts[at..]
                .iter()
                .take(IOV)
                .map(|b| IoSlice::new(b))
                .collect();
            out.write_vectored(&slices)?
        };
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let mut left = n;
        while left > 0 && at < parts.len() {
            let len = parts[at].len();
            if len <= left {
                left -= len;
                at += 1;
            } else {
                let _ = parts[at].split_to(left);
                left = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// A sink that takes at most `step` bytes per call, into a shared buffer.
    struct Slow {
        got: Arc<Mutex<Vec<u8>>>,
        step: usize,
    }

    impl Write for Slow {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(self.step);
            self.got.lock().unwrap().extend_from_slice(&b[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn small_and_shared_pieces_arrive_whole_and_in_order() {
        let got = Arc::new(Mutex::new(Vec::new()));
        let mut w = OutWriter::new(
            Box::new(Slow {
                got: got.clone(),
                step: 7_777,
            }),
            None,
            |_, e| panic!("{e}"),
        );
        let mut want = Vec::new();
        for i in 0..300u32 {
            let small = format!("line {i}\n");
            w.write_all(small.as_bytes()).unwrap();
            want.extend_from_slice(small.as_bytes());
            let big = Bytes::from(vec![b'a' + (i % 26) as u8; 70_000 + i as usize]);
            w.write_shared(b"7\t", big.clone(), b"\n");
            want.extend_from_slice(b"7\t");
            want.extend_from_slice(&big);
            want.push(b'\n');
        }
        w.sync().unwrap();
        assert_eq!(got.lock().unwrap().len(), want.len(), "all written at sync");
        drop(w);
        assert!(*got.lock().unwrap() == want);
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::ErrorKind::BrokenPipe.into())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// A sink that writes nothing until its gate opens (a pipe nobody reads yet).
    struct Stalled(std::sync::mpsc::Receiver<()>);

    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let _ = self.0.recv();
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_stalled_output_never_blocks_a_handover_and_says_when_it_has_room() {
        // A rendezvous: each write waits for one send.
        let (open, gate) = std::sync::mpsc::sync_channel(0);
        let mut w = OutWriter::new(Box::new(Stalled(gate)), None, |_, e| panic!("{e}"));
        assert!(w.room().is_none(), "room at first");
        // Twice the bound, in small and big pieces: every handover returns at once.
        for i in 0..2 * IN_FLIGHT / BATCH {
            w.write_all(&vec![b'x'; BATCH]).unwrap();
            w.write_shared(b"", Bytes::from(vec![b'y'; 1000 + i]), b"\n");
            w.ship();
        }
        let room = w.room().expect("no room past the bound");
        // The reader comes back: every write goes through, and the wait ends.
        std::thread::spawn(move || while open.send(()).is_ok() {});
        tokio::time::timeout(std::time::Duration::from_secs(60), room)
            .await
            .expect("room once the thread has written");
        w.sync().unwrap();
        assert!(w.room().is_none());
    }

    #[test]
    fn a_joblog_write_error_names_the_joblog() {
        let Ok(full) = std::fs::OpenOptions::new().write(true).open("/dev/full") else {
            eprintln!("skipped: no /dev/full here");
            return;
        };
        let seen = Arc::new(Mutex::new(Vec::new()));
        let got = Arc::new(Mutex::new(Vec::new()));
        let out = Slow {
            got: got.clone(),
            step: 1 << 20,
        };
        let mut w = OutWriter::new(Box::new(out), Some(full), {
            let seen = seen.clone();
            move |stream, e| seen.lock().unwrap().push((stream, e.kind()))
        });
        w.write_all(b"an output\n").unwrap();
        w.journal(b"a joblog line\n".to_vec());
        assert_eq!(w.sync().unwrap_err().kind(), io::ErrorKind::StorageFull);
        assert_eq!(
            *seen.lock().unwrap(),
            [(Stream::Joblog, io::ErrorKind::StorageFull)]
        );
        assert_eq!(
            *got.lock().unwrap(),
            b"an output\n",
            "the output was written"
        );
    }

    #[test]
    fn a_write_error_is_reported_at_the_next_sync() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut w = OutWriter::new(Box::new(Broken), None, {
            let seen = seen.clone();
            move |_, e| seen.lock().unwrap().push(e.kind())
        });
        w.write_all(b"x\n").unwrap();
        let e = w.sync().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::BrokenPipe);
        assert!(w.failed());
        assert_eq!(
            *seen.lock().unwrap(),
            [io::ErrorKind::BrokenPipe],
            "told at once"
        );
        // Later writes do not block or panic; the error stays.
        w.write_shared(b"", Bytes::from(vec![0; 100_000]), b"\n");
        assert_eq!(w.sync().unwrap_err().kind(), io::ErrorKind::BrokenPipe);
    }
}
