//! Settling a node's `Outputs`: each input (or retry) it completes is marked done once, then
//! its outputs, failures and completion are handed over (at once, or through the reorder
//! buffer). A duplicate completion (possible only after a re-dispatch raced the original
//! answer) is dropped whole. A failure that may be tried again becomes a retry instead, and
//! continuations the node handed back become descendants the root now owns; the input
//! completes when its last descendant does (the ledger).

use std::collections::HashMap;

use protocol::packed::PackedIter;
use protocol::{Continuation, Failure, ItemId, NodeId, Outputs, Packed, Partial};

use super::handlers::{Delivery, InputDone};
use super::inflight::Attempt;
use super::order::Reorder;
use super::partial::Added;
use super::retry::{Origin, Retries, Retry};
use super::{Counters, Scheduler};
use crate::ItemFailure;

/// Bytes of a failing item quoted in its failure.
const ITEM_QUOTE: usize = 200;

impl Scheduler {
    pub(super) fn on_outputs(&mut self, id: NodeId, o: Outputs) {
        if self.handlers.is_none() || !self.outputs_fit(id, &o) {
            return;
        }
        if self.is_plain(id, &o) {
            self.settle_plain(id, &o);
        } else {
            self.settle_each(id, o);
        }
    }

    /// Whether `o` answers a batch node `id` holds, and is well formed: a node's message is
    /// checked before use.
    fn outputs_fit(&self, id: NodeId, o: &Outputs) -> bool {
        let Some(node) = self.nodes.get(&id) else {
            return false;
        };
        let Some(batch) = node.batches.get(&o.seq) else {
            tracing::warn!(node = %node.addr, seq = o.seq, "outputs for an unknown batch; ignored");
            return false;
        };
        let first = o.first as usize;
        let n = o.counts.0.len();
        let total: u64 = o.counts.0.iter().map(|&c| u64::from(c)).sum();
        let tasks = self.chain.as_ref().map_or(0, |c| c.tasks.len());
        let fit = first + n <= batch.done.len()
            && first + n <= batch.ids.len()
            && o.items.validate().is_ok()
            && total == o.items.len() as u64
            && continuations_fit(&o.continuations, first, n, tasks);
        if !fit {
            tracing::warn!(node = %node.addr, seq = o.seq, "malformed outputs; ignored");
        }
        fit
    }

    /// The common case (W1): nothing failed, nothing to track or hold back; each input
    /// completes in this message, on its first try.
    fn is_plain(&self, id: NodeId, o: &Outputs) -> bool {
        o.failures.is_empty()
            && o.continuations.is_empty()
            && self.attempts.is_empty()
            && self.order.is_none()
            && self.handlers.is_some()
            && self.nodes.get(&id).is_some_and(|n| {
                n.partials.is_empty() && n.batches.get(&o.seq).is_some_and(|b| b.tries.is_none())
            })
    }

