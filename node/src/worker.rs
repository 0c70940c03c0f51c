//! The worker pool: threads apart from the I/O runtime, each with its own instance of every
//! task, taking work units (runs of one batch) from a shared bounded queue and running them
//! through the chain stage by stage.
//!
//! Stage-by-stage (every item of the unit through task 0, then every output through task 1…)
//! keeps one instance hot at a time and needs no allocation per item: each stage writes into
//! a reused [`OutBuf`] that is swapped into the task's store for the duration of the stage.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use protocol::{Credit, FailedTask, Failure, Msg, Outputs, Packed, TaskCounters, TaskIndex, U32s};
use tokio::sync::mpsc;

use crate::engine::{CompiledChain, LogCtx, OutBuf, TaskInstance};
use crate::error::{CallError, RequestError, SetupError, TaskProblem};

/// How long one work unit should take; units are sized from the measured time per item.
const UNIT_TARGET_NS: u64 = 2_000_000;
/// Most inputs in one work unit.
pub const MAX_UNIT: u32 = 4096;
/// How much time worth of items a node wants in flight per worker.
const WINDOW_TARGET_NS: u64 = 20_000_000;
/// Bytes a node accepts in flight.
pub const WINDOW_BYTES: u64 = 256 << 20;
/// Most items a node asks for per worker.
const MAX_WINDOW_PER_WORKER: u64 = 128 * 1024;
/// Most items in one batched guest call.
const BATCH_ITEMS: usize = 256;
/// Most bytes in one batched guest call.
const BATCH_BYTES: usize = 256 << 10;
/// Tasks whose calls take less than this run batched: a batch stays far below any deadline.
const BATCH_BELOW_NS: u64 = 20_000;
/// A generator stage emitting at least this many items in one unit spreads them over the
/// node's workers.
const FAN_OUT_SPLIT: usize = 8192;
/// Largest outputs message a node sends (below the 64 MiB frame limit).
const MAX_OUTPUT_MESSAGE: usize = 48 << 20;
/// Bytes of a failing item quoted in its failure.
const ITEM_QUOTE: usize = 200;

/// Per chain (name and version), how long an item took when it last ran in this process, so
/// the next run of the same chain starts with the right unit size and credit window.
static SPEED_HINTS: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());

fn chain_key(chain: &CompiledChain) -> String {
    format!("{}\0{}", chain.name, chain.version)
}

fn speed_hint(chain: &CompiledChain) -> Option<u64> {
    let key = chain_key(chain);
    let hints = SPEED_HINTS.lock().unwrap_or_else(|e| e.into_inner());
    hints.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
}

fn remember_speed(chain: &CompiledChain, avg_ns: u64) {
    let key = chain_key(chain);
    let mut hints = SPEED_HINTS.lock().unwrap_or_else(|e| e.into_inner());
    hints.retain(|(k, _)| *k != key);
    if hints.len() >= 64 {
        hints.remove(0);
    }
    hints.push((key, avg_ns));
}

/// A run of inputs of one batch.
#[derive(Debug)]
pub struct Unit {
    /// The batch.
    pub batch: Arc<Batch>,
    /// Index of the first input in the batch.
    pub first: u32,
    /// Number of inputs.
    pub count: u32,
    /// Offset of the first input's bytes in the batch data.
    pub byte_start: usize,
}

/// A batch as received.
#[derive(Debug)]
pub struct Batch {
    /// Its sequence number on the connection.
    pub seq: u64,
    /// Its items.
    pub items: Packed,
}

/// What a worker takes from the queue.
#[derive(Debug)]
pub enum Work {
    /// A run of inputs of a batch.
    Unit(Unit),
    /// A share of a large fan-out, to run from a later task on.
    Part(Part),
}

/// A share of the items a generator produced in one unit: another worker runs the rest of the
/// chain on it, so a large fan-out spreads over the node's workers.
#[derive(Debug)]
pub struct Part {
    group: Arc<Group>,
    index: usize,
    start_task: usize,
    items: OutBuf,
}

/// One worker's finished share of a group: its outputs and failures.
type Share = (OutBuf, Vec<Failure>);

/// The unit a fan-out was split from; its outputs leave the node in one message, assembled by
/// whichever worker finishes the last part.
#[derive(Debug)]
struct Group {
    seq: u64,
    first: u32,
    count: u32,
    parts: Mutex<Vec<Option<Share>>>,
    pending: std::sync::atomic::AtomicUsize,
}

