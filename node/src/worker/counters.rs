//! Per-task counters, shared by a pool's workers and updated once per stage of a unit (not
//! per item), read for the node's status.

use std::sync::atomic::AtomicU64;

use crate::engine::OutBuf;

/// Per-task counters, shared by all workers, updated once per stage of a unit.
#[derive(Debug, Default)]
pub struct Counters {
    pub(super) items_in: AtomicU64,
    pub(super) items_out: AtomicU64,
    pub(super) dropped: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) busy_ns: AtomicU64,
}

/// Approximate number of calls that emitted something: runs of equal input index. Exact for
/// non-generators; for generators it counts distinct inputs, which is what "dropped" means.
pub(super) fn count_inputs_with_output(stage: &OutBuf) -> u64 {
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
