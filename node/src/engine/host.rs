//! What a task instance's host functions see: the store data ([`HostState`]) with the
//! stage's output buffer, the state of a batched call, the memory limiter, and the linker
//! defining `emit`, `log`, `fail` and `emit_batch` (docs/ABI.md).

use std::sync::Arc;

use wasmtime::{Caller, Linker, Memory, ResourceLimiter};

use super::engine;
use crate::error::CallError;

/// Largest total output one stage of one work unit may emit before the call traps.
const MAX_STAGE_OUTPUT: usize = 256 << 20;

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

    /// The bytes of `e`.
    #[inline]
    pub fn item(&self, e: &Entry) -> &[u8] {
        &self.data[e.start..e.start + e.len as usize]
    }
}

pub(super) struct MemLimiter {
    pub(super) max_bytes: usize,
    pub(super) denied: bool,
}

impl ResourceLimiter for MemLimiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.max_bytes {
            self.denied = true;
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }
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
    /// Items of the batch that emitted something and did not fail; the others that did not
    /// fail were dropped.
    pub with_output: usize,
}

impl BatchState {
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
    /// WASI state (used by component tasks only; empty for core ones).
    pub(super) wasi: super::component::WasiState,
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
        if self.out.data.len() + len > MAX_STAGE_OUTPUT {
            wasmtime::bail!("emit: outputs of this work unit exceed {MAX_STAGE_OUTPUT} bytes");
        }
        let start = self.out.data.len();
        self.out.data.extend_from_slice(bytes);
        self.out.entries.push(Entry {
            input,
            len: len as u32,
            start,
        });
        Ok(())
    }

    /// Takes the records of a batched call: `(index u32, length u32, bytes)`, length bit 31
    /// marking an item failure whose bytes are the message. Indices must not go backwards.
    pub(super) fn take_records(&mut self, mut block: &[u8]) -> wasmtime::Result<()> {
        let HostState {
            batch,
            out,
            max_item,
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
                batch.failures.push((
                    index,
                    CallError::Failed(String::from_utf8_lossy(bytes).into_owned()),
                ));
                continue;
            }
            if n > *max_item {
                wasmtime::bail!(
                    "emit: item of {n} bytes exceeds the item limit of {max_item} bytes"
                );
            }
            if out.data.len() + n > MAX_STAGE_OUTPUT {
                wasmtime::bail!("emit: outputs of this work unit exceed {MAX_STAGE_OUTPUT} bytes");
            }
            let start = out.data.len();
            out.data.extend_from_slice(bytes);
            out.entries.push(Entry {
                input,
                len: n as u32,
                start,
            });
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

/// `fail(ptr, len)`: the message (at most 16 KiB) of the failure the call then returns.
fn host_fail(mut caller: Caller<'_, HostState>, ptr: u32, len: u32) -> wasmtime::Result<()> {
    let Some(mem) = caller.data().memory else {
        return Ok(());
    };
    let (data, st) = mem.data_and_store_mut(&mut caller);
    let (ptr, len) = (ptr as usize, (len as usize).min(16 << 10));
    st.fail = data
        .get(ptr..ptr.saturating_add(len))
        .map(|b| String::from_utf8_lossy(b).into_owned());
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
            limiter: MemLimiter {
                max_bytes: 1 << 20,
                denied: false,
            },
            log: LogCtx {
                node: "n".into(),
                worker: 0,
                task: "t".into(),
            },
            max_item: 8,
            wasi: crate::engine::component::WasiState::sandboxed(),
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
