//! Building Python tasks: a chain's `module` naming a Python package (a directory with
//! `__init__.py`) or a `.py` file is built into a WebAssembly component of the
//! `pcluster:task` world with `componentize-py`, when the component is missing or older than
//! its sources. The build lives in `.pcluster-build/<module>/` beside the module: our glue
//! (the component's entry module), the in-component `pcluster` module and the WIT world, all
//! embedded here, and the component itself.
//!
//! Which componentize-py runs, and which virtual environment it takes the task's packages
//! from, is [`choose_componentizer`]'s choice (`choose`). When a build fails,
//! [`import_failure`] (`failure`) reads componentize-py's output for the module that failed
//! to import and why, and the error says that before the output itself.

mod choose;
mod failure;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::SystemTime;

pub use choose::{BuildEnv, Componentizer, Origin, Packages, choose_componentizer};
pub use failure::{Cause, ImportFailure, import_failure};
pub use root::python::is_python;

use crate::fresh::newest;

/// The newest source of a Python module or build file.
fn newest_py(path: &Path) -> SystemTime {
    newest(path, &["__pycache__"])
}

/// The WIT world components implement.
pub const WIT: &str = include_str!("../../wit/task.wit");
/// The component's entry module.
const GLUE: &str = include_str!("python/pcluster_glue.py");
/// The entry module's file name, as the tracebacks of a failed build name it.
const GLUE_FILE: &str = "pcluster_glue.py";
/// The `pcluster` module inside the component.
const SHIM: &str = include_str!("python/pcluster_shim.py");

/// The program run to build components, when set.
pub const COMPONENTIZE_PY_ENV: &str = "COMPONENTIZE_PY";
/// The Python interpreter running pcluster, when that is Python (the Python package sets it
/// to `sys.executable` unless it is set): builds use its virtual environment and the
/// componentize-py installed beside it.
pub const PYTHON_ENV: &str = "PCLUSTER_PYTHON";
/// The active virtual environment: componentize-py takes packages from its site-packages.
pub const VIRTUAL_ENV: &str = "VIRTUAL_ENV";
/// componentize-py's file name.
const PROGRAM: &str = "componentize-py";
/// The directory of a virtual environment that holds its interpreter and programs.
const SCRIPTS: &str = if cfg!(windows) { "Scripts" } else { "bin" };
/// At most this many lines of componentize-py's output are kept in an error: the first
/// [`OUTPUT_HEAD`] and the last ones, where the cause is.
const OUTPUT_LINES: usize = 60;
/// See [`OUTPUT_LINES`].
const OUTPUT_HEAD: usize = 10;

/// What went wrong building a Python task component.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PythonError {
    /// componentize-py is not where it was looked for.
    #[error(
        "building Python tasks needs componentize-py: {tried} (`pip install componentize-py` \
         into the Python environment that has the tasks' packages, or set COMPONENTIZE_PY)"
    )]
    NoComponentizePy {
        /// Where it was looked for.
        tried: String,
    },
    /// A file of the build could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// componentize-py failed: why, as read from its output, then the output.
    #[error(
        "building {module} with {program} failed ({status}): {explanation}\n\
         componentize-py's output:\n{output}"
    )]
    BuildFailed {
        /// The Python module.
        module: PathBuf,
        /// The componentize-py that ran ([`Componentizer::describe`]).
        program: String,
        /// Its exit status.
        status: ExitStatus,
        /// Why it failed ([`ImportFailure::explain`]), or where to read why.
        explanation: String,
        /// What it printed, without its Rust backtrace and shortened when very long.
        output: String,
    },
    /// A module path that is not a Python package or file.
    #[error("{0} is neither a Python package (a directory with __init__.py) nor a .py file")]
    NotPython(PathBuf),
}

