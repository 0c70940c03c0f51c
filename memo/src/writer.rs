//! The writer: entries are gathered into segments by the caller's thread (a copy of the
//! outputs, nothing more) and written by a thread of its own, many segments per transaction,
//! so neither the root's thread nor a lookup ever waits on the disk. What is handed to the
//! thread and not yet committed is bounded in bytes (and so in messages): a handover never
//! waits, and [`MemoWriter::room`] tells the caller to hold back while the thread is behind,
//! as the output writer of `pcluster run` does.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, sync_channel};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use protocol::gate::{ByteGate, CloseOnDrop, Held};

use crate::db::{self, SegMeta};
use crate::error::{MemoError, db as dberr};
use crate::key::Key;
use crate::segment::{Builder, Outputs};
use crate::{Shared, lock};

/// Bytes of segments per transaction: few and large.
const COMMIT_BYTES: usize = 8 << 20;
/// A commit syncs the file (durable) at most this often, and at every flush and at the end;
/// the others are not synced. A crash loses what followed the last synced commit, whole:
/// redb then opens the store as that commit left it.
const SYNC_EVERY: Duration = Duration::from_millis(250);
/// The longest a segment waits for its commit (and a partly filled one to be handed over).
const COMMIT_EVERY: Duration = Duration::from_millis(200);
/// Bytes handed to the thread and not yet committed: past it, [`MemoWriter::room`] says wait.
const IN_FLIGHT: u64 = 32 << 20;
/// The least a handover counts: past [`IN_FLIGHT`] no more come, so the channel holds at
/// most `IN_FLIGHT / MIN_CHARGE` of them and [`QUEUED`] is never reached.
const MIN_CHARGE: u64 = 64 << 10;
const QUEUED: usize = 1024;
/// After a commit past the bound, evict down to this share of it, so eviction is not redone
/// at every commit.
const GC_TO_PERCENT: u64 = 90;

enum Msg {
    Segment(Vec<u8>, Vec<Key>, Held),
    Flush(SyncSender<Result<(), String>>),
}

/// What a writer stored ([`MemoWriter::finish`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Written {
    pub entries: u64,
    pub segments: u64,
}

/// Stores entries in the background; see the module's doc. Dropping it stores what it was
/// given (as [`MemoWriter::finish`], errors unseen).
pub struct MemoWriter {
    shared: Arc<Shared>,
    builder: Builder,
    since: Instant,
    tx: Option<SyncSender<Msg>>,
    gate: Arc<ByteGate>,
    error: Arc<Mutex<Option<String>>>,
    thread: Option<JoinHandle<Written>>,
}

impl MemoWriter {
    pub(crate) fn start(shared: Arc<Shared>) -> Result<MemoWriter, MemoError> {
        if shared.writing.swap(true, Ordering::AcqRel) {
            return Err(MemoError::Db("a writer of this store runs already".into()));
        }
        let (tx, rx) = sync_channel(QUEUED);
        let gate = ByteGate::new(IN_FLIGHT);
        let error = Arc::new(Mutex::new(None));
        let thread = {
            let (shared, gate, error) = (shared.clone(), gate.clone(), error.clone());
            std::thread::Builder::new()
                .name("pcluster-memo".into())
                .spawn(move || {
                    let _close = CloseOnDrop(gate);
                    let written = serve(&shared, &rx, &error);
                    shared.writing.store(false, Ordering::Release);
                    written
                })
                .map_err(|e| MemoError::Db(format!("cannot start the writer thread: {e}")))?
        };
        Ok(MemoWriter {
            shared,
            builder: Builder::default(),
            since: Instant::now(),
            tx: Some(tx),
            gate,
            error,
            thread: Some(thread),
        })
    }

    /// Stores `outputs` under `key` (in the background; never waits).
    #[inline]
    pub fn put(&mut self, key: Key, outputs: &Outputs) {
        if self.builder.is_empty() {
            self.since = Instant::now();
        }
        self.builder.add(key, outputs);
        if self.builder.full() {
            self.ship();
        }
    }

    /// Hands the segment being gathered to the thread when it is older than the commit
    /// interval: call it now and then (the root's `idle`), so entries do not wait for more.
    pub fn tick(&mut self) {
        if !self.builder.is_empty() && self.since.elapsed() >= COMMIT_EVERY {
            self.ship();
        }
    }

    fn ship(&mut self) {
        if self.builder.is_empty() {
            return;
        }
        let (body, keys) = self.builder.seal();
        let charge = (body.len() as u64 + 16 * keys.len() as u64).max(MIN_CHARGE);
        // No room ever again (the thread is gone): the entries are dropped, as a failed
        // write drops them.
        if let (Some(held), Some(tx)) = (self.gate.take(charge), &self.tx) {
            let _ = tx.send(Msg::Segment(body, keys, held));
        }
    }

    /// `None` while the thread keeps up; else a future that ends once it has room again.
    pub fn room(&self) -> Option<std::pin::Pin<Box<dyn Future<Output = ()> + Send>>> {
        let gone = self.thread.as_ref().is_none_or(JoinHandle::is_finished);
        if gone || self.gate.held() < IN_FLIGHT {
            return None;
        }
        let gate = self.gate.clone();
        Some(Box::pin(async move {
            drop(gate.acquire_async(1).await);
        }))
    }

    /// The first error the thread met, if any (entries are dropped since).
    pub fn error(&self) -> Option<MemoError> {
        lock(&self.error).clone().map(MemoError::Db)
    }

