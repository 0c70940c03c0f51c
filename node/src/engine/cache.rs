//! Compiled modules and components keyed by the SHA-256 of their bytes: setting the same
//! chain up again compiles nothing. With a cache directory they are also kept on disk
//! (`Module::serialize`, keyed by content hash and the engine's compatibility hash, which
//! covers the wasmtime version and settings), so a restarted node, a second node process and
//! CI compile each only once.
//!
//! In memory the cache is bounded in bytes (the size of each compiled image): it keeps what
//! the current chain uses, and of the rest at most [`OTHER_CODE_BYTES`], least recently used
//! first out ([`super::lru`]); the disk keeps more (bounded too, least recently used out:
//! `disk`), so an evicted module comes back cheaply (a file mapped, nothing compiled).

mod disk;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::Module;
use wasmtime::component::Component;

use super::engine;
use super::lru::Lru;
use disk::Disk;

/// Bytes of compiled code the in-memory cache keeps beyond what the current chain uses:
/// dozens of Rust task modules (about 0.5 MB each), but not a CPython component that no
/// chain uses any more (a 35 MB image, ~60 MiB resident with wasmtime's tables of it;
/// measured), which comes back from the disk cache in tens of milliseconds when needed.
pub const OTHER_CODE_BYTES: u64 = 16 << 20;

/// A compiled module's key in the cache: the SHA-256 of its wasm bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CodeKey([u8; 32]);

/// What [`ModuleCache::get_or_compile`] found.
#[derive(Clone)]
pub struct Found {
    /// The compiled module or component.
    pub code: Compiled,
    /// Where it came from.
    pub origin: Origin,
    /// Its key, for [`ModuleCache::keep_only`].
    pub key: CodeKey,
}

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

impl Compiled {
    /// Bytes of its compiled image in memory (code and data, about its serialized size).
    pub fn image_bytes(&self) -> u64 {
        let range = match self {
            Compiled::Module(m) => m.image_range(),
            Compiled::Component(c) => c.image_range(),
        };
        range.end.addr().saturating_sub(range.start.addr()) as u64
    }
}

/// Compiled modules and components keyed by the SHA-256 of their bytes.
pub struct ModuleCache {
    modules: Mutex<Lru<CodeKey, Compiled>>,
    disk: Option<Disk>,
    /// Bytes of code kept beyond what the current chain uses.
    budget: u64,
    /// Modules compiled since start.
    pub compiled: AtomicU64,
    /// Module lookups served from the cache (memory or disk).
    pub hits: AtomicU64,
}

impl Default for ModuleCache {
    fn default() -> Self {
        ModuleCache::with_dir(None)
    }
}

