//! Calls into a native Python task's process: one item or a batch. Outputs land in the
//! store's output buffer like a wasm task's emits and failures come back typed; a process
//! that died or went silent is reported as a trap, so the caller replaces it and runs the
//! items again one by one, as after a wasm trap.

use super::instance::{Kind, TaskInstance};
use super::tags::Convert;
use crate::error::{CallError, TrapCause};
use crate::native::{Broken, ItemResult};

impl TaskInstance {
    /// One item (descending from input `input`) through the task.
    pub(super) fn native_call(&mut self, input: u32, item: &[u8]) -> Result<(), CallError> {
        let mut failed = None;
        self.native_run(&[(input, item)], |_, e| failed = Some(e))?;
        failed.map_or(Ok(()), Err)
    }

    /// Many items through the task: outputs tagged with each item's input, failures by
    /// position in `items`, as a wasm batch leaves them.
    pub(super) fn native_batch(&mut self, items: &[(u32, &[u8])]) -> Result<(), CallError> {
        let mut failures = Vec::new();
        let result = self.native_run(items, |n, e| failures.push((n, e)));
        self.store.data_mut().batch.failures = failures;
        result
    }

    fn native_run(
        &mut self,
        items: &[(u32, &[u8])],
        mut on_fail: impl FnMut(usize, CallError),
    ) -> Result<(), CallError> {
        let conv = self.input_conv;
        let Kind::Native(parts) = &mut self.kind else {
            return Err(CallError::Status(0));
        };
        // Items entering from a raw (core) task get their tag here, in one buffer.
        let mut spans = Vec::new();
        if !matches!(conv, Convert::Keep) {
            parts.items.clear();
            for (_, item) in items {
                let start = parts.items.len();
                conv.apply_into(item, &mut parts.items);
                spans.push(start..parts.items.len());
            }
        }
        let converted: Vec<(u32, &[u8])> = if spans.is_empty() {
            items.to_vec()
        } else {
            items
                .iter()
                .zip(&spans)
                .map(|((input, _), span)| (*input, &parts.items[span.clone()]))
                .collect()
        };
        let st = self.store.data_mut();
        let (entry_start, data_start) = (st.out.entries.len(), st.out.data.len());
        st.batch.with_output = 0;
        let mut overflow = None;
        let ran = parts.runner.batch(&converted, |n, result| match result {
            ItemResult::Outputs(outputs) => {
                st.batch.with_output += usize::from(!outputs.is_empty());
                for out in outputs {
                    if let Err(e) = st.push_output(items[n].0, out) {
                        overflow.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            ItemResult::Failed(message) => on_fail(n, CallError::Failed(message)),
        });
        let cause = match (ran, overflow) {
            (Ok(()), None) => return Ok(()),
            (Err(Broken::Deadline(ms)), _) => TrapCause::Deadline { ms },
            (Err(broken), _) => TrapCause::Host(broken.to_string()),
            (Ok(()), Some(message)) => TrapCause::Host(message),
        };
        st.out.entries.truncate(entry_start);
        st.out.data.truncate(data_start);
        Err(CallError::Trapped {
            cause,
            message: None,
            memory_limit_mb: None,
        })
    }
}
