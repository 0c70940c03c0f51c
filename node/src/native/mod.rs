//! Native Python tasks: CPython processes instead of the WebAssembly sandbox, for nodes
//! started with `--allow-native` (and a token). A chain carries its Python sources and
//! requirements as a [`protocol::native::NativeBundle`]; [`Natives::prepare`] writes the
//! sources into the node's directory (by content hash) and builds the requirements' virtual
//! environment once (`env`); each worker then runs each native task in a process of its own
//! (`process`), which `runner.py` drives.

mod env;
mod process;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use protocol::native::NativeBundle;
use sha2::{Digest, Sha256};

pub use process::{Broken, Init, ItemResult, Runner};

/// The Python side of a native task process.
const RUNNER: &str = include_str!("runner.py");

/// How a node runs native Python tasks.
#[derive(Clone, Debug)]
pub struct NativeConfig {
    /// Whether the node runs them at all (`--allow-native`).
    pub allow: bool,
    /// The interpreter (`--python`): tasks without requirements run in it directly, and
    /// environments with requirements are made from it.
    pub python: PathBuf,
    /// Extra arguments of `pip install` (e.g. `--no-index --find-links DIR`).
    pub pip_args: Vec<String>,
}

impl Default for NativeConfig {
    fn default() -> Self {
        NativeConfig {
            allow: false,
            python: PathBuf::from("python3"),
            pip_args: Vec::new(),
        }
    }
}

/// Why native code could not be made ready.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NativeError {
    /// The node was not started with `--allow-native`.
    #[error("this node does not run native Python tasks (start it with --allow-native)")]
    NotAllowed,
    /// The bundle is malformed.
    #[error(transparent)]
    Bundle(#[from] protocol::native::BundleError),
    /// A file or directory of the node could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Where.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The interpreter could not be run.
    #[error("cannot run {python}: {reason}")]
    Python {
        /// The interpreter.
        python: PathBuf,
        /// Why.
        reason: String,
    },
    /// Making the virtual environment or installing the requirements failed.
    #[error("installing {requirements} failed: {reason}")]
    Install {
        /// The requirements, space-separated.
        requirements: String,
        /// The last lines of pip's (or venv's) output.
        reason: String,
    },
}

/// A native module ready to run: the interpreter to use and where its sources are.
#[derive(Debug)]
pub struct NativeCode {
    /// The interpreter (a virtual environment's, with requirements).
    pub python: PathBuf,
    /// The directory holding the module, put first on the process's `sys.path`.
    pub code_dir: PathBuf,
    /// The module to import.
    pub module: String,
    /// The runner script.
    pub runner: PathBuf,
}

/// The node's native side: its settings and directory.
#[derive(Debug)]
pub struct Natives {
    config: NativeConfig,
    dir: PathBuf,
    /// Whether `dir` is this process's own temporary directory (no cache directory).
    private: bool,
    /// The interpreter's version and platform, asked once (part of environment keys).
    version: OnceLock<Result<String, String>>,
}

impl Default for Natives {
    /// Native tasks not allowed.
    fn default() -> Self {
        Natives::new(NativeConfig::default(), None)
    }
}

impl Natives {
    /// Native tasks kept under `cache_dir/native` (or the temp dir without a cache dir).
    pub fn new(config: NativeConfig, cache_dir: Option<&Path>) -> Natives {
        let dir = match cache_dir {
            Some(d) => d.join("native"),
            // Made at first use, only by this process (see `private_dir`).
            None => std::env::temp_dir().join(format!("pcluster-native-{}", std::process::id())),
        };
        Natives {
            config,
            dir,
            private: cache_dir.is_none(),
            version: OnceLock::new(),
        }
    }

    /// Whether this node runs native tasks.
    pub fn allowed(&self) -> bool {
        self.config.allow
    }

    /// The native module in `bytes` made ready: sources written, requirements installed.
    /// Blocks (pip may take minutes), telling `progress` when it builds an environment; concurrent callers for the same environment, in this
    /// process or another sharing the directory, wait for one build.
    ///
    /// # Errors
    /// [`NativeError`] saying what failed, with pip's last lines for a failed install.
    pub fn prepare(
        &self,
        bytes: &[u8],
        progress: &dyn Fn(&str),
    ) -> Result<Arc<NativeCode>, NativeError> {
        if !self.config.allow {
            return Err(NativeError::NotAllowed);
        }
        let bundle = NativeBundle::decode(bytes)?;
        self.private_dir()?;
        let code_dir = self
            .dir
            .join("code")
            .join(hex(&Sha256::digest(bytes)[..16]));
        write_once(&code_dir, |tmp| {
            for f in &bundle.files {
                let path = tmp.join(&f.path);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                std::fs::write(&path, &f.bytes)?;
            }
            Ok(())
        })?;
        let runner = self
            .dir
            .join(format!("runner-{}.py", hex(&Sha256::digest(RUNNER)[..8])));
        write_once(&runner, |tmp| std::fs::write(tmp, RUNNER))?;
        let python = if bundle.requirements.is_empty() {
            self.config.python.clone()
        } else {
            let version = self
                .version
                .get_or_init(|| env::version(&self.config.python))
                .clone()
                .map_err(|reason| NativeError::Python {
                    python: self.config.python.clone(),
                    reason,
                })?;
            env::ensure(
                &self.dir.join("env"),
                &self.config,
                &version,
                &bundle.requirements,
                progress,
            )?
        };
        Ok(Arc::new(NativeCode {
            python,
            code_dir,
            module: bundle.module,
            runner,
        }))
    }
}

impl Natives {
    /// Without a cache directory, the temporary one is this process's own: made once with
    /// mode 0700, and refused if anything else made it first (its runner and environments
    /// would be trusted).
    fn private_dir(&self) -> Result<(), NativeError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        let err = |source| NativeError::Write {
            path: self.dir.clone(),
            source,
        };
        if !self.private {
            return Ok(());
        }
        match std::fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let meta = std::fs::symlink_metadata(&self.dir).map_err(err)?;
                // Made by this process earlier: a directory of this user's, closed to others.
                let ours = meta.is_dir()
                    && meta.uid() == std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
                    && meta.mode() & 0o077 == 0;
                if ours { Ok(()) } else { Err(err(e)) }
            }
            Err(e) => Err(err(e)),
        }
    }
}

/// Creates `path` (a file or directory) with `fill` unless it exists: filled under a
/// temporary name, then renamed into place, so a reader never sees it half written.
fn write_once(
    path: &Path,
    fill: impl FnOnce(&Path) -> std::io::Result<()>,
) -> Result<(), NativeError> {
    if path.exists() {
        return Ok(());
    }
    let err = |source| NativeError::Write {
        path: path.to_path_buf(),
        source,
    };
    let parent = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(err)?;
    let tmp = parent.join(format!(
        ".tmp-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_file(&tmp);
    fill(&tmp).map_err(err)?;
    match std::fs::rename(&tmp, path) {
        Ok(()) => Ok(()),
        // Another process won the race: its copy is the same bytes.
        Err(_) if path.exists() => {
            let _ = std::fs::remove_dir_all(&tmp);
            let _ = std::fs::remove_file(&tmp);
            Ok(())
        }
        Err(e) => Err(err(e)),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