    /// Settles a plain message: each fresh input is marked done, then its outputs go straight
    /// to the handler, then its completion when the handler wants it (`--joblog`).
    fn settle_plain(&mut self, id: NodeId, o: &Outputs) {
        let (Some(node), Some(handlers)) = (self.nodes.get_mut(&id), self.handlers.as_mut()) else {
            return;
        };
        let Some(batch) = node.batches.get_mut(&o.seq) else {
            return;
        };
        let first = o.first as usize;
        let wants_done = handlers.wants_done();
        // One clock read for the message: every input in it completed now.
        let took = batch.sent.elapsed();
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
                break; // checked: every index of the range has an id
            };
            batch.done[idx] = true;
            settled += 1;
            freed_bytes += batch.items.item_bytes(idx) as u64;
            for _ in 0..count {
                let Some(item) = items.next() else { break };
                handlers.output_in(input, item, &o.items.data);
            }
            if wants_done {
                handlers.done(InputDone {
                    input,
                    outputs: count,
                    failed: 0,
                    attempts: 1,
                    elapsed: took,
                });
            }
            outputs += u64::from(count);
        }
        batch.remaining -= settled as u32;
        node.settled(o.seq, settled, freed_bytes);
        self.counters.outputs += outputs;
        self.counters.completed += settled;
    }

    /// Settles a message input by input: failures become retries or are handed over,
    /// continuations become descendants, outputs sent ahead join the rest, and completions
    /// go through the ledger or the reorder buffer when they must wait.
    fn settle_each(&mut self, id: NodeId, o: Outputs) {
        let (Some(node), Some(handlers)) = (self.nodes.get_mut(&id), self.handlers.as_mut()) else {
            return;
        };
        let addr = node.addr;
        let Some(batch) = node.batches.get_mut(&o.seq) else {
            return;
        };
        let in_turn = handlers.wants_done() || self.order.is_some();
        let mut to = Settle::new(
            handlers,
            &mut self.retries,
            &mut self.attempts,
            &mut self.order,
        );
        let mut failures = sorted_by_index(o.failures, |f| f.index);
        let mut continuations = sorted_by_index(o.continuations, |c| c.index);
        let mut items = o.items.iter();
        let (mut freed_bytes, mut settled) = (0u64, 0u64);
        for (i, &count) in o.counts.0.iter().enumerate() {
            let idx = o.first as usize + i;
            let mut count = count as usize;
            let Some(input) = batch.ids.get(idx) else {
                break; // checked: every index of the range has an id
            };
            if batch.done[idx] {
                // A duplicate: its input was settled already.
                skip(&mut items, count);
                take_own(&mut failures, idx, |f| f.index);
                take_own(&mut continuations, idx, |c| c.index);
                continue;
            }
            batch.done[idx] = true;
            batch.remaining -= 1;
            settled += 1;
            freed_bytes += batch.items.item_bytes(idx) as u64;
            let at = Place {
                input,
                idx,
                attempt: batch.tries.as_ref().map_or(0, |t| t[idx].attempt),
                node: id,
                addr,
            };
            let input_item = || batch.items.iter().nth(idx).unwrap_or_default().to_vec();
            let (mut own_failures, mut new_retries) = failures_at(
                &mut failures,
                &at,
                self.options.retries,
                to.retries,
                &mut self.counters.retried,
                &input_item,
            );
            // Outputs sent ahead in parts come first; an input whose parts went past the
            // bound fails instead, all of its outputs dropped.
            let held = node.partials.take(o.seq, idx as u32);
            if held.as_ref().is_some_and(|h| h.over) {
                skip(&mut items, std::mem::take(&mut count));
                own_failures.push(over_bound(&at, input_item(), self.options.partial_bytes));
            }
            let ahead = held.filter(|h| !h.over).map(|h| h.items);
            new_retries += continuations_at(&mut continuations, &at, to.retries);
            let r = Results {
                input,
                attempt: at.attempt,
                is_retry: batch.tries.is_some(),
                ahead,
                count,
                failures: own_failures,
                new_retries,
                sent: batch.sent,
            };
            to.complete(in_turn, r, &mut items, &input_item);
        }
        node.settled(o.seq, settled, freed_bytes);
        let Settle { c, finished, .. } = to;
        self.counters.absorb(&c);
        for input in finished {
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
        node.progress = tokio::time::Instant::now();
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

/// Where the results of a message go: the parts of the scheduler that settling an input
/// touches besides its node.
struct Settle<'a> {
    handlers: &'a mut super::Handlers,
    retries: &'a mut Retries,
    attempts: &'a mut HashMap<u64, Attempt>,
    order: &'a mut Option<Reorder<Delivery>>,
    c: Counters,
    /// Inputs whose last descendant completed here.
    finished: Vec<ItemId>,
    /// When the message arrived: every input it completes took until then (one clock
    /// read a message, not one an input).
    now: std::time::Instant,
}

/// One input's (or descendant's) results in a message.
struct Results {
    input: ItemId,
    /// Which try of its item this was (0: the input itself).
    attempt: u32,
    /// A descendant (a retry or a continuation), not the input itself.
    is_retry: bool,
    /// Outputs it sent ahead in parts; `count` more are in the message.
    ahead: Option<Packed>,
    count: usize,
    failures: Vec<ItemFailure>,
    /// Descendants queued for it here (retries, continuations).
    new_retries: u32,
    /// When its batch was sent.
    sent: std::time::Instant,
}

impl<'a> Settle<'a> {
    fn new(
        handlers: &'a mut super::Handlers,
        retries: &'a mut Retries,
        attempts: &'a mut HashMap<u64, Attempt>,
        order: &'a mut Option<Reorder<Delivery>>,
    ) -> Settle<'a> {
        Settle {
            handlers,
            retries,
            attempts,
            order,
            c: Counters::default(),
            finished: Vec::new(),
            now: std::time::Instant::now(),
        }
    }

    /// Hands `r` on [`Settle::in_turn`] or [`Settle::at_once`].
    fn complete(
        &mut self,
        in_turn: bool,
        r: Results,
        items: &mut PackedIter<'_>,
        input_item: &dyn Fn() -> Vec<u8>,
    ) {
        if in_turn {
            self.in_turn(r, items, input_item);
        } else {
            self.at_once(r, items, input_item);
        }
    }

    /// Outputs and failures go at once; with descendants outstanding only the input's
    /// completion waits.
    fn at_once(
        &mut self,
        r: Results,
        items: &mut PackedIter<'_>,
        input_item: &dyn Fn() -> Vec<u8>,
    ) {
        if !r.is_retry && !self.attempts.is_empty() {
            // Forget how often a re-dispatched input was sent once it is done.
            self.attempts.remove(&r.input.0);
        }
        let (input, new_retries, is_retry) = (r.input, r.new_retries, r.is_retry);
        hand_over(
            self.handlers,
            input,
            r.ahead,
            r.count,
            items,
            r.failures,
            &mut self.c,
        );
        if is_retry {
            if self.retries.parents.child_done(input, new_retries) {
                self.finished.push(input);
            }
        } else if new_retries > 0 {
            self.retries
                .parents
                .open(input, new_retries, None, input_item());
        } else {
            self.c.completed += 1;
        }
    }

    /// With ordered delivery or completions wanted: an input's results wait for its
    /// descendants (in the ledger) and its turn (in the reorder buffer); a descendant's join
    /// its input's.
    fn in_turn(
        &mut self,
        r: Results,
        items: &mut PackedIter<'_>,
        input_item: &dyn Fn() -> Vec<u8>,
    ) {
        let ahead = r.ahead.as_ref().map_or(0, Packed::len);
        let mut outputs = r.ahead.unwrap_or_else(|| Packed::with_capacity(r.count, 0));
        for _ in 0..r.count {
            let Some(item) = items.next() else { break };
            outputs.push(item);
        }
        let count = (r.count + ahead) as u32;
        if r.is_retry {
            let failed = r.failures.len() as u32;
            self.retries
                .join(r.input, r.attempt, &outputs, count, failed, r.failures);
            if self.retries.parents.child_done(r.input, r.new_retries) {
                self.finished.push(r.input);
            }
            return;
        }
        let attempt = if self.attempts.is_empty() {
            None
        } else {
            self.attempts.remove(&r.input.0)
        };
        let d = Delivery {
            done: InputDone {
                input: r.input,
                outputs: count,
                failed: r.failures.len() as u32,
                attempts: attempt.map_or(1, |a| a.count),
                elapsed: self
                    .now
                    .saturating_duration_since(attempt.map_or(r.sent, |a| a.first)),
            },
            outputs,
            failures: r.failures,
        };
        if r.new_retries > 0 {
            self.retries
                .parents
                .open(r.input, r.new_retries, Some(d), input_item());
            return;
        }
        match self.order.as_mut() {
            None => self.handlers.deliver(d, &mut self.c),
            Some(order) => {
                let bytes = d.bytes();
                for d in order.complete(r.input.0, d, bytes) {
                    self.handlers.deliver(d, &mut self.c);
                }
            }
        }
    }
}

