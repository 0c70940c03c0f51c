//! What a task instance's host functions see: the store data ([`HostState`]) with the
//! stage's output buffer, the state of a batched call, the memory limiter, and the linker
//! defining `emit`, `log`, `fail` and `emit_batch` (docs/ABI.md).

use std::sync::Arc;

use wasmtime::{Caller, Linker, Memory};

use super::limiter::MemLimiter;

use super::engine;
use crate::error::CallError;

/// Largest total output one stage of one work unit may emit before the call traps; a chain
/// whose `memory_mb` is smaller gets that instead (see [`held_cap`]).
const MAX_STAGE_OUTPUT: usize = 256 << 20;

/// What the host holds for one output beyond its bytes: its entry. Counted, so that empty
/// outputs are not free.
pub(super) const ENTRY_COST: usize = std::mem::size_of::<Entry>();

/// Longest failure message kept from a task; longer ones are cut.
pub const MAX_MESSAGE: usize = 16 << 10;

/// Bytes a stage of one work unit may make the host hold (outputs, their entries, failure
/// messages): the chain's memory cap, at most [`MAX_STAGE_OUTPUT`]. What a task hands over
/// counts against its `memory_mb` like its own memory does.
pub(super) fn held_cap(memory_bytes: usize) -> usize {
    memory_bytes.min(MAX_STAGE_OUTPUT)
}

/// A failure message of `total` bytes of which `kept` (at most [`MAX_MESSAGE`]) were read,
/// saying when the rest was cut.
pub fn cut_message(kept: &[u8], total: usize) -> String {
    let kept = &kept[..kept.len().min(MAX_MESSAGE)];
    let mut text = String::from_utf8_lossy(kept).into_owned();
    if total > kept.len() {
        text.push_str(&format!(" [message of {total} bytes cut]"));
    }
    text
}

/// Where a task instance's log lines come from.
#[derive(Clone, Debug)]
pub struct LogCtx {
    /// The node's address.
    pub node: Arc<str>,
    /// The worker's index.
    pub worker: u32,
    /// The task's function name.
    pub task: Arc<str>,
}

impl LogCtx {
    /// One log line of the task, tagged with node, worker and task.
    pub fn line(&self, level: u32, msg: &str) {
        let (node, worker, task) = (&*self.node, self.worker, &*self.task);
        match level {
            0 => tracing::error!(target: "task", node, worker, task, "{msg}"),
            1 => tracing::warn!(target: "task", node, worker, task, "{msg}"),
            2 => tracing::info!(target: "task", node, worker, task, "{msg}"),
            3 => tracing::debug!(target: "task", node, worker, task, "{msg}"),
            _ => tracing::trace!(target: "task", node, worker, task, "{msg}"),
        }
    }
}

/// One output item of a stage: input index in the work unit, and where its bytes are.
#[derive(Clone, Copy, Debug)]
pub struct Entry {
    /// Index of the input (within its work unit) the item descends from.
    pub input: u32,
    /// Length in bytes.
    pub len: u32,
    /// Offset in [`OutBuf::data`].
    pub start: usize,
}

/// Items emitted by one stage, back to back.
#[derive(Debug, Default)]
pub struct OutBuf {
    /// Bytes of all items.
    pub data: Vec<u8>,
    /// The items.
    pub entries: Vec<Entry>,
}

impl OutBuf {
    /// Empties the buffer, keeping its allocations.
    pub fn clear(&mut self) {
        self.data.clear();
        self.entries.clear();
    }

    /// Bytes the buffer holds, entries counted.
    pub(super) fn held(&self) -> usize {
        self.data.len() + self.entries.len() * ENTRY_COST
    }

    /// Appends an output of input `input` when the buffer, with `other` bytes held beside
    /// it, stays within `cap`; its allocations never grow past `cap` either.
    pub(super) fn push_within(
        &mut self,
        input: u32,
        bytes: &[u8],
        other: usize,
        cap: usize,
    ) -> wasmtime::Result<()> {
        let len = bytes.len();
        if self.held() + other + len + ENTRY_COST > cap {
            wasmtime::bail!(
                "emit: outputs of this work unit exceed {cap} bytes (entries of {ENTRY_COST} \
                 bytes each and failure messages included; memory_mb bounds them)"
            );
        }
        reserve_within(&mut self.data, len, cap);
        reserve_within(&mut self.entries, 1, cap / ENTRY_COST);
        let start = self.data.len();
        self.data.extend_from_slice(bytes);
        self.entries.push(Entry {
            input,
            len: len as u32,
            start,
        });
        Ok(())
    }

    /// The bytes of `e`.
    #[inline]
    pub fn item(&self, e: &Entry) -> &[u8] {
        &self.data[e.start..e.start + e.len as usize]
    }
}