impl std::fmt::Debug for ModuleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleCache")
            .field("dir", &self.disk.as_ref().map(Disk::dir))
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
    /// A cache that also keeps compiled code in `dir` (created when needed), unbounded until
    /// [`ModuleCache::with_disk_bound`].
    pub fn with_dir(dir: Option<PathBuf>) -> ModuleCache {
        ModuleCache::with_budget(dir, OTHER_CODE_BYTES)
    }

    /// A cache keeping `budget` bytes of code beyond what the current chain uses.
    pub fn with_budget(dir: Option<PathBuf>, budget: u64) -> ModuleCache {
        ModuleCache {
            modules: Mutex::default(),
            disk: dir.map(|d| Disk::new(d, u64::MAX)),
            budget,
            compiled: AtomicU64::new(0),
            hits: AtomicU64::new(0),
        }
    }

    /// Keeps at most `bytes` of compiled code on disk, least recently used out; removes what
    /// does not fit now. Code larger than the bound on its own is kept in memory only.
    #[must_use]
    pub fn with_disk_bound(mut self, bytes: u64) -> ModuleCache {
        if let Some(disk) = &mut self.disk {
            disk.set_bound(bytes);
        }
        self
    }

    /// The compiled module or component for `bytes` and where it came from.
    ///
    /// # Errors
    /// When the bytes are not a valid module or component.
    pub fn get_or_compile(&self, bytes: &[u8]) -> wasmtime::Result<Found> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        let key = CodeKey(hash);
        let component = is_component(bytes);
        let file = match &self.disk {
            Some(d) => Some(d.file(&hash, component)?),
            None => None,
        };
        let in_memory = self.lock().get(&key).cloned();
        if let Some(code) = in_memory {
            self.hits.fetch_add(1, Ordering::Relaxed);
            // A use on disk too: the file is what other node processes and later runs take,
            // and its time is all the disk's eviction knows of its use.
            if let Some(f) = &file {
                disk::touch(f);
            }
            return Ok(Found {
                code,
                origin: Origin::Memory,
                key,
            });
        }
        let disk = self.disk.as_ref().zip(file.as_deref());
        let from_disk = disk.and_then(|(d, f)| d.load(f, component));
        let (compiled, origin) = match from_disk {
            Some(c) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                (c, Origin::Disk)
            }
            None => {
                let c = compile(bytes, component, disk)?;
                self.compiled.fetch_add(1, Ordering::Relaxed);
                (c, Origin::Compiled)
            }
        };
        self.lock()
            .insert(key, compiled.clone(), compiled.image_bytes());
        Ok(Found {
            code: compiled,
            origin,
            key,
        })
    }

    /// Makes `current` (the modules of the chain just set up) the ones kept whatever they
    /// weigh, and evicts the least recently used others past the budget. Their memory goes
    /// back to the system once no chain holds them any more; so does the heap compiling
    /// left free (`compiled`: something was compiled in this process).
    pub fn keep_only(&self, current: &[CodeKey], compiled: bool) {
        let evicted = self.lock().trim(current, self.budget);
        let evicted_any = !evicted.is_empty();
        drop(evicted);
        if compiled || evicted_any {
            crate::heap::release_free();
        }
    }

    /// Bytes of compiled code held in memory.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.lock().bytes()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Lru<CodeKey, Compiled>> {
        self.modules.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Compiles `bytes` with an engine of its own, dropped once done, and loads the result into
