//! Chain files (TOML): reading one into a [`ChainSpec`], with its modules' bytes.
//!
//! `module` is a `.wasm` file, or a directory holding a Rust task crate, or a Python package
//! or `.py` file; turning the last two into wasm (building them when out of date) is the job
//! of a [`Modules`] given to [`load`], such as `pcluster-build`'s builder. This library runs
//! no toolchain: [`WasmFiles`] takes `.wasm` files only. With `runtime = "python"` (for the
//! chain or a task) a Python module travels as its sources instead, with the chain's
//! `requirements` ([`crate::native`]), and its tasks need the label `native`.

use std::path::{Path, PathBuf};

use protocol::native::NATIVE_LABEL;
use protocol::{ChainSpec, Limits, TaskSpec};
use serde::Deserialize;

use crate::error::RootError;
use crate::native::Runtime;
use crate::python::{self, Codec, PythonError};

/// Why a [`Modules`] could not give a module's wasm.
pub type ModuleError = Box<dyn std::error::Error + Send + Sync>;

/// Turns a chain's `module` entry (a path, relative to the chain file already resolved)
/// into the `.wasm` file to send: the file itself, or the output of a build.
pub trait Modules {
    /// The `.wasm` file for the module at `path`.
    ///
    /// # Errors
    /// When it is not a module, or cannot be built.
    fn resolve(&self, path: &Path) -> Result<PathBuf, ModuleError>;
}

/// [`Modules`] of `.wasm` files only: a task crate or a Python package is refused, naming
/// what would build it.
#[derive(Clone, Copy, Debug, Default)]
pub struct WasmFiles;

impl Modules for WasmFiles {
    fn resolve(&self, path: &Path) -> Result<PathBuf, ModuleError> {
        if python::is_python(path) || path.is_dir() {
            return Err(Box::new(ChainError::NotBuilt(path.to_path_buf())));
        }
        if !path.is_file() {
            return Err(Box::new(ChainError::MissingModule(path.to_path_buf())));
        }
        Ok(path.to_path_buf())
    }
}