/// Makes room for `extra` more elements in `v`, doubling as usual but never past `cap`
/// elements, so a buffer near its cap does not hold twice that.
fn reserve_within<T>(v: &mut Vec<T>, extra: usize, cap: usize) {
    let need = v.len() + extra;
    if need <= v.capacity() {
        return;
    }
    let want = (v.capacity() * 2).max(need).min(cap.max(need));
    v.reserve_exact(want - v.len());
}

/// Where a batched call (`pcluster_batch.<task>`) is: item boundaries and item failures.
#[derive(Default)]
pub struct BatchState {
    pub(super) active: bool,
    pub(super) generator: bool,
    /// Input index (within the work unit) of each item of the batch.
    pub(super) inputs: Vec<u32>,
    pub(super) cur: Option<usize>,
    pub(super) entry_mark: usize,
    pub(super) data_mark: usize,
    pub(super) failed_current: bool,
    /// Items of the batch that failed, by position in the batch.
    pub failures: Vec<(usize, CallError)>,
    /// Bytes of the messages in `failures`.
    pub(super) failure_bytes: usize,
    /// Items of the batch that emitted something and did not fail; the others that did not
    /// fail were dropped.
    pub with_output: usize,
}

impl BatchState {
    /// The batch's failures, taken.
    pub fn take_failures(&mut self) -> Vec<(usize, CallError)> {
        self.failure_bytes = 0;
        std::mem::take(&mut self.failures)
    }

    /// Forgets the batch's failures.
    pub(super) fn clear_failures(&mut self) {
        self.failures.clear();
        self.failure_bytes = 0;
    }

    /// Records item `index` as failed with `message` (cut to [`MAX_MESSAGE`]), when the
    /// messages so far, with `other` bytes held beside them, stay within `cap`.
    pub(super) fn add_failure(
        &mut self,
        index: usize,
        message: &[u8],
        other: usize,
        cap: usize,
    ) -> wasmtime::Result<()> {
        let text = cut_message(message, message.len());
        let cost = text.len() + std::mem::size_of::<(usize, CallError)>();
        if self.failure_bytes + other + cost > cap {
            wasmtime::bail!(
                "emit_batch: failures and outputs of this work unit exceed {cap} bytes"
            );
        }
        self.failure_bytes += cost;
        self.failures.push((index, CallError::Failed(text)));
        Ok(())
    }

    /// Closes the current item: a non-generator that emitted several items fails it.
    pub(super) fn close_item(&mut self, out: &mut OutBuf) {
        let Some(i) = self.cur else { return };
        let emitted = out.entries.len() - self.entry_mark;
        if self.failed_current || emitted == 0 {
            return;
        }
        if emitted > 1 && !self.generator {
            out.entries.truncate(self.entry_mark);
            out.data.truncate(self.data_mark);
            self.failures
                .push((i, CallError::NotAGenerator { emitted }));
        } else {
            self.with_output += 1;
        }
    }
}

/// The store data of one task instance: what host functions need.
pub struct HostState {
    /// State of the batched call in progress, if any.
    pub batch: BatchState,
    /// Outputs of the current stage (swapped in and out by the worker).
    pub out: OutBuf,
    /// Index of the input the current item descends from.
    pub cur_input: u32,
    pub(super) memory: Option<Memory>,
    pub(super) fail: Option<String>,
    pub(super) limiter: MemLimiter,
    pub(super) log: LogCtx,
    pub(super) max_item: usize,
    /// Bytes a stage may make the host hold ([`held_cap`]).
    pub(super) max_held: usize,
    /// WASI state (used by component tasks only; empty for core ones).
    pub(super) wasi: super::component::WasiState,
    /// When the component call in progress must end: WASI waits stop there.
    pub(super) deadline_at: Option<std::time::Instant>,
}

impl HostState {
    /// One log line of the task, tagged with node, worker and task.
    pub(super) fn log_line(&self, level: u32, msg: &str) {
        self.log.line(level, msg);
    }

    /// Appends one output of the current item (input `input`), within the item and stage
    /// limits.
    pub(super) fn push_output(&mut self, input: u32, bytes: &[u8]) -> wasmtime::Result<()> {
        let len = bytes.len();
        if len > self.max_item {
            wasmtime::bail!(
                "emit: item of {len} bytes exceeds the item limit of {} bytes",
                self.max_item
            );
        }
        let other = self.batch.failure_bytes;
        self.out.push_within(input, bytes, other, self.max_held)
    }

