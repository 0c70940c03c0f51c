//! A chain compiled for this node: every module compiled (or found in the cache), every
//! task's exports checked against the ABI, and an `InstancePre` per task ready to
//! instantiate on each worker.
//!
//! A component (wit/task.wit) is pre-instantiated the same way, with a linker built once per
//! chain; items crossing between core and component tasks are converted by the rules of
//! [`super::tags`].
//!
//! Only the tasks this node can run (by its labels) are compiled: a module that none of them
//! uses is not compiled, and the root does not even send it ([`protocol::Withheld`]).
//!
//! A module may say which of its tasks are generators, in a custom section the SDK writes
//! ([`GENERATORS_SECTION`]): a task listed there whose chain entry lacks `generator = true`
//! fails the setup, instead of failing every item that emits twice at run time.

use std::collections::HashSet;
use std::sync::Arc;

use protocol::{ChainSpec, Limits, TaskIndex, Withheld};
use wasmtime::{ExternType, InstancePre, Linker, Module, ValType};

use super::cache::{Compiled, ModuleCache, Origin, is_component};
use super::component::{self, TaskPre};
use super::host::{HostState, linker};
use super::tags::{self, Convert};
use crate::error::{ExportError, SetupError, TaskProblem};
use crate::native::Natives;

/// One task of a compiled chain.
pub struct CompiledTask {
    /// Function name.
    pub name: Arc<str>,
    /// Whether it may emit several items per input.
    pub generator: bool,
    /// Labels a node needs to run it.
    pub labels: Vec<String>,
    pub(super) args: Vec<u8>,
    pub(super) kind: TaskKind,
    /// What happens to an item entering this task (tags, see [`tags`]).
    pub input: Convert,
}

/// How a task is instantiated.
pub(super) enum TaskKind {
    /// A core module's task (docs/ABI.md).
    Core {
        pre: InstancePre<HostState>,
        init_export: Option<String>,
        batch_export: Option<String>,
        has_start: bool,
    },
    /// A component of the `pcluster:task` world.
    Component(TaskPre<HostState>),
    /// Native Python, run in processes of its own.
    Native(Arc<crate::native::NativeCode>),
    /// A task this node lacks the labels for: not compiled, never instantiated; its items
    /// go back to the root. Whether it is a component is all that is known of it.
    Absent { component: bool },
}

impl CompiledTask {
    /// Whether the task is a component (it takes and makes tagged items).
    pub fn is_component(&self) -> bool {
        matches!(
            self.kind,
            TaskKind::Component(_) | TaskKind::Native(_) | TaskKind::Absent { component: true }
        )
    }

    /// Whether the task is native Python (it runs in a process of its own).
    pub fn is_native(&self) -> bool {
        matches!(self.kind, TaskKind::Native(_))
    }

    /// Whether this node runs the task (it carries the labels the task needs).
    pub fn is_placed(&self) -> bool {
        !matches!(self.kind, TaskKind::Absent { .. })
    }
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
    /// What happens to an output leaving the chain (tags, see [`tags`]).
    pub exit: Convert,
    /// A branching chain's graph; `None` for a linear chain.
    pub graph: Option<super::Graph>,
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

/// The custom section listing the task functions of a module that may emit several items:
/// UTF-8 names, one per line.
pub const GENERATORS_SECTION: &str = "pcluster.generators";

/// The tasks `module` declares generators, or `None` when it has no such section (then only
/// the run-time check applies). Several sections of the name add up, as a linker may leave
/// one per object file.
fn declared_generators(module: &[u8]) -> Option<HashSet<String>> {
    let mut names: Option<HashSet<String>> = None;
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        // The module compiled already, so it parses; stop at anything odd all the same.
        let Ok(payload) = payload else { break };
        if let wasmparser::Payload::CustomSection(section) = payload
            && section.name() == GENERATORS_SECTION
        {
            let text = String::from_utf8_lossy(section.data());
            names
                .get_or_insert_with(HashSet::new)
                .extend(text.lines().filter(|l| !l.is_empty()).map(String::from));
        }
    }
    names
}

