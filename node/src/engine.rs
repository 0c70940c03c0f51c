//! The WebAssembly side of a node: the process-wide `Engine` and its epoch ticker, the
//! compiled-module cache, chain compilation with its checks, and [`TaskInstance`], one
//! sandboxed instance of one task with the host functions of the ABI (docs/ABI.md).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use protocol::{ChainSpec, Limits};
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
    pub fn get_or_compile(&self, bytes: &[u8]) -> Result<(Module, bool), String> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(m) = self.lock().get(&hash) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((m.clone(), true));
        }
        let module = Module::new(engine(), bytes).map_err(|e| format!("{e:#}"))?;
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
    pub failures: Vec<(usize, String)>,
}

impl BatchState {
    /// Closes the current item: a non-generator that emitted several items fails it.
    fn close_item(&mut self, out: &mut OutBuf) {
        let Some(i) = self.cur else { return };
        let emitted = out.entries.len() - self.entry_mark;
        if !self.failed_current && emitted > 1 && !self.generator {
            out.entries.truncate(self.entry_mark);
            out.data.truncate(self.data_mark);
            self.failures.push((
                i,
                format!("emitted {emitted} items but is not a generator (set `generator = true`)"),
            ));
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
                batch
                    .failures
                    .push((index, String::from_utf8_lossy(bytes).into_owned()));
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
) -> Result<(), String> {
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
                Err(format!(
                    "export `{name}` has type ({p:?}) -> ({r:?}), expected ({params:?}) -> ({results:?})"
                ))
            }
        }
        Some(other) => Err(format!("export `{name}` is a {other:?}, not a function")),
        None => Err(format!("module has no export named `{name}`")),
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
/// A message naming the task or module and the reason.
pub fn compile_chain(
    cache: &ModuleCache,
    spec: &ChainSpec,
) -> Result<(CompiledChain, u32, u32), String> {
    if spec.tasks.is_empty() {
        return Err("the chain has no tasks".into());
    }
    let mut modules = Vec::with_capacity(spec.modules.len());
    let (mut compiled, mut cached) = (0, 0);
    for (i, bytes) in spec.modules.iter().enumerate() {
        let (m, hit) = cache
            .get_or_compile(bytes)
            .map_err(|e| format!("module {i} does not compile: {e}"))?;
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
        let name = &t.function;
        let ctx = |e: String| format!("task {i} `{name}`: {e}");
        let module = modules
            .get(t.module as usize)
            .ok_or_else(|| ctx(format!("names module {} of {}", t.module, modules.len())))?;
        match module.get_export("memory") {
            Some(ExternType::Memory(_)) => {}
            _ => return Err(ctx("module exports no memory named `memory`".into())),
        }
        check_func(module, "pcluster_abi_version", &[], &[ValType::I32])
            .map_err(|e| ctx(format!("{e} (not a pcluster task module? see docs/ABI.md)")))?;
        check_func(module, "pcluster_input", &[ValType::I32], &[ValType::I32]).map_err(ctx)?;
        check_func(module, name, &[ValType::I32], &[ValType::I32]).map_err(ctx)?;
        let init_name = format!("pcluster_init.{name}");
        let init_export = match module.get_export(&init_name) {
            Some(_) => {
                check_func(module, &init_name, &[ValType::I32], &[ValType::I32]).map_err(ctx)?;
                Some(init_name)
            }
            None => None,
        };
        let batch_name = format!("pcluster_batch.{name}");
        let batch_export = match module.get_export(&batch_name) {
            Some(_) => {
                check_func(
                    module,
                    &batch_name,
                    &[ValType::I32, ValType::I32],
                    &[ValType::I32],
                )
                .map_err(ctx)?;
                Some(batch_name)
            }
            None => None,
        };
        let has_start = match module.get_export("pcluster_start") {
            Some(_) => {
                check_func(module, "pcluster_start", &[], &[]).map_err(ctx)?;
                true
            }
            None => false,
        };
        let pre = linker.instantiate_pre(module).map_err(|e| {
            ctx(format!(
                "{e:#} (tasks may import only `pcluster` functions)"
            ))
        })?;
        tasks.push(CompiledTask {
            name: name.as_str().into(),
            generator: t.generator,
            args: t.args.clone(),
            pre,
            init_export,
            batch_export,
            has_start,
        });
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

/// Why a call failed.
#[derive(Debug)]
pub enum CallFailure {
    /// The task returned a non-zero status; the instance is intact.
    Status(String),
    /// The call trapped; the instance must be rebuilt.
    Trap(String),
}

impl TaskInstance {
    /// Instantiates `task` and runs its start and init exports.
    ///
    /// # Errors
    /// A message saying what failed (instantiation, start, or init with its message).
    pub fn new(task: &CompiledTask, limits: &Limits, log: LogCtx) -> Result<Self, String> {
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
        let instance = task
            .pre
            .instantiate(&mut store)
            .map_err(|e| format!("instantiation failed: {e:#}"))?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or("module exports no memory")?;
        store.data_mut().memory = Some(memory);
        let func = instance
            .get_typed_func::<u32, u32>(&mut store, &task.name)
            .map_err(|e| format!("{e:#}"))?;
        let input = instance
            .get_typed_func::<u32, u32>(&mut store, "pcluster_input")
            .map_err(|e| format!("{e:#}"))?;
        let batch = match &task.batch_export {
            Some(name) => Some(
                instance
                    .get_typed_func::<(u32, u32), u32>(&mut store, name)
                    .map_err(|e| format!("{e:#}"))?,
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
                .map_err(|e| format!("{e:#}"))?;
            this.store.set_epoch_deadline(deadline_ticks);
            start
                .call(&mut this.store, ())
                .map_err(|e| format!("pcluster_start failed: {}", this.describe(&e)))?;
        }
        if let Some(init_name) = &task.init_export {
            let init = instance
                .get_typed_func::<u32, u32>(&mut this.store, init_name)
                .map_err(|e| format!("{e:#}"))?;
            this.place(&task.args)
                .map_err(|e| format!("init: {}", this.describe(&e)))?;
            this.store.set_epoch_deadline(deadline_ticks);
            match init.call(&mut this.store, task.args.len() as u32) {
                Ok(0) => {}
                Ok(status) => {
                    let msg = this.store.data_mut().fail.take();
                    return Err(format!(
                        "init failed (status {status}): {}",
                        msg.unwrap_or_else(|| "no message".into())
                    ));
                }
                Err(e) => return Err(format!("init failed: {}", this.describe(&e))),
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
    /// [`CallFailure::Status`] when the task reported an error, [`CallFailure::Trap`] when it
    /// trapped (deadline, memory limit, panic, bad pointer); the caller rebuilds the instance.
    #[inline]
    pub fn call(&mut self, item: &[u8]) -> Result<(), CallFailure> {
        if let Err(e) = self.place(item) {
            return Err(CallFailure::Trap(self.describe(&e)));
        }
        self.store.set_epoch_deadline(self.deadline_ticks);
        match self.func.call(&mut self.store, item.len() as u32) {
            Ok(0) => Ok(()),
            Ok(status) => {
                let msg = self.store.data_mut().fail.take();
                Err(CallFailure::Status(msg.unwrap_or_else(|| {
                    format!("task returned error status {status}")
                })))
            }
            Err(e) => Err(CallFailure::Trap(self.describe(&e))),
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
    pub fn call_batch(&mut self, items: &[(u32, &[u8])]) -> Result<(), CallFailure> {
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
            return Err(CallFailure::Trap(self.describe(&e)));
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
            return Err(CallFailure::Status("no batched export".into()));
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
            Ok(status) => CallFailure::Status(
                st.fail
                    .take()
                    .unwrap_or_else(|| format!("batch returned status {status}")),
            ),
            Err(e) => CallFailure::Trap(self.describe(&e)),
        };
        let st = self.store.data_mut();
        st.out.entries.truncate(entry_start);
        st.out.data.truncate(data_start);
        st.batch.failures.clear();
        Err(failed)
    }

    /// A readable reason for a failed call.
    fn describe(&mut self, err: &wasmtime::Error) -> String {
        let st = self.store.data_mut();
        let msg = st.fail.take();
        let denied = std::mem::take(&mut st.limiter.denied);
        let base = match err.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => format!("deadline of {} ms exceeded", self.deadline_ms),
            Some(trap) => format!("trap: {trap}"),
            None => format!("{err:#}"),
        };
        match (denied, msg) {
            (true, Some(m)) => format!("memory limit of {} MiB reached: {m}", self.memory_mb),
            (true, None) => format!("memory limit of {} MiB reached ({base})", self.memory_mb),
            (false, Some(m)) => format!("{m} ({base})"),
            (false, None) => base,
        }
    }
}
