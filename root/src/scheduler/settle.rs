//! Settling a node's `Outputs`: each input it completes is marked done once, then its
//! outputs, failures and completion are handed over (at once, or through the reorder
//! buffer). A duplicate completion (possible only after a re-dispatch raced the original
//! answer) is dropped whole.

use protocol::{Failure, ItemId, NodeId, Outputs, Packed};

use super::handlers::{Delivery, InputDone};
use super::{Counters, Scheduler};
use crate::ItemFailure;

/// Bytes of a failing item quoted in its failure.
const ITEM_QUOTE: usize = 200;

impl Scheduler {
    pub(super) fn on_outputs(&mut self, id: NodeId, o: Outputs) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let addr = node.addr;
        let Some(batch) = node.batches.get_mut(&o.seq) else {
            tracing::warn!(node = %addr, seq = o.seq, "outputs for an unknown batch; ignored");
            return;
        };
        let first = o.first as usize;
        let n = o.counts.0.len();
        let total: u64 = o.counts.0.iter().map(|&c| u64::from(c)).sum();
        if first + n > batch.done.len()
            || o.items.validate().is_err()
            || total != o.items.len() as u64
        {
            tracing::warn!(node = %addr, seq = o.seq, "malformed outputs; ignored");
            return;
        }
        let Some(handlers) = self.handlers.as_mut() else {
            return;
        };
        // Failures by input, in input order.
        let mut failures: Vec<Failure> = o.failures;
        failures.sort_by_key(|f| f.index);
        let mut failures = failures.into_iter().peekable();
        let slow = handlers.wants_done() || self.order.is_some();
        let mut items = o.items.iter();
        let mut c = Counters::default();
        let mut freed_bytes = 0u64;
        let mut settled = 0u64;
        for i in 0..n {
            let idx = first + i;
            let count = o.counts.0[i] as usize;
            let dup = batch.done[idx];
            let input = batch.ids.get(idx).unwrap_or(ItemId(0));
            if dup {
                for _ in 0..count {
                    items.next();
                }
                while failures.next_if(|f| f.index as usize <= idx).is_some() {}
                continue;
            }
            batch.done[idx] = true;
            batch.remaining -= 1;
            settled += 1;
            freed_bytes += u64::from(batch.items.lens.0[idx]);
            let attempt = if self.attempts.is_empty() {
                None
            } else {
                self.attempts.remove(&input.0)
            };
            let mut own_failures = Vec::new();
            while let Some(f) = failures.next_if(|f| f.index as usize <= idx) {
                if f.index as usize == idx {
                    let whole = batch.items.iter().nth(idx).unwrap_or_default();
                    let (task, task_index) = match f.task {
                        Some(t) => (t.name, Some(t.index)),
                        None => (String::new(), None),
                    };
                    own_failures.push(ItemFailure {
                        input,
                        node: addr.to_string(),
                        task,
                        task_index,
                        item_start: f.item_start.into_iter().take(ITEM_QUOTE).collect(),
                        input_item: whole.to_vec(),
                        message: f.message,
                    });
                }
            }
            if !slow {
                // The fast path: no completion handler, no ordering.
                for _ in 0..count {
                    let Some(item) = items.next() else { break };
                    handlers.output(input, item);
                }
                c.outputs += count as u64;
                c.completed += 1;
                c.failed += own_failures.len() as u64;
                for f in own_failures {
                    handlers.failure(f);
                }
                continue;
            }
            let mut outputs = Packed::with_capacity(count, 0);
            for _ in 0..count {
                let Some(item) = items.next() else { break };
                outputs.push(item);
            }
            let done = InputDone {
                input,
                outputs: count as u32,
                failed: own_failures.len() as u32,
                attempts: attempt.map_or(1, |a| a.count),
                elapsed: attempt.map_or(batch.sent, |a| a.first).elapsed(),
            };
            let d = Delivery {
                outputs,
                failures: own_failures,
                done,
            };
            match self.order.as_mut() {
                None => handlers.deliver(d, &mut c),
                Some(order) => {
                    let bytes = d.bytes();
                    for d in order.complete(input.0, d, bytes) {
                        handlers.deliver(d, &mut c);
                    }
                }
            }
        }
        if batch.remaining == 0 {
            node.batches.remove(&o.seq);
        }
        node.in_items -= settled;
        node.in_bytes = node.in_bytes.saturating_sub(freed_bytes);
        self.counters.outputs += c.outputs;
        self.counters.failed += c.failed;
        self.counters.completed += c.completed;
    }
}