/// Compiles (or finds in the cache) every module of `spec` that a task this node can run uses
/// (a node with `labels`), and checks those tasks' exports. Returns the chain and how many
/// modules were compiled and found cached. `tagged_items`: the root feeds and wants tagged
/// items (docs/ABI.md, "Item tags"). `withheld`: modules the root did not send.
///
/// # Errors
/// The first module that does not compile or task that cannot run, named; a task this node
/// can run whose module was withheld. `natives` makes native Python modules ready, telling
/// its callback what takes long.
pub fn compile_chain(
    cache: &ModuleCache,
    spec: &ChainSpec,
    tagged_items: bool,
    labels: &[String],
    withheld: &[Withheld],
    natives: (&Natives, &dyn Fn(&str)),
) -> Result<(CompiledChain, u32, u32), SetupError> {
    if spec.tasks.is_empty() {
        return Err(SetupError::NoTasks);
    }
    let graph = super::graph::graph(&spec.tasks)?;
    let placed: Vec<bool> = spec
        .tasks
        .iter()
        .map(|t| t.labels.iter().all(|l| labels.contains(l)))
        .collect();
    let (modules, compiled, cached) = node_modules(cache, spec, &placed, withheld, natives)?;
    let mut linkers = Linkers {
        core: linker()?,
        component: None,
    };
    let mut tasks = Vec::with_capacity(spec.tasks.len());
    for (i, t) in spec.tasks.iter().enumerate() {
        tasks.push(chain_task(&mut linkers, &modules, i, t, placed[i])?);
    }
    let kinds: Vec<bool> = tasks.iter().map(CompiledTask::is_component).collect();
    let next = graph.as_ref().map(|g| g.next.as_slice());
    let (inputs, exit) = tags::plan(&kinds, next, tagged_items)?;
    for (task, input) in tasks.iter_mut().zip(inputs) {
        task.input = input;
    }
    Ok((
        CompiledChain {
            name: spec.name.clone(),
            version: spec.version.clone(),
            tasks,
            limits: spec.limits.clone(),
            exit,
            graph,
        },
        compiled,
        cached,
    ))
}

/// The linkers of a chain's tasks: core modules', and components' (made on first use).
struct Linkers {
    core: Linker<HostState>,
    component: Option<wasmtime::component::Linker<HostState>>,
}

/// Task `i` of the chain, `t`, as this node runs it (or knows of it when not `placed`).
fn chain_task(
    linkers: &mut Linkers,
    modules: &[NodeModule],
    i: usize,
    t: &protocol::TaskSpec,
    placed: bool,
) -> Result<CompiledTask, SetupError> {
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
    let (module, generators) = match module {
        NodeModule::Here(m, g) if placed => (m, g),
        NodeModule::Here(m, _) => return Ok(absent(t, matches!(m, Compiled::Component(_)))),
        NodeModule::Native(code) if placed => return Ok(native_task(code, &name, t)),
        NodeModule::Native(_) => return Ok(absent(t, true)),
        NodeModule::Absent { component } => return Ok(absent(t, *component)),
    };
    let task = match module {
        Compiled::Module(module) => compile_task(&linkers.core, module, &name, t).map_err(ctx)?,
        Compiled::Component(c) => {
            component_task(&mut linkers.component, c, &name, t).map_err(ctx)?
        }
    };
    if !t.generator && generators.as_ref().is_some_and(|g| g.contains(&t.function)) {
        return Err(SetupError::UndeclaredGenerator { index, task: name });
    }
    Ok(task)
}

#[cfg(any(test, feature = "local-chain"))]
/// `spec` compiled for running in this process alone (the bench's floor, tests): raw items,
/// every task placed, no native tasks, no cache on disk.
///
/// # Errors
/// As [`compile_chain`].
pub fn compile_local(spec: &ChainSpec) -> Result<CompiledChain, SetupError> {
    let (natives, quiet) = (Natives::default(), |_: &str| ());
    let cache = ModuleCache::default();
    compile_chain(&cache, spec, false, &[], &[], (&natives, &quiet)).map(|(c, _, _)| c)
}

