//! The WebAssembly side of a node: the process-wide `Engine` and its epoch ticker, the
//! compiled-module cache, chain compilation with its checks, and [`TaskInstance`], one
//! sandboxed instance of one task with the host functions of the ABI (docs/ABI.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::error::{CallError, ExportError, SetupError, TaskProblem, TrapCause};
use protocol::{ChainSpec, Limits, TaskIndex};
use sha2::{Digest, Sha256};
use wasmtime::{
    Caller, Config, Engine, ExternType, InstancePre, Linker, Memory, Module, ResourceLimiter,
    Store, Trap, TypedFunc, ValType,
};

/// How often the epoch advances; per-item deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Largest total output one stage of one work unit may emit before the call traps.
const MAX_STAGE_OUTPUT: usize = 256 << 20;

/// The process's one engine, with a thread ticking its epoch.
pub fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(wasmtime::OptLevel::Speed);
        let engine = match Engine::new(&config) {
            Ok(e) => e,
            Err(e) => panic!("cannot create the wasmtime engine: {e}"),
        };
        let ticker = engine.clone();
        // A detached thread for the life of the process: the engine lives as long.
        std::thread::Builder::new()
            .name("pcluster-epoch".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(EPOCH_TICK);
                    ticker.increment_epoch();
                }
            })
            .expect("spawn the epoch ticker thread");
        engine
    })
}

/// Compiled modules keyed by the SHA-256 of their bytes, so setting the same chain up again
/// compiles nothing.
#[derive(Default)]
pub struct ModuleCache {
    modules: Mutex<HashMap<[u8; 32], Module>>,
    /// Modules compiled since start.
    pub compiled: AtomicU64,
    /// Module lookups served from the cache.
    pub hits: AtomicU64,
}

impl std::fmt::Debug for ModuleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleCache")
            .field("compiled", &self.compiled)
            .field("hits", &self.hits)
            .finish()
    }
}

impl ModuleCache {
    /// The compiled module for `bytes` and whether it came from the cache.
    ///
    /// # Errors
    /// When the bytes are not a valid module.
    pub fn get_or_compile(&self, bytes: &[u8]) -> wasmtime::Result<(Module, bool)> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(m) = self.lock().get(&hash) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((m.clone(), true));
        }
        let module = Module::new(engine(), bytes)?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        let mut map = self.lock();
        // A node keeps a handful of chains; bound the cache anyway.
        if map.len() >= 64 {
            map.clear();
        }
        map.insert(hash, module.clone());
        Ok((module, false))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Module>> {
        self.modules.lock().unwrap_or_else(|p| p.into_inner())
    }
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

struct MemLimiter {
    max_bytes: usize,
    denied: bool,
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
    active: bool,
    generator: bool,
    /// Input index (within the work unit) of each item of the batch.
    inputs: Vec<u32>,
    cur: Option<usize>,
    entry_mark: usize,
    data_mark: usize,
    failed_current: bool,
    /// Items of the batch that failed, by position in the batch.
    pub failures: Vec<(usize, CallError)>,
}

