//! One stage of one unit: task `k` over a stream of items, in batched guest calls when the
//! task is fast and has a batch export, else item by item; a trap rebuilds the instance and
//! fails only its own item. Failed items go to a [`FailureSink`].

use std::sync::Arc;

use protocol::{FailedTask, Failure, TaskIndex};

use crate::engine::{CompiledChain, LogCtx, OutBuf, TaskInstance};
use crate::error::{CallError, TaskProblem};

/// Most items and bytes in one batched call of a wasm task.
const BATCH: (usize, usize) = (256, 256 << 10);
/// The same for a native task, whose every call is a round trip to its process.
const NATIVE_BATCH: (usize, usize) = (4096, 1 << 20);
/// Bytes of a failing item quoted in its failure.
const ITEM_QUOTE: usize = 200;
/// Failures of a work unit whose message is kept whole (up to 16 KiB, see
/// `engine::MAX_MESSAGE`); later ones keep [`SHORT_MESSAGE`] bytes, so that a unit whose every
/// item fails holds little more than its items.
const WHOLE_MESSAGES: usize = 64;
const SHORT_MESSAGE: usize = 256;

/// One stage of one unit: task `k` over a stream of items.
pub(super) struct StageCtx<'a> {
    pub(super) chain: &'a CompiledChain,
    pub(super) k: usize,
    pub(super) node: &'a Arc<str>,
    pub(super) worker: u32,
    pub(super) slot: &'a mut Result<TaskInstance, Arc<TaskProblem>>,
    pub(super) sink: FailureSink<'a>,
    pub(super) calls: u64,
    /// Calls that emitted nothing and did not fail.
    pub(super) dropped: u64,
    /// Whether to use the task's batched export (its items are known to be fast).
    pub(super) batch: bool,
}