/// the process's engine: wasmtime's compiler keeps its scratch space (sized by the largest
/// function it compiled, tens of MiB for CPython's interpreter loop) for the life of its
/// engine. With a `disk` cache and its file the code is written there and mapped from it, so
/// its pages are the file's (shared by the node processes of a machine, reclaimable).
fn compile(
    bytes: &[u8],
    component: bool,
    disk: Option<(&Disk, &Path)>,
) -> wasmtime::Result<Compiled> {
    let image = {
        let scratch = wasmtime::Engine::new(&super::config())?;
        if component {
            scratch.precompile_component(bytes)?
        } else {
            scratch.precompile_module(bytes)?
        }
    };
    if let Some((disk, f)) = disk {
        match disk.store(f, &image) {
            Ok(true) => {
                if let Some(c) = disk.load(f, component) {
                    return Ok(c);
                }
            }
            Ok(false) => {
                tracing::info!(file = %f.display(), bytes = image.len(), "compiled code larger than the disk cache's bound: kept in memory only");
            }
            Err(e) => {
                tracing::warn!(file = %f.display(), "cannot write the compiled-code cache: {e:#}");
            }
        }
    }
    // SAFETY: `image` is what `precompile_*` just produced with this engine's configuration
    // (wasmtime checks the header and settings again and refuses a mismatch).
    let engine = engine()?;
    unsafe {
        Ok(if component {
            Compiled::Component(Component::deserialize(engine, &image)?)
        } else {
            Compiled::Module(Module::deserialize(engine, &image)?)
        })
    }
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
        assert_eq!(
            first.get_or_compile(&wasm).unwrap().origin,
            Origin::Compiled
        );
        assert_eq!(first.get_or_compile(&wasm).unwrap().origin, Origin::Memory);
        let second = ModuleCache::with_dir(Some(dir.clone()));
        let found = second.get_or_compile(&wasm).unwrap();
        assert_eq!(found.origin, Origin::Disk);
        assert!(matches!(found.code, Compiled::Module(m) if m.get_export("f").is_some()));
        let files: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(files.len(), 1, "one entry, no temporary left");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A module whose compiled image weighs about `kib` KiB (a data segment of that size).
    fn module_of(kib: usize, tag: u32) -> Vec<u8> {
        let data = "\\00".repeat(kib << 10);
        wat::parse_str(format!(
            "(module (memory 1) (data (i32.const {tag}) \"{data}\") (func (export \"f\")))"
        ))
        .unwrap()
    }

    #[test]
    fn memory_keeps_the_current_chain_and_a_budget_of_others() {
        let cache = ModuleCache::with_budget(None, 150 << 10);
        let origin = |kib, tag| cache.get_or_compile(&module_of(kib, tag)).unwrap().origin;
        let a = cache.get_or_compile(&module_of(80, 1)).unwrap();
        let weight = a.code.image_bytes();
        assert!(
            (80 << 10..150 << 10).contains(&weight),
            "weighed by its image: {weight}"
        );
        cache.keep_only(&[a.key], true);
        let b = cache.get_or_compile(&module_of(80, 2)).unwrap();
        cache.keep_only(&[b.key], true);
        // One of 80 KiB fits the budget beside the current chain's; `a` is used again.
        assert_eq!(origin(80, 1), Origin::Memory);
        let c = cache.get_or_compile(&module_of(1, 3)).unwrap();
        cache.keep_only(&[c.key], true);
        // Two do not: the least recently used (`b`) went.
        assert_eq!(origin(80, 1), Origin::Memory);
        assert_eq!(origin(80, 2), Origin::Compiled);
        cache.keep_only(&[c.key], true);
        // Now `a` is the older: it goes.
        assert_eq!(origin(80, 2), Origin::Memory);
        assert_eq!(origin(80, 1), Origin::Compiled);
        cache.keep_only(&[c.key], true);
        assert!(cache.bytes() <= (150 << 10) + c.code.image_bytes());
        // The current chain's code stays whatever the budget.
        let tiny = ModuleCache::with_budget(None, 0);
        let a = tiny.get_or_compile(&module_of(80, 1)).unwrap();
        tiny.keep_only(&[a.key], true);
        assert_eq!(
            tiny.get_or_compile(&module_of(80, 1)).unwrap().origin,
            Origin::Memory
        );
        assert_eq!(tiny.bytes(), weight);
    }

    /// Sets the modification time of every file in `dir` to `secs` after the epoch, plus
    /// `order` seconds for the files whose names start with the given prefixes.
    fn age(dir: &Path, order: &[&str]) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let rank = order.iter().position(|p| name.starts_with(p)).unwrap_or(0);
            let t = std::time::SystemTime::UNIX_EPOCH
                + std::time::Duration::from_secs(1_000 + rank as u64);
            std::fs::File::options()
                .append(true)
                .open(e.path())
                .and_then(|f| f.set_modified(t))
                .unwrap();
        }
    }

    fn hex(wasm: &[u8]) -> String {
        Sha256::digest(wasm)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    #[test]
    fn the_disk_keeps_the_most_recently_used_within_its_bound() {
        let dir = std::env::temp_dir().join(format!("pcluster-disk-lru-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (a, b, c) = (module_of(64, 1), module_of(64, 2), module_of(64, 3));
        let probe = ModuleCache::with_dir(Some(dir.clone()));
        probe.get_or_compile(&a).unwrap();
        let one = std::fs::read_dir(&dir).unwrap().flatten().next().unwrap();
        let size = one.metadata().unwrap().len();
        std::fs::remove_file(one.path()).unwrap();
        // Room for two entries, not three.
        let cache = ModuleCache::with_dir(Some(dir.clone())).with_disk_bound(size * 5 / 2);
        cache.get_or_compile(&a).unwrap();
        cache.get_or_compile(&b).unwrap();
        // `a` was used before `b`; a use from memory makes it the most recent on disk.
        age(&dir, &[&hex(&a), &hex(&b)]);
        assert_eq!(cache.get_or_compile(&a).unwrap().origin, Origin::Memory);
        cache.get_or_compile(&c).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        let mut expected = [hex(&a), hex(&c)];
        expected.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        for (name, hash) in names.iter().zip(&expected) {
            assert!(name.starts_with(hash.as_str()), "{names:?}");
        }
        // A bound below one entry: nothing more is written, and the node still runs it.
        let small = ModuleCache::with_dir(Some(dir.clone())).with_disk_bound(size / 2);
        assert!(
            std::fs::read_dir(&dir).unwrap().next().is_none(),
            "trimmed at start"
        );
        let found = small.get_or_compile(&b).unwrap();
        assert_eq!(found.origin, Origin::Compiled);
        assert!(std::fs::read_dir(&dir).unwrap().next().is_none());
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
