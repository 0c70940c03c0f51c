//! One worker thread: takes work (units of a batch, or shares of a large fan-out) from the
//! pool's queue, runs it through the chain stage by stage, and sends the outputs of each
//! unit in messages that fit a frame, with credit updates when its speed changed.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::{Continuation, Failure, Msg, Outputs, Packed, TaskIndex, U32s};

use super::counters::StageCounts;
use super::frames::fit_in_frames;
use super::grant::{self, FanOut};
use super::pool::PoolShared;
use super::stage::{FailureSink, StageCtx};
use super::{Group, MAX_OUTPUT_MESSAGE, Part, Unit, Work};
use crate::engine::tags::Convert;
use crate::engine::{CompiledChain, Graph, OutBuf, TaskInstance};
use crate::error::{SetupError, TaskProblem};

/// Tasks whose calls take less than this run batched: a batch stays far below any deadline.
const BATCH_BELOW_NS: u64 = 20_000;
/// The same for component tasks, whose every call crosses the component boundary (lifting
/// and lowering lists): batching pays off for much slower items.
const COMPONENT_BATCH_BELOW_NS: u64 = 200_000;

pub(super) struct Worker {
    shared: Arc<PoolShared>,
    index: u32,
    node: Arc<str>,
    /// One instance per task; an `Err` when it could not be rebuilt after a trap.
    instances: Vec<Result<TaskInstance, Arc<TaskProblem>>>,
    /// Recent nanoseconds per call of each task on this worker.
    task_ns: Vec<u64>,
    /// Fan-out parts the queue had no room for; this worker runs them itself.
    deferred: Vec<Part>,
    /// Work of the current unit handed back to the root (input indices within the unit).
    conts: Vec<Continuation>,
    cur: OutBuf,
    spare: OutBuf,
}

impl Worker {
    pub(super) fn new(
        shared: Arc<PoolShared>,
        index: u32,
        node: Arc<str>,
    ) -> Result<Worker, SetupError> {
        let instances = super::instances::instances(&shared, index, &node)?;
        Ok(Worker {
            task_ns: vec![0; shared.chain.tasks.len()],
            deferred: Vec::new(),
            conts: Vec::new(),
            shared,
            index,
            node,
            instances,
            cur: OutBuf::default(),
            spare: OutBuf::default(),
        })
    }

