//! [`TaskInstance`]: one instance of one task on one worker, with its store, its input
//! buffer in guest memory, and its per-call deadline (epoch ticks) and memory cap. Every
//! failure comes back as a typed [`CallError`]. A component task's instance keeps its
//! bindings instead (calls in `component_calls`).

use wasmtime::{Memory, Store, Trap, TypedFunc};

use super::compile::{CompiledTask, TaskKind};
use super::component::{Task, WasiState};
use super::host::{BatchState, HostState, LogCtx, OutBuf, held_cap};
use super::limiter::MemLimiter;
use super::tags::Convert;
use super::{EPOCH_TICK, engine};
use crate::error::{CallError, TaskProblem, TrapCause};
use protocol::Limits;

/// One instance of one task on one worker.
pub struct TaskInstance {
    /// The store; its data holds the stage output buffer.
    pub store: Store<HostState>,
    pub(super) deadline_ticks: u64,
    pub(super) deadline_ms: u64,
    memory_mb: u64,
    /// What happens to an item entering the task.
    pub(super) input_conv: Convert,
    pub(super) kind: Kind,
}

pub(super) enum Kind {
    Core(CoreParts),
    Component(ComponentParts),
    /// A native Python task: its process (the store only holds the outputs).
    Native(NativeParts),
}

/// A native task's process, and item buffers reused from call to call.
pub(super) struct NativeParts {
    pub(super) runner: crate::native::Runner,
    pub(super) items: Vec<u8>,
}

/// A component instance's bindings, and item buffers reused from call to call.
pub(super) struct ComponentParts {
    pub(super) task: Task,
    pub(super) generator: bool,
    pub(super) items: Vec<Vec<u8>>,
}

/// A core instance's exports and input buffer.
pub(super) struct CoreParts {
    func: TypedFunc<u32, u32>,
    batch: Option<TypedFunc<(u32, u32), u32>>,
    block: Vec<u8>,
    input: TypedFunc<u32, u32>,
    memory: Memory,
    buf_ptr: usize,
    buf_cap: usize,
}