impl StageCtx<'_> {
    pub(super) fn run<'i>(
        &mut self,
        items: impl Iterator<Item = (u32, &'i [u8])>,
        stage: &mut OutBuf,
    ) {
        if let Ok(inst) = self.slot {
            std::mem::swap(&mut inst.store.data_mut().out, stage);
        }
        let batched = self.batch && matches!(self.slot, Ok(inst) if inst.has_batch());
        if batched {
            let native = matches!(self.slot, Ok(inst) if inst.is_native());
            let (most_items, most_bytes) = if native { NATIVE_BATCH } else { BATCH };
            let mut chunk: Vec<(u32, &[u8])> = Vec::with_capacity(most_items.min(1024));
            let mut bytes = 0;
            for (input, item) in items {
                if chunk.len() == most_items
                    || (!chunk.is_empty() && bytes + item.len() > most_bytes)
                {
                    self.run_chunk(&chunk, stage);
                    chunk.clear();
                    bytes = 0;
                }
                bytes += item.len() + 4;
                chunk.push((input, item));
            }
            if !chunk.is_empty() {
                self.run_chunk(&chunk, stage);
            }
        } else {
            for (input, item) in items {
                self.call_one(input, item, stage);
            }
        }
        if let Ok(inst) = self.slot {
            std::mem::swap(&mut inst.store.data_mut().out, stage);
        }
    }

    /// Many items in one guest call; on any trouble with the batch as a whole, its items run
    /// one by one, so a trap or a deadline still fails only its own item.
    fn run_chunk(&mut self, chunk: &[(u32, &[u8])], stage: &mut OutBuf) {
        let Ok(inst) = self.slot else {
            // No instance: the items fail one by one, each with why.
            for &(input, item) in chunk {
                self.call_one(input, item, stage);
            }
            return;
        };
        let result = inst.call_batch(chunk);
        match result {
            Ok(()) => {
                self.calls += chunk.len() as u64;
                let Ok(inst) = self.slot else { return };
                let batch = &mut inst.store.data_mut().batch;
                let failures = batch.take_failures();
                let done = failures.len() + batch.with_output;
                self.dropped += chunk.len().saturating_sub(done) as u64;
                let task = &self.chain.tasks[self.k];
                for (i, error) in failures {
                    let Some(&(input, item)) = chunk.get(i) else {
                        continue;
                    };
                    self.sink.record(&task.name, input, item, error);
                }
            }
            Err(e) => {
                if e.trapped() {
                    self.rebuild(stage);
                }
                for &(input, item) in chunk {
                    self.call_one(input, item, stage);
                }
            }
        }
    }

    fn call_one(&mut self, input: u32, item: &[u8], stage: &mut OutBuf) {
        let task = &self.chain.tasks[self.k];
        self.calls += 1;
        let inst = match self.slot {
            Ok(inst) => inst,
            Err(problem) => {
                // An instance that could not be rebuilt fails every item it is given.
                let error = CallError::Unavailable(problem.clone());
                self.sink.record(&task.name, input, item, error);
                return;
            }
        };
        let st = inst.store.data_mut();
        st.cur_input = input;
        let mark_e = st.out.entries.len();
        let mark_d = st.out.data.len();
        let result = inst.call(item);
        let st = inst.store.data_mut();
        let emitted = st.out.entries.len() - mark_e;
        let err = match result {
            Ok(()) if emitted > 1 && !task.generator => Some(CallError::NotAGenerator { emitted }),
            Ok(()) => {
                if emitted == 0 {
                    self.dropped += 1;
                }
                None
            }
            Err(e) => Some(e),
        };
        if let Some(error) = err {
            st.out.entries.truncate(mark_e);
            st.out.data.truncate(mark_d);
            let trapped = error.trapped();
            self.sink.record(&task.name, input, item, error);
            if trapped {
                self.rebuild(stage);
            }
        }
    }

    /// A trapped instance may be in any state: build a fresh one and carry the stage's
    /// outputs over to it.
    fn rebuild(&mut self, stage: &mut OutBuf) {
        let task = &self.chain.tasks[self.k];
        let mut out = match self.slot {
            Ok(inst) => std::mem::take(&mut inst.store.data_mut().out),
            Err(_) => return,
        };
        let ctx = LogCtx {
            node: self.node.clone(),
            worker: self.worker,
            task: task.name.clone(),
        };
        *self.slot = TaskInstance::new(task, &self.chain.limits, ctx).map_err(Arc::new);
        match self.slot {
            Ok(fresh) => std::mem::swap(&mut fresh.store.data_mut().out, &mut out),
            Err(e) => {
                tracing::error!(
                    node = &**self.node,
                    worker = self.worker,
                    task = &*task.name,
                    "cannot rebuild the task instance after a trap: {e}"
                );
                *stage = out;
            }
        }
    }
}

/// Where a stage's failed items go.
pub(super) struct FailureSink<'a> {
    pub(super) failures: &'a mut Vec<Failure>,
    pub(super) node: &'a str,
    pub(super) worker: u32,
    pub(super) k: usize,
    pub(super) failed: u64,
    /// Whether failures carry the whole item.
    pub(super) whole_items: bool,
}

impl FailureSink<'_> {
    /// Turns one failed call into the failure the root gets: the task, the start of the
    /// item and the error's message.
    pub(super) fn record(&mut self, task: &str, input: u32, item: &[u8], error: CallError) {
        self.failed += 1;
        tracing::debug!(
            node = self.node,
            worker = self.worker,
            task,
            input,
            "item failed: {error}"
        );
        self.failures.push(Failure {
            index: input,
            task: Some(FailedTask {
                index: TaskIndex(self.k as u32),
                name: task.to_string(),
            }),
            item_start: item[..item.len().min(ITEM_QUOTE)].to_vec(),
            item: self.whole_items.then(|| item.to_vec()),
            message: short(error.to_string(), self.failures.len() >= WHOLE_MESSAGES),
        });
    }
}

/// `message`, cut to [`SHORT_MESSAGE`] bytes (at a character boundary) when `cut`.
fn short(mut message: String, cut: bool) -> String {
    if cut && message.len() > SHORT_MESSAGE {
        let mut end = SHORT_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push_str(" [cut]");
    }
    message
}
