//! [`Pool`]: the worker threads of one chain, started together (every task instantiated
//! and initialised on every worker before the setup answers), fed work units from a bounded
//! queue; and [`PoolShared`], what the workers share with the connection: counters, the
//! credit window sized from measured speed, pause and stop.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use protocol::{Credit, TaskCounters};

use super::counters::Counters;
use super::grant;
use super::thread::Worker;
use super::{Batch, Unit, Work};
use crate::engine::CompiledChain;
use crate::error::{RequestError, SetupError};

/// Bytes a node accepts in flight (its work queue and the units its workers run): enough for
/// ~30 ms of big items at 1 GB/s, small enough for a laptop.
pub(crate) const WINDOW_BYTES: u64 = 32 << 20;

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

/// Whether a batch of `bytes` may join `in_bytes` in flight: within the window granted, plus
/// one item of up to `max_item` that a root may send alone.
fn within_bytes(in_bytes: u64, bytes: u64, max_item: u64) -> bool {
    in_bytes.saturating_add(bytes) <= WINDOW_BYTES.saturating_add(max_item)
}

/// State shared by the pool's workers and the connection that feeds them.
#[derive(Debug)]
pub struct PoolShared {
    /// The chain.
    pub chain: Arc<CompiledChain>,
    /// One per task.
    pub(super) counters: Vec<Counters>,
    /// Workers not running a unit.
    pub idle: AtomicU32,
    /// Inputs received and not yet answered.
    pub in_flight: AtomicU64,
    /// Bytes of the batches received and not yet done (counted per batch).
    pub in_bytes: Arc<AtomicU64>,
    /// Average nanoseconds one input takes through the chain (see [`grant::blend`]); read
    /// only once `measured` is set.
    avg_item_ns: AtomicU64,
    /// Whether `avg_item_ns` holds a measurement (or a hint from an earlier run) yet.
    measured: AtomicBool,
    /// Credit last announced to the root (items).
    pub announced: AtomicU64,
    /// The round trip to the root (as it measured it): the window covers it too.
    pub rtt_ns: AtomicU64,
    pub(super) paused: Mutex<bool>,
    pub(super) resume: Condvar,
    pub(super) stop: AtomicBool,
    /// Notified when `in_flight` falls to zero (a draining node waits for it).
    pub drained: tokio::sync::Notify,
    pub(super) workers: u32,
    /// Failures carry the whole failing item (the root tries items again).
    pub send_failed_items: AtomicBool,
    /// Per task: whether this node carries every label it needs. Items reaching a task it
    /// does not go back to the root as continuations, for a node that does.
    pub(super) runnable: Vec<bool>,
    /// Whether a fan-out may be split (a node's pool); without, the one worker runs all of
    /// it (the in-process floor, which has neither other workers nor a root).
    pub(super) hand_back: bool,
}

impl PoolShared {
    /// The state of `workers` workers of `chain`, assuming items take `item_ns` (`None`:
    /// nothing known, start small).
    pub(super) fn new(chain: Arc<CompiledChain>, workers: u32, item_ns: Option<u64>) -> Self {
        let tasks = chain.tasks.len();
        PoolShared {
            counters: chain.tasks.iter().map(|_| Counters::default()).collect(),
            chain,
            idle: AtomicU32::new(workers),
            in_flight: AtomicU64::new(0),
            in_bytes: Arc::new(AtomicU64::new(0)),
            avg_item_ns: AtomicU64::new(item_ns.unwrap_or(0)),
            measured: AtomicBool::new(item_ns.is_some()),
            announced: AtomicU64::new(0),
            rtt_ns: AtomicU64::new(0),
            paused: Mutex::new(false),
            resume: Condvar::new(),
            stop: AtomicBool::new(false),
            drained: tokio::sync::Notify::new(),
            workers,
            send_failed_items: AtomicBool::new(false),
            runnable: vec![true; tasks],
            hand_back: true,
        }
    }

    /// The counters in the wire format.
    pub fn task_counters(&self) -> Vec<TaskCounters> {
        self.chain
            .tasks
            .iter()
            .zip(&self.counters)
            .map(|(t, c)| c.snapshot(&t.name))
            .collect()
    }

    /// Nanoseconds an input takes through the chain, once measured.
    pub fn item_ns(&self) -> Option<u64> {
        self.measured
            .load(Ordering::Relaxed)
            .then(|| self.avg_item_ns.load(Ordering::Relaxed))
    }

    /// A unit of `count` inputs took `unit_ns`.
    pub(super) fn record_unit(&self, unit_ns: u64, count: u32) {
        let avg = grant::blend(self.item_ns(), unit_ns, count);
        self.avg_item_ns.store(avg, Ordering::Relaxed);
        self.measured.store(true, Ordering::Relaxed);
    }

    /// What one item entering task `from` costs through the rest of the chain, from this
    /// node's counters; `None` while a task on the way has never run.
    pub(super) fn downstream_ns(&self, from: usize) -> Option<u64> {
        let costs: Vec<grant::TaskCost> = self
            .counters
            .get(from..)
            .unwrap_or_default()
            .iter()
            .map(Counters::cost)
            .collect();
        grant::downstream_ns(&costs)
    }