/// Writes `text` to `path` unless it already holds exactly that (so its time stays), through
/// a temporary file and a rename, so a build running at the same time never reads half a file.
fn write_if_changed(path: &Path, text: &str) -> Result<(), PythonError> {
    if std::fs::read(path).is_ok_and(|old| old == text.as_bytes()) {
        return Ok(());
    }
    let io = |source| PythonError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The files of one module's build, in `.pcluster-build/<module>/` beside it.
struct BuildDir {
    /// The module's name (its file or directory name without `.py`).
    name: String,
    /// The directory holding the module: componentize-py's search path for it.
    parent: PathBuf,
    /// The build directory.
    dir: PathBuf,
    /// The component.
    wasm: PathBuf,
}

impl BuildDir {
    fn new(module: &Path) -> Result<BuildDir, PythonError> {
        if !is_python(module) {
            return Err(PythonError::NotPython(module.to_path_buf()));
        }
        let name = module
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .ok_or_else(|| PythonError::NotPython(module.to_path_buf()))?;
        let parent = match module.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let dir = parent.join(".pcluster-build").join(&name);
        let wasm = dir.join(format!("{name}.wasm"));
        Ok(BuildDir {
            name,
            parent,
            dir,
            wasm,
        })
    }

    /// Writes the glue, the shim, the WIT world and the config (each only when changed).
    fn write_sources(&self) -> Result<(), PythonError> {
        for sub in ["pcluster", "wit"] {
            std::fs::create_dir_all(self.dir.join(sub)).map_err(|source| PythonError::Io {
                path: self.dir.clone(),
                source,
            })?;
        }
        write_if_changed(&self.dir.join(GLUE_FILE), GLUE)?;
        write_if_changed(&self.dir.join("pcluster/__init__.py"), SHIM)?;
        write_if_changed(&self.dir.join("wit/task.wit"), WIT)?;
        write_if_changed(
            &self.dir.join("_pcluster_config.py"),
            &format!("MODULE = {:?}\n", self.name),
        )
    }

    /// Whether the component is newer than the module and every file of the build.
    fn up_to_date(&self, module: &Path) -> bool {
        let Ok(built) = std::fs::metadata(&self.wasm).and_then(|m| m.modified()) else {
            return false;
        };
        let sources = [
            GLUE_FILE,
            "pcluster/__init__.py",
            "wit/task.wit",
            "_pcluster_config.py",
        ]
        .iter()
        .map(|f| newest_py(&self.dir.join(f)))
        .fold(newest_py(module), SystemTime::max);
        built >= sources
    }
}

/// Builds the component of the Python module at `module` (a package directory or a `.py`
/// file) unless it is up to date, and returns its path. The componentize-py that builds it
/// is [`choose_componentizer`]'s choice from this process's environment.
///
/// # Errors
/// When componentize-py is missing or fails (the error says which module failed to import
/// and why, when that is the cause), or the build directory cannot be written.
pub fn build_component(module: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf, PythonError> {
    let build = BuildDir::new(module)?;
    build.write_sources()?;
    if build.up_to_date(module) {
        return Ok(build.wasm);
    }
    let tool = choose_componentizer(&BuildEnv::from_env(), Path::is_file);
    componentize(module, &build, &tool, progress)?;
    Ok(build.wasm)
}

/// Runs componentize-py on `build`, writing the component through a temporary file.
fn componentize(
    module: &Path,
    build: &BuildDir,
    tool: &Componentizer,
    progress: &dyn Fn(&str),
) -> Result<(), PythonError> {
    let tmp = build
        .dir
        .join(format!(".{}.{}.wasm", build.name, std::process::id()));
    progress(&format!(
        "building {} with {}, packages from {} (takes about 20 s)",
        module.display(),
        tool.describe(),
        tool.packages
    ));
    let mut command = Command::new(&tool.program);
    command
        .arg("-d")
        .arg(build.dir.join("wit"))
        .args(["-w", "task", "componentize", "pcluster_glue", "-p"])
        .arg(&build.dir)
        .arg("-p")
        .arg(&build.parent)
        .arg("-o")
        .arg(&tmp)
        // componentize-py's own Rust backtrace says nothing about the task.
        .env("RUST_LIB_BACKTRACE", "0");
    match &tool.packages {
        Packages::VirtualEnv(v) => command.env(VIRTUAL_ENV, v),
        Packages::Python3OnPath => command.env_remove(VIRTUAL_ENV),
    };
    let output = command.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PythonError::NoComponentizePy {
            tried: tool.not_found(),
        },
        _ => PythonError::Io {
            path: tool.program.clone(),
            source: e,
        },
    })?;
    if !output.status.success() {
        let _ = std::fs::remove_file(&tmp);
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        let explanation = match import_failure(&text, &build.name) {
            Some(failure) => failure.explain(tool),
            None => "its output below says why".into(),
        };
        return Err(PythonError::BuildFailed {
            module: module.to_path_buf(),
            program: tool.describe(),
            status: output.status,
            explanation,
            output: failure::shorten(&text),
        });
    }
    std::fs::rename(&tmp, &build.wasm).map_err(|source| PythonError::Io {
        path: build.wasm.clone(),
        source,
    })
}
