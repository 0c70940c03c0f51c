//! Calls into a component task's instance: init, one item, a batch of items. Outputs land
//! in the store's output buffer like a core task's emits, failures come back typed; a trap
//! (deadline, memory cap) is described as for core tasks and the caller rebuilds.

use std::time::{Duration, Instant};

use super::EPOCH_TICK;
use super::component::BatchOutputs;
use super::host::{HostState, cut_message};
use super::instance::{ComponentParts, Kind, TaskInstance};
use crate::error::{CallError, TaskProblem};

impl TaskInstance {
    fn parts(&mut self) -> Option<&mut ComponentParts> {
        match &mut self.kind {
            Kind::Component(c) => Some(c),
            Kind::Core(_) | Kind::Native(_) => None,
        }
    }

    /// Starts the deadline of a call: in epoch ticks for guest code, as an instant for the
    /// WASI waits of `wasi_deadline`.
    fn arm(&mut self) {
        self.store.set_epoch_deadline(self.deadline_ticks);
        let ms = self
            .deadline_ms
            .saturating_add(EPOCH_TICK.as_millis() as u64);
        self.store.data_mut().deadline_at = Instant::now().checked_add(Duration::from_millis(ms));
    }

    /// Runs the component's `init` with the task's name and args.
    pub(super) fn component_init(&mut self, name: &str, args: &[u8]) -> Result<(), TaskProblem> {
        self.arm();
        let Kind::Component(c) = &self.kind else {
            return Ok(());
        };
        match c.task.call_init(&mut self.store, name, args, c.generator) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(TaskProblem::InitStatus {
                status: 1,
                message: Some(message),
            }),
            Err(e) => Err(TaskProblem::InitTrap(self.describe(&e))),
        }
    }

    /// Converts `item` into the buffer of the first batch slot and hands it back.
    fn converted(&mut self, n: usize, item: &[u8]) {
        let conv = self.input_conv;
        let Some(c) = self.parts() else { return };
        if c.items.len() <= n {
            c.items.resize_with(n + 1, Vec::new);
        }
        let buf = &mut c.items[n];
        buf.clear();
        conv.apply_into(item, buf);
    }

    /// One item through the component's `process`.
    pub(super) fn component_call(&mut self, item: &[u8]) -> Result<(), CallError> {
        self.converted(0, item);
        self.arm();
        let Kind::Component(c) = &self.kind else {
            return Err(CallError::Status(0));
        };
        let result = c.task.call_process(&mut self.store, &c.items[0]);
        match result {
            Ok(Ok(outputs)) => {
                let st = self.store.data_mut();
                let input = st.cur_input;
                for out in &outputs {
                    if let Err(e) = st.push_output(input, out) {
                        return Err(self.describe(&e));
                    }
                }
                Ok(())
            }
            Ok(Err(message)) => Err(CallError::Failed(cut_message(
                message.as_bytes(),
                message.len(),
            ))),
            Err(e) => Err(self.describe(&e)),
        }
    }

    /// Many items through the component's `process-batch`: outputs tagged with each item's
    /// input, failures by position in `items`, as a core batch leaves them.
    pub(super) fn component_batch(&mut self, items: &[(u32, &[u8])]) -> Result<(), CallError> {
        for (n, (_, item)) in items.iter().enumerate() {
            self.converted(n, item);
        }
        self.arm();
        let Kind::Component(c) = &self.kind else {
            return Err(CallError::Status(0));
        };
        let generator = c.generator;
        let result = c
            .task
            .call_process_batch(&mut self.store, &c.items[..items.len()]);
        let made = match result {
            Ok(made) => made,
            Err(e) => return Err(self.describe(&e)),
        };
        let total: u64 = made.counts.iter().map(|&n| u64::from(n)).sum();
        if made.counts.len() != items.len() || total != made.outputs.len() as u64 {
            return Err(CallError::Failed(format!(
                "process-batch returned {} counts and {} outputs for {} items",
                made.counts.len(),
                made.outputs.len(),
                items.len()
            )));
        }
        let st = self.store.data_mut();
        let (entry_start, data_start) = (st.out.entries.len(), st.out.data.len());
        st.batch.clear_failures();
        st.batch.with_output = 0;
        if let Err(e) = take_made(st, &made, items, generator) {
            let st = self.store.data_mut();
            st.out.entries.truncate(entry_start);
            st.out.data.truncate(data_start);
            st.batch.clear_failures();
            return Err(self.describe(&e));
        }
        Ok(())
    }
}

/// What a component's batch made, into the stage's outputs and the batch's failures, each
/// within the host's caps.
fn take_made(
    st: &mut HostState,
    made: &BatchOutputs,
    items: &[(u32, &[u8])],
    generator: bool,
) -> wasmtime::Result<()> {
    let mut outputs = made.outputs.iter();
    let mut failed = made.failures.iter().peekable();
    for (n, (&count, &(input, _))) in made.counts.iter().zip(items).enumerate() {
        let mine = outputs.by_ref().take(count as usize);
        if failed.peek().is_some_and(|(i, _)| *i as usize == n) {
            if let Some((_, message)) = failed.next() {
                st.batch
                    .add_failure(n, message.as_bytes(), st.out.held(), st.max_held)?;
            }
            mine.for_each(drop);
            continue;
        }
        if count > 1 && !generator {
            mine.for_each(drop);
            let emitted = count as usize;
            st.batch
                .failures
                .push((n, CallError::NotAGenerator { emitted }));
            continue;
        }
        if count > 0 {
            st.batch.with_output += 1;
        }
        for out in mine {
            st.push_output(input, out)?;
        }
    }
    Ok(())
}
