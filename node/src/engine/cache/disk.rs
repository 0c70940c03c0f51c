//! The on-disk side of the compiled-code cache: one file per compiled module or component,
//! `<sha256>-<engine hash>.<kind>.cwasm`, its bytes bounded ([`disk_plan`] decides what goes).
//! Every use sets a file's modification time, so that the time is its last use for all the
//! node processes sharing the directory; a write first removes the least recently used files
//! until the new one fits. A file is written under a name no other writer uses (process id,
//! a counter and a random number) and renamed into place, so a reader never sees half a file
//! and two writers never write into one.

use std::hash::{BuildHasher, Hash, Hasher};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use wasmtime::Module;
use wasmtime::component::Component;

use super::Compiled;
use crate::engine::engine;
use crate::engine::lru::{DiskFile, DiskKind, disk_plan};

/// The on-disk cache: a directory and the bytes its files may take.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    bound: u64,
}

impl Disk {
    /// The cache in `dir` (created when first written), holding at most `bound` bytes.
    pub fn new(dir: PathBuf, bound: u64) -> Disk {
        Disk { dir, bound }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bounds the cache at `bound` bytes and removes what no longer fits (a node started
    /// with a smaller bound than the last).
    pub fn set_bound(&mut self, bound: u64) {
        self.bound = bound;
        self.make_room(0);
    }

    /// The file of the code whose wasm hashes to `hash`: another wasmtime version or setting
    /// never reads it.
    ///
    /// # Errors
    /// When the engine cannot be built.
    pub fn file(
        &self,
        hash: &[u8; 32],
        component: bool,
    ) -> Result<PathBuf, crate::engine::EngineError> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine()?.precompile_compatibility_hash().hash(&mut h);
        let kind = if component { "component" } else { "module" };
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        Ok(self
            .dir
            .join(format!("{hex}-{:016x}.{kind}.cwasm", h.finish())))
    }

    /// The code in `file`, now its most recent use; `None` when there is none or it is
    /// unusable.
    pub fn load(&self, file: &Path, component: bool) -> Option<Compiled> {
        if !file.exists() {
            return None;
        }
        // SAFETY: the file is one this cache wrote with `serialize` for this engine's
        // compatibility hash (in its name); wasmtime checks the header and version again and
        // refuses a mismatch. The cache directory belongs to the node's user: who can write it
        // can run code as that user anyway.
        let engine = engine().ok()?;
        let loaded = unsafe {
            if component {
                Component::deserialize_file(engine, file).map(Compiled::Component)
            } else {
                Module::deserialize_file(engine, file).map(Compiled::Module)
            }
        };
        match loaded {
            Ok(c) => {
                touch(file);
                Some(c)
            }
            Err(e) => {
                tracing::warn!(file = %file.display(), "ignoring an unusable cache entry: {e:#}");
                None
            }
        }
    }

    /// Writes `image` as `file`, first removing the least recently used files until it fits;
    /// `false` when it is larger than the whole bound, and so not written.
    ///
    /// # Errors
    /// When the directory or the file cannot be written.
    pub fn store(&self, file: &Path, image: &[u8]) -> std::io::Result<bool> {
        std::fs::create_dir_all(&self.dir)?;
        if !self.make_room(image.len() as u64) {
            return Ok(false);
        }
        let tmp = temp_name(file);
        let written = std::fs::File::create_new(&tmp).and_then(|mut f| f.write_all(image));
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, file)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        Ok(true)
    }

    /// Removes what [`disk_plan`] says so that `incoming` more bytes fit; whether they may be
    /// written. Files another process removed first are no error.
    fn make_room(&self, incoming: u64) -> bool {
        let plan = disk_plan(&self.files(), incoming, self.bound, SystemTime::now());
        for f in &plan.remove {
            match std::fs::remove_file(f) {
                Ok(()) => {
                    tracing::debug!(file = %f.display(), "evicted from the compiled-code cache")
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(file = %f.display(), "cannot evict a cache entry: {e}"),
            }
        }
        plan.write
    }

    /// The cache's files: entries and writers' temporary files (other files are not ours).
    fn files(&self) -> Vec<DiskFile<PathBuf>> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                let kind = if name.starts_with('.') && name.ends_with(".tmp") {
                    DiskKind::Temp
                } else if !name.starts_with('.') && name.ends_with(".cwasm") {
                    DiskKind::Entry
                } else {
                    return None;
                };
                let meta = e.metadata().ok().filter(std::fs::Metadata::is_file)?;
                Some(DiskFile {
                    key: e.path(),
                    kind,
                    bytes: meta.len(),
                    used: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH),
                })
            })
            .collect()
    }
}

/// Marks `file` as used now (its modification time), for the eviction of every process
/// sharing the directory. A file already evicted is no error.
pub fn touch(file: &Path) {
    let _ = std::fs::File::options()
        .append(true)
        .open(file)
        .and_then(|f| f.set_modified(SystemTime::now()));
}

/// `.<file name>.<pid>.<counter>.<random>.tmp` beside `file`: unique among this process's
/// writes (the counter) and other processes' (the pid on this machine, the random number
/// on others sharing the directory).
fn temp_name(file: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    // Keys drawn from the OS's random source, once per thread.
    let random = std::hash::RandomState::new().hash_one(n);
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("entry");
    file.with_file_name(format!(
        ".{name}.{}.{n}.{random:016x}.tmp",
        std::process::id()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_differ_between_writes_and_say_whose() {
        let file = Path::new("/cache/abc.module.cwasm");
        let a = temp_name(file);
        let b = temp_name(file);
        assert_ne!(a, b);
        let name = a.file_name().unwrap().to_str().unwrap();
        let pid = std::process::id().to_string();
        assert!(
            name.starts_with(".abc.module.cwasm.") && name.ends_with(".tmp"),
            "{name}"
        );
        assert!(name.split('.').any(|part| part == pid), "{name}");
        assert_eq!(a.parent(), file.parent());
    }

    #[test]
    fn stores_evict_the_least_recently_used_to_stay_under_the_bound() {
        let dir = std::env::temp_dir().join(format!("pcluster-disk-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let disk = Disk::new(dir.clone(), 250);
        let at = |secs| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
        let entry = |n: u8| dir.join(format!("{n}.module.cwasm"));
        for (n, used) in [(1, 10), (2, 30), (3, 20)] {
            assert!(disk.store(&entry(n), &[n; 100]).unwrap());
            let _ = std::fs::File::options()
                .append(true)
                .open(entry(n))
                .and_then(|f| f.set_modified(at(used)));
        }
        // Storing 3 made room by removing 1, the least recently used; 2 and 3 are kept.
        assert!(!entry(1).exists() && entry(2).exists() && entry(3).exists());
        // 3 (used at 20) is older than 2 (30): the next store removes 3.
        assert!(disk.store(&entry(4), &[4; 100]).unwrap());
        assert!(entry(2).exists() && !entry(3).exists() && entry(4).exists());
        // Too big for the bound: not written, nothing removed.
        assert!(!disk.store(&entry(5), &[5; 251]).unwrap());
        assert!(!entry(5).exists() && entry(2).exists());
        let sum: u64 = disk.files().iter().map(|f| f.bytes).sum();
        assert!(sum <= 250, "{sum}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