    /// Takes the records of a batched call: `(index u32, length u32, bytes)`, length bit 31
    /// marking an item failure whose bytes are the message. Indices must not go backwards.
    pub(super) fn take_records(&mut self, mut block: &[u8]) -> wasmtime::Result<()> {
        let HostState {
            batch,
            out,
            max_item,
            max_held,
            ..
        } = self;
        while !block.is_empty() {
            let Some((head, rest)) = block.split_at_checked(8) else {
                wasmtime::bail!("emit_batch: truncated record header");
            };
            let index = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
            let word = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
            let (failure, n) = (word & (1 << 31) != 0, (word & !(1 << 31)) as usize);
            let Some((bytes, rest)) = rest.split_at_checked(n) else {
                wasmtime::bail!("emit_batch: record of {n} bytes overruns the block");
            };
            block = rest;
            let Some(&input) = batch.inputs.get(index) else {
                wasmtime::bail!("emit_batch: item {index} is not in the batch");
            };
            if batch.cur != Some(index) {
                if batch.cur.is_some_and(|c| index < c) {
                    wasmtime::bail!(
                        "emit_batch: records went back from item {:?} to {index}",
                        batch.cur
                    );
                }
                batch.close_item(out);
                batch.cur = Some(index);
                batch.entry_mark = out.entries.len();
                batch.data_mark = out.data.len();
                batch.failed_current = false;
            }
            if batch.failed_current {
                continue;
            }
            if failure {
                out.entries.truncate(batch.entry_mark);
                out.data.truncate(batch.data_mark);
                batch.failed_current = true;
                batch.add_failure(index, bytes, out.held(), *max_held)?;
                continue;
            }
            if n > *max_item {
                wasmtime::bail!(
                    "emit: item of {n} bytes exceeds the item limit of {max_item} bytes"
                );
            }
            out.push_within(input, bytes, batch.failure_bytes, *max_held)?;
        }
        Ok(())
    }
}

pub(super) fn linker() -> Result<Linker<HostState>, super::EngineError> {
    let mut linker = Linker::new(engine()?);
    let defined = linker
        .func_wrap("pcluster", "emit", host_emit)
        .and_then(|l| l.func_wrap("pcluster", "log", host_log))
        .and_then(|l| l.func_wrap("pcluster", "fail", host_fail))
        .and_then(|l| l.func_wrap("pcluster", "emit_batch", host_emit_batch));
    // Only possible if the four definitions above clashed, which they do not.
    defined.map_err(|e| super::EngineError(format!("defining the host functions: {e}")))?;
    Ok(linker)
}

/// `emit(ptr, len)`: one output of the current input, copied out of guest memory.
fn host_emit(mut caller: Caller<'_, HostState>, ptr: u32, len: u32) -> wasmtime::Result<()> {
    let Some(mem) = caller.data().memory else {
        wasmtime::bail!("emit called before the module's memory was known");
    };
    let (data, st) = mem.data_and_store_mut(&mut caller);
    if st.batch.active {
        wasmtime::bail!("emit called inside a batched call (use emit_batch)");
    }
    let (ptr, len) = (ptr as usize, len as usize);
    let Some(bytes) = data.get(ptr..ptr.saturating_add(len)) else {
        wasmtime::bail!("emit: item at {ptr}+{len} lies outside guest memory");
    };
    st.push_output(st.cur_input, bytes)
}

/// `log(level, ptr, len)`: a log line (at most 64 KiB of it), tagged by the host.
fn host_log(
    mut caller: Caller<'_, HostState>,
    level: u32,
    ptr: u32,
    len: u32,
) -> wasmtime::Result<()> {
    let Some(mem) = caller.data().memory else {
        return Ok(());
    };
    let (data, st) = mem.data_and_store_mut(&mut caller);
    let (ptr, len) = (ptr as usize, (len as usize).min(64 << 10));
    let Some(bytes) = data.get(ptr..ptr.saturating_add(len)) else {
        wasmtime::bail!("log: message at {ptr}+{len} lies outside guest memory");
    };
    st.log_line(level, &String::from_utf8_lossy(bytes));
    Ok(())
}

/// `fail(ptr, len)`: the message (at most [`MAX_MESSAGE`] of it) of the failure the call
/// then returns.
fn host_fail(mut caller: Caller<'_, HostState>, ptr: u32, len: u32) -> wasmtime::Result<()> {
    let Some(mem) = caller.data().memory else {
        return Ok(());
    };
    let (data, st) = mem.data_and_store_mut(&mut caller);
    let (ptr, total) = (ptr as usize, len as usize);
    st.fail = data
        .get(ptr..ptr.saturating_add(total.min(MAX_MESSAGE)))
        .map(|b| cut_message(b, total));
    Ok(())
}

