//! The WebAssembly side of a node: the process-wide `Engine` and its epoch ticker.
//!
//! - [`cache`]: compiled modules and components by content hash, in memory and on disk.
//! - [`lru`]: which compiled code the caches keep, in memory and on disk (bounded in bytes).
//! - [`component`]: component tasks (wit/task.wit): their linker (WASI p2, sandboxed) and
//!   bindings.
//! - [`tags`]: what each boundary of a chain does to item tags.
//! - [`compile`]: a chain's modules compiled and every task checked against the ABI.
//! - [`graph`]: a branching chain's successors and the order its tasks run in.
//! - [`host`]: the store data of an instance and the host functions (`emit`, `log`, `fail`,
//!   `emit_batch`) of docs/ABI.md.
//! - [`instance`]: [`TaskInstance`], one sandboxed instance of one task, bounded in time and
//!   memory; `component_calls` and `native_calls` call component and native Python tasks.
//! - `limiter`: one store's memories and tables summed under the chain's `memory_mb`.
//! - `wasi_deadline`: WASI clocks and polls that cannot wait past a call's deadline.

mod cache;
mod compile;
mod component;
mod component_calls;
mod graph;
mod host;
mod instance;
mod limiter;
mod lru;
mod native_calls;
pub mod tags;
mod wasi_deadline;

use std::sync::OnceLock;
use std::time::Duration;

use wasmtime::{Config, Engine};

pub use cache::{CACHE_DIR_ENV, ModuleCache, default_cache_dir};
#[cfg(any(test, feature = "local-chain"))]
pub use compile::compile_local;
pub use compile::{CompiledChain, compile_chain};
pub use graph::{Graph, GraphError};
pub use host::{Entry, LogCtx, OutBuf};
pub use instance::TaskInstance;

/// How often the epoch advances; per-item deadlines are counted in these ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The engine's settings; code compiled with an engine of the same settings loads into it.
fn config() -> Config {
    let mut config = Config::new();
    config.epoch_interruption(true);
    // One linear memory a module: the memory cap sums a store's memories, and no task we
    // build needs more.
    config.wasm_multi_memory(false);
    config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    config
}

/// Why the engine could not be made (the node cannot run without it).
#[derive(Clone, Debug, thiserror::Error)]
#[error("cannot set up wasmtime: {0}")]
pub struct EngineError(String);

/// The process's one engine, with a thread ticking its epoch: made on first use (the node
/// asks at start, so a failure stops it there), its error kept for every later caller.
///
/// # Errors
/// When wasmtime refuses the configuration or the ticker thread cannot start.
pub fn engine() -> Result<&'static Engine, EngineError> {
    static ENGINE: OnceLock<Result<Engine, EngineError>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            let engine = Engine::new(&config()).map_err(|e| EngineError(format!("{e:#}")))?;
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
                .map_err(|e| EngineError(format!("cannot start the epoch ticker: {e}")))?;
            Ok(engine)
        })
        .as_ref()
        .map_err(Clone::clone)
}
