//! The memory cap of one task instance's store: every memory and table it has, summed,
//! within the chain's `memory_mb`, and bounds on how many instances, tables and memories
//! one store may hold.

use wasmtime::ResourceLimiter;

/// Most instances, tables and memories one store may hold (a component is several core
/// instances; a core task is one).
const MAX_INSTANCES: usize = 64;
const MAX_TABLES: usize = 64;
const MAX_MEMORIES: usize = 64;
/// Most table elements over all of a store's tables.
const MAX_TABLE_ELEMENTS: usize = 1 << 20;

/// The memory cap of one instance's store: every memory it has, summed, within `max_bytes`.
pub(crate) struct MemLimiter {
    pub(super) max_bytes: usize,
    pub(super) denied: bool,
    /// Bytes of all memories of the store, as granted.
    pub(super) memory_bytes: usize,
    /// Elements of all tables of the store, as granted.
    pub(super) table_elements: usize,
}

impl MemLimiter {
    /// A limiter granting `max_bytes` of memory in all.
    pub(crate) fn new(max_bytes: usize) -> MemLimiter {
        MemLimiter {
            max_bytes,
            denied: false,
            memory_bytes: 0,
            table_elements: 0,
        }
    }
}

/// `total` with one of its parts grown from `current` to `desired`, when that fits in `max`.
fn grown(total: usize, current: usize, desired: usize, max: usize) -> Option<usize> {
    let total = total.saturating_sub(current).saturating_add(desired);
    (total <= max).then_some(total)
}

impl ResourceLimiter for MemLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match grown(self.memory_bytes, current, desired, self.max_bytes) {
            Some(total) => {
                self.memory_bytes = total;
                Ok(true)
            }
            None => {
                self.denied = true;
                Ok(false)
            }
        }
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        match grown(self.table_elements, current, desired, MAX_TABLE_ELEMENTS) {
            Some(total) => {
                self.table_elements = total;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn instances(&self) -> usize {
        MAX_INSTANCES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memories_are_summed_against_one_cap() {
        let mut l = MemLimiter::new(100);
        assert!(l.memory_growing(0, 60, None).unwrap());
        assert!(
            !l.memory_growing(0, 60, None).unwrap(),
            "a second memory counts too"
        );
        assert!(l.denied);
        assert!(l.memory_growing(60, 90, None).unwrap());
        assert!(!l.memory_growing(0, 11, None).unwrap());
        assert!(l.memory_growing(0, 10, None).unwrap());
    }
}