/// Per-task counters, shared by all workers, updated once per stage of a unit.
#[derive(Debug, Default)]
pub struct Counters {
    items_in: AtomicU64,
    items_out: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    busy_ns: AtomicU64,
}

/// State shared by the pool's workers and the connection that feeds them.
#[derive(Debug)]
pub struct PoolShared {
    /// The chain.
    pub chain: Arc<CompiledChain>,
    /// One per task.
    pub counters: Vec<Counters>,
    /// Workers not running a unit.
    pub idle: AtomicU32,
    /// Inputs received and not yet answered.
    pub in_flight: AtomicU64,
    /// Average nanoseconds one input takes through the whole chain (EWMA).
    pub avg_item_ns: AtomicU64,
    /// Credit last announced to the root (items).
    pub announced: AtomicU64,
    paused: Mutex<bool>,
    resume: Condvar,
    stop: AtomicBool,
    workers: u32,
}

impl PoolShared {
    /// The counters in the wire format.
    pub fn task_counters(&self) -> Vec<TaskCounters> {
        self.chain
            .tasks
            .iter()
            .zip(&self.counters)
            .map(|(t, c)| TaskCounters {
                name: t.name.to_string(),
                items_in: c.items_in.load(Ordering::Relaxed),
                items_out: c.items_out.load(Ordering::Relaxed),
                dropped: c.dropped.load(Ordering::Relaxed),
                failed: c.failed.load(Ordering::Relaxed),
                busy_ns: c.busy_ns.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// How many inputs a work unit should hold now.
    pub fn unit_size(&self) -> u32 {
        let avg = self.avg_item_ns.load(Ordering::Relaxed).max(1);
        (UNIT_TARGET_NS / avg).clamp(1, u64::from(MAX_UNIT)) as u32
    }

    /// The credit window the node wants now.
    pub fn credit(&self) -> Credit {
        let avg = self.avg_item_ns.load(Ordering::Relaxed).max(1);
        let per_worker = (WINDOW_TARGET_NS / avg).clamp(2, MAX_WINDOW_PER_WORKER);
        Credit {
            items: (per_worker * u64::from(self.workers)).min(u64::from(u32::MAX)) as u32,
            bytes: WINDOW_BYTES,
        }
    }

    /// Stops or restarts taking units.
    pub fn set_paused(&self, paused: bool) {
        let mut p = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        *p = paused;
        self.resume.notify_all();
    }

    fn wait_unpaused(&self) {
        let mut p = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        while *p && !self.stop.load(Ordering::Relaxed) {
            p = self.resume.wait(p).unwrap_or_else(|e| e.into_inner());
        }
    }
}

/// A running pool of workers for one chain.
#[derive(Debug)]
pub struct Pool {
    /// Shared state.
    pub shared: Arc<PoolShared>,
    queue: Option<crossbeam_channel::Sender<Work>>,
    threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `workers` threads, each instantiating every task (init included), and waits
    /// for all of them. Outputs go to `out`.
    ///
    /// # Errors
    /// The first instantiation or init failure, naming the task.
    pub fn start(
        chain: Arc<CompiledChain>,
        workers: u32,
        node: Arc<str>,
        out: mpsc::Sender<Msg>,
    ) -> Result<Pool, SetupError> {
        let hint = speed_hint(&chain);
        let shared = Arc::new(PoolShared {
            counters: chain.tasks.iter().map(|_| Counters::default()).collect(),
            chain,
            idle: AtomicU32::new(workers),
            in_flight: AtomicU64::new(0),
            // What this chain's items took last time, else a cautious guess (small units, a
            // small window) until the first unit is measured.
            avg_item_ns: AtomicU64::new(hint.unwrap_or(200_000)),
            announced: AtomicU64::new(0),
            paused: Mutex::new(false),
            resume: Condvar::new(),
            stop: AtomicBool::new(false),
            workers,
        });
        let (tx, rx) = crossbeam_channel::bounded::<Work>(1 << 16);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), SetupError>>();
        let mut threads = Vec::with_capacity(workers as usize);
        for w in 0..workers {
            let shared = shared.clone();
            let rx = rx.clone();
            let tx = tx.clone();
            let out = out.clone();
            let ready = ready_tx.clone();
            let node = node.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pcluster-worker-{w}"))
                .spawn(move || {
                    let worker = match Worker::new(shared, w, node) {
                        Ok(worker) => {
                            let _ = ready.send(Ok(()));
                            worker
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    drop(ready);
                    worker.run(rx, tx, out);
                });
            match spawned {
                Ok(h) => threads.push(h),
                Err(e) => return Err(SetupError::Thread(e)),
            }
        }
        drop(ready_tx);
        let mut pool = Pool {
            shared,
            queue: Some(tx),
            threads,
        };
        for _ in 0..workers {
            match ready_rx.recv() {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    pool.stop();
                    return Err(e);
                }
                Err(_) => {
                    pool.stop();
                    return Err(SetupError::WorkerDied);
                }
            }
        }
        Ok(pool)
    }

    /// Checks a batch from the network against the chain's limits and queues it.
    ///
    /// # Errors
    /// A malformed batch, an item over the limit, or as [`Pool::submit`].
    pub fn accept(&self, items: protocol::Items) -> Result<(), RequestError> {
        items.items.validate()?;
        if items.ids.len() != items.items.len() {
            return Err(RequestError::IdsMismatch {
                ids: items.ids.len(),
                items: items.items.len(),
            });
        }
        let limit = self.shared.chain.limits.max_item_bytes;
        if let Some(&big) = items.items.lens.0.iter().find(|&&l| u64::from(l) > limit) {
            return Err(RequestError::ItemTooLarge {
                size: u64::from(big),
                limit,
            });
        }
        self.submit(Batch {
            seq: items.seq,
            items: items.items,
        })
    }

    /// Splits a batch into work units and queues them.
    ///
    /// # Errors
    /// When the queue is full (the root ignored its credit) or the pool is stopped.
    pub fn submit(&self, batch: Batch) -> Result<(), RequestError> {
        let Some(queue) = &self.queue else {
            // Only a reset stops a pool, and a reset drops it.
            return Err(RequestError::NotSetUp);
        };
        let n = batch.items.len() as u32;
        self.shared
            .in_flight
            .fetch_add(u64::from(n), Ordering::Relaxed);
        let unit = self.shared.unit_size();
        let batch = Arc::new(batch);
        let mut first = 0u32;
        let mut byte_start = 0usize;
        while first < n {
            let count = unit.min(n - first);
            let bytes: usize = batch.items.lens.0[first as usize..(first + count) as usize]
                .iter()
                .map(|&l| l as usize)
                .sum();
            let u = Unit {
                batch: batch.clone(),
                first,
                count,
                byte_start,
            };
            if queue.try_send(Work::Unit(u)).is_err() {
                self.shared
                    .in_flight
                    .fetch_sub(u64::from(n - first), Ordering::Relaxed);
                return Err(RequestError::OverCredit);
            }
            first += count;
            byte_start += bytes;
        }
        Ok(())
    }

    /// Units waiting in the queue.
    pub fn queued(&self) -> usize {
        self.queue.as_ref().map_or(0, |q| q.len())
    }

    /// Stops the workers: they finish the unit they run (bounded by the chain's deadline)
    /// and exit; queued units are dropped. Does not wait for the threads.
    pub fn stop(&mut self) {
        if !self.shared.stop.load(Ordering::Relaxed) {
            remember_speed(
                &self.shared.chain,
                self.shared.avg_item_ns.load(Ordering::Relaxed),
            );
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        self.queue = None;
        self.shared.set_paused(false);
        // Threads finish on their own; joining here could block an I/O task for a deadline.
        self.threads.clear();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.stop();
    }
}

struct Worker {
    shared: Arc<PoolShared>,
    index: u32,
    node: Arc<str>,
    /// One instance per task; an `Err` when it could not be rebuilt after a trap.
    instances: Vec<Result<TaskInstance, Arc<TaskProblem>>>,
    /// Recent nanoseconds per call of each task on this worker.
    task_ns: Vec<u64>,
    /// Fan-out parts the queue had no room for; this worker runs them itself.
    deferred: Vec<Part>,
    cur: OutBuf,
    spare: OutBuf,
}

impl Worker {
    fn new(shared: Arc<PoolShared>, index: u32, node: Arc<str>) -> Result<Worker, SetupError> {
        let mut instances = Vec::with_capacity(shared.chain.tasks.len());
        for (i, task) in shared.chain.tasks.iter().enumerate() {
            let ctx = LogCtx {
                node: node.clone(),
                worker: index,
                task: task.name.clone(),
            };
            let inst = TaskInstance::new(task, &shared.chain.limits, ctx).map_err(|problem| {
                SetupError::Task {
                    index: TaskIndex(i as u32),
                    task: task.name.clone(),
                    problem,
                }
            })?;
            instances.push(Ok(inst));
        }
        Ok(Worker {
            task_ns: vec![0; shared.chain.tasks.len()],
            deferred: Vec::new(),
            shared,
            index,
            node,
            instances,
            cur: OutBuf::default(),
            spare: OutBuf::default(),
        })
    }

    fn run(
        mut self,
        rx: crossbeam_channel::Receiver<Work>,
        tx: crossbeam_channel::Sender<Work>,
        out: mpsc::Sender<Msg>,
    ) {
        loop {
            self.shared.wait_unpaused();
            if self.shared.stop.load(Ordering::Relaxed) {
                return;
            }
            // Workers hold a sender for fan-out parts, so the channel never closes: poll the
            // stop flag instead.
            let work = match rx.recv_timeout(std::time::Duration::from_millis(100)) {
                Ok(w) => w,
                Err(crossbeam_channel::RecvTimeoutError::Timeout) => continue,
                Err(crossbeam_channel::RecvTimeoutError::Disconnected) => return,
            };
            if self.shared.stop.load(Ordering::Relaxed) {
                return;
            }
            self.shared.idle.fetch_sub(1, Ordering::Relaxed);
            let started = Instant::now();
            let done = match work {
                Work::Unit(unit) => {
                    let r = self.run_unit(&unit, &tx);
                    let ns = started.elapsed().as_nanos() as u64 / u64::from(unit.count.max(1));
                    let old = self.shared.avg_item_ns.load(Ordering::Relaxed);
                    // Weigh by unit size so one tiny unit cannot swing the estimate far.
                    let w = u64::from(unit.count.clamp(1, 64));
                    let avg = (old * (128 - w) + ns.max(1) * w) / 128;
                    self.shared.avg_item_ns.store(avg.max(1), Ordering::Relaxed);
                    r
                }
                Work::Part(part) => self.run_part(part, &tx),
            };
            let mut done = done;
            while done.is_none() {
                let Some(part) = self.deferred.pop() else {
                    break;
                };
                done = self.run_part(part, &tx);
            }
            self.shared.idle.fetch_add(1, Ordering::Relaxed);
            let Some(outputs) = done else { continue };
            self.shared
                .in_flight
                .fetch_sub(outputs.counts.0.len() as u64, Ordering::Relaxed);
            let mut gone = false;
            for part in fit_in_frames(outputs, MAX_OUTPUT_MESSAGE) {
                if out.blocking_send(Msg::Outputs(part)).is_err() {
                    // The root's connection is gone; it re-dispatches what it did not get.
                    gone = true;
                    break;
                }
            }
            if gone {
                continue;
            }
            let credit = self.shared.credit();
            let last = self.shared.announced.load(Ordering::Relaxed);
            let now = u64::from(credit.items);
            if (now > last + last / 4 || now < last - last / 4)
                && self
                    .shared
                    .announced
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
            {
                let _ = out.blocking_send(Msg::Credit(credit));
            }
        }
    }

    /// Runs a unit; `None` when it was split into parts and others finish it.
    fn run_unit(&mut self, unit: &Unit, tx: &crossbeam_channel::Sender<Work>) -> Option<Outputs> {
        let mut failures = Vec::new();
        let split = self.run_stages(
            Some(unit),
            0,
            &mut failures,
            tx,
            unit.batch.seq,
            unit.first,
            unit.count,
        );
        match split {
            None => Some(self.outputs(unit.batch.seq, unit.first, unit.count, failures)),
            Some(group) => self.deposit(&group, 0, failures),
        }
    }

    fn run_part(&mut self, part: Part, tx: &crossbeam_channel::Sender<Work>) -> Option<Outputs> {
        self.cur = part.items;
        let mut failures = Vec::new();
        let g = &part.group;
        // A part never splits again: it is already a share of one.
        let _ = self.run_stages(None, part.start_task, &mut failures, tx, g.seq, g.first, 0);
        self.deposit(&part.group, part.index, failures)
    }

    /// Hands this worker's share of a group in; the last one assembles the outputs.
    fn deposit(
        &mut self,
        group: &Arc<Group>,
        index: usize,
        failures: Vec<Failure>,
    ) -> Option<Outputs> {
        let share = std::mem::take(&mut self.cur);
        {
            let mut parts = group.parts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = parts.get_mut(index) {
                *slot = Some((share, failures));
            }
        }
        if group.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return None;
        }
        let parts = std::mem::take(&mut *group.parts.lock().unwrap_or_else(|e| e.into_inner()));
        let mut all = Vec::new();
        self.cur.clear();
        for (buf, f) in parts.into_iter().flatten() {
            let base = self.cur.data.len();
            self.cur.data.extend_from_slice(&buf.data);
            self.cur
                .entries
                .extend(buf.entries.iter().map(|e| crate::engine::Entry {
                    input: e.input,
                    len: e.len,
                    start: e.start + base,
                }));
            all.extend(f);
        }
        Some(self.outputs(group.seq, group.first, group.count, all))
    }

    fn outputs(&mut self, seq: u64, first: u32, count: u32, mut failures: Vec<Failure>) -> Outputs {
        let mut counts = vec![0u32; count as usize];
        for e in &self.cur.entries {
            if let Some(c) = counts.get_mut(e.input as usize) {
                *c += 1;
            }
        }
        let mut packed = Packed::with_capacity(self.cur.entries.len(), self.cur.data.len());
        packed.lens.0.extend(self.cur.entries.iter().map(|e| e.len));
        packed.data.extend_from_slice(&self.cur.data);
        for f in &mut failures {
            f.index += first;
        }
        Outputs {
            seq,
            first,
            counts: U32s(counts),
            items: packed,
            failures,
        }
    }

    /// Runs tasks `from..` on the unit's items (from the batch when `unit` is given and
    /// `from` is 0, else from `self.cur`), leaving the outputs in `self.cur`. After a
    /// generator stage that produced many items, splits them into parts for other workers
    /// and returns the group this worker's share belongs to.
    #[allow(clippy::too_many_arguments)]
    fn run_stages(
        &mut self,
        unit: Option<&Unit>,
        from: usize,
        failures: &mut Vec<Failure>,
        tx: &crossbeam_channel::Sender<Work>,
        seq: u64,
        first: u32,
        count: u32,
    ) -> Option<Arc<Group>> {
        let chain = self.shared.chain.clone();
        let mut group = None;
        for k in from..chain.tasks.len() {
            let started = Instant::now();
            let mut stage = std::mem::take(&mut self.spare);
            stage.clear();
            let mut ctx = StageCtx {
                chain: &chain,
                k,
                node: &self.node,
                worker: self.index,
                slot: &mut self.instances[k],
                sink: FailureSink {
                    failures,
                    node: &self.node,
                    worker: self.index,
                    k,
                    failed: 0,
                },
                calls: 0,
                batch: self.task_ns[k] < BATCH_BELOW_NS,
            };
            match unit {
                Some(unit) if k == from => {
                    let batch = &unit.batch;
                    let first = unit.first as usize;
                    let lens = &batch.items.lens.0[first..first + unit.count as usize];
                    let mut offset = unit.byte_start;
                    let items = lens.iter().enumerate().map(|(i, &l)| {
                        let item = &batch.items.data[offset..offset + l as usize];
                        offset += l as usize;
                        (i as u32, item)
                    });
                    ctx.run(items, &mut stage);
                }
                _ => {
                    let prev = &self.cur;
                    ctx.run(
                        prev.entries.iter().map(|e| (e.input, prev.item(e))),
                        &mut stage,
                    );
                }
            }
            let (calls, failed) = (ctx.calls, ctx.sink.failed);
            let c = &self.shared.counters[k];
            c.items_in.fetch_add(calls, Ordering::Relaxed);
            c.items_out
                .fetch_add(stage.entries.len() as u64, Ordering::Relaxed);
            c.failed.fetch_add(failed, Ordering::Relaxed);
            let produced_by = count_inputs_with_output(&stage);
            c.dropped.fetch_add(
                calls.saturating_sub(failed).saturating_sub(produced_by),
                Ordering::Relaxed,
            );
            let busy = started.elapsed().as_nanos() as u64;
            c.busy_ns.fetch_add(busy, Ordering::Relaxed);
            if let Some(per_call) = busy.checked_div(calls) {
                self.task_ns[k] = (self.task_ns[k] + per_call) / 2;
            }
            self.spare = std::mem::replace(&mut self.cur, stage);
            let fan_out = chain.tasks[k].generator
                && k + 1 < chain.tasks.len()
                && unit.is_some()
                && group.is_none()
                && self.shared.workers > 1
                && self.cur.entries.len() >= FAN_OUT_SPLIT;
            if fan_out {
                group = Some(self.split(k + 1, tx, seq, first, count));
            }
        }
        group
    }

    /// Keeps the first share of `self.cur` and queues the others as parts.
    fn split(
        &mut self,
        start_task: usize,
        tx: &crossbeam_channel::Sender<Work>,
        seq: u64,
        first: u32,
        count: u32,
    ) -> Arc<Group> {
        let shares = self.shared.workers as usize;
        let n = self.cur.entries.len();
        tracing::debug!(
            node = &*self.node,
            worker = self.index,
            items = n,
            shares,
            "spreading a fan-out over the workers"
        );
        let per = n.div_ceil(shares);
        let group = Arc::new(Group {
            seq,
            first,
            count,
            parts: Mutex::new((0..shares).map(|_| None).collect()),
            pending: std::sync::atomic::AtomicUsize::new(shares),
        });
        let mut parts = Vec::with_capacity(shares - 1);
        for index in 1..shares {
            let lo = (index * per).min(n);
            let hi = ((index + 1) * per).min(n);
            let mut items = OutBuf::default();
            for e in &self.cur.entries[lo..hi] {
                let start = items.data.len();
                items.data.extend_from_slice(self.cur.item(e));
                items.entries.push(crate::engine::Entry {
                    input: e.input,
                    len: e.len,
                    start,
                });
            }
            parts.push(Part {
                group: group.clone(),
                index,
                start_task,
                items,
            });
        }
        // This worker keeps the first share.
        let keep = per.min(n);
        let keep_bytes = self
            .cur
            .entries
            .get(keep)
            .map_or(self.cur.data.len(), |e| e.start);
        self.cur.entries.truncate(keep);
        self.cur.data.truncate(keep_bytes);
        for part in parts {
            if let Err(e) = tx.try_send(Work::Part(part)) {
                // Queue full: this worker runs the part itself, after its own share.
                if let Work::Part(p) = e.into_inner() {
                    self.deferred.push(p);
                }
            }
        }
        group
    }
}

/// Splits outputs into messages that fit in a frame, by runs of whole inputs. An input whose
/// own outputs exceed the limit is reported failed instead: outputs travel with their input's
/// completion, so one input's outputs must fit in one message.
fn fit_in_frames(o: Outputs, limit: usize) -> Vec<Outputs> {
    let size = |bytes: usize, items: usize| bytes + 4 * items + 64;
    if size(o.items.data.len(), o.items.len()) + 4 * o.counts.0.len() <= limit {
        return vec![o];
    }
    let Outputs {
        seq,
        first,
        counts,
        items,
        failures,
    } = o;
    let mut parts: Vec<Outputs> = Vec::new();
    let mut cur = Outputs {
        seq,
        first,
        counts: U32s(Vec::new()),
        items: Packed::new(),
        failures: Vec::new(),
    };
    let mut it = items.iter();
    for (i, &n) in counts.0.iter().enumerate() {
        let index = first + i as u32;
        let own: Vec<&[u8]> = it.by_ref().take(n as usize).collect();
        let own_bytes: usize = own.iter().map(|x| x.len()).sum();
        let (own, too_big) = if size(own_bytes, own.len()) > limit {
            (Vec::new(), true)
        } else {
            (own, false)
        };
        if size(
            cur.items.data.len() + own_bytes,
            cur.items.len() + own.len(),
        ) + 4 * (cur.counts.0.len() + 1)
            > limit
            && !cur.counts.0.is_empty()
        {
            let next_first = index;
            let done = std::mem::replace(
                &mut cur,
                Outputs {
                    seq,
                    first: next_first,
                    counts: U32s(Vec::new()),
                    items: Packed::new(),
                    failures: Vec::new(),
                },
            );
            parts.push(done);
        }
        cur.counts.0.push(own.len() as u32);
        for x in &own {
            cur.items.push(x);
        }
        if too_big {
            cur.failures.push(Failure {
                index,
                task: None,
                item_start: Vec::new(),
                item: None,
                message: format!(
                    "the outputs of this input ({own_bytes} bytes) exceed the {limit}-byte message limit"
                ),
            });
        }
    }
    parts.push(cur);
    // Failures go with the part holding their input.
    for f in failures {
        if let Some(p) = parts
            .iter_mut()
            .find(|p| f.index >= p.first && f.index < p.first + p.counts.0.len() as u32)
        {
            p.failures.push(f);
        }
    }
    parts
}

/// Approximate number of calls that emitted something: runs of equal input index. Exact for
/// non-generators; for generators it counts distinct inputs, which is what "dropped" means.
fn count_inputs_with_output(stage: &OutBuf) -> u64 {
    let mut n = 0u64;
    let mut last = None;
    for e in &stage.entries {
        if last != Some(e.input) {
            n += 1;
            last = Some(e.input);
        }
    }
    n
}

/// One stage of one unit: task `k` over a stream of items.
struct StageCtx<'a> {
    chain: &'a CompiledChain,
    k: usize,
    node: &'a Arc<str>,
    worker: u32,
    slot: &'a mut Result<TaskInstance, Arc<TaskProblem>>,
    sink: FailureSink<'a>,
    calls: u64,
    /// Whether to use the task's batched export (its items are known to be fast).
    batch: bool,
}

impl StageCtx<'_> {
    fn run<'i>(&mut self, items: impl Iterator<Item = (u32, &'i [u8])>, stage: &mut OutBuf) {
        if let Ok(inst) = self.slot {
            std::mem::swap(&mut inst.store.data_mut().out, stage);
        }
        let batched = self.batch && matches!(self.slot, Ok(inst) if inst.has_batch());
        if batched {
            let mut chunk: Vec<(u32, &[u8])> = Vec::with_capacity(BATCH_ITEMS);
            let mut bytes = 0;
            for (input, item) in items {
                if chunk.len() == BATCH_ITEMS
                    || (!chunk.is_empty() && bytes + item.len() > BATCH_BYTES)
                {
                    self.run_chunk(&chunk, stage);
                    chunk.clear();
                    bytes = 0;
                }
                bytes += item.len() + 4;
                chunk.push((input, item));
            }
            if !chunk.is_empty() {
                self.run_chunk(&chunk, stage);
            }
        } else {
            for (input, item) in items {
                self.call_one(input, item, stage);
            }
        }
        if let Ok(inst) = self.slot {
            std::mem::swap(&mut inst.store.data_mut().out, stage);
        }
    }

    /// Many items in one guest call; on any trouble with the batch as a whole, its items run
    /// one by one, so a trap or a deadline still fails only its own item.
    fn run_chunk(&mut self, chunk: &[(u32, &[u8])], stage: &mut OutBuf) {
        let Ok(inst) = self.slot else {
            // No instance: the items fail one by one, each with why.
            for &(input, item) in chunk {
                self.call_one(input, item, stage);
            }
            return;
        };
        let result = inst.call_batch(chunk);
        match result {
            Ok(()) => {
                self.calls += chunk.len() as u64;
                let Ok(inst) = self.slot else { return };
                let failures = std::mem::take(&mut inst.store.data_mut().batch.failures);
                let task = &self.chain.tasks[self.k];
                for (i, error) in failures {
                    let Some(&(input, item)) = chunk.get(i) else {
                        continue;
                    };
                    self.sink.record(&task.name, input, item, error);
                }
            }
            Err(e) => {
                if e.trapped() {
                    self.rebuild(stage);
                }
                for &(input, item) in chunk {
                    self.call_one(input, item, stage);
                }
            }
        }
    }

    fn call_one(&mut self, input: u32, item: &[u8], stage: &mut OutBuf) {
        let task = &self.chain.tasks[self.k];
        self.calls += 1;
        let inst = match self.slot {
            Ok(inst) => inst,
            Err(problem) => {
                // An instance that could not be rebuilt fails every item it is given.
                let error = CallError::Unavailable(problem.clone());
                self.sink.record(&task.name, input, item, error);
                return;
            }
        };
        let st = inst.store.data_mut();
        st.cur_input = input;
        let mark_e = st.out.entries.len();
        let mark_d = st.out.data.len();
        let result = inst.call(item);
        let st = inst.store.data_mut();
        let emitted = st.out.entries.len() - mark_e;
        let err = match result {
            Ok(()) if emitted > 1 && !task.generator => Some(CallError::NotAGenerator { emitted }),
            Ok(()) => None,
            Err(e) => Some(e),
        };
        if let Some(error) = err {
            st.out.entries.truncate(mark_e);
            st.out.data.truncate(mark_d);
            let trapped = error.trapped();
            self.sink.record(&task.name, input, item, error);
            if trapped {
                self.rebuild(stage);
            }
        }
    }

    /// A trapped instance may be in any state: build a fresh one and carry the stage's
    /// outputs over to it.
    fn rebuild(&mut self, stage: &mut OutBuf) {
        let task = &self.chain.tasks[self.k];
        let mut out = match self.slot {
            Ok(inst) => std::mem::take(&mut inst.store.data_mut().out),
            Err(_) => return,
        };
        let ctx = LogCtx {
            node: self.node.clone(),
            worker: self.worker,
            task: task.name.clone(),
        };
        *self.slot = TaskInstance::new(task, &self.chain.limits, ctx).map_err(Arc::new);
        match self.slot {
            Ok(fresh) => std::mem::swap(&mut fresh.store.data_mut().out, &mut out),
            Err(e) => {
                tracing::error!(
                    node = &**self.node,
                    worker = self.worker,
                    task = &*task.name,
                    "cannot rebuild the task instance after a trap: {e}"
                );
                *stage = out;
            }
        }
    }
}

