//! [`LocalChain`] (feature `local-chain`): a chain run in the calling thread with no pool
//! and no network, for the benchmark's in-process floor. Not part of a node's server.

use std::sync::Arc;

use protocol::{Outputs, Packed};

use super::pool::PoolShared;
use super::thread::Worker;
use super::{Batch, Unit, Work};
use crate::error::SetupError;

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
        let chain = crate::engine::compile_local(spec)?;
        let mut shared = PoolShared::new(Arc::new(chain), 1, Some(1));
        shared.hand_back = false;
        let shared = Arc::new(shared);
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
        let batch = Arc::new(Batch {
            seq: 0,
            items,
            stage: 0,
            held: Default::default(),
        });
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
            byte_start += batch.items.span(first as usize, count as usize);
            first += count;
        }
        out
    }
}