/// Where in a message an input's results are: for the failures and descendants built there.
struct Place {
    input: ItemId,
    /// Its index in the batch.
    idx: usize,
    /// Which try of its item this is (0: the input itself).
    attempt: u32,
    node: NodeId,
    addr: std::net::SocketAddr,
}

/// The entries of the input at `idx` at the front of `sorted` (those of inputs before it,
/// which a node may send only by mistake, are dropped).
fn take_own<T>(
    sorted: &mut std::iter::Peekable<std::vec::IntoIter<T>>,
    idx: usize,
    index: impl Fn(&T) -> u32,
) -> Vec<T> {
    let mut own = Vec::new();
    while let Some(x) = sorted.next_if(|x| index(x) as usize <= idx) {
        if index(&x) as usize == idx {
            own.push(x);
        }
    }
    own
}

/// `v` sorted by `index`, to be taken input by input.
fn sorted_by_index<T>(
    mut v: Vec<T>,
    index: impl Fn(&T) -> u32,
) -> std::iter::Peekable<std::vec::IntoIter<T>> {
    v.sort_by_key(|x| index(x));
    v.into_iter().peekable()
}

fn skip(items: &mut PackedIter<'_>, n: usize) {
    for _ in 0..n {
        items.next();
    }
}

/// The failures of the input at `at` (those of inputs before it are dropped): each that may
/// be tried again becomes a retry, entering the chain at its task on another node where there
/// is one; the others are returned, with how many retries were queued.
fn failures_at(
    failures: &mut std::iter::Peekable<std::vec::IntoIter<Failure>>,
    at: &Place,
    retries_allowed: u32,
    retries: &mut Retries,
    retried: &mut u64,
    input_item: &dyn Fn() -> Vec<u8>,
) -> (Vec<ItemFailure>, u32) {
    let (mut own, mut queued) = (Vec::new(), 0u32);
    for f in take_own(failures, at.idx, |f| f.index) {
        if let (Some(task), Some(item), true) = (&f.task, &f.item, at.attempt < retries_allowed) {
            retries.queue.push_back(Retry {
                parent: at.input,
                stage: task.index,
                item: item.to_vec(),
                attempt: at.attempt + 1,
                avoid: Some(at.node),
                origin: Origin::Failed,
            });
            *retried += 1;
            queued += 1;
            continue;
        }
        let (task, task_index) = match f.task {
            Some(t) => (t.name, Some(t.index)),
            None => (String::new(), None),
        };
        let input_item = match retries.parents.get(at.input) {
            Some(p) => p.input_item.clone(),
            None => input_item(),
        };
        own.push(ItemFailure {
            input: at.input,
            node: at.addr.to_string(),
            task,
            task_index,
            item_start: f.item_start.into_iter().take(ITEM_QUOTE).collect(),
            input_item,
            message: f.message,
        });
    }
    (own, queued)
}

