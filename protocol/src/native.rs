//! Native Python code as a chain carries it: a [`NativeBundle`] travels in
//! [`crate::ChainSpec::modules`] like a wasm module, told apart by its first bytes
//! ([`NATIVE_MAGIC`]; wasm starts with `\0asm`). It holds the Python sources of a task
//! package or module and the requirements a node installs before running them.
//!
//! Tasks from a bundle need the reserved label [`NATIVE_LABEL`], which only nodes started
//! with `--allow-native` carry, so placement by labels keeps them off every other node.

/// First bytes of an encoded bundle.
pub const NATIVE_MAGIC: &[u8; 8] = b"\0pcl-py1";

/// The label of nodes that run native tasks, which every native task needs.
pub const NATIVE_LABEL: &str = "native";

/// Most files in a bundle.
const MAX_FILES: usize = 10_000;
/// Most requirements of a bundle.
const MAX_REQUIREMENTS: usize = 1_000;

/// Python sources and the packages they need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeBundle {
    /// The module to import: a package (a directory with `__init__.py`) or a `.py` file's
    /// stem, at the top of [`NativeBundle::files`].
    pub module: String,
    /// pip requirement specifiers (`numpy>=1.26`), installed on the node before the tasks
    /// start; empty: the node's own Python as it is.
    pub requirements: Vec<String>,
    /// The sources: relative `/`-separated paths and their bytes.
    pub files: Vec<NativeFile>,
}

/// One file of a bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NativeFile {
    /// Relative path with `/` between parts; no part is empty, `.` or `..`.
    pub path: String,
    /// Its contents.
    pub bytes: Vec<u8>,
}

/// Why bytes are not a readable bundle.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum BundleError {
    /// The bytes do not start with [`NATIVE_MAGIC`].
    #[error("not a native Python bundle")]
    NotABundle,
    /// The bytes end before a field does.
    #[error("truncated native Python bundle")]
    Truncated,
    /// A name or path is not UTF-8.
    #[error("a name in the native Python bundle is not UTF-8")]
    NotUtf8,
    /// More files or requirements than a bundle may hold.
    #[error("native Python bundle with {0} entries, over the limit")]
    TooMany(usize),
    /// A path that could leave the directory the files are written to.
    #[error("unsafe path in native Python bundle: {0:?}")]
    UnsafePath(String),
    /// A module name that is not a Python identifier.
    #[error("bad module name in native Python bundle: {0:?}")]
    BadModule(String),
    /// Bytes after the last file.
    #[error("trailing bytes after the native Python bundle")]
    Trailing,
}

/// Whether `bytes` are an encoded bundle (by their first bytes only).
pub fn is_bundle(bytes: &[u8]) -> bool {
    bytes.starts_with(NATIVE_MAGIC)
}

/// Whether `path` is relative and stays below the directory it is written to.
pub fn safe_path(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('/')
            .all(|p| !p.is_empty() && p != "." && p != ".." && !p.contains('\\'))
}

fn valid_module(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_alphabetic() || c == '_')
        && chars.all(|c| c.is_alphanumeric() || c == '_')
}