/// A store for one instance of `task`, within the chain's memory cap, and the deadline in
/// epoch ticks that every call gets. A new store's deadline is 0: it is set before anything
/// runs, start and init included.
fn new_store(
    task: &CompiledTask,
    limits: &Limits,
    log: LogCtx,
) -> Result<(Store<HostState>, u64), TaskProblem> {
    let memory_bytes =
        usize::try_from(limits.memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    let engine = engine().map_err(|e| TaskProblem::Instantiate(e.to_string()))?;
    let mut store = Store::new(
        engine,
        HostState {
            out: OutBuf::default(),
            batch: BatchState {
                generator: task.generator,
                ..BatchState::default()
            },
            cur_input: 0,
            memory: None,
            fail: None,
            limiter: MemLimiter::new(memory_bytes),
            log,
            max_item: usize::try_from(limits.max_item_bytes).unwrap_or(usize::MAX),
            max_held: held_cap(memory_bytes),
            wasi: WasiState::sandboxed(),
            deadline_at: None,
        },
    );
    store.limiter(|s| &mut s.limiter);
    // What a component's results or WASI calls copy out of the guest in one call is bounded
    // like its outputs, before wasmtime copies it.
    store.set_hostcall_fuel(held_cap(memory_bytes));
    let deadline_ticks = limits
        .deadline_ms
        .div_ceil(EPOCH_TICK.as_millis() as u64)
        .max(1)
        + 1;
    store.set_epoch_deadline(deadline_ticks);
    Ok((store, deadline_ticks))
}

/// The exports of a core module's instance that a task calls: its function, the input
/// buffer, the batch entry (when it has one), and its memory.
fn core_parts(
    store: &mut Store<HostState>,
    instance: &wasmtime::Instance,
    name: &str,
    batch_export: Option<&str>,
) -> Result<CoreParts, TaskProblem> {
    let instantiate = |e: wasmtime::Error| TaskProblem::Instantiate(format!("{e:#}"));
    let memory = instance
        .get_memory(&mut *store, "memory")
        .ok_or(TaskProblem::NoMemory)?;
    store.data_mut().memory = Some(memory);
    let func = instance
        .get_typed_func::<u32, u32>(&mut *store, name)
        .map_err(instantiate)?;
    let input = instance
        .get_typed_func::<u32, u32>(&mut *store, "pcluster_input")
        .map_err(instantiate)?;
    let batch = match batch_export {
        Some(b) => Some(
            instance
                .get_typed_func::<(u32, u32), u32>(&mut *store, b)
                .map_err(instantiate)?,
        ),
        None => None,
    };
    Ok(CoreParts {
        func,
        batch,
        block: Vec::new(),
        input,
        memory,
        buf_ptr: 0,
        buf_cap: 0,
    })
}

impl TaskInstance {
    /// Instantiates `task` and runs its start and init exports.
    ///
    /// # Errors
    /// What failed: instantiation, start, or init (with the task's message).
    pub fn new(task: &CompiledTask, limits: &Limits, log: LogCtx) -> Result<Self, TaskProblem> {
        let (mut store, deadline_ticks) = new_store(task, limits, log)?;
        let instantiate = |e: wasmtime::Error| TaskProblem::Instantiate(format!("{e:#}"));
        let (kind, core) = match &task.kind {
            TaskKind::Core {
                pre,
                init_export,
                batch_export,
                has_start,
            } => {
                let instance = pre.instantiate(&mut store).map_err(instantiate)?;
                let parts = core_parts(&mut store, &instance, &task.name, batch_export.as_deref())?;
                (Kind::Core(parts), Some((instance, *has_start, init_export)))
            }
            TaskKind::Component(pre) => {
                let task_bindings = pre.instantiate(&mut store).map_err(instantiate)?;
                let parts = ComponentParts {
                    task: task_bindings,
                    generator: task.generator,
                    items: Vec::new(),
                };
                (Kind::Component(parts), None)
            }
            TaskKind::Native(code) => {
                let log = store.data().log.clone();
                let parts = native_parts(code, task, limits, log)?;
                (Kind::Native(parts), None)
            }
            TaskKind::Absent { .. } => {
                return Err(TaskProblem::NotPlaced {
                    labels: task.labels.join(","),
                });
            }
        };
        let mut this = TaskInstance {
            store,
            deadline_ticks,
            deadline_ms: limits.deadline_ms,
            memory_mb: limits.memory_mb,
            input_conv: task.input,
            kind,
        };
        match core {
            Some((instance, has_start, init_export)) => {
                this.start_and_init(&instance, task, has_start, init_export.as_deref())?;
            }
            None => this.component_init(&task.name, &task.args)?,
        }
        Ok(this)
    }

    /// Runs a core module's `pcluster_start` (when it has one) and its task's init with the
    /// task's args, each within the deadline.
    fn start_and_init(
        &mut self,
        instance: &wasmtime::Instance,
        task: &CompiledTask,
        has_start: bool,
        init_export: Option<&str>,
    ) -> Result<(), TaskProblem> {
        let instantiate = |e: wasmtime::Error| TaskProblem::Instantiate(format!("{e:#}"));
        if has_start {
            let start = instance
                .get_typed_func::<(), ()>(&mut self.store, "pcluster_start")
                .map_err(instantiate)?;
            self.store.set_epoch_deadline(self.deadline_ticks);
            if let Err(e) = start.call(&mut self.store, ()) {
                return Err(TaskProblem::Start(self.describe(&e)));
            }
        }
        let Some(init_name) = init_export else {
            return Ok(());
        };
        let init = instance
            .get_typed_func::<u32, u32>(&mut self.store, init_name)
            .map_err(instantiate)?;
        if let Err(e) = self.place(&task.args) {
            return Err(TaskProblem::InitTrap(self.describe(&e)));
        }
        self.store.set_epoch_deadline(self.deadline_ticks);
        match init.call(&mut self.store, task.args.len() as u32) {
            Ok(0) => Ok(()),
            Ok(status) => {
                let message = self.store.data_mut().fail.take();
                Err(TaskProblem::InitStatus { status, message })
            }
            Err(e) => Err(TaskProblem::InitTrap(self.describe(&e))),
        }
    }

    /// Copies `item` into the guest's input buffer, asking for a larger one when needed.
    #[inline]
    fn place(&mut self, item: &[u8]) -> wasmtime::Result<()> {
        let Kind::Core(core) = &mut self.kind else {
            wasmtime::bail!("a component has no input buffer");
        };
        place(core, &mut self.store, self.deadline_ticks, item)
    }

    /// Runs the task on one item; its emits land in `store.data().out`.
    ///
    /// # Errors
    /// [`CallError::Failed`] or [`CallError::Status`] when the task reported an error,
    /// [`CallError::Trapped`] when it trapped (deadline, memory limit, panic, bad pointer);
    /// the caller rebuilds the instance then.
    #[inline]
    pub fn call(&mut self, item: &[u8]) -> Result<(), CallError> {
        let item = match self.input_conv {
            Convert::Keep => item,
            Convert::Strip => Convert::strip(item),
            Convert::Prepend(_) if matches!(self.kind, Kind::Native(_)) => {
                return self.native_call(self.store.data().cur_input, item);
            }
            Convert::Prepend(_) => return self.component_call(item),
        };
        let core = match &mut self.kind {
            Kind::Core(core) => core,
            Kind::Component(_) => return self.component_call(item),
            Kind::Native(_) => return self.native_call(self.store.data().cur_input, item),
        };
        if let Err(e) = place(core, &mut self.store, self.deadline_ticks, item) {
            return Err(self.describe(&e));
        }
        self.store.set_epoch_deadline(self.deadline_ticks);
        match core.func.call(&mut self.store, item.len() as u32) {
            Ok(0) => Ok(()),
            Ok(status) => Err(self.failed(status)),
            Err(e) => Err(self.describe(&e)),
        }
    }

    /// The error of a call that returned a non-zero `status`.
    pub(super) fn failed(&mut self, status: u32) -> CallError {
        match self.store.data_mut().fail.take() {
            Some(message) => CallError::Failed(message),
            None => CallError::Status(status),
        }
    }

    /// Whether the task runs in a native Python process.
    pub fn is_native(&self) -> bool {
        matches!(self.kind, Kind::Native(_))
    }

    /// Whether the task has a batched export.
    pub fn has_batch(&self) -> bool {
        match &self.kind {
            Kind::Core(core) => core.batch.is_some(),
            Kind::Component(_) | Kind::Native(_) => true,
        }
    }

    /// Runs the task on many items in one guest call; their emits land in
    /// `store.data().out` tagged with each item's input index, and item failures in
    /// `store.data().batch.failures` (by position in `items`).
    ///
    /// # Errors
    /// When the call trapped or reported the batch itself as failed: nothing of the batch is
    /// kept, and the caller re-runs its items one by one (after rebuilding on a trap).
    pub fn call_batch(&mut self, items: &[(u32, &[u8])]) -> Result<(), CallError> {
        let conv = self.input_conv;
        let core = match &mut self.kind {
            Kind::Core(core) => core,
            Kind::Component(_) => return self.component_batch(items),
            Kind::Native(_) => return self.native_batch(items),
        };
        core.block.clear();
        for (_, item) in items {
            core.block
                .extend_from_slice(&(conv.len_after(item) as u32).to_le_bytes());
        }
        for (_, item) in items {
            conv.apply_into(item, &mut core.block);
        }
        let block = std::mem::take(&mut core.block);
        let placed = self.place(&block);
        let len = block.len() as u32;
        if let Kind::Core(core) = &mut self.kind {
            core.block = block;
        }
        if let Err(e) = placed {
            return Err(self.describe(&e));
        }
        let st = self.store.data_mut();
        let (entry_start, data_start) = (st.out.entries.len(), st.out.data.len());
        st.batch.active = true;
        st.batch.cur = None;
        st.batch.failed_current = false;
        st.batch.clear_failures();
        st.batch.with_output = 0;
        st.batch.inputs.clear();
        st.batch.inputs.extend(items.iter().map(|(i, _)| *i));
        self.store.set_epoch_deadline(self.deadline_ticks);
        let Kind::Core(CoreParts {
            batch: Some(batch), ..
        }) = &self.kind
        else {
            // Callers check `has_batch` first; this is the item-by-item fallback's signal.
            return Err(CallError::Status(0));
        };
        let result = batch.call(&mut self.store, (items.len() as u32, len));
        let st = self.store.data_mut();
        let HostState { batch, out, .. } = st;
        batch.close_item(out);
        batch.active = false;
        batch.cur = None;
        batch.failed_current = false;
        let failed = match result {
            Ok(0) => return Ok(()),
            Ok(status) => self.failed(status),
            Err(e) => self.describe(&e),
        };
        let st = self.store.data_mut();
        st.out.entries.truncate(entry_start);
        st.out.data.truncate(data_start);
        st.batch.clear_failures();
        Err(failed)
    }

    /// The error of a call that trapped, with what the guest and the limiter said.
    pub(super) fn describe(&mut self, err: &wasmtime::Error) -> CallError {
        let st = self.store.data_mut();
        let message = st.fail.take();
        let denied = std::mem::take(&mut st.limiter.denied);
        let cause = match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => TrapCause::Deadline {
                ms: self.deadline_ms,
            },
            Some(trap) => TrapCause::Wasm(*trap),
            None => TrapCause::Host(format!("{err:#}")),
        };
        CallError::Trapped {
            cause,
            message,
            memory_limit_mb: denied.then_some(self.memory_mb),
        }
    }
}