/// What is wrong with a chain file or one of its modules.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChainError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A TOML file is invalid.
    #[error("{path}: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// The chain lists no task.
    #[error("the chain has no [[task]]")]
    NoTasks,
    /// A task names no module, and neither does the chain.
    #[error("task `{task}` has no module (set `module`)")]
    NoModule {
        /// The task's function.
        task: String,
    },
    /// A module path that is neither a file nor a directory.
    #[error("module {0} does not exist")]
    MissingModule(PathBuf),
    /// A module that must be built first, given where only `.wasm` files are taken.
    #[error(
        "module {0} is a task crate or a Python package: build it first (`pcluster run` and \
         the `pcluster-build` crate do), or name its .wasm file"
    )]
    NotBuilt(PathBuf),
    /// A module could not be had (its build failed).
    #[error(transparent)]
    Module(ModuleError),
    /// The tasks' graph (`name`, `next`) is invalid.
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    /// A Python task's args or the chain's codec are unusable.
    #[error(transparent)]
    Python(#[from] PythonError),
    /// A native Python task's module could not be packed, or a runtime is unknown.
    #[error(transparent)]
    Native(#[from] crate::native::NativeError),
    /// A task of a core module was given args other than a string.
    #[error("task `{task}`: args of a wasm task must be a string")]
    ArgsNotString {
        /// The task's function.
        task: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainFile {
    name: String,
    #[serde(default = "default_version")]
    version: String,
    module: Option<String>,
    /// How Python objects other than str and bytes travel: "json" (default) or "pickle".
    codec: Option<String>,
    /// Where the tasks run: "sandbox" (default) or "python" (native CPython).
    runtime: Option<String>,
    /// pip requirements of the native Python tasks, installed on the nodes at setup.
    #[serde(default)]
    requirements: Vec<String>,
    #[serde(rename = "task", default)]
    tasks: Vec<TaskFile>,
    #[serde(default)]
    limits: LimitsFile,
}

fn default_version() -> String {
    "0".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    function: String,
    /// Its name in `next` lists (default: the function).
    name: Option<String>,
    /// The tasks its outputs go to, by name.
    next: Option<Vec<String>>,
    /// Labels a node needs to run it.
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    generator: bool,
    /// A string for a wasm task; for a Python task, an array of args (a single value is
    /// one arg).
    args: Option<toml::Value>,
    module: Option<String>,
    /// Where this task runs (default: the chain's runtime).
    runtime: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    deadline_ms: Option<u64>,
    memory_mb: Option<u64>,
    max_item_bytes: Option<u64>,
}

/// Reads a chain file and its modules, each turned into wasm by `builder`.
///
/// # Errors
/// When the file is unreadable or invalid, or a module cannot be had or read.
pub fn load(path: &Path, builder: &dyn Modules) -> Result<ChainSpec, RootError> {
    let err = |source: ChainError| RootError::Chain {
        path: path.display().to_string(),
        source: Box::new(source),
    };
    let file = parse(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    let codec = match &file.codec {
        Some(name) => Codec::parse(name).map_err(|e| err(e.into()))?,
        None => Codec::default(),
    };
    let succ = file_graph(&file).map_err(&err)?;
    let chain_runtime = runtime(file.runtime.as_deref()).map_err(&err)?;
    let mut module_keys: Vec<(String, Runtime)> = Vec::new();
    let mut is_python: Vec<bool> = Vec::new();
    let mut modules = Vec::new();
    let mut tasks = Vec::new();
    for (i, t) in file.tasks.into_iter().enumerate() {
        let m = t.module.or_else(|| file.module.clone()).ok_or_else(|| {
            err(ChainError::NoModule {
                task: t.function.clone(),
            })
        })?;
        let rt = match &t.runtime {
            Some(name) => runtime(Some(name)).map_err(&err)?,
            None => chain_runtime,
        };
        let key = (m, rt);
        let index = match module_keys.iter().position(|k| *k == key) {
            Some(i) => i,
            None => {
                let path = base.join(&key.0);
                let bytes = module_bytes(&path, rt, &file.requirements, builder).map_err(&err)?;
                modules.push(serde_bytes::ByteBuf::from(bytes));
                is_python.push(rt == Runtime::Python || python::is_python(&path));
                module_keys.push(key);
                module_keys.len() - 1
            }
        };
        let args = task_args(t.args, is_python[index], codec, &t.function).map_err(&err)?;
        let mut labels = t.labels;
        if rt == Runtime::Python && !labels.iter().any(|l| l == NATIVE_LABEL) {
            labels.push(NATIVE_LABEL.to_owned());
        }
        tasks.push(TaskSpec {
            function: t.function,
            module: index as u32,
            generator: t.generator,
            args,
            next: succ.as_ref().map(|s| s[i].clone()),
            labels,
        });
    }
    let d = Limits::default();
    Ok(ChainSpec {
        name: file.name,
        version: file.version,
        modules,
        tasks,
        limits: Limits {
            deadline_ms: file.limits.deadline_ms.unwrap_or(d.deadline_ms),
            memory_mb: file.limits.memory_mb.unwrap_or(d.memory_mb),
            max_item_bytes: file.limits.max_item_bytes.unwrap_or(d.max_item_bytes),
        },
    })
}

fn runtime(name: Option<&str>) -> Result<Runtime, ChainError> {
    Ok(name.map(Runtime::parse).transpose()?.unwrap_or_default())
}

/// The bytes a node gets for the module at `path`: native Python's sources, or the wasm
/// that `builder` gives.
fn module_bytes(
    path: &Path,
    rt: Runtime,
    requirements: &[String],
    builder: &dyn Modules,
) -> Result<Vec<u8>, ChainError> {
    if rt == Runtime::Python {
        return Ok(crate::native::bundle(path, requirements)?);
    }
    let wasm = builder.resolve(path).map_err(|e| {
        // Our own errors stay themselves; a builder's are wrapped.
        e.downcast::<ChainError>()
            .map_or_else(ChainError::Module, |own| *own)
    })?;
    std::fs::read(&wasm).map_err(|source| ChainError::Read { path: wasm, source })
}

/// A task's args as the node gets them: a Python task's list of values in the chain's
/// codec, a wasm task's string as its bytes.
fn task_args(
    args: Option<toml::Value>,
    python: bool,
    codec: Codec,
    function: &str,
) -> Result<Vec<u8>, ChainError> {
    if python {
        let values = match args {
            None => Vec::new(),
            Some(toml::Value::Array(a)) => a,
            Some(v) => vec![v],
        };
        return Ok(python::task_args(codec, &values)?);
    }
    match args {
        None => Ok(Vec::new()),
        Some(toml::Value::String(s)) => Ok(s.into_bytes()),
        Some(_) => Err(ChainError::ArgsNotString {
            task: function.to_string(),
        }),
    }
}

/// Reads and parses a chain file (no module is read or built).
fn parse(path: &Path) -> Result<ChainFile, RootError> {
    let err = |source: ChainError| RootError::Chain {
        path: path.display().to_string(),
        source: Box::new(source),
    };
    let text = std::fs::read_to_string(path).map_err(|source| {
        err(ChainError::Read {
            path: path.to_path_buf(),
            source,
        })
    })?;
    toml::from_str(&text).map_err(|e| {
        err(ChainError::Toml {
            path: path.to_path_buf(),
            message: e.to_string(),
        })
    })
}

/// Each task's name (default: its function).
fn names(file: &ChainFile) -> Vec<String> {
    file.tasks
        .iter()
        .map(|t| t.name.clone().unwrap_or_else(|| t.function.clone()))
        .collect()
}

/// The checked graph of a parsed chain file.
fn file_graph(file: &ChainFile) -> Result<crate::graph::Successors, ChainError> {
    if file.tasks.is_empty() {
        return Err(ChainError::NoTasks);
    }
    let next: Vec<Option<Vec<String>>> = file.tasks.iter().map(|t| t.next.clone()).collect();
    Ok(crate::graph::successors(&names(file), &next)?)
}

/// The chain file at `path` as a Graphviz DOT graph (`pcluster run --dot`), checked as at
/// load but without reading or building any module.
///
/// # Errors
/// As [`load`] for the file itself and its graph.
pub fn dot(path: &Path) -> Result<String, RootError> {
    let file = parse(path)?;
    let succ = file_graph(&file).map_err(|source| RootError::Chain {
        path: path.display().to_string(),
        source: Box::new(source),
    })?;
    let functions: Vec<String> = file.tasks.iter().map(|t| t.function.clone()).collect();
    Ok(crate::graph::dot(
        &file.name,
        &names(&file),
        &functions,
        &succ,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_file(name: &str, text: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pcluster-chain-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("chain.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn source(e: RootError) -> ChainError {
        match e {
            RootError::Chain { source, .. } => *source,
            other => panic!("not a chain error: {other}"),
        }
    }

    #[test]
    fn errors_name_what_is_wrong() {
        let missing = std::env::temp_dir().join("pcluster-no-such-chain.toml");
        assert!(matches!(
            source(load(&missing, &WasmFiles).unwrap_err()),
            ChainError::Read { .. }
        ));
        let p = chain_file("empty", "name = \"x\"\n");
        assert!(matches!(
            source(load(&p, &WasmFiles).unwrap_err()),
            ChainError::NoTasks
        ));
        let p = chain_file("nomodule", "name = \"x\"\n[[task]]\nfunction = \"f\"\n");
        let e = source(load(&p, &WasmFiles).unwrap_err());
        assert_eq!(e.to_string(), "task `f` has no module (set `module`)");
        let p = chain_file(
            "gone",
            "name = \"x\"\nmodule = \"gone.wasm\"\n[[task]]\nfunction = \"f\"\n",
        );
        assert!(matches!(
            source(load(&p, &WasmFiles).unwrap_err()),
            ChainError::MissingModule(_)
        ));
        let p = chain_file(
            "typo",
            "name = \"x\"\n[[task]]\nfunction = \"f\"\ngenerater = true\n",
        );
        let e = load(&p, &WasmFiles).unwrap_err().to_string();
        assert!(e.contains("generater"), "{e}");
    }

    #[test]
    fn a_wasm_file_loads_as_it_is() {
        let p = chain_file(
            "ok",
            "name = \"x\"\nmodule = \"m.wasm\"\n[[task]]\nfunction = \"f\"\nargs = \"a\"\n",
        );
        std::fs::write(p.with_file_name("m.wasm"), b"\0asm").unwrap();
        let c = load(&p, &WasmFiles).unwrap();
        assert_eq!(
            (c.modules.len(), c.tasks[0].args.as_slice()),
            (1, &b"a"[..])
        );
        assert_eq!(c.limits, Limits::default());
    }

    #[test]
    fn a_crate_or_a_python_package_needs_a_builder() {
        let p = chain_file(
            "crate",
            "name = \"x\"\nmodule = \"krate\"\n[[task]]\nfunction = \"f\"\n",
        );
        std::fs::create_dir_all(p.with_file_name("krate")).unwrap();
        let e = source(load(&p, &WasmFiles).unwrap_err());
        assert!(matches!(e, ChainError::NotBuilt(_)), "{e}");
        assert!(e.to_string().contains("build it first"), "{e}");
    }
}
