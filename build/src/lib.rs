//! pcluster-build: turns the `module` entries of chain files into WebAssembly, building what
//! is out of date: Rust task crates with cargo (`rust`) and Python packages with
//! componentize-py (`python`). It runs toolchains and so lives apart from the root library,
//! which only reads chains; [`Builder`] plugs into [`root::chain::load`].
//!
//! Building runs code of the chain's author on this machine, outside any sandbox: cargo runs
//! the crate's `build.rs` and proc-macros (its own and its dependencies'), honours its
//! `.cargo/config.toml` and `rust-toolchain.toml`; componentize-py imports the Python package
//! (its top-level code runs). [`Builder::prebuilt_only`] runs none of it: only artifacts
//! already built and newer than their sources are taken (by the rule that decides builds).
//!
//! A build says what takes a person's time (a build of seconds, a toolchain target added)
//! through a [`Progress`] callback and `tracing`, and never prints.

mod fresh;
pub mod python;
pub mod rust;

use std::path::{Path, PathBuf};

pub use python::PythonError;

/// Told, in a sentence, about each step that takes a person's time.
pub type Progress = dyn Fn(&str) + Send + Sync;

/// What went wrong building a module.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuildError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A task crate's manifest is not valid TOML.
    #[error("{path}: {message}")]
    Toml {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
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
    /// A Python task's component could not be built.
    #[error(transparent)]
    Python(#[from] PythonError),
    /// A module path that is neither a file nor a directory.
    #[error("module {0} does not exist")]
    Missing(PathBuf),
    /// Building is off and the module's prebuilt artifact is missing or out of date.
    #[error(transparent)]
    NotPrebuilt(Box<NotPrebuilt>),
}

/// With building off ([`Builder::prebuilt_only`]), a module whose prebuilt artifact is
/// missing or out of date.
#[derive(Debug, thiserror::Error)]
#[error(
    "{kind} `{name}` ({module}) {stale}, and building is off (--no-build): {fix}",
    module = .module.display()
)]
pub struct NotPrebuilt {
    /// "task crate" or "Python package".
    pub kind: &'static str,
    /// The crate's or package's name.
    pub name: String,
    /// Its directory or file.
    pub module: PathBuf,
    /// What is wrong with its artifact.
    pub stale: Stale,
    /// How to get an artifact.
    pub fix: String,
}

impl From<NotPrebuilt> for BuildError {
    fn from(e: NotPrebuilt) -> BuildError {
        BuildError::NotPrebuilt(Box::new(e))
    }
}

/// Why a module's prebuilt artifact cannot stand for its sources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stale {
    /// There is none.
    Missing {
        /// Where it would be.
        artifact: PathBuf,
    },
    /// A source changed after it was built.
    Older {
        /// The artifact.
        artifact: PathBuf,
        /// The newest source, newer than the artifact.
        newer: PathBuf,
    },
    /// It was built by another version of pcluster (other glue around the module).
    OtherVersion {
        /// The artifact.
        artifact: PathBuf,
    },
}

impl std::fmt::Display for Stale {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Stale::Missing { artifact } => write!(f, "has no prebuilt {}", artifact.display()),
            Stale::Older { artifact, newer } => write!(
                f,
                "is newer than its prebuilt {} ({} changed since)",
                artifact.display(),
                newer.display()
            ),
            Stale::OtherVersion { artifact } => write!(
                f,
                "has a prebuilt {} from another version of pcluster",
                artifact.display()
            ),
        }
    }
}

/// Whether an artifact built at `built` (`None`: missing) still stands for sources whose
/// newest file is `newest`; the rule of builds and of [`Builder::prebuilt_only`] alike.
fn staleness(
    artifact: &Path,
    built: Option<std::time::SystemTime>,
    newest: Option<(std::time::SystemTime, PathBuf)>,
) -> Option<Stale> {
    let Some(built) = built else {
        return Some(Stale::Missing {
            artifact: artifact.to_path_buf(),
        });
    };
    match newest {
        Some((time, newer)) if time > built => Some(Stale::Older {
            artifact: artifact.to_path_buf(),
            newer,
        }),
        _ => None,
    }
}

/// Builds modules for [`root::chain::load`]: a task crate or a Python package becomes the
/// `.wasm` of its build (built when out of date), a `.wasm` file is taken as it is.
#[derive(Default)]
pub struct Builder {
    progress: Option<Box<Progress>>,
    /// Take prebuilt artifacts only; never run cargo or componentize-py.
    prebuilt_only: bool,
}

impl std::fmt::Debug for Builder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Builder")
            .field("progress", &self.progress.is_some())
            .field("prebuilt_only", &self.prebuilt_only)
            .finish()
    }
}

impl Builder {
    /// A builder that says what it does through `tracing` only.
    pub fn new() -> Builder {
        Builder::default()
    }

    /// Also tells `progress` (e.g. a line on stderr for a person waiting).
    #[must_use]
    pub fn with_progress(mut self, progress: impl Fn(&str) + Send + Sync + 'static) -> Builder {
        self.progress = Some(Box::new(progress));
        self
    }

    /// With `yes`, builds nothing: a task crate or Python package is taken only when its
    /// artifact exists and is newer than its sources, else [`BuildError::NotPrebuilt`] names
    /// it. No cargo, build script, proc-macro, toolchain file or Python import runs.
    #[must_use]
    pub fn prebuilt_only(mut self, yes: bool) -> Builder {
        self.prebuilt_only = yes;
        self
    }

    fn say(&self, what: &str) {
        tracing::info!("{what}");
        if let Some(p) = &self.progress {
            p(what);
        }
    }

    /// The `.wasm` for the module at `path`.
    ///
    /// # Errors
    /// When the path is neither a module nor a `.wasm` file, or its build fails (with
    /// [`Builder::prebuilt_only`]: when its artifact is missing or out of date).
    pub fn build(&self, path: &Path) -> Result<PathBuf, BuildError> {
        let say = |what: &str| self.say(what);
        if self.prebuilt_only && python::is_python(path) {
            python::prebuilt_component(path)
        } else if self.prebuilt_only && path.is_dir() {
            rust::prebuilt_task_crate(path)
        } else if python::is_python(path) {
            Ok(python::build_component(path, &say)?)
        } else if path.is_dir() {
            rust::build_task_crate(path, &say)
        } else if path.is_file() {
            Ok(path.to_path_buf())
        } else {
            Err(BuildError::Missing(path.to_path_buf()))
        }
    }
}

impl root::chain::Modules for Builder {
    fn resolve(&self, path: &Path) -> Result<PathBuf, root::chain::ModuleError> {
        self.build(path).map_err(Into::into)
    }
}
