//! Building Python tasks: a chain's `module` naming a Python package (a directory with
//! `__init__.py`) or a `.py` file is built into a WebAssembly component of the
//! `pcluster:task` world with `componentize-py`, when the component is missing or older than
//! its sources. The build lives in `.pcluster-build/<module>/` beside the module: our glue
//! (the component's entry module), the in-component `pcluster` module and the WIT world, all
//! embedded here, and the component itself.
//!
//! componentize-py runs the package's top-level code and snapshots the interpreter, which
//! keeps what the import saw, such as the names in the directories of its search path. So the
//! search path holds a copy of the package alone (`stage`), not the directory it sits in:
//! nothing beside the package reaches the component, not even a file's name.
//!
//! Which componentize-py runs, and which virtual environment it takes the task's packages
//! from, is [`choose_componentizer`]'s choice (`choose`). When a build fails,
//! [`import_failure`] (`failure`) reads componentize-py's output for the module that failed
//! to import and why, and the error says that before the output itself.

mod choose;
mod failure;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicU64, Ordering};

pub use choose::{BuildEnv, Componentizer, Origin, Packages, choose_componentizer};
pub use failure::{Cause, ImportFailure, import_failure};
pub use root::python::is_python;

use crate::fresh::newest_file;
use crate::{BuildError, NotPrebuilt, Stale, staleness};

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

/// `<path>.<pid>.<n>.<suffix>`: a name no other process, nor another call in this one, uses
/// at the same time (two builds of one module may run at once).
fn unique(path: &Path, suffix: &str) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{}.{n}.{suffix}", std::process::id()));
    PathBuf::from(name)
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
    let tmp = unique(path, "tmp");
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// The files of one module's build, in `.pcluster-build/<module>/` beside it.
struct BuildDir {
    /// The module's name (its file or directory name without `.py`).
    name: String,
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
        Ok(BuildDir { name, dir, wasm })
    }

    /// The files of the build beside the component, with what this pcluster writes there.
    fn sources(&self) -> [(PathBuf, String); 4] {
        [
            (self.dir.join(GLUE_FILE), GLUE.to_owned()),
            (self.dir.join("pcluster/__init__.py"), SHIM.to_owned()),
            (self.dir.join("wit/task.wit"), WIT.to_owned()),
            (
                self.dir.join("_pcluster_config.py"),
                format!("MODULE = {:?}\n", self.name),
            ),
        ]
    }

    /// Writes the glue, the shim, the WIT world and the config (each only when changed).
    fn write_sources(&self) -> Result<(), PythonError> {
        for sub in ["pcluster", "wit"] {
            std::fs::create_dir_all(self.dir.join(sub)).map_err(|source| PythonError::Io {
                path: self.dir.clone(),
                source,
            })?;
        }
        for (path, text) in self.sources() {
            write_if_changed(&path, &text)?;
        }
        Ok(())
    }

    /// Why the component does not stand for the module and every file of the build, if it
    /// does not.
    fn stale(&self, module: &Path) -> Option<Stale> {
        let built = std::fs::metadata(&self.wasm)
            .and_then(|m| m.modified())
            .ok();
        let newest = self
            .sources()
            .iter()
            .filter_map(|(f, _)| newest_file(f, &["__pycache__"]))
            .chain(newest_file(module, &["__pycache__"]))
            .max();
        staleness(&self.wasm, built, newest)
    }

    /// Whether the build's files hold what this pcluster writes: a component built by another
    /// version has other glue.
    fn sources_current(&self) -> bool {
        self.sources()
            .iter()
            .all(|(f, text)| std::fs::read(f).is_ok_and(|old| old == text.as_bytes()))
    }
}

/// The component of the Python module at `module` built before, when it is newer than the
/// module's sources and was built by this pcluster; runs nothing, writes nothing.
///
/// # Errors
/// [`BuildError::NotPrebuilt`] naming the package and its component when that is missing,
/// out of date or built by another version; when `module` is not a Python module.
pub fn prebuilt_component(module: &Path) -> Result<PathBuf, BuildError> {
    let build = BuildDir::new(module)?;
    let stale = match build.stale(module) {
        None if build.sources_current() => return Ok(build.wasm),
        None => Stale::OtherVersion {
            artifact: build.wasm.clone(),
        },
        Some(stale) => stale,
    };
    Err(NotPrebuilt {
        kind: "Python package",
        name: build.name,
        module: module.to_path_buf(),
        stale,
        fix: "build it where its import may run (`pcluster run` without --no-build writes the \
              component into .pcluster-build/ beside it)"
            .into(),
    }
    .into())
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
    if build.stale(module).is_none() {
        return Ok(build.wasm);
    }
    let tool = choose_componentizer(&BuildEnv::from_env(), Path::is_file);
    componentize(module, &build, &tool, progress)?;
    Ok(build.wasm)
}

