//! Component tasks: WebAssembly components of the `pcluster:task` world (wit/task.wit), such
//! as Python tasks built by componentize-py. The linker (WASI preview 2 granting only random
//! numbers and clocks, plus our `log`) is built once per chain and each task is
//! pre-instantiated, so a new worker instantiates without linking again.

use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::engine;
use super::host::HostState;

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "task",
    });
}

pub use bindings::{BatchOutputs, Task, TaskPre};

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi.ctx,
            table: &mut self.wasi.table,
        }
    }
}

impl bindings::TaskImports for HostState {
    fn log(&mut self, level: u32, msg: String) {
        self.log_line(level, &msg);
    }
}

/// The WASI state of a component instance.
pub struct WasiState {
    ctx: WasiCtx,
    table: ResourceTable,
}

impl WasiState {
    /// What a component may reach: clocks and random numbers (WASI's defaults), nothing
    /// else: no preopened directory, no environment, no arguments, no network, no stdin;
    /// stdout and stderr go nowhere (the Python glue sends them to `log`).
    pub fn sandboxed() -> WasiState {
        WasiState {
            ctx: WasiCtx::builder().build(),
            table: ResourceTable::new(),
        }
    }

    /// The context and the resource table, borrowed apart.
    pub(super) fn parts(&mut self) -> (&mut WasiCtx, &mut ResourceTable) {
        (&mut self.ctx, &mut self.table)
    }
}

/// The linker of component tasks: WASI preview 2 (sync) with its clock and polls bound by
/// each call's deadline (`wasi_deadline`), and the world's `log`.
///
/// # Errors
/// Only if the definitions clash, which they do not.
pub fn linker() -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine()?);
    wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
    super::wasi_deadline::shadow(&mut linker)?;
    Task::add_to_linker::<_, HasSelf<HostState>>(&mut linker, |s| s)?;
    Ok(linker)
}

/// Pre-instantiates `component` with `linker`.
///
/// # Errors
/// When the component does not implement the world or imports what the linker lacks.
pub fn prepare(
    linker: &Linker<HostState>,
    component: &Component,
) -> wasmtime::Result<TaskPre<HostState>> {
    TaskPre::new(linker.instantiate_pre(component)?)
}
