//! Chain files (TOML) and building a task crate to wasm when a chain names one.
//!
//! `module` is either a `.wasm` file or a directory holding a Rust task crate; a crate is
//! built with `cargo build --release --target wasm32-unknown-unknown` when its `.wasm` is
//! missing or older than any of its sources, so a fresh clone runs the examples directly.
//! A Python package or `.py` file is built into a component ([`crate::python`]).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use protocol::{ChainSpec, Limits, TaskSpec};
use serde::Deserialize;

use crate::error::RootError;
use crate::python::{self, Codec, PythonError};

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
    /// A task crate's manifest names no package.
    #[error("{0}: no package name")]
    NoPackageName(PathBuf),
    /// cargo could not be started.
    #[error("cannot run cargo to build {dir}: {source}")]
    Cargo {
        /// The crate.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The build of a task crate failed (cargo printed why).
    #[error("building task crate {dir} failed ({status})")]
    BuildFailed {
        /// The crate.
        dir: PathBuf,
        /// cargo's exit status.
        status: std::process::ExitStatus,
    },
    /// The build left no `.wasm` where expected.
    #[error("build of {dir} produced no {wasm}")]
    NoWasm {
        /// The crate.
        dir: PathBuf,
        /// The expected file.
        wasm: PathBuf,
    },
    /// The tasks' graph (`name`, `next`) is invalid.
    #[error(transparent)]
    Graph(#[from] crate::graph::GraphError),
    /// The toolchain lacks the wasm target and it could not be added.
    #[error(
        "the Rust toolchain at {sysroot} lacks the wasm32-unknown-unknown target: {why} \
         (run `rustup target add wasm32-unknown-unknown`)"
    )]
    WasmTarget {
        /// The toolchain.
        sysroot: PathBuf,
        /// What happened when adding it.
        why: String,
    },
    /// A Python task's module could not be built, or its args or codec are unusable.
    #[error(transparent)]
    Python(#[from] PythonError),
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    deadline_ms: Option<u64>,
    memory_mb: Option<u64>,
    max_item_bytes: Option<u64>,
}

/// Reads a chain file, building and reading its modules.
///
/// # Errors
/// When the file is unreadable or invalid, or a module cannot be built or read.
pub fn load(path: &Path) -> Result<ChainSpec, RootError> {
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
    let mut module_paths: Vec<String> = Vec::new();
    let mut is_python: Vec<bool> = Vec::new();
    let mut modules = Vec::new();
    let mut tasks = Vec::new();
    for (i, t) in file.tasks.into_iter().enumerate() {
        let m = t.module.or_else(|| file.module.clone()).ok_or_else(|| {
            err(ChainError::NoModule {
                task: t.function.clone(),
            })
        })?;
        let index = match module_paths.iter().position(|p| *p == m) {
            Some(i) => i,
            None => {
                let wasm = resolve_module(&base.join(&m)).map_err(&err)?;
                let bytes = std::fs::read(&wasm).map_err(|source| {
                    err(ChainError::Read {
                        path: wasm.clone(),
                        source,
                    })
                })?;
                modules.push(serde_bytes::ByteBuf::from(bytes));
                module_paths.push(m);
                is_python.push(python::is_python(
                    &base.join(&module_paths[module_paths.len() - 1]),
                ));
                module_paths.len() - 1
            }
        };
        let args = if is_python[index] {
            let values = match t.args {
                None => Vec::new(),
                Some(toml::Value::Array(a)) => a,
                Some(v) => vec![v],
            };
            python::task_args(codec, &values).map_err(|e| err(e.into()))?
        } else {
            match t.args {
                None => Vec::new(),
                Some(toml::Value::String(s)) => s.into_bytes(),
                Some(_) => {
                    return Err(err(ChainError::ArgsNotString {
                        task: t.function.clone(),
                    }));
                }
            }
        };
        tasks.push(TaskSpec {
            function: t.function,
            module: index as u32,
            generator: t.generator,
            args,
            next: succ.as_ref().map(|s| s[i].clone()),
            labels: t.labels,
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

/// The `.wasm` for a module entry: the file itself, or a task crate's build output (built
/// if out of date).
///
/// # Errors
/// When the path is neither, or the build fails.
pub fn resolve_module(path: &Path) -> Result<PathBuf, ChainError> {
    if python::is_python(path) {
        Ok(python::build_component(path)?)
    } else if path.is_dir() {
        build_task_crate(path)
    } else if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(ChainError::MissingModule(path.to_path_buf()))
    }
}

fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                newest = newest.max(m);
            }
        }
    }
    newest
}