    /// Stores everything given so far, committed, before returning.
    ///
    /// # Errors
    /// The thread's first error.
    pub fn flush(&mut self) -> Result<(), MemoError> {
        self.ship();
        let (ack, done) = sync_channel(1);
        let sent = self
            .tx
            .as_ref()
            .is_some_and(|tx| tx.send(Msg::Flush(ack)).is_ok());
        if !sent {
            return Err(self.error().unwrap_or(MemoError::WriterGone));
        }
        match done.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(MemoError::Db(e)),
            Err(_) => Err(self.error().unwrap_or(MemoError::WriterGone)),
        }
    }

    /// Stores everything and stops the thread; what it wrote.
    ///
    /// # Errors
    /// The thread's first error.
    pub fn finish(mut self) -> Result<Written, MemoError> {
        let written = self.stop();
        match self.error() {
            Some(e) => Err(e),
            None => Ok(written),
        }
    }

    fn stop(&mut self) -> Written {
        self.ship();
        self.tx = None;
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for MemoWriter {
    fn drop(&mut self) {
        self.stop();
        let _ = &self.shared;
    }
}

/// Segments received and not yet committed.
#[derive(Default)]
struct Pending {
    segs: Vec<(Vec<u8>, Vec<Key>, Held)>,
    bytes: usize,
}

/// The thread: gathers segments and commits them in large transactions.
fn serve(shared: &Shared, rx: &Receiver<Msg>, error: &Mutex<Option<String>>) -> Written {
    let mut pending = Pending::default();
    let mut written = Written::default();
    let mut first_at = Instant::now();
    let mut synced = Instant::now();
    loop {
        let msg = if pending.segs.is_empty() {
            rx.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            rx.recv_timeout(COMMIT_EVERY.saturating_sub(first_at.elapsed()))
        };
        let mut ack = None;
        let mut end = false;
        match msg {
            Ok(Msg::Segment(body, keys, held)) => {
                if pending.segs.is_empty() {
                    first_at = Instant::now();
                }
                pending.bytes += body.len();
                pending.segs.push((body, keys, held));
                if pending.bytes < COMMIT_BYTES {
                    continue;
                }
            }
            Ok(Msg::Flush(a)) => ack = Some(a),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => end = true,
        }
        let failed = lock(error).is_some();
        let r = if failed {
            // After an error, entries are dropped: the store stays as it was.
            pending = Pending::default();
            Ok(())
        } else {
            let durable = ack.is_some() || end || synced.elapsed() >= SYNC_EVERY;
            if durable {
                synced = Instant::now();
            }
            commit(shared, std::mem::take(&mut pending), &mut written, durable)
        };
        if let Err(e) = &r {
            lock(error).get_or_insert_with(|| e.to_string());
        }
        if let Some(a) = ack {
            let _ = a.send(match lock(error).clone() {
                Some(e) => Err(e),
                None => Ok(()),
            });
        }
        if end {
            return written;
        }
    }
}

/// Writes `pending` in one transaction, then shows it to lookups; evicts past the bound.
fn commit(
    shared: &Shared,
    pending: Pending,
    written: &mut Written,
    durable: bool,
) -> Result<(), MemoError> {
    let touched: HashSet<u64> = std::mem::take(&mut *lock(&shared.touched));
    if pending.segs.is_empty() && touched.is_empty() {
        return Ok(());
    }
    let tick = shared.tick.fetch_add(1, Ordering::Relaxed);
    let first = {
        let mut segs = lock(&shared.segs);
        let first = segs.next;
        segs.next += pending.segs.len() as u64;
        first
    };
    let mut w = shared.db.begin_write().map_err(dberr)?;
    if !durable {
        w.set_durability(redb::Durability::None).map_err(dberr)?;
    }
    let mut infos = Vec::with_capacity(pending.segs.len());
    for (i, (body, keys, _)) in pending.segs.iter().enumerate() {
        let seg = first + i as u64;
        infos.push((seg, db::write_segment(&w, seg, body, keys.clone(), tick)?));
    }
    db::touch(&w, &touched, tick)?;
    db::write_meta(&w, tick, first + pending.segs.len() as u64)?;
    w.commit().map_err(dberr)?;
    {
        let mut index = shared.index.write().unwrap_or_else(PoisonError::into_inner);
        for (seg, info) in &infos {
            index.add_segment(*seg, &info.keys);
        }
    }
    let over = {
        let mut segs = lock(&shared.segs);
        for (seg, info) in &infos {
            written.entries += info.keys.len() as u64;
            written.segments += 1;
            let bytes = info.stored_bytes();
            segs.add(*seg, SegMeta { tick, bytes });
        }
        for s in &touched {
            if let Some(m) = segs.by_id.get_mut(s) {
                m.tick = tick;
            }
        }
        segs.bytes > shared.limit.load(Ordering::Relaxed)
    };
    // The bytes handed over are committed: the caller may hand more.
    drop(pending);
    if over {
        let limit = shared.limit.load(Ordering::Relaxed);
        evict_to(shared, limit / 100 * GC_TO_PERCENT)?;
    }
    Ok(())
}

/// Evicts the least recently used segments until at most `target` bytes stay, in one
/// transaction; how many went.
pub(crate) fn evict_to(shared: &Shared, target: u64) -> Result<u64, MemoError> {
    let victims = lock(&shared.segs).victims(target);
    if victims.is_empty() {
        return Ok(0);
    }
    let w = shared.db.begin_write().map_err(dberr)?;
    let mut gone = Vec::with_capacity(victims.len());
    for &v in &victims {
        gone.push((v, db::evict(&w, v)?));
    }
    w.commit().map_err(dberr)?;
    let mut index = shared.index.write().unwrap_or_else(PoisonError::into_inner);
    let mut segs = lock(&shared.segs);
    for (v, keys) in &gone {
        index.remove_segment(*v, keys);
        segs.remove(*v);
    }
    Ok(gone.len() as u64)
}