    /// How many inputs a work unit should hold now.
    pub fn unit_size(&self) -> u32 {
        grant::unit_size(self.item_ns())
    }

    /// The credit window the node wants now.
    pub fn credit(&self) -> Credit {
        Credit {
            items: grant::window_items(
                self.item_ns(),
                self.workers,
                self.rtt_ns.load(Ordering::Relaxed),
            ),
            bytes: WINDOW_BYTES,
        }
    }

    /// Counts `n` inputs as answered; wakes a drain waiting for none to be left.
    pub(super) fn answered(&self, n: u64) {
        if n > 0 && self.in_flight.fetch_sub(n, Ordering::Relaxed) == n {
            self.drained.notify_one();
        }
    }

    /// Stops or restarts taking units.
    pub fn set_paused(&self, paused: bool) {
        let mut p = self.paused.lock().unwrap_or_else(|e| e.into_inner());
        *p = paused;
        self.resume.notify_all();
    }

    pub(super) fn wait_unpaused(&self) {
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
    /// Never sent on: dropping it wakes every worker waiting for work, to exit.
    stopping: Option<crossbeam_channel::Sender<()>>,
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
        out: crate::outbox::Outbox,
    ) -> Result<Pool, SetupError> {
        // What this chain's items took last time, else nothing: small units and a small
        // window until the first unit is measured.
        let hint = speed_hint(&chain);
        let runnable = chain.tasks.iter().map(|t| t.is_placed()).collect();
        let mut shared = PoolShared::new(chain, workers, hint);
        shared.runnable = runnable;
        let shared = Arc::new(shared);
        let (tx, rx) = crossbeam_channel::bounded::<Work>(1 << 16);
        let (stop_tx, stop_rx) = crossbeam_channel::bounded::<()>(0);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<(), SetupError>>();
        let mut threads = Vec::with_capacity(workers as usize);
        // Component tasks' blocking WASI calls (a sleep) wait on the tokio runtime the
        // worker is in: the node's own, rather than one wasmtime-wasi would start with
        // threads of its own that outlive every chain.
        let runtime = tokio::runtime::Handle::try_current().ok();
        for w in 0..workers {
            let runtime = runtime.clone();
            let shared = shared.clone();
            let rx = rx.clone();
            let stop = stop_rx.clone();
            let tx = tx.clone();
            let out = out.clone();
            let ready = ready_tx.clone();
            let node = node.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("pcluster-worker-{w}"))
                .spawn(move || {
                    let _in_runtime = runtime.as_ref().map(tokio::runtime::Handle::enter);
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
                    worker.run(rx, stop, tx, out);
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
            stopping: Some(stop_tx),
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
        // The root keeps within the bytes granted; one item past them may go alone.
        let bytes = items.items.bytes() as u64;
        if !within_bytes(self.shared.in_bytes.load(Ordering::Relaxed), bytes, limit) {
            return Err(RequestError::OverCredit);
        }
        let tasks = self.shared.chain.tasks.len();
        if items.stage.0 as usize >= tasks {
            return Err(RequestError::BadStage {
                stage: items.stage.0,
                tasks,
            });
        }
        self.submit(Batch {
            seq: items.seq,
            items: items.items,
            stage: items.stage.0 as usize,
            held: super::Held::new(bytes, &self.shared.in_bytes),
        })
    }

    /// Splits a batch into work units and queues them.
    ///
    /// # Errors
    /// When the queue is full (the root ignored its credit) or the pool is stopped.
    pub(crate) fn submit(&self, batch: Batch) -> Result<(), RequestError> {
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
            let bytes = batch.items.span(first as usize, count as usize);
            let u = Unit {
                batch: batch.clone(),
                first,
                count,
                byte_start,
            };
            if queue.try_send(Work::Unit(u)).is_err() {
                self.shared.answered(u64::from(n - first));
                return Err(RequestError::OverCredit);
            }
            first += count;
            byte_start += bytes;
        }
        Ok(())
    }

    /// Stops the workers: they finish the unit they run (bounded by the chain's deadline)
    /// and exit; queued units are dropped. Does not wait for the threads.
    pub fn stop(&mut self) {
        if !self.shared.stop.load(Ordering::Relaxed)
            && let Some(ns) = self.shared.item_ns()
        {
            remember_speed(&self.shared.chain, ns);
        }
        self.shared.stop.store(true, Ordering::Relaxed);
        self.queue = None;
        self.stopping = None;
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

#[cfg(test)]
mod bytes_tests {
    use super::*;

    #[test]
    fn batches_past_the_granted_bytes_are_over_credit() {
        assert!(within_bytes(0, WINDOW_BYTES, 0));
        assert!(
            within_bytes(WINDOW_BYTES - 10, 16 << 20, 16 << 20),
            "one big item"
        );
        assert!(!within_bytes(WINDOW_BYTES, 1, 0));
        assert!(!within_bytes(u64::MAX, 1, 0), "no overflow");
    }
}