/// Where a stage's failed items go.
struct FailureSink<'a> {
    failures: &'a mut Vec<Failure>,
    node: &'a str,
    worker: u32,
    k: usize,
    failed: u64,
}

impl FailureSink<'_> {
    /// Turns one failed call into the failure the root gets: the task, the start of the
    /// item and the error's message.
    fn record(&mut self, task: &str, input: u32, item: &[u8], error: CallError) {
        self.failed += 1;
        tracing::debug!(
            node = self.node,
            worker = self.worker,
            task,
            input,
            "item failed: {error}"
        );
        self.failures.push(Failure {
            index: input,
            task: Some(FailedTask {
                index: TaskIndex(self.k as u32),
                name: task.to_string(),
            }),
            item_start: item[..item.len().min(ITEM_QUOTE)].to_vec(),
            item: None,
            message: error.to_string(),
        });
    }
}

/// A chain run in the calling thread with no pool and no network: the in-process floor the
/// benchmark compares against, and a way to try a chain in tests.
pub struct LocalChain {
    worker: Worker,
    tx: crossbeam_channel::Sender<Work>,
    _rx: crossbeam_channel::Receiver<Work>,
}

impl std::fmt::Debug for LocalChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalChain").finish_non_exhaustive()
    }
}

impl LocalChain {
    /// Compiles and instantiates `spec` for this thread.
    ///
    /// # Errors
    /// As a node's setup would fail.
    pub fn new(spec: &protocol::ChainSpec) -> Result<LocalChain, SetupError> {
        let cache = crate::engine::ModuleCache::default();
        let (chain, _, _) = crate::engine::compile_chain(&cache, spec)?;
        let shared = Arc::new(PoolShared {
            counters: chain.tasks.iter().map(|_| Counters::default()).collect(),
            chain: Arc::new(chain),
            idle: AtomicU32::new(1),
            in_flight: AtomicU64::new(0),
            avg_item_ns: AtomicU64::new(1),
            announced: AtomicU64::new(0),
            paused: Mutex::new(false),
            resume: Condvar::new(),
            stop: AtomicBool::new(false),
            workers: 1,
        });
        let (tx, rx) = crossbeam_channel::bounded(1);
        Ok(LocalChain {
            worker: Worker::new(shared, 0, "local".into())?,
            tx,
            _rx: rx,
        })
    }