impl BatchState {
    /// Closes the current item: a non-generator that emitted several items fails it.
    fn close_item(&mut self, out: &mut OutBuf) {
        let Some(i) = self.cur else { return };
        let emitted = out.entries.len() - self.entry_mark;
        if !self.failed_current && emitted > 1 && !self.generator {
            out.entries.truncate(self.entry_mark);
            out.data.truncate(self.data_mark);
            self.failures
                .push((i, CallError::NotAGenerator { emitted }));
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
    memory: Option<Memory>,
    fail: Option<String>,
    limiter: MemLimiter,
    log: LogCtx,
    max_item: usize,
}

impl HostState {
    /// Takes the records of a batched call: `(index u32, length u32, bytes)`, length bit 31
    /// marking an item failure whose bytes are the message. Indices must not go backwards.
    fn take_records(&mut self, mut block: &[u8]) -> wasmtime::Result<()> {
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

/// One task of a compiled chain.
pub struct CompiledTask {
    /// Function name.
    pub name: Arc<str>,
    /// Whether it may emit several items per input.
    pub generator: bool,
    args: Vec<u8>,
    pre: InstancePre<HostState>,
    init_export: Option<String>,
    batch_export: Option<String>,
    has_start: bool,
}

/// A chain ready to instantiate on workers.
pub struct CompiledChain {
    /// Chain name.
    pub name: String,
    /// Chain version.
    pub version: String,
    /// Tasks in order.
    pub tasks: Vec<CompiledTask>,
    /// Limits of every call.
    pub limits: Limits,
}

impl std::fmt::Debug for CompiledChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledChain")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("tasks", &self.tasks.len())
            .finish()
    }
}

fn check_func(
    module: &Module,
    name: &str,
    params: &[ValType],
    results: &[ValType],
) -> Result<(), ExportError> {
    match module.get_export(name) {
        Some(ExternType::Func(ft)) => {
            let p: Vec<ValType> = ft.params().collect();
            let r: Vec<ValType> = ft.results().collect();
            let same = |a: &[ValType], b: &[ValType]| {
                a.len() == b.len() && a.iter().zip(b).all(|(x, y)| ValType::eq(x, y))
            };
            if same(&p, params) && same(&r, results) {
                Ok(())
            } else {
                Err(ExportError::WrongType {
                    name: name.into(),
                    found: format!("({p:?}) -> ({r:?})"),
                    expected: format!("({params:?}) -> ({results:?})"),
                })
            }
        }
        Some(other) => Err(ExportError::NotAFunction {
            name: name.into(),
            found: format!("{other:?}"),
        }),
        None => Err(ExportError::Missing { name: name.into() }),
    }
}

fn linker() -> Linker<HostState> {
    let mut linker = Linker::new(engine());
    let defined = linker
        .func_wrap(
            "pcluster",
            "emit",
            |mut caller: Caller<'_, HostState>, ptr: u32, len: u32| -> wasmtime::Result<()> {
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
                if len > st.max_item {
                    wasmtime::bail!(
                        "emit: item of {len} bytes exceeds the item limit of {} bytes",
                        st.max_item
                    );
                }
                if st.out.data.len() + len > MAX_STAGE_OUTPUT {
                    wasmtime::bail!(
                        "emit: outputs of this work unit exceed {MAX_STAGE_OUTPUT} bytes"
                    );
                }
                let start = st.out.data.len();
                st.out.data.extend_from_slice(bytes);
                st.out.entries.push(Entry {
                    input: st.cur_input,
                    len: len as u32,
                    start,
                });
                Ok(())
            },
        )
        .and_then(|l| {
            l.func_wrap(
                "pcluster",
                "log",
                |mut caller: Caller<'_, HostState>,
                 level: u32,
                 ptr: u32,
                 len: u32|
                 -> wasmtime::Result<()> {
                    let Some(mem) = caller.data().memory else {
                        return Ok(());
                    };
                    let (data, st) = mem.data_and_store_mut(&mut caller);
                    let (ptr, len) = (ptr as usize, (len as usize).min(64 << 10));
                    let Some(bytes) = data.get(ptr..ptr.saturating_add(len)) else {
                        wasmtime::bail!("log: message at {ptr}+{len} lies outside guest memory");
                    };
                    let msg = String::from_utf8_lossy(bytes);
                    let (node, worker, task) = (&*st.log.node, st.log.worker, &*st.log.task);
                    match level {
                        0 => tracing::error!(target: "task", node, worker, task, "{msg}"),
                        1 => tracing::warn!(target: "task", node, worker, task, "{msg}"),
                        2 => tracing::info!(target: "task", node, worker, task, "{msg}"),
                        3 => tracing::debug!(target: "task", node, worker, task, "{msg}"),
                        _ => tracing::trace!(target: "task", node, worker, task, "{msg}"),
                    }
                    Ok(())
                },
            )
        })
        .and_then(|l| {
            l.func_wrap(
                "pcluster",
                "fail",
                |mut caller: Caller<'_, HostState>, ptr: u32, len: u32| -> wasmtime::Result<()> {
                    let Some(mem) = caller.data().memory else {
                        return Ok(());
                    };
                    let (data, st) = mem.data_and_store_mut(&mut caller);
                    let (ptr, len) = (ptr as usize, (len as usize).min(16 << 10));
                    let msg = data
                        .get(ptr..ptr.saturating_add(len))
                        .map(|b| String::from_utf8_lossy(b).into_owned());
                    st.fail = msg;
                    Ok(())
                },
            )
        });
    let defined = defined.and_then(|l| {
        l.func_wrap(
            "pcluster",
            "emit_batch",
            |mut caller: Caller<'_, HostState>, ptr: u32, len: u32| -> wasmtime::Result<()> {
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
            },
        )
    });
    if let Err(e) = defined {
        // Only possible if the three definitions above clash, which they do not.
        panic!("defining the pcluster host functions: {e}");
    }
    linker
}