/// The chain's modules as this node has them: those a task it can run (`placed`) uses are
/// compiled or found in the cache, the others left absent; with how many were compiled and
/// found cached. This chain's code becomes the cache's current one.
fn node_modules(
    cache: &ModuleCache,
    spec: &ChainSpec,
    placed: &[bool],
    withheld: &[Withheld],
    (natives, progress): (&Natives, &dyn Fn(&str)),
) -> Result<(Vec<NodeModule>, u32, u32), SetupError> {
    let mut needed = vec![false; spec.modules.len()];
    for (t, &placed) in spec.tasks.iter().zip(placed) {
        if placed && let Some(n) = needed.get_mut(t.module as usize) {
            *n = true;
        }
    }
    let mut modules = Vec::with_capacity(spec.modules.len());
    let (mut compiled, mut cached) = (0, 0);
    let mut keys = Vec::with_capacity(spec.modules.len());
    for (i, bytes) in spec.modules.iter().enumerate() {
        let absent = withheld.iter().find(|w| w.module as usize == i);
        let native = protocol::native::is_bundle(bytes);
        if !needed[i] {
            let component = absent.map_or_else(|| native || is_component(bytes), |w| w.component);
            modules.push(NodeModule::Absent { component });
            continue;
        }
        if absent.is_some() {
            return Err(SetupError::Withheld { module: i as u32 });
        }
        if native {
            let code = natives
                .prepare(bytes, progress)
                .map_err(|source| SetupError::Native {
                    module: i as u32,
                    source,
                })?;
            modules.push(NodeModule::Native(code));
            continue;
        }
        let found = cache
            .get_or_compile(bytes)
            .map_err(|e| SetupError::Compile {
                module: i as u32,
                reason: format!("{e:#}"),
            })?;
        keys.push(found.key);
        if found.origin == Origin::Compiled {
            compiled += 1;
        } else {
            cached += 1;
        }
        let generators = match found.code {
            Compiled::Module(_) => declared_generators(bytes),
            Compiled::Component(_) => None,
        };
        modules.push(NodeModule::Here(found.code, generators));
    }
    // Code of earlier chains goes past a budget.
    cache.keep_only(&keys, compiled > 0);
    Ok((modules, compiled, cached))
}

/// A component task, linked with the one component linker of the chain (made on first use).
fn component_task(
    linker: &mut Option<wasmtime::component::Linker<HostState>>,
    c: &wasmtime::component::Component,
    name: &Arc<str>,
    t: &protocol::TaskSpec,
) -> Result<CompiledTask, TaskProblem> {
    let link = |e: wasmtime::Error| TaskProblem::Link(format!("{e:#}"));
    let l = match linker {
        Some(l) => l,
        None => linker.insert(component::linker().map_err(link)?),
    };
    let pre = component::prepare(l, c).map_err(link)?;
    Ok(CompiledTask {
        name: name.clone(),
        generator: t.generator,
        args: t.args.clone(),
        kind: TaskKind::Component(pre),
        input: Convert::Keep,
        labels: t.labels.clone(),
    })
}

/// A module of the chain as this node has it.
enum NodeModule {
    /// Compiled, with the generators it declares.
    Here(Compiled, Option<HashSet<String>>),
    /// Native Python, its sources written and its requirements installed.
    Native(Arc<crate::native::NativeCode>),
    /// Used by no task this node can run: not compiled (and withheld by the root).
    Absent { component: bool },
}

/// A native Python task.
fn native_task(
    code: &Arc<crate::native::NativeCode>,
    name: &Arc<str>,
    t: &protocol::TaskSpec,
) -> CompiledTask {
    CompiledTask {
        name: name.clone(),
        generator: t.generator,
        args: t.args.clone(),
        kind: TaskKind::Native(code.clone()),
        input: Convert::Keep,
        labels: t.labels.clone(),
    }
}

/// A task this node does not run (it lacks the labels).
fn absent(t: &protocol::TaskSpec, component: bool) -> CompiledTask {
    CompiledTask {
        name: t.function.as_str().into(),
        generator: t.generator,
        labels: t.labels.clone(),
        args: Vec::new(),
        kind: TaskKind::Absent { component },
        input: Convert::Keep,
    }
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
        labels: spec.labels.clone(),
        args: spec.args.clone(),
        kind: TaskKind::Core {
            pre,
            init_export,
            batch_export,
            has_start,
        },
        input: Convert::Keep,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generators_are_read_from_every_section_of_the_name() {
        let module = wat::parse_str(
            r#"(module
                 (@custom "pcluster.generators" "twice\nsplit\r\n")
                 (@custom "other" "ignored\n")
                 (@custom "pcluster.generators" "fan_out"))"#,
        )
        .unwrap();
        let names = declared_generators(&module).expect("declared");
        let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
        names.sort_unstable();
        assert_eq!(names, ["fan_out", "split", "twice"]);
        let silent = wat::parse_str("(module (@custom \"other\" \"twice\"))").unwrap();
        assert_eq!(declared_generators(&silent), None);
    }
}