impl NativeBundle {
    /// The bundle's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let files: usize = self
            .files
            .iter()
            .map(|f| f.path.len() + f.bytes.len() + 8)
            .sum();
        let size = files + self.module.len() + 64;
        let mut out = Vec::with_capacity(size);
        out.extend_from_slice(NATIVE_MAGIC);
        put(&mut out, self.module.as_bytes());
        out.extend_from_slice(&(self.requirements.len() as u32).to_le_bytes());
        for r in &self.requirements {
            put(&mut out, r.as_bytes());
        }
        out.extend_from_slice(&(self.files.len() as u32).to_le_bytes());
        for f in &self.files {
            put(&mut out, f.path.as_bytes());
            put(&mut out, &f.bytes);
        }
        out
    }

    /// Reads a bundle, checking every path and count.
    ///
    /// # Errors
    /// [`BundleError`] saying what is wrong.
    pub fn decode(bytes: &[u8]) -> Result<NativeBundle, BundleError> {
        let rest = bytes
            .strip_prefix(NATIVE_MAGIC.as_slice())
            .ok_or(BundleError::NotABundle)?;
        let mut r = Reader(rest);
        let module = r.text()?;
        if !valid_module(&module) {
            return Err(BundleError::BadModule(module));
        }
        let n = r.count(MAX_REQUIREMENTS)?;
        let requirements = (0..n).map(|_| r.text()).collect::<Result<Vec<_>, _>>()?;
        let n = r.count(MAX_FILES)?;
        let mut files = Vec::with_capacity(n);
        for _ in 0..n {
            let path = r.text()?;
            if !safe_path(&path) {
                return Err(BundleError::UnsafePath(path));
            }
            let bytes = r.bytes()?.to_vec();
            files.push(NativeFile { path, bytes });
        }
        if !r.0.is_empty() {
            return Err(BundleError::Trailing);
        }
        Ok(NativeBundle {
            module,
            requirements,
            files,
        })
    }
}

fn put(out: &mut Vec<u8>, field: &[u8]) {
    out.extend_from_slice(&(field.len() as u32).to_le_bytes());
    out.extend_from_slice(field);
}

/// Reads length-prefixed fields, never past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<usize, BundleError> {
        let (head, rest) = self
            .0
            .split_first_chunk::<4>()
            .ok_or(BundleError::Truncated)?;
        self.0 = rest;
        Ok(u32::from_le_bytes(*head) as usize)
    }

    fn count(&mut self, max: usize) -> Result<usize, BundleError> {
        let n = self.u32()?;
        if n > max {
            return Err(BundleError::TooMany(n));
        }
        Ok(n)
    }

    fn bytes(&mut self) -> Result<&'a [u8], BundleError> {
        let len = self.u32()?;
        if len > self.0.len() {
            return Err(BundleError::Truncated);
        }
        let (field, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(field)
    }

    fn text(&mut self) -> Result<String, BundleError> {
        let bytes = self.bytes()?;
        String::from_utf8(bytes.to_vec()).map_err(|_| BundleError::NotUtf8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle() -> NativeBundle {
        NativeBundle {
            module: "tasks".into(),
            requirements: vec!["numpy>=1.26".into()],
            files: vec![
                NativeFile {
                    path: "tasks/__init__.py".into(),
                    bytes: b"def f(x):\n    return x\n".to_vec(),
                },
                NativeFile {
                    path: "tasks/data.bin".into(),
                    bytes: vec![0, 1, 2],
                },
            ],
        }
    }

    #[test]
    fn a_bundle_round_trips_and_is_told_from_wasm() {
        let bytes = bundle().encode();
        assert!(is_bundle(&bytes));
        assert!(!is_bundle(b"\0asm\x01\0\0\0"));
        assert_eq!(NativeBundle::decode(&bytes).unwrap(), bundle());
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = bundle().encode();
        for end in 0..bytes.len() {
            assert!(NativeBundle::decode(&bytes[..end]).is_err(), "cut at {end}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(NativeBundle::decode(&long), Err(BundleError::Trailing));
    }

    #[test]
    fn paths_that_could_escape_are_refused() {
        for bad in ["../x.py", "/etc/passwd", "a//b", "a/./b", "", "a\\..\\b"] {
            let mut b = bundle();
            b.files[0].path = bad.into();
            assert_eq!(
                NativeBundle::decode(&b.encode()),
                Err(BundleError::UnsafePath(bad.into())),
                "{bad}"
            );
        }
        let mut b = bundle();
        b.module = "os; import x".into();
        assert!(matches!(
            NativeBundle::decode(&b.encode()),
            Err(BundleError::BadModule(_))
        ));
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut bytes = NATIVE_MAGIC.to_vec();
        put(&mut bytes, b"m");
        bytes.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            NativeBundle::decode(&bytes),
            Err(BundleError::TooMany(u32::MAX as usize))
        );
    }
}
