//! The worker pool: threads apart from the I/O runtime, each with its own instance of every
//! task, taking work units (runs of one batch) from a shared bounded queue and running them
//! through the chain stage by stage.
//!
//! Stage-by-stage (every item of the unit through task 0, then every output through task 1…)
//! keeps one instance hot at a time and needs no allocation per item: each stage writes into
//! a reused `OutBuf` that is swapped into the task's store for the duration of the stage.

//!
//! - [`pool`]: [`Pool`], the threads of one chain, and the state they share with the
//!   connection (credit, pause, counters).
//! - [`thread`]: one worker thread: units and fan-out parts through the chain.
//! - [`stage`]: one task over the items of one stage, batched or item by item, with
//!   failures recorded per item.
//! - [`grant`]: the grant policy: credit window, unit size and fan-out split from the
//!   measured time items take.
//! - [`counters`]: per-task counters.
//! - [`frames`]: outputs split into messages that fit in a frame.
//! - `local` (feature `local-chain`): the chain in the calling thread, for the benchmark.

mod counters;
mod frames;
mod grant;
mod instances;
#[cfg(feature = "local-chain")]
mod local;
mod pool;
mod stage;
#[cfg(test)]
mod tests;
mod thread;

use std::sync::{Arc, Mutex};

use protocol::{Continuation, Failure, Packed};

use crate::engine::OutBuf;

pub(crate) use frames::undeliverable;
#[cfg(feature = "local-chain")]
pub use local::LocalChain;
pub(crate) use pool::WINDOW_BYTES;
pub use pool::{Pool, PoolShared};

/// Largest outputs message a node sends (below the 64 MiB frame limit).
const MAX_OUTPUT_MESSAGE: usize = 48 << 20;

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
    /// The task its items enter the chain at (0, or a failed item's task on a retry).
    pub stage: usize,
    /// Its bytes, counted in the pool's bytes in flight until the batch is dropped.
    #[allow(dead_code)] // A guard: only its drop matters.
    pub held: Held,
}

/// Bytes counted in a shared counter for as long as this lives: the node's bytes in flight
/// are counted per batch (not per item) and released when the batch's last unit is done.
#[derive(Debug, Default)]
pub struct Held {
    bytes: u64,
    counter: Option<Arc<std::sync::atomic::AtomicU64>>,
}

impl Held {
    /// Adds `bytes` to `counter` until dropped.
    pub fn new(bytes: u64, counter: &Arc<std::sync::atomic::AtomicU64>) -> Held {
        counter.fetch_add(bytes, std::sync::atomic::Ordering::Relaxed);
        Held {
            bytes,
            counter: Some(counter.clone()),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(c) = &self.counter {
            c.fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
        }
    }
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

/// One worker's finished share of a group: its outputs, failures and continuations.
type Share = (OutBuf, Vec<Failure>, Vec<Continuation>);

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
