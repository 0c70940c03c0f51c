//! [`Pool`]: the worker threads of one chain, started together (every task instantiated
//! and initialised on every worker before the setup answers), fed work units from a bounded
//! queue; and [`PoolShared`], what the workers share with the connection: counters, the
//! credit window sized from measured speed, pause and stop.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use protocol::{Credit, Msg, TaskCounters};
use tokio::sync::mpsc;

use super::counters::Counters;
use super::thread::Worker;
use super::{Batch, MAX_UNIT, Unit, Work};
use crate::engine::CompiledChain;
use crate::error::{RequestError, SetupError};

/// How long one work unit should take; units are sized from the measured time per item.
const UNIT_TARGET_NS: u64 = 2_000_000;
/// How much time worth of items a node wants in flight per worker.
const WINDOW_TARGET_NS: u64 = 20_000_000;
/// Bytes a node accepts in flight (its work queue and the units its workers run): enough for
/// ~30 ms of big items at 1 GB/s, small enough for a laptop.
const WINDOW_BYTES: u64 = 32 << 20;
/// Most items a node asks for per worker.
const MAX_WINDOW_PER_WORKER: u64 = 128 * 1024;

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
    /// Average nanoseconds one input takes through the whole chain (EWMA).
    pub avg_item_ns: AtomicU64,
    /// Credit last announced to the root (items).
    pub announced: AtomicU64,
    pub(super) paused: Mutex<bool>,
    pub(super) resume: Condvar,
    pub(super) stop: AtomicBool,
    pub(super) workers: u32,
    /// Failures carry the whole failing item (the root tries items again).
    pub send_failed_items: AtomicBool,
}

impl PoolShared {
    /// The state of `workers` workers of `chain`, assuming items take `avg_item_ns`.
    pub(super) fn new(chain: Arc<CompiledChain>, workers: u32, avg_item_ns: u64) -> Self {
        PoolShared {
            counters: chain.tasks.iter().map(|_| Counters::default()).collect(),
            chain,
            idle: AtomicU32::new(workers),
            in_flight: AtomicU64::new(0),
            in_bytes: Arc::new(AtomicU64::new(0)),
            avg_item_ns: AtomicU64::new(avg_item_ns),
            announced: AtomicU64::new(0),
            paused: Mutex::new(false),
            resume: Condvar::new(),
            stop: AtomicBool::new(false),
            workers,
            send_failed_items: AtomicBool::new(false),
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
        // What this chain's items took last time, else a cautious guess (small units, a
        // small window) until the first unit is measured.
        let shared = Arc::new(PoolShared::new(chain, workers, hint.unwrap_or(200_000)));
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