/// Starts a native task's process and builds the task in it.
fn native_parts(
    code: &crate::native::NativeCode,
    task: &CompiledTask,
    limits: &Limits,
    log: LogCtx,
) -> Result<NativeParts, TaskProblem> {
    let init = crate::native::Init {
        name: &task.name,
        generator: task.generator,
        args: &task.args,
        deadline_ms: limits.deadline_ms,
        memory_mb: limits.memory_mb,
        max_item: limits.max_item_bytes,
    };
    let runner = crate::native::Runner::start(code, &init, log).map_err(TaskProblem::Native)?;
    Ok(NativeParts {
        runner,
        items: Vec::new(),
    })
}

/// Copies `item` into a core instance's input buffer, asking for a larger one when needed.
#[inline]
fn place(
    core: &mut CoreParts,
    store: &mut Store<HostState>,
    deadline_ticks: u64,
    item: &[u8],
) -> wasmtime::Result<()> {
    let len = item.len();
    if len > core.buf_cap || core.buf_cap == 0 {
        store.set_epoch_deadline(deadline_ticks);
        let want = len.max(4096);
        let ptr = core.input.call(&mut *store, want as u32)? as usize;
        if ptr
            .checked_add(want)
            .is_none_or(|end| end > core.memory.data_size(&*store))
        {
            wasmtime::bail!(
                "pcluster_input returned a buffer at {ptr}+{want} outside guest memory"
            );
        }
        core.buf_ptr = ptr;
        core.buf_cap = want;
    }
    let Some(dst) = core
        .memory
        .data_mut(&mut *store)
        .get_mut(core.buf_ptr..core.buf_ptr + len)
    else {
        wasmtime::bail!("input buffer outside guest memory");
    };
    dst.copy_from_slice(item);
    Ok(())
}
