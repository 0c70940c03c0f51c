//! Per-task counters, shared by a pool's workers and updated once per stage of a unit (not
//! per item), read for the node's status.

use std::sync::atomic::{AtomicU64, Ordering};

use protocol::TaskCounters;

/// What one stage of one unit did: counted by the stage as it calls the task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct StageCounts {
    /// Calls of the task (items in).
    pub calls: u64,
    /// Items emitted.
    pub outputs: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Calls that emitted nothing and did not fail.
    pub dropped: u64,
    /// Time spent in the stage.
    pub busy_ns: u64,
}

/// Per-task counters, shared by all workers.
#[derive(Debug, Default)]
pub(super) struct Counters {
    items_in: AtomicU64,
    items_out: AtomicU64,
    dropped: AtomicU64,
    failed: AtomicU64,
    busy_ns: AtomicU64,
}

impl Counters {
    /// Adds one stage's counts.
    pub(super) fn add(&self, s: StageCounts) {
        self.items_in.fetch_add(s.calls, Ordering::Relaxed);
        self.items_out.fetch_add(s.outputs, Ordering::Relaxed);
        self.failed.fetch_add(s.failed, Ordering::Relaxed);
        self.dropped.fetch_add(s.dropped, Ordering::Relaxed);
        self.busy_ns.fetch_add(s.busy_ns, Ordering::Relaxed);
    }

    /// Calls, outputs and time so far, for the grant policy.
    pub(super) fn cost(&self) -> super::grant::TaskCost {
        super::grant::TaskCost {
            calls: self.items_in.load(Ordering::Relaxed),
            outputs: self.items_out.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
        }
    }

    /// The counters of task `name` in the wire format.
    pub(super) fn snapshot(&self, name: &str) -> TaskCounters {
        TaskCounters {
            name: name.to_string(),
            items_in: self.items_in.load(Ordering::Relaxed),
            items_out: self.items_out.load(Ordering::Relaxed),
            dropped: self.dropped.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            busy_ns: self.busy_ns.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_add_up() {
        let c = Counters::default();
        let stage = StageCounts {
            calls: 20,
            outputs: 10,
            failed: 1,
            dropped: 9,
            busy_ns: 5,
        };
        c.add(stage);
        c.add(stage);
        let t = c.snapshot("f");
        assert_eq!(
            (
                t.name.as_str(),
                t.items_in,
                t.items_out,
                t.failed,
                t.dropped,
                t.busy_ns
            ),
            ("f", 40, 20, 2, 18, 10)
        );
    }
}
