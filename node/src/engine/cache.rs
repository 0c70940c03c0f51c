//! Compiled modules keyed by the SHA-256 of their bytes: setting the same chain up again
//! compiles nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};
use wasmtime::Module;

use super::engine;

/// Compiled modules keyed by the SHA-256 of their bytes, so setting the same chain up again
/// compiles nothing.
#[derive(Default)]
pub struct ModuleCache {
    modules: Mutex<HashMap<[u8; 32], Module>>,
    /// Modules compiled since start.
    pub compiled: AtomicU64,
    /// Module lookups served from the cache.
    pub hits: AtomicU64,
}

impl std::fmt::Debug for ModuleCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModuleCache")
            .field("compiled", &self.compiled)
            .field("hits", &self.hits)
            .finish()
    }
}

impl ModuleCache {
    /// The compiled module for `bytes` and whether it came from the cache.
    ///
    /// # Errors
    /// When the bytes are not a valid module.
    pub fn get_or_compile(&self, bytes: &[u8]) -> wasmtime::Result<(Module, bool)> {
        let hash: [u8; 32] = Sha256::digest(bytes).into();
        if let Some(m) = self.lock().get(&hash) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            return Ok((m.clone(), true));
        }
        let module = Module::new(engine(), bytes)?;
        self.compiled.fetch_add(1, Ordering::Relaxed);
        let mut map = self.lock();
        // A node keeps a handful of chains; bound the cache anyway.
        if map.len() >= 64 {
            map.clear();
        }
        map.insert(hash, module.clone());
        Ok((module, false))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Module>> {
        self.modules.lock().unwrap_or_else(|p| p.into_inner())
    }
}