    pub(super) fn run(
        mut self,
        rx: crossbeam_channel::Receiver<Work>,
        stop: crossbeam_channel::Receiver<()>,
        tx: crossbeam_channel::Sender<Work>,
        out: crate::outbox::Outbox,
    ) {
        loop {
            self.shared.wait_unpaused();
            if self.shared.stop.load(Ordering::Relaxed) {
                return;
            }
            // Workers hold a sender for fan-out parts, so the work channel never closes:
            // the pool's stop closes `stop` instead, waking every waiting worker at once.
            let work = crossbeam_channel::select! {
                recv(rx) -> w => match w {
                    Ok(w) => w,
                    Err(_) => return,
                },
                recv(stop) -> _ => return,
            };
            if self.shared.stop.load(Ordering::Relaxed) {
                return;
            }
            self.shared.idle.fetch_sub(1, Ordering::Relaxed);
            let started = Instant::now();
            let done = match work {
                Work::Unit(unit) => {
                    let r = self.run_unit(&unit, &tx);
                    self.shared
                        .record_unit(started.elapsed().as_nanos() as u64, unit.count);
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
            self.shared.answered(outputs.counts.0.len() as u64);
            let mut gone = false;
            for msg in fit_in_frames(outputs, MAX_OUTPUT_MESSAGE) {
                if out.blocking_send(msg).is_err() {
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
    pub(super) fn run_unit(
        &mut self,
        unit: &Unit,
        tx: &crossbeam_channel::Sender<Work>,
    ) -> Option<Outputs> {
        let mut failures = Vec::new();
        let split = self.run_stages(
            Some(unit),
            unit.batch.stage,
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
        let conts = std::mem::take(&mut self.conts);
        {
            let mut parts = group.parts.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(slot) = parts.get_mut(index) {
                *slot = Some((share, failures, conts));
            }
        }
        if group.pending.fetch_sub(1, Ordering::AcqRel) != 1 {
            return None;
        }
        let parts = std::mem::take(&mut *group.parts.lock().unwrap_or_else(|e| e.into_inner()));
        let mut all = Vec::new();
        self.cur.clear();
        for (buf, f, c) in parts.into_iter().flatten() {
            self.conts.extend(c);
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
        let exit = self.shared.chain.exit;
        let big = self.cur.data.len() >= protocol::split::SPLIT_BYTES;
        let mut packed = Packed::with_capacity(
            self.cur.entries.len(),
            if exit == Convert::Keep && big {
                0
            } else {
                self.cur.data.len()
            },
        );
        if exit == Convert::Keep {
            packed.lens.0.extend(self.cur.entries.iter().map(|e| e.len));
            if big {
                // Big outputs leave as they are, not copied; the next unit's buffer starts
                // as large, so it does not grow (and copy) again.
                let cap = self.cur.data.len();
                packed.data = std::mem::replace(&mut self.cur.data, Vec::with_capacity(cap)).into();
            } else {
                packed.data.extend_from_slice(&self.cur.data);
            }
        } else {
            // Tags added or dropped on the way out (docs/ABI.md, "Item tags").
            for e in &self.cur.entries {
                let item = self.cur.item(e);
                packed.lens.0.push(exit.len_after(item) as u32);
                exit.apply_into(item, packed.data.make_mut());
            }
        }
        for f in &mut failures {
            f.index += first;
        }
        let mut continuations = std::mem::take(&mut self.conts);
        for c in &mut continuations {
            c.index += first;
        }
        Outputs {
            seq,
            first,
            counts: U32s(counts),
            items: packed,
            failures,
            continuations,
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
        if let Some(graph) = &chain.graph {
            // A branching chain runs whole here (no fan-out split: docs/SCHEDULING.md).
            self.run_graph(&chain, graph, unit, from, failures);
            return None;
        }
        let mut group = None;
        let mut split_done = false;
        for k in from..chain.tasks.len() {
            if !self.shared.runnable[k] {
                // This node lacks the task's labels: what reached it goes back to the root,
                // for a node that has them.
                match unit {
                    Some(unit) if k == from => {
                        push_conts(&mut self.conts, k, unit_items(unit));
                        self.cur.clear();
                    }
                    _ => {
                        let prev = std::mem::take(&mut self.cur);
                        let items = prev.entries.iter().map(|e| (e.input, prev.item(e)));
                        push_conts(&mut self.conts, k, items);
                        self.spare = prev;
                    }
                }
                break;
            }
            let stage = match unit {
                Some(unit) if k == from => self.run_task(&chain, k, unit_items(unit), failures),
                _ => {
                    let prev = std::mem::take(&mut self.cur);
                    let items = prev.entries.iter().map(|e| (e.input, prev.item(e)));
                    let stage = self.run_task(&chain, k, items, failures);
                    self.cur = prev;
                    stage
                }
            };
            self.spare = std::mem::replace(&mut self.cur, stage);
            // A fan-out (of a unit, not of a share of one) larger than this worker finishes
            // soon spreads over idle workers and, beyond them, back to the root.
            if chain.tasks[k].generator
                && k + 1 < chain.tasks.len()
                && unit.is_some()
                && !split_done
                && self.shared.hand_back
                && self.cur.entries.len() > 1
            {
                // Until every task after this one has run here, the time a whole input takes
                // bounds what one of its outputs costs from here on (each input emitting one
                // at least).
                let est = self
                    .shared
                    .downstream_ns(k + 1)
                    .or_else(|| self.shared.item_ns());
                let idle = self.shared.idle.load(Ordering::Relaxed);
                if let Some(plan) = grant::split_fan_out(self.cur.entries.len(), est, idle) {
                    split_done = true;
                    group = self.split(plan, k + 1, tx, seq, first, count);
                }
            }
        }
        group
    }

    /// Task `k` over `items`, into the spare buffer, counted; returns its outputs.
    fn run_task<'i>(
        &mut self,
        chain: &CompiledChain,
        k: usize,
        items: impl Iterator<Item = (u32, &'i [u8])>,
        failures: &mut Vec<Failure>,
    ) -> OutBuf {
        let started = Instant::now();
        let mut stage = std::mem::take(&mut self.spare);
        stage.clear();
        let mut ctx = StageCtx {
            chain,
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
                whole_items: self.shared.send_failed_items.load(Ordering::Relaxed),
            },
            calls: 0,
            dropped: 0,
            batch: self.task_ns[k]
                < if chain.tasks[k].is_component() {
                    COMPONENT_BATCH_BELOW_NS
                } else {
                    BATCH_BELOW_NS
                },
        };
        ctx.run(items, &mut stage);
        let calls = ctx.calls;
        let busy = started.elapsed().as_nanos() as u64;
        self.shared.counters[k].add(StageCounts {
            calls,
            outputs: stage.entries.len() as u64,
            failed: ctx.sink.failed,
            dropped: ctx.dropped,
            busy_ns: busy,
        });
        if let Some(per_call) = busy.checked_div(calls) {
            self.task_ns[k] = (self.task_ns[k] + per_call) / 2;
        }
        stage
    }

    /// A branching chain from task `from` on (items from the unit, else `self.cur`): tasks
    /// in the graph's order, each over everything its predecessors emitted, each output of
    /// a task going to every successor; the sinks' outputs end in `self.cur`, by input.
    fn run_graph(
        &mut self,
        chain: &CompiledChain,
        graph: &Graph,
        unit: Option<&Unit>,
        from: usize,
        failures: &mut Vec<Failure>,
    ) {
        let mut pending: Vec<OutBuf> = chain.tasks.iter().map(|_| OutBuf::default()).collect();
        let mut sinks = OutBuf::default();
        if unit.is_none() {
            pending[from] = std::mem::take(&mut self.cur);
        }
        let start = graph.order.iter().position(|&t| t == from).unwrap_or(0);
        for &k in &graph.order[start..] {
            if !self.shared.runnable[k] {
                match unit {
                    Some(unit) if k == from => push_conts(&mut self.conts, k, unit_items(unit)),
                    _ => {
                        let input = std::mem::take(&mut pending[k]);
                        let items = input.entries.iter().map(|e| (e.input, input.item(e)));
                        push_conts(&mut self.conts, k, items);
                    }
                }
                continue;
            }
            let out = match unit {
                Some(unit) if k == from => self.run_task(chain, k, unit_items(unit), failures),
                _ => {
                    let input = std::mem::take(&mut pending[k]);
                    if input.entries.is_empty() {
                        continue;
                    }
                    let items = input.entries.iter().map(|e| (e.input, input.item(e)));
                    self.run_task(chain, k, items, failures)
                }
            };
            match graph.next[k].as_slice() {
                [] => append(&mut sinks, &out),
                next => {
                    for &s in next {
                        append(&mut pending[s], &out);
                    }
                }
            }
        }
        // Outputs travel grouped by input: order them so, bytes following entries.
        sinks.entries.sort_by_key(|e| e.input);
        let mut ordered = OutBuf::default();
        append(&mut ordered, &sinks);
        self.cur = ordered;
    }

    /// Splits `self.cur` as `plan` says: the first `keep` items stay, the next go to the
    /// queue as parts (returning the group this worker's share belongs to), the last become
    /// continuations for the root, in runs of one input each.
    fn split(
        &mut self,
        plan: FanOut,
        start_task: usize,
        tx: &crossbeam_channel::Sender<Work>,
        seq: u64,
        first: u32,
        count: u32,
    ) -> Option<Arc<Group>> {
        let n = self.cur.entries.len();
        let keep = plan.keep.min(n);
        let shared_end = (keep + plan.to_workers).min(n);
        tracing::debug!(
            node = &*self.node,
            worker = self.index,
            items = n,
            keep,
            to_workers = shared_end - keep,
            to_root = n - shared_end,
            "splitting a fan-out"
        );
        let cur = &self.cur;
        let surplus = cur.entries[shared_end..].iter();
        push_conts(
            &mut self.conts,
            start_task,
            surplus.map(|e| (e.input, cur.item(e))),
        );
        let part_items = plan.part_items.max(1);
        let shares = 1 + (shared_end - keep).div_ceil(part_items);
        let group = (shares > 1).then(|| {
            Arc::new(Group {
                seq,
                first,
                count,
                parts: Mutex::new((0..shares).map(|_| None).collect()),
                pending: std::sync::atomic::AtomicUsize::new(shares),
            })
        });
        let mut parts = Vec::with_capacity(shares - 1);
        if let Some(group) = &group {
            for index in 1..shares {
                let lo = keep + (index - 1) * part_items;
                let hi = (lo + part_items).min(shared_end);
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
        }
        // This worker keeps the first share.
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

/// The items of a unit, straight from its batch.
fn unit_items(unit: &Unit) -> impl Iterator<Item = (u32, &[u8])> {
    let batch = &unit.batch;
    let first = unit.first as usize;
    let lens = &batch.items.lens.0[first..first + unit.count as usize];
    let mut offset = unit.byte_start;
    lens.iter().enumerate().map(move |(i, &l)| {
        let item = &batch.items.data[offset..offset + l as usize];
        offset += l as usize + batch.items.gap(first + i);
        (i as u32, item)
    })
}

/// Appends the items of `from` to `to`, in `from`'s entry order.
fn append(to: &mut OutBuf, from: &OutBuf) {
    for e in &from.entries {
        let start = to.data.len();
        to.data.extend_from_slice(from.item(e));
        to.entries.push(crate::engine::Entry {
            input: e.input,
            len: e.len,
            start,
        });
    }
}

/// Appends `items` to `conts` as continuations at `stage`: one per run of items of the
/// same input.
fn push_conts<'i>(
    conts: &mut Vec<Continuation>,
    stage: usize,
    items: impl Iterator<Item = (u32, &'i [u8])>,
) {
    let stage = TaskIndex(stage as u32);
    for (input, item) in items {
        match conts.last_mut() {
            Some(c) if c.index == input && c.stage == stage => c.items.push(item),
            _ => {
                let mut packed = Packed::new();
                packed.push(item);
                conts.push(Continuation {
                    index: input,
                    stage,
                    items: packed,
                });
            }
        }
    }
}