/// Compiles (or finds in the cache) every module of `spec` and checks every task's exports.
/// Returns the chain and how many modules were compiled and found cached.
///
/// # Errors
/// The first module that does not compile or task that cannot run, named.
pub fn compile_chain(
    cache: &ModuleCache,
    spec: &ChainSpec,
) -> Result<(CompiledChain, u32, u32), SetupError> {
    if spec.tasks.is_empty() {
        return Err(SetupError::NoTasks);
    }
    let mut modules = Vec::with_capacity(spec.modules.len());
    let (mut compiled, mut cached) = (0, 0);
    for (i, bytes) in spec.modules.iter().enumerate() {
        let (m, hit) = cache
            .get_or_compile(bytes)
            .map_err(|e| SetupError::Compile {
                module: i as u32,
                reason: format!("{e:#}"),
            })?;
        if hit {
            cached += 1;
        } else {
            compiled += 1;
        }
        modules.push(m);
    }
    let linker = linker();
    let mut tasks = Vec::with_capacity(spec.tasks.len());
    for (i, t) in spec.tasks.iter().enumerate() {
        let name: Arc<str> = t.function.as_str().into();
        let index = TaskIndex(i as u32);
        let ctx = |problem| SetupError::Task {
            index,
            task: name.clone(),
            problem,
        };
        let module = modules.get(t.module as usize).ok_or_else(|| {
            ctx(TaskProblem::NoSuchModule {
                module: t.module,
                count: modules.len(),
            })
        })?;
        let task = compile_task(&linker, module, &name, t).map_err(ctx)?;
        tasks.push(task);
    }
    Ok((
        CompiledChain {
            name: spec.name.clone(),
            version: spec.version.clone(),
            tasks,
            limits: spec.limits.clone(),
        },
        compiled,
        cached,
    ))
}

/// Checks one task's exports against the ABI and prepares its instantiation.
fn compile_task(
    linker: &Linker<HostState>,
    module: &Module,
    name: &Arc<str>,
    spec: &protocol::TaskSpec,
) -> Result<CompiledTask, TaskProblem> {
    match module.get_export("memory") {
        Some(ExternType::Memory(_)) => {}
        _ => return Err(TaskProblem::NoMemory),
    }
    check_func(module, "pcluster_abi_version", &[], &[ValType::I32])
        .map_err(TaskProblem::NotATaskModule)?;
    check_func(module, "pcluster_input", &[ValType::I32], &[ValType::I32])
        .map_err(TaskProblem::Export)?;
    check_func(module, name, &[ValType::I32], &[ValType::I32]).map_err(TaskProblem::Export)?;
    let optional = |export: String, params: &[ValType], results: &[ValType]| match module
        .get_export(&export)
    {
        Some(_) => check_func(module, &export, params, results)
            .map(|()| Some(export))
            .map_err(TaskProblem::Export),
        None => Ok(None),
    };
    let init_export = optional(
        format!("pcluster_init.{name}"),
        &[ValType::I32],
        &[ValType::I32],
    )?;
    let batch_export = optional(
        format!("pcluster_batch.{name}"),
        &[ValType::I32, ValType::I32],
        &[ValType::I32],
    )?;
    let has_start = optional("pcluster_start".into(), &[], &[])?.is_some();
    let pre = linker
        .instantiate_pre(module)
        .map_err(|e| TaskProblem::Link(format!("{e:#}")))?;
    Ok(CompiledTask {
        name: name.clone(),
        generator: spec.generator,
        args: spec.args.clone(),
        pre,
        init_export,
        batch_export,
        has_start,
    })
}

