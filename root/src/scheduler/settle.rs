//! Settling a node's `Outputs`: each input (or retry) it completes is marked done once, then
//! its outputs, failures and completion are handed over (at once, or through the reorder
//! buffer). A duplicate completion (possible only after a re-dispatch raced the original
//! answer) is dropped whole. A failure that may be tried again becomes a retry instead, and
//! continuations the node handed back become descendants the root now owns; the input
//! completes when its last descendant does (the ledger).

use protocol::{Continuation, Failure, ItemId, NodeId, Outputs, Packed, Partial};

use super::handlers::{Delivery, InputDone};
use super::partial::Added;
use super::retry::{Origin, Retry};
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
        let tasks = self.chain.as_ref().map_or(0, |c| c.tasks.len());
        if first + n > batch.done.len()
            || first + n > batch.ids.len()
            || o.items.validate().is_err()
            || total != o.items.len() as u64
            || !continuations_fit(&o.continuations, first, n, tasks)
        {
            tracing::warn!(node = %addr, seq = o.seq, "malformed outputs; ignored");
            return;
        }
        let Some(handlers) = self.handlers.as_mut() else {
            return;
        };
        if o.failures.is_empty()
            && o.continuations.is_empty()
            && node.partials.is_empty()
            && batch.tries.is_none()
            && self.attempts.is_empty()
            && !handlers.wants_done()
            && self.order.is_none()
        {
            // The common case (W1): nothing failed, nothing to track or hold back. Each fresh
            // input is marked done, then its outputs go straight to the handler.
            let mut items = o.items.iter();
            let (mut outputs, mut settled, mut freed_bytes) = (0u64, 0u64, 0u64);
            for (i, &count) in o.counts.0.iter().enumerate() {
                let idx = first + i;
                if batch.done[idx] {
                    for _ in 0..count {
                        items.next();
                    }
                    continue;
                }
                let Some(input) = batch.ids.get(idx) else {
                    break; // checked above: every index of the range has an id
                };
                batch.done[idx] = true;
                settled += 1;
                freed_bytes += batch.items.item_bytes(idx) as u64;
                for _ in 0..count {
                    let Some(item) = items.next() else { break };
                    handlers.output_in(input, item, &o.items.data);
                }
                outputs += u64::from(count);
            }
            batch.remaining -= settled as u32;
            if batch.remaining == 0 {
                node.batches.remove(&o.seq);
            }
            node.in_items -= settled;
            node.in_bytes = node.in_bytes.saturating_sub(freed_bytes);
            self.counters.outputs += outputs;
            self.counters.completed += settled;
            return;
        }
        let retries_allowed = self.options.retries;
        // Failures by input, in input order.
        let mut failures: Vec<Failure> = o.failures;
        failures.sort_by_key(|f| f.index);
        let mut failures = failures.into_iter().peekable();
        let mut continuations: Vec<Continuation> = o.continuations;
        continuations.sort_by_key(|c| c.index);
        let mut continuations = continuations.into_iter().peekable();
        let slow = handlers.wants_done() || self.order.is_some();
        let mut items = o.items.iter();
        let mut c = Counters::default();
        let mut freed_bytes = 0u64;
        let mut settled = 0u64;
        // Inputs whose last retry completed here.
        let mut finished_parents = Vec::new();
        for i in 0..n {
            let idx = first + i;
            let mut count = o.counts.0[i] as usize;
            let Some(input) = batch.ids.get(idx) else {
                break; // checked above: every index of the range has an id
            };
            if batch.done[idx] {
                for _ in 0..count {
                    items.next();
                }
                while failures.next_if(|f| f.index as usize <= idx).is_some() {}
                while continuations.next_if(|c| c.index as usize <= idx).is_some() {}
                continue;
            }
            batch.done[idx] = true;
            batch.remaining -= 1;
            settled += 1;
            freed_bytes += batch.items.item_bytes(idx) as u64;
            // This item's try (0: the input itself).
            let attempt = batch.tries.as_ref().map_or(0, |t| t[idx].attempt);
            let input_item = || batch.items.iter().nth(idx).unwrap_or_default().to_vec();
            let mut own_failures = Vec::new();
            let mut new_retries = 0u32;
            while let Some(f) = failures.next_if(|f| f.index as usize <= idx) {
                if f.index as usize != idx {
                    continue;
                }
                if let (Some(task), Some(item), true) =
                    (&f.task, &f.item, attempt < retries_allowed)
                {
                    self.retries.queue.push_back(Retry {
                        parent: input,
                        stage: task.index,
                        item: item.to_vec(),
                        attempt: attempt + 1,
                        avoid: Some(id),
                        origin: Origin::Failed,
                    });
                    self.counters.retried += 1;
                    new_retries += 1;
                    continue;
                }
                let (task, task_index) = match f.task {
                    Some(t) => (t.name, Some(t.index)),
                    None => (String::new(), None),
                };
                let input_item = match self.retries.parents.get(input) {
                    Some(p) => p.input_item.clone(),
                    None => input_item(),
                };
                own_failures.push(ItemFailure {
                    input,
                    node: addr.to_string(),
                    task,
                    task_index,
                    item_start: f.item_start.into_iter().take(ITEM_QUOTE).collect(),
                    input_item,
                    message: f.message,
                });
            }
            // Outputs sent ahead in parts come first; an input whose parts went past the
            // bound fails instead, all of its outputs dropped.
            let held = if node.partials.is_empty() {
                None
            } else {
                node.partials.take(o.seq, idx as u32)
            };
            let held = match held {
                Some(h) if h.over => {
                    for _ in 0..count {
                        items.next();
                    }
                    count = 0;
                    own_failures.push(ItemFailure {
                        input,
                        node: addr.to_string(),
                        task: String::new(),
                        task_index: None,
                        item_start: Vec::new(),
                        input_item: input_item(),
                        message: format!(
                            "its outputs came in several messages and exceed the {} bytes the root holds for inputs not yet complete (partial_bytes)",
                            self.options.partial_bytes
                        ),
                    });
                    None
                }
                h => h.map(|h| h.items),
            };
            let ahead = held.as_ref().map_or(0, Packed::len);
            // Work the node handed back: the root owns it from here, as descendants.
            while let Some(c) = continuations.next_if(|c| c.index as usize <= idx) {
                if c.index as usize != idx {
                    continue;
                }
                for item in &c.items {
                    self.retries.queue.push_back(Retry {
                        parent: input,
                        stage: c.stage,
                        item: item.to_vec(),
                        attempt,
                        avoid: None,
                        origin: Origin::HandedBack { lost: 0 },
                    });
                    new_retries += 1;
                }
            }
            let is_retry = batch.tries.is_some();
            if !is_retry && !self.attempts.is_empty() {
                // Forget how often a re-dispatched input was sent once it is done.
                self.attempts.remove(&input.0);
            }
            if !slow {
                // The fast path: outputs and failures go at once; with retries outstanding
                // only the input's completion waits.
                for item in held.iter().flatten() {
                    handlers.output(input, item);
                }
                c.outputs += ahead as u64;
                for _ in 0..count {
                    let Some(item) = items.next() else { break };
                    handlers.output(input, item);
                }
                c.outputs += count as u64;
                c.failed += own_failures.len() as u64;
                for f in own_failures {
                    handlers.failure(f);
                }
                if is_retry {
                    if self.retries.parents.child_done(input, new_retries) {
                        finished_parents.push(input);
                    }
                } else if new_retries > 0 {
                    self.retries
                        .parents
                        .open(input, new_retries, None, input_item());
                } else {
                    c.completed += 1;
                }
                continue;
            }
            let mut outputs = held.unwrap_or_else(|| Packed::with_capacity(count, 0));
            let count = count + ahead;
            for _ in ahead..count {
                let Some(item) = items.next() else { break };
                outputs.push(item);
            }
            if is_retry {
                if let Some(held) = self
                    .retries
                    .parents
                    .get_mut(input)
                    .and_then(|p| p.held.as_mut())
                {
                    for item in &outputs {
                        held.outputs.push(item);
                    }
                    held.done.outputs += count as u32;
                    held.done.failed += own_failures.len() as u32;
                    // Try `attempt` of an item is its input's try `attempt + 1` at least.
                    held.done.attempts = held.done.attempts.max(attempt + 1);
                    held.failures.extend(own_failures);
                }
                if self.retries.parents.child_done(input, new_retries) {
                    finished_parents.push(input);
                }
                continue;
            }
            let attempt = if self.attempts.is_empty() {
                None
            } else {
                self.attempts.remove(&input.0)
            };
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
            if new_retries > 0 {
                self.retries
                    .parents
                    .open(input, new_retries, Some(d), input_item());
                continue;
            }
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
        for input in finished_parents {
            self.finish_parent(input);
        }
    }

    /// Outputs an input sends ahead of its completion: held (bounded) until it arrives.
    pub(super) fn on_partial(&mut self, id: NodeId, p: Partial) {
        let held: u64 = self.nodes.values().map(|n| n.partials.bytes()).sum();
        let room = self.options.partial_bytes.saturating_sub(held);
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let Some(batch) = node.batches.get(&p.seq) else {
            tracing::warn!(node = %node.addr, seq = p.seq, "partial outputs for an unknown batch; ignored");
            return;
        };
        let index = p.index as usize;
        if index >= batch.done.len() || p.items.validate().is_err() {
            tracing::warn!(node = %node.addr, seq = p.seq, "malformed partial outputs; ignored");
            return;
        }
        if batch.done[index] {
            return;
        }
        node.progress = std::time::Instant::now();
        if let Added::Over(_) = node.partials.add(p.seq, p.index, &p.items, room) {
            tracing::warn!(node = %node.addr, bound = self.options.partial_bytes,
                "an input's outputs exceed what the root holds for inputs not yet complete; it fails");
        }
    }

    /// An input's last descendant completed: the input is complete.
    pub(super) fn finish_parent(&mut self, input: ItemId) {
        let Some(p) = self.retries.parents.close(input) else {
            return;
        };
        match p.held {
            Some(d) => self.deliver(d),
            None => self.counters.completed += 1,
        }
    }
}

/// Whether every continuation names an input of the range `first .. first+n` and a task of
/// the chain, and its items are well formed: a node's message is checked before use.
fn continuations_fit(conts: &[Continuation], first: usize, n: usize, tasks: usize) -> bool {
    conts.iter().all(|c| {
        (first..first + n).contains(&(c.index as usize))
            && (c.stage.0 as usize) < tasks
            && c.items.validate().is_ok()
    })
}

#[cfg(test)]
mod tests {
    use protocol::TaskIndex;

    use super::*;

    #[test]
    fn continuations_must_name_an_input_of_the_range_and_a_task() {
        let c = |index, stage| Continuation {
            index,
            stage: TaskIndex(stage),
            items: ["a"].into_iter().collect(),
        };
        assert!(continuations_fit(&[c(3, 1), c(4, 2)], 3, 2, 3));
        assert!(!continuations_fit(&[c(5, 1)], 3, 2, 3), "past the range");
        assert!(!continuations_fit(&[c(2, 1)], 3, 2, 3), "before it");
        assert!(!continuations_fit(&[c(3, 3)], 3, 2, 3), "no such task");
        assert!(continuations_fit(&[], 0, 0, 0));
    }
}