/// `emit_batch(ptr, len)`: the records of a batched call (docs/ABI.md).
fn host_emit_batch(mut caller: Caller<'_, HostState>, ptr: u32, len: u32) -> wasmtime::Result<()> {
    let Some(mem) = caller.data().memory else {
        wasmtime::bail!("emit_batch called before the module's memory was known");
    };
    let (data, st) = mem.data_and_store_mut(&mut caller);
    if !st.batch.active {
        wasmtime::bail!("emit_batch called outside a batched call");
    }
    let (ptr, len) = (ptr as usize, len as usize);
    let Some(block) = data.get(ptr..ptr.saturating_add(len)) else {
        wasmtime::bail!("emit_batch: records at {ptr}+{len} lie outside guest memory");
    };
    st.take_records(block)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A host state in a batched call over items from inputs 5, 6 and 7.
    fn in_batch(generator: bool) -> HostState {
        HostState {
            batch: BatchState {
                active: true,
                generator,
                inputs: vec![5, 6, 7],
                ..BatchState::default()
            },
            out: OutBuf::default(),
            cur_input: 0,
            memory: None,
            fail: None,
            limiter: MemLimiter::new(1 << 20),
            log: LogCtx {
                node: "n".into(),
                worker: 0,
                task: "t".into(),
            },
            max_item: 8,
            max_held: 1 << 20,
            wasi: crate::engine::component::WasiState::sandboxed(),
            deadline_at: None,
        }
    }

    fn record(index: u32, failure: bool, bytes: &[u8]) -> Vec<u8> {
        let mut r = index.to_le_bytes().to_vec();
        let len = bytes.len() as u32 | if failure { 1 << 31 } else { 0 };
        r.extend_from_slice(&len.to_le_bytes());
        r.extend_from_slice(bytes);
        r
    }

    fn outputs(st: &HostState) -> Vec<(u32, &[u8])> {
        st.out
            .entries
            .iter()
            .map(|e| (e.input, st.out.item(e)))
            .collect()
    }

    #[test]
    fn empty_outputs_and_failure_messages_count_toward_the_cap() {
        let mut st = in_batch(true);
        st.max_held = 100 * ENTRY_COST;
        st.batch.active = false;
        let mut n = 0;
        while st.push_output(0, b"").is_ok() {
            n += 1;
        }
        assert_eq!(n, 100, "each empty output costs its entry");
        assert!(
            st.out.entries.capacity() <= 100,
            "never allocated past the cap"
        );
        let mut st = in_batch(true);
        st.max_held = 4096;
        let big = vec![b'x'; 1 << 20];
        let block = [record(0, true, &big), record(1, true, &big)].concat();
        let err = st.take_records(&block).unwrap_err();
        assert!(err.to_string().contains("exceed 4096 bytes"), "{err}");
    }

    #[test]
    fn records_become_outputs_of_their_inputs_and_failures_of_their_items() {
        let mut st = in_batch(true);
        let block = [
            record(0, false, b"a"),
            record(0, false, b"b"),
            record(1, false, b"dropped"),
            record(1, true, b"bad item"),
            record(1, false, b"ignored"),
            record(2, false, b"c"),
        ]
        .concat();
        st.take_records(&block).unwrap();
        st.batch.close_item(&mut st.out);
        assert_eq!(outputs(&st), [(5, &b"a"[..]), (5, b"b"), (7, b"c")]);
        assert_eq!(st.batch.failures.len(), 1);
        assert_eq!(st.batch.failures[0].0, 1);
        assert_eq!(st.batch.failures[0].1.to_string(), "bad item");
        assert_eq!(st.batch.with_output, 2, "items 0 and 2");
    }

    #[test]
    fn a_non_generator_emitting_twice_fails_that_item_only() {
        let mut st = in_batch(false);
        let block = [
            record(0, false, b"a"),
            record(0, false, b"b"),
            record(2, false, b"c"),
        ]
        .concat();
        st.take_records(&block).unwrap();
        st.batch.close_item(&mut st.out);
        assert_eq!(outputs(&st), [(7, &b"c"[..])]);
        assert!(matches!(
            st.batch.failures[..],
            [(0, CallError::NotAGenerator { emitted: 2 })]
        ));
        assert_eq!(st.batch.with_output, 1);
    }

    #[test]
    fn malformed_records_are_refused() {
        let cases: [(&str, Vec<u8>); 5] = [
            ("truncated record header", vec![0, 0, 0]),
            ("overruns the block", {
                let mut r = record(0, false, b"abc");
                r.truncate(10);
                r
            }),
            ("not in the batch", record(3, false, b"a")),
            (
                "went back",
                [record(1, false, b"a"), record(0, false, b"b")].concat(),
            ),
            ("exceeds the item limit", record(0, false, b"123456789")),
        ];
        for (why, block) in cases {
            let err = in_batch(true).take_records(&block).unwrap_err();
            assert!(err.to_string().contains(why), "{why}: {err}");
        }
    }
}