/// One instance of one task on one worker.
pub struct TaskInstance {
    /// The store; its data holds the stage output buffer.
    pub store: Store<HostState>,
    func: TypedFunc<u32, u32>,
    batch: Option<TypedFunc<(u32, u32), u32>>,
    block: Vec<u8>,
    input: TypedFunc<u32, u32>,
    memory: Memory,
    buf_ptr: usize,
    buf_cap: usize,
    deadline_ticks: u64,
    deadline_ms: u64,
    memory_mb: u64,
}

impl TaskInstance {
    /// Instantiates `task` and runs its start and init exports.
    ///
    /// # Errors
    /// What failed: instantiation, start, or init (with the task's message).
    pub fn new(task: &CompiledTask, limits: &Limits, log: LogCtx) -> Result<Self, TaskProblem> {
        let memory_bytes =
            usize::try_from(limits.memory_mb.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
        let mut store = Store::new(
            engine(),
            HostState {
                out: OutBuf::default(),
                batch: BatchState {
                    generator: task.generator,
                    ..BatchState::default()
                },
                cur_input: 0,
                memory: None,
                fail: None,
                limiter: MemLimiter {
                    max_bytes: memory_bytes,
                    denied: false,
                },
                log,
                max_item: usize::try_from(limits.max_item_bytes).unwrap_or(usize::MAX),
            },
        );
        store.limiter(|s| &mut s.limiter);
        let deadline_ticks = limits
            .deadline_ms
            .div_ceil(EPOCH_TICK.as_millis() as u64)
            .max(1)
            + 1;
        // A new store's deadline is 0: set it before anything runs, start and init included.
        store.set_epoch_deadline(deadline_ticks);
        let instantiate = |e: wasmtime::Error| TaskProblem::Instantiate(format!("{e:#}"));
        let instance = task.pre.instantiate(&mut store).map_err(instantiate)?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or(TaskProblem::NoMemory)?;
        store.data_mut().memory = Some(memory);
        let func = instance
            .get_typed_func::<u32, u32>(&mut store, &task.name)
            .map_err(instantiate)?;
        let input = instance
            .get_typed_func::<u32, u32>(&mut store, "pcluster_input")
            .map_err(instantiate)?;
        let batch = match &task.batch_export {
            Some(name) => Some(
                instance
                    .get_typed_func::<(u32, u32), u32>(&mut store, name)
                    .map_err(instantiate)?,
            ),
            None => None,
        };
        let mut this = TaskInstance {
            store,
            func,
            batch,
            block: Vec::new(),
            input,
            memory,
            buf_ptr: 0,
            buf_cap: 0,
            deadline_ticks,
            deadline_ms: limits.deadline_ms,
            memory_mb: limits.memory_mb,
        };
        if task.has_start {
            let start = instance
                .get_typed_func::<(), ()>(&mut this.store, "pcluster_start")
                .map_err(instantiate)?;
            this.store.set_epoch_deadline(deadline_ticks);
            if let Err(e) = start.call(&mut this.store, ()) {
                return Err(TaskProblem::Start(this.describe(&e)));
            }
        }
        if let Some(init_name) = &task.init_export {
            let init = instance
                .get_typed_func::<u32, u32>(&mut this.store, init_name)
                .map_err(instantiate)?;
            if let Err(e) = this.place(&task.args) {
                return Err(TaskProblem::InitTrap(this.describe(&e)));
            }
            this.store.set_epoch_deadline(deadline_ticks);
            match init.call(&mut this.store, task.args.len() as u32) {
                Ok(0) => {}
                Ok(status) => {
                    let message = this.store.data_mut().fail.take();
                    return Err(TaskProblem::InitStatus { status, message });
                }
                Err(e) => return Err(TaskProblem::InitTrap(this.describe(&e))),
            }
        }
        Ok(this)
    }

    /// Copies `item` into the guest's input buffer, asking for a larger one when needed.
    #[inline]
    fn place(&mut self, item: &[u8]) -> wasmtime::Result<()> {
        let len = item.len();
        if len > self.buf_cap || self.buf_cap == 0 {
            self.store.set_epoch_deadline(self.deadline_ticks);
            let want = len.max(4096);
            let ptr = self.input.call(&mut self.store, want as u32)? as usize;
            if ptr
                .checked_add(want)
                .is_none_or(|end| end > self.memory.data_size(&self.store))
            {
                wasmtime::bail!(
                    "pcluster_input returned a buffer at {ptr}+{want} outside guest memory"
                );
            }
            self.buf_ptr = ptr;
            self.buf_cap = want;
        }
        let Some(dst) = self
            .memory
            .data_mut(&mut self.store)
            .get_mut(self.buf_ptr..self.buf_ptr + len)
        else {
            wasmtime::bail!("input buffer outside guest memory");
        };
        dst.copy_from_slice(item);
        Ok(())
    }

    /// Runs the task on one item; its emits land in `store.data().out`.
    ///
    /// # Errors
    /// [`CallError::Failed`] or [`CallError::Status`] when the task reported an error,
    /// [`CallError::Trapped`] when it trapped (deadline, memory limit, panic, bad pointer);
    /// the caller rebuilds the instance then.
    #[inline]
    pub fn call(&mut self, item: &[u8]) -> Result<(), CallError> {
        if let Err(e) = self.place(item) {
            return Err(self.describe(&e));
        }
        self.store.set_epoch_deadline(self.deadline_ticks);
        match self.func.call(&mut self.store, item.len() as u32) {
            Ok(0) => Ok(()),
            Ok(status) => Err(self.failed(status)),
            Err(e) => Err(self.describe(&e)),
        }
    }

    /// The error of a call that returned a non-zero `status`.
    fn failed(&mut self, status: u32) -> CallError {
        match self.store.data_mut().fail.take() {
            Some(message) => CallError::Failed(message),
            None => CallError::Status(status),
        }
    }

    /// Whether the task has a batched export.
    pub fn has_batch(&self) -> bool {
        self.batch.is_some()
    }

    /// Runs the task on many items in one guest call; their emits land in
    /// `store.data().out` tagged with each item's input index, and item failures in
    /// `store.data().batch.failures` (by position in `items`).
    ///
    /// # Errors
    /// When the call trapped or reported the batch itself as failed: nothing of the batch is
    /// kept, and the caller re-runs its items one by one (after rebuilding on a trap).
    pub fn call_batch(&mut self, items: &[(u32, &[u8])]) -> Result<(), CallError> {
        self.block.clear();
        for (_, item) in items {
            self.block
                .extend_from_slice(&(item.len() as u32).to_le_bytes());
        }
        for (_, item) in items {
            self.block.extend_from_slice(item);
        }
        let block = std::mem::take(&mut self.block);
        let placed = self.place(&block);
        let len = block.len() as u32;
        self.block = block;
        if let Err(e) = placed {
            return Err(self.describe(&e));
        }
        let st = self.store.data_mut();
        let (entry_start, data_start) = (st.out.entries.len(), st.out.data.len());
        st.batch.active = true;
        st.batch.cur = None;
        st.batch.failed_current = false;
        st.batch.failures.clear();
        st.batch.inputs.clear();
        st.batch.inputs.extend(items.iter().map(|(i, _)| *i));
        self.store.set_epoch_deadline(self.deadline_ticks);
        let Some(batch) = &self.batch else {
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
        st.batch.failures.clear();
        Err(failed)
    }

    /// The error of a call that trapped, with what the guest and the limiter said.
    fn describe(&mut self, err: &wasmtime::Error) -> CallError {
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