/// Runs componentize-py on `build`, writing the component through a temporary file. Its
/// search path is the build directory and a copy of the module alone ([`stage`]).
fn componentize(
    module: &Path,
    build: &BuildDir,
    tool: &Componentizer,
    progress: &dyn Fn(&str),
) -> Result<(), PythonError> {
    let tmp = unique(&build.dir.join(format!(".{}", build.name)), "wasm");
    let staged = unique(&build.dir.join(".module"), "d");
    progress(&format!(
        "building {} with {}, packages from {} (takes about 20 s)",
        module.display(),
        tool.describe(),
        tool.packages
    ));
    let output = stage(module, &staged)
        .map_err(|source| PythonError::Io {
            path: staged.clone(),
            source,
        })
        .and_then(|()| run_componentize_py(build, tool, &staged, &tmp));
    let _ = std::fs::remove_dir_all(&staged);
    let output = output?;
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

/// componentize-py's run over the build directory and the module's copy in `staged`.
fn run_componentize_py(
    build: &BuildDir,
    tool: &Componentizer,
    staged: &Path,
    out: &Path,
) -> Result<std::process::Output, PythonError> {
    let mut command = Command::new(&tool.program);
    command
        .arg("-d")
        .arg(build.dir.join("wit"))
        .args(["-w", "task", "componentize", "pcluster_glue", "-p"])
        .arg(&build.dir)
        .arg("-p")
        .arg(staged)
        .arg("-o")
        .arg(out)
        // componentize-py's own Rust backtrace says nothing about the task.
        .env("RUST_LIB_BACKTRACE", "0");
    match &tool.packages {
        Packages::VirtualEnv(v) => command.env(VIRTUAL_ENV, v),
        Packages::Python3OnPath => command.env_remove(VIRTUAL_ENV),
    };
    command.output().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => PythonError::NoComponentizePy {
            tried: tool.not_found(),
        },
        _ => PythonError::Io {
            path: tool.program.clone(),
            source: e,
        },
    })
}

/// Copies the Python module at `module` (a package or a `.py` file) into a new directory
/// `into`, as the component may see it: the sources freshness counts (no hidden entries, no
/// `__pycache__`), and symlinks only where they point inside the module.
fn stage(module: &Path, into: &Path) -> std::io::Result<()> {
    let root = module.canonicalize()?;
    let name = module
        .file_name()
        .ok_or_else(|| std::io::Error::other("a module path without a name"))?;
    std::fs::create_dir_all(into)?;
    if root.is_file() {
        std::fs::copy(&root, into.join(name))?;
        return Ok(());
    }
    // Canonical directories copied, so a symlink back up the tree is copied once.
    let mut seen = std::collections::HashSet::new();
    let mut stack = vec![(root.clone(), into.join(name))];
    while let Some((from, to)) = stack.pop() {
        if !seen.insert(from.clone()) {
            continue;
        }
        std::fs::create_dir_all(&to)?;
        for entry in std::fs::read_dir(&from)? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') || name == "__pycache__" {
                continue;
            }
            // A dangling symlink, or one out of the module, is not the module's.
            let Ok(real) = entry.path().canonicalize() else {
                continue;
            };
            if !real.starts_with(&root) {
                continue;
            }
            if real.is_dir() {
                stack.push((real, to.join(&name)));
            } else {
                std::fs::copy(&real, to.join(&name))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fresh::set_mtime;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pcluster-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn the_staged_copy_holds_the_package_alone() {
        let dir = temp("stage");
        let pkg = dir.join("tasks");
        std::fs::create_dir_all(pkg.join("sub/__pycache__")).unwrap();
        std::fs::write(pkg.join("__init__.py"), "x = 1\n").unwrap();
        std::fs::write(pkg.join("sub/data.txt"), "d").unwrap();
        std::fs::write(pkg.join("sub/__pycache__/m.pyc"), "c").unwrap();
        std::fs::write(pkg.join(".env"), "SECRET").unwrap();
        std::fs::write(dir.join("beside.txt"), "SECRET").unwrap();
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(dir.join("beside.txt"), pkg.join("out_link")).unwrap();
            std::os::unix::fs::symlink(&pkg, pkg.join("sub/loop")).unwrap();
        }
        let into = dir.join("staged");
        stage(&pkg, &into).unwrap();
        let mut files: Vec<String> = Vec::new();
        let mut stack = vec![into.clone()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(&into).unwrap().to_owned();
                    files.push(rel.to_string_lossy().into_owned());
                }
            }
        }
        files.sort();
        // Neither the link out of the package nor the one back up its tree adds a file.
        let expected = ["tasks/__init__.py", "tasks/sub/data.txt"];
        assert_eq!(files, expected);
        // A single file module is copied alone.
        std::fs::write(dir.join("one.py"), "").unwrap();
        stage(&dir.join("one.py"), &dir.join("staged-one")).unwrap();
        let names: Vec<_> = std::fs::read_dir(dir.join("staged-one"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert_eq!(names, ["one.py"]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_prebuilt_component_is_taken_only_when_current() {
        let dir = temp("prebuilt-py");
        let pkg = dir.join("tasks");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::write(pkg.join("__init__.py"), "").unwrap();
        set_mtime(&pkg.join("__init__.py"), 1_000);
        let err = prebuilt_component(&pkg).unwrap_err().to_string();
        assert!(
            err.starts_with("Python package `tasks` (") && err.contains("has no prebuilt"),
            "{err}"
        );
        assert!(!dir.join(".pcluster-build").exists(), "nothing written");
        let build = BuildDir::new(&pkg).unwrap();
        build.write_sources().unwrap();
        for (f, _) in build.sources() {
            set_mtime(&f, 1_000);
        }
        std::fs::write(&build.wasm, b"\0asm").unwrap();
        set_mtime(&build.wasm, 2_000);
        assert_eq!(prebuilt_component(&pkg).unwrap(), build.wasm);
        set_mtime(&pkg.join("__init__.py"), 3_000);
        let err = prebuilt_component(&pkg).unwrap_err().to_string();
        assert!(err.contains("__init__.py changed since"), "{err}");
        set_mtime(&pkg.join("__init__.py"), 1_000);
        std::fs::write(dir.join(".pcluster-build/tasks/pcluster_glue.py"), "old").unwrap();
        set_mtime(&dir.join(".pcluster-build/tasks/pcluster_glue.py"), 1_000);
        let err = prebuilt_component(&pkg).unwrap_err().to_string();
        assert!(err.contains("another version of pcluster"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
