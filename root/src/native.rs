//! Native Python tasks in chain files: a `module` entry with `runtime = "python"` travels as
//! its sources ([`protocol::native::NativeBundle`]) instead of a component, with the chain's
//! `requirements`; nodes started with `--allow-native` run it in CPython processes. Packing
//! only reads files: nothing is built or run here.

use std::path::{Path, PathBuf};

use protocol::native::{NativeBundle, NativeFile};

/// Most bytes of sources a bundle carries (it travels in one setup message).
pub const MAX_BUNDLE_BYTES: u64 = 32 << 20;

/// Why a Python module could not be packed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NativeError {
    /// The module is not a package directory with `__init__.py` or a `.py` file.
    #[error("{0} is not a Python package (a directory with __init__.py) or a .py file")]
    NotPython(PathBuf),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The sources are too big to send.
    #[error("the sources of {path} exceed {max} bytes (keep data files out of the package)")]
    TooBig {
        /// The module.
        path: PathBuf,
        /// The limit.
        max: u64,
    },
    /// A name that is not UTF-8 or not a Python identifier.
    #[error("cannot send {0}: its name is not a UTF-8 Python name")]
    BadName(PathBuf),
    /// A runtime other than the two there are.
    #[error("unknown runtime `{0}` (use \"sandbox\", the default, or \"python\")")]
    Runtime(String),
}

/// Where a task runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Runtime {
    /// In the node's WebAssembly sandbox (a Rust module, or Python as a component).
    #[default]
    Sandbox,
    /// In CPython processes on nodes that allow native tasks.
    Python,
}

impl Runtime {
    /// The runtime named in a chain file.
    ///
    /// # Errors
    /// [`NativeError::Runtime`] for any other name.
    pub fn parse(name: &str) -> Result<Runtime, NativeError> {
        match name {
            "sandbox" | "wasm" => Ok(Runtime::Sandbox),
            "python" => Ok(Runtime::Python),
            other => Err(NativeError::Runtime(other.into())),
        }
    }
}

/// The bundle of the Python package or `.py` file at `path`, with `requirements`.
/// Byte-code caches and hidden entries (`__pycache__`, `.pcluster-build`) stay behind.
///
/// # Errors
/// When `path` is not Python code, cannot be read, or is too big.
pub fn bundle(path: &Path, requirements: &[String]) -> Result<Vec<u8>, NativeError> {
    let name = |p: &Path| {
        p.file_name()
            .and_then(|n| n.to_str())
            .map(str::to_owned)
            .ok_or_else(|| NativeError::BadName(p.to_path_buf()))
    };
    let mut files = Vec::new();
    let mut total = 0;
    let module = if path.is_dir() && path.join("__init__.py").is_file() {
        let top = name(path)?;
        collect(path, &top, &mut files, &mut total, path)?;
        top
    } else if path.is_file() && path.extension().is_some_and(|e| e == "py") {
        let file = name(path)?;
        let bytes = read(path)?;
        files.push(NativeFile {
            path: file.clone(),
            bytes,
        });
        file.trim_end_matches(".py").to_owned()
    } else {
        return Err(NativeError::NotPython(path.to_path_buf()));
    };
    let bundle = NativeBundle {
        module,
        requirements: requirements.to_vec(),
        files,
    };
    let bytes = bundle.encode();
    // Decoding checks the names as a node will, so a bad one fails here, not on every node.
    NativeBundle::decode(&bytes).map_err(|_| NativeError::BadName(path.to_path_buf()))?;
    Ok(bytes)
}

fn read(path: &Path) -> Result<Vec<u8>, NativeError> {
    std::fs::read(path).map_err(|source| NativeError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Adds the files under `dir` (named `prefix/...`), sorted so the bundle's bytes (and so
/// the node's cache key) do not depend on the order of the directory.
fn collect(
    dir: &Path,
    prefix: &str,
    files: &mut Vec<NativeFile>,
    total: &mut u64,
    top: &Path,
) -> Result<(), NativeError> {
    let io = |source| NativeError::Read {
        path: dir.to_path_buf(),
        source,
    };
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(io)?
        .collect::<Result<_, _>>()
        .map_err(io)?;
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for entry in entries {
        let path = entry.path();
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            return Err(NativeError::BadName(path));
        };
        if name.starts_with('.') || name == "__pycache__" || name.ends_with(".pyc") {
            continue;
        }
        // A symlink to a file is followed; one to a directory is skipped: it could loop.
        let link = entry.file_type().map_err(io)?.is_symlink();
        let meta = std::fs::metadata(&path).map_err(io)?;
        if link && meta.is_dir() {
            continue;
        }
        let inner = format!("{prefix}/{name}");
        if meta.is_dir() {
            collect(&path, &inner, files, total, top)?;
        } else if meta.is_file() {
            *total += meta.len();
            if *total > MAX_BUNDLE_BYTES {
                return Err(NativeError::TooBig {
                    path: top.to_path_buf(),
                    max: MAX_BUNDLE_BYTES,
                });
            }
            files.push(NativeFile {
                path: inner,
                bytes: read(&path)?,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_package_is_packed_without_caches_and_in_a_stable_order() {
        let dir = std::env::temp_dir().join(format!("pcluster-native-{}", std::process::id()));
        let pkg = dir.join("tasks");
        std::fs::create_dir_all(pkg.join("__pycache__")).unwrap();
        std::fs::create_dir_all(pkg.join("sub")).unwrap();
        std::fs::write(pkg.join("__init__.py"), "from .sub.m import f\n").unwrap();
        std::fs::write(pkg.join("sub/m.py"), "def f(x): return x\n").unwrap();
        std::fs::write(pkg.join("__pycache__/x.pyc"), "junk").unwrap();
        let bytes = bundle(&pkg, &["numpy".into()]).unwrap();
        let b = NativeBundle::decode(&bytes).unwrap();
        assert_eq!(b.module, "tasks");
        assert_eq!(b.requirements, ["numpy"]);
        let paths: Vec<&str> = b.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(paths, ["tasks/__init__.py", "tasks/sub/m.py"]);
        assert_eq!(bundle(&pkg, &["numpy".into()]).unwrap(), bytes);

        let single = dir.join("one.py");
        std::fs::write(&single, "def g(x): return x\n").unwrap();
        let b = NativeBundle::decode(&bundle(&single, &[]).unwrap()).unwrap();
        assert_eq!((b.module.as_str(), b.files.len()), ("one", 1));
        assert!(matches!(
            bundle(&dir.join("missing"), &[]),
            Err(NativeError::NotPython(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn runtimes_are_named() {
        assert_eq!(Runtime::parse("python").unwrap(), Runtime::Python);
        assert_eq!(Runtime::parse("sandbox").unwrap(), Runtime::Sandbox);
        assert!(Runtime::parse("jvm").is_err());
    }
}