/// Work a node handed back for the input at `at` (its generator's slow surplus): the root
/// owns it from here, as descendants; how many.
fn continuations_at(
    continuations: &mut std::iter::Peekable<std::vec::IntoIter<Continuation>>,
    at: &Place,
    retries: &mut Retries,
) -> u32 {
    let mut queued = 0;
    for c in take_own(continuations, at.idx, |c| c.index) {
        for item in &c.items {
            retries.queue.push_back(Retry {
                parent: at.input,
                stage: c.stage,
                item: item.to_vec(),
                attempt: at.attempt,
                avoid: None,
                origin: Origin::HandedBack { lost: 0 },
            });
            queued += 1;
        }
    }
    queued
}

/// The failure of an input whose outputs, sent ahead in parts, went past what the root holds.
fn over_bound(at: &Place, input_item: Vec<u8>, bound: u64) -> ItemFailure {
    ItemFailure {
        input: at.input,
        node: at.addr.to_string(),
        task: String::new(),
        task_index: None,
        item_start: Vec::new(),
        input_item,
        message: format!(
            "its outputs came in several messages and exceed the {bound} bytes the root holds for inputs not yet complete (partial_bytes)"
        ),
    }
}

/// Hands an input's outputs (those sent ahead first) and failures to the handler at once.
fn hand_over(
    handlers: &mut super::Handlers,
    input: ItemId,
    ahead: Option<Packed>,
    count: usize,
    items: &mut PackedIter<'_>,
    failures: Vec<ItemFailure>,
    c: &mut Counters,
) {
    for item in ahead.iter().flatten() {
        handlers.output(input, item);
        c.outputs += 1;
    }
    for _ in 0..count {
        let Some(item) = items.next() else { break };
        handlers.output(input, item);
    }
    c.outputs += count as u64;
    c.failed += failures.len() as u64;
    for f in failures {
        handlers.failure(f);
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