/// Builds a Rust task crate for `wasm32-unknown-unknown` (release) if its `.wasm` is missing
/// or older than its sources (or the task SDK's, when it sits beside the crate), and returns
/// the `.wasm` path.
///
/// # Errors
/// When the directory is not a crate, cargo is missing, or the build fails.
pub fn build_task_crate(dir: &Path) -> Result<PathBuf, ChainError> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|source| ChainError::Read {
        path: manifest.clone(),
        source,
    })?;
    let value: toml::Value = toml::from_str(&text).map_err(|e| ChainError::Toml {
        path: manifest.clone(),
        message: e.to_string(),
    })?;
    let name = value
        .get("lib")
        .and_then(|l| l.get("name"))
        .or_else(|| value.get("package").and_then(|p| p.get("name")))
        .and_then(|n| n.as_str())
        .ok_or_else(|| ChainError::NoPackageName(manifest.clone()))?
        .replace('-', "_");
    let wasm = dir
        .join("target/wasm32-unknown-unknown/release")
        .join(format!("{name}.wasm"));
    let built = std::fs::metadata(&wasm).and_then(|m| m.modified()).ok();
    let mut newest = newest_source(dir);
    let sdk = dir.join("../task");
    if sdk.join("Cargo.toml").is_file() {
        newest = newest.max(newest_source(&sdk));
    }
    if built.is_some_and(|b| b >= newest) {
        return Ok(wasm);
    }
    ensure_wasm_target(dir)?;
    tracing::info!(krate = %dir.display(), "building task crate for wasm32-unknown-unknown");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "--manifest-path",
        ])
        .arg(&manifest)
        // An outer cargo's settings must not leak into the guest build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        // A build reads nothing: whatever our stdin is must not reach cargo or rustc.
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|source| ChainError::Cargo {
            dir: dir.to_path_buf(),
            source,
        })?;
    if !status.success() {
        return Err(ChainError::BuildFailed {
            dir: dir.to_path_buf(),
            status,
        });
    }
    if !wasm.is_file() {
        return Err(ChainError::NoWasm {
            dir: dir.to_path_buf(),
            wasm,
        });
    }
    // cargo leaves the file untouched when nothing changed; touch it so the check above
    // does not rebuild every time.
    let _ = std::fs::File::options()
        .append(true)
        .open(&wasm)
        .and_then(|f| f.set_modified(SystemTime::now()));
    Ok(wasm)
}

/// The compilation target of task crates.
const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Makes sure the toolchain that builds the crate in `dir` has the wasm target: rustup does
/// not add the targets of `rust-toolchain.toml` to a toolchain that is already installed.
/// With rustup it adds the target; without, the error names the command that fixes it.
fn ensure_wasm_target(dir: &Path) -> Result<(), ChainError> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let Some(sysroot) = sysroot else {
        // No rustc on PATH: let cargo's own error speak.
        return Ok(());
    };
    if sysroot.join("lib/rustlib").join(WASM_TARGET).is_dir() {
        return Ok(());
    }
    let fix = format!("rustup target add {WASM_TARGET}");
    tracing::warn!("the Rust toolchain lacks the {WASM_TARGET} target; running `{fix}`");
    eprintln!("pcluster: adding the {WASM_TARGET} target to the Rust toolchain (`{fix}`)");
    match Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(ChainError::WasmTarget {
            sysroot,
            why: format!("`{fix}` failed ({s})"),
        }),
        Err(_) => Err(ChainError::WasmTarget {
            sysroot,
            why: "rustup is not installed to add it".into(),
        }),
    }
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
            source(load(&missing).unwrap_err()),
            ChainError::Read { .. }
        ));
        let p = chain_file("empty", "name = \"x\"\n");
        assert!(matches!(source(load(&p).unwrap_err()), ChainError::NoTasks));
        let p = chain_file("nomodule", "name = \"x\"\n[[task]]\nfunction = \"f\"\n");
        let e = source(load(&p).unwrap_err());
        assert_eq!(e.to_string(), "task `f` has no module (set `module`)");
        let p = chain_file(
            "gone",
            "name = \"x\"\nmodule = \"gone.wasm\"\n[[task]]\nfunction = \"f\"\n",
        );
        assert!(matches!(
            source(load(&p).unwrap_err()),
            ChainError::MissingModule(_)
        ));
        let p = chain_file(
            "typo",
            "name = \"x\"\n[[task]]\nfunction = \"f\"\ngenerater = true\n",
        );
        let e = load(&p).unwrap_err().to_string();
        assert!(e.contains("generater"), "{e}");
    }

    #[test]
    fn a_wasm_file_loads_as_it_is() {
        let p = chain_file(
            "ok",
            "name = \"x\"\nmodule = \"m.wasm\"\n[[task]]\nfunction = \"f\"\nargs = \"a\"\n",
        );
        std::fs::write(p.with_file_name("m.wasm"), b"\0asm").unwrap();
        let c = load(&p).unwrap();
        assert_eq!(
            (c.modules.len(), c.tasks[0].args.as_slice()),
            (1, &b"a"[..])
        );
        assert_eq!(c.limits, Limits::default());
    }
}
