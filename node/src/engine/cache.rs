//! Compiled modules and components keyed by the SHA-256 of their bytes: setting the same
//! chain up again compiles nothing. With a cache directory they are also kept on disk
//! (`Module::serialize`, keyed by content hash and the engine's compatibility hash, which
//! covers the wasmtime version and settings), so a restarted node, a second node process and
//! CI compile each only once.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::Module;
use wasmtime::component::Component;

use super::engine;

/// The environment variable naming the on-disk cache directory (`off` disables it).
pub const CACHE_DIR_ENV: &str = "PCLUSTER_CACHE_DIR";

/// The default on-disk cache: `$PCLUSTER_CACHE_DIR`, else `$XDG_CACHE_HOME/pcluster`, else
/// `~/.cache/pcluster`; `None` when `PCLUSTER_CACHE_DIR` is `off` or no home is known.
pub fn default_cache_dir() -> Option<PathBuf> {
    let var = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
    if let Some(dir) = var(CACHE_DIR_ENV) {
        return (dir != "off").then(|| PathBuf::from(dir));
    }
    if let Some(xdg) = var("XDG_CACHE_HOME") {
        return Some(PathBuf::from(xdg).join("pcluster"));
    }
    var("HOME").map(|h| PathBuf::from(h).join(".cache").join("pcluster"))
}

/// Compiled wasm: a core module or a component.
#[derive(Clone)]
pub enum Compiled {
    /// A core module (docs/ABI.md).
    Module(Module),
    /// A component of the `pcluster:task` world.
    Component(Component),
}

/// Where a compiled artifact came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// Compiled now.
    Compiled,
    /// This process's cache.
    Memory,
    /// The on-disk cache.
    Disk,
}

/// Compiled modules and components keyed by the SHA-256 of their bytes.
#[derive(Default)]
pub struct ModuleCache {
    modules: Mutex<HashMap<[u8; 32], Compiled>>,
    dir: Option<PathBuf>,
    /// Modules compiled since start.
    pub compiled: AtomicU64,
    /// Module lookups served from the cache (memory or disk).
    pub hits: AtomicU64,
}

impl std::fmt::Debug for ModuleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleCache")
            .field("dir", &self.dir)
            .field("compiled", &self.compiled)
            .field("hits", &self.hits)
            .finish()
    }
}

/// Whether `bytes` are a component rather than a core module (the header's layer field).
pub fn is_component(bytes: &[u8]) -> bool {
    wasmparser::Parser::is_component(bytes)
}

impl ModuleCache {
    /// A cache that also keeps compiled code in `dir` (created when needed).
    pub fn with_dir(dir: Option<PathBuf>) -> ModuleCache {
        ModuleCache {
            dir,
            ..ModuleCache::default()
        }
    }

    /// The compiled module or component for `bytes` and where it came from.
    ///
    /// # Errors
    /// When the bytes are not a valid module or component.
    pub fn get_or_compile(&self, bytes: &[u8]) -> wasmtime::Result<(Compiled, Origin)> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(m) = self.lock().get(&hash) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((m.clone(), Origin::Memory));
        }
        let component = is_component(bytes);
        let file = self
            .dir
            .as_deref()
            .map(|d| d.join(file_name(&hash, component)));
        let from_disk = file.as_deref().and_then(|f| load(f, component));
        let (compiled, origin) = match from_disk {
            Some(c) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                (c, Origin::Disk)
            }
            None => {
                let c = if component {
                    Compiled::Component(Component::new(engine(), bytes)?)
                } else {
                    Compiled::Module(Module::new(engine(), bytes)?)
                };
                self.compiled.fetch_add(1, Ordering::Relaxed);
                if let Some(f) = &file
                    && let Err(e) = store(f, &c)
                {
                    tracing::warn!(file = %f.display(), "cannot write the compiled-code cache: {e:#}");
                }
                (c, Origin::Compiled)
            }
        };
        let mut map = self.lock();
        // A node keeps a handful of chains; bound the cache anyway.
        if map.len() >= 64 {
            map.clear();
        }
        map.insert(hash, compiled.clone());
        Ok((compiled, origin))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Compiled>> {
        self.modules.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `<sha256>-<engine hash>.cwasm`: another wasmtime version or setting never reads it.
fn file_name(hash: &[u8; 32], component: bool) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    engine().precompile_compatibility_hash().hash(&mut h);
    let kind = if component { "component" } else { "module" };
    let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}-{:016x}.{kind}.cwasm", h.finish())
}

fn load(file: &Path, component: bool) -> Option<Compiled> {
    if !file.exists() {
        return None;
    }
    // SAFETY: the file is one this cache wrote with `serialize` for this engine's
    // compatibility hash (in its name); wasmtime checks the header and version again and
    // refuses a mismatch. The cache directory belongs to the node's user: who can write it
    // can run code as that user anyway.
    let loaded = unsafe {
        if component {
            Component::deserialize_file(engine(), file).map(Compiled::Component)
        } else {
            Module::deserialize_file(engine(), file).map(Compiled::Module)
        }
    };
    match loaded {
        Ok(c) => Some(c),
        Err(e) => {
            tracing::warn!(file = %file.display(), "ignoring an unusable cache entry: {e:#}");
            None
        }
    }
}

/// Writes the serialized code to a temporary file and renames it into place, so a reader
/// (another node process) never sees half a file.
fn store(file: &Path, c: &Compiled) -> wasmtime::Result<()> {
    let bytes = match c {
        Compiled::Module(m) => m.serialize()?,
        Compiled::Component(c) => c.serialize()?,
    };
    let dir = file.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        file.file_name().and_then(|n| n.to_str()).unwrap_or("entry"),
        std::process::id()
    ));
    std::fs::write(&tmp, &bytes)?;
    if let Err(e) = std::fs::rename(&tmp, file) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_cache_on_the_same_dir_loads_from_disk() {
        let dir = std::env::temp_dir().join(format!("pcluster-cache-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let wasm = wat::parse_str("(module (func (export \"f\")))").unwrap();
        let first = ModuleCache::with_dir(Some(dir.clone()));
        let (_, origin) = first.get_or_compile(&wasm).unwrap();
        assert_eq!(origin, Origin::Compiled);
        assert_eq!(first.get_or_compile(&wasm).unwrap().1, Origin::Memory);
        let second = ModuleCache::with_dir(Some(dir.clone()));
        let (m, origin) = second.get_or_compile(&wasm).unwrap();
        assert_eq!(origin, Origin::Disk);
        assert!(matches!(m, Compiled::Module(m) if m.get_export("f").is_some()));
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(files.len(), 1, "one entry, no temporary left");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn components_are_told_from_modules_by_their_header() {
        let module = wat::parse_str("(module)").unwrap();
        let component = wat::parse_str("(component)").unwrap();
        assert!(!is_component(&module));
        assert!(is_component(&component));
    }
}