    /// Runs every item of `items` through the chain in units of `unit` inputs and returns the
    /// outputs of each unit.
    pub fn run(&mut self, items: Packed, unit: u32) -> Vec<Outputs> {
        let n = items.len() as u32;
        let batch = Arc::new(Batch { seq: 0, items });
        let mut out = Vec::new();
        let (mut first, mut byte_start) = (0u32, 0usize);
        while first < n {
            let count = unit.max(1).min(n - first);
            let u = Unit {
                batch: batch.clone(),
                first,
                count,
                byte_start,
            };
            // One worker: units never split, so every unit yields its outputs.
            out.extend(self.worker.run_unit(&u, &self.tx));
            byte_start += batch.items.lens.0[first as usize..(first + count) as usize]
                .iter()
                .map(|&l| l as usize)
                .sum::<usize>();
            first += count;
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_are_split_by_whole_inputs_and_oversized_inputs_fail() {
        let mut items = Packed::new();
        let counts = vec![2, 0, 1, 3];
        for (i, &n) in counts.iter().enumerate() {
            for j in 0..n {
                items.push(format!("{i}-{j}-{}", "x".repeat(40)).as_bytes());
            }
        }
        let o = Outputs {
            seq: 1,
            first: 10,
            counts: U32s(counts),
            items,
            failures: vec![],
        };
        let parts = fit_in_frames(o.clone(), 250);
        assert!(parts.len() > 1);
        let firsts: Vec<u32> = parts.iter().map(|p| p.first).collect();
        assert_eq!(firsts[0], 10);
        let total: usize = parts.iter().map(|p| p.counts.0.len()).sum();
        assert_eq!(total, 4);
        // Too small for input 13's three outputs: it fails alone, the rest arrive.
        let parts = fit_in_frames(o, 200);
        let failed: Vec<u32> = parts
            .iter()
            .flat_map(|p| p.failures.iter().map(|f| f.index))
            .collect();
        assert_eq!(failed, [13]);
        let delivered: usize = parts.iter().map(|p| p.items.len()).sum();
        assert_eq!(delivered, 3);
    }
}
