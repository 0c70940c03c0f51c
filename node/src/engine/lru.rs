//! The eviction policy of the in-memory compiled-code cache, as plain logic: entries weigh
//! bytes; those the current chain uses are kept whatever they weigh, and of the others only
//! the most recently used are kept, up to a byte budget.

use std::collections::HashMap;
use std::hash::Hash;

/// Values weighed in bytes, with their last use.
#[derive(Debug)]
pub struct Lru<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// Advances on every use: a larger stamp is a more recent use.
    clock: u64,
}

#[derive(Debug)]
struct Entry<V> {
    value: V,
    bytes: u64,
    used: u64,
}

impl<K, V> Default for Lru<K, V> {
    fn default() -> Self {
        Lru {
            entries: HashMap::new(),
            clock: 0,
        }
    }
}

impl<K: Eq + Hash + Clone, V> Lru<K, V> {
    /// The value of `key`, now the most recently used.
    pub fn get(&mut self, key: &K) -> Option<&V> {
        self.clock += 1;
        let clock = self.clock;
        self.entries.get_mut(key).map(|e| {
            e.used = clock;
            &e.value
        })
    }

    /// Adds (or replaces) `key`, weighing `bytes`, as the most recently used.
    pub fn insert(&mut self, key: K, value: V, bytes: u64) {
        self.clock += 1;
        let used = self.clock;
        self.entries.insert(key, Entry { value, bytes, used });
    }

    /// Bytes of all entries.
    #[cfg(test)]
    pub fn bytes(&self) -> u64 {
        self.entries.values().map(|e| e.bytes).sum()
    }

    /// Entries.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Evicts entries not in `keep`, least recently used first, until those left outside
    /// `keep` weigh at most `budget` bytes; returns the evicted values (for the caller to
    /// drop outside its lock).
    pub fn trim(&mut self, keep: &[K], budget: u64) -> Vec<V> {
        let mut others: Vec<(u64, u64, K)> = self
            .entries
            .iter()
            .filter(|(k, _)| !keep.contains(k))
            .map(|(k, e)| (e.used, e.bytes, k.clone()))
            .collect();
        let mut held: u64 = others.iter().map(|(_, b, _)| b).sum();
        others.sort_unstable_by_key(|(used, _, _)| *used);
        let mut evicted = Vec::new();
        for (_, bytes, key) in others {
            if held <= budget {
                break;
            }
            held -= bytes;
            if let Some(e) = self.entries.remove(&key) {
                evicted.push(e.value);
            }
        }
        evicted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lru(entries: &[(&'static str, u64)]) -> Lru<&'static str, &'static str> {
        let mut lru = Lru::default();
        for &(k, b) in entries {
            lru.insert(k, k, b);
        }
        lru
    }

    #[test]
    fn the_least_recently_used_others_go_first_until_the_budget_holds() {
        let mut c = lru(&[("a", 40), ("b", 40), ("c", 40), ("d", 10)]);
        // `a` used again: `b` is now the oldest.
        assert_eq!(c.get(&"a"), Some(&"a"));
        let evicted = c.trim(&["d"], 80);
        assert_eq!(evicted, vec!["b"]);
        assert_eq!(c.bytes(), 90, "a + c within the budget, d kept");
        let evicted = c.trim(&["d"], 50);
        assert_eq!(evicted, vec!["c"], "c was used before a");
        assert_eq!(c.get(&"b"), None);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn what_the_current_chain_uses_stays_whatever_it_weighs() {
        let mut c = lru(&[
            ("python", 300 << 20),
            ("identity", 1 << 20),
            ("old", 10 << 20),
        ]);
        assert!(c.trim(&["python", "identity"], 0) == vec!["old"]);
        assert_eq!(c.bytes(), (300 << 20) + (1 << 20));
        // The next chain no longer uses the big one: it goes, the small one fits.
        assert_eq!(c.trim(&["new"], 64 << 20), vec!["python"]);
        assert_eq!(c.bytes(), 1 << 20);
        assert_eq!(c.get(&"identity"), Some(&"identity"));
    }

    #[test]
    fn nothing_is_evicted_within_the_budget() {
        let mut c = lru(&[("a", 10), ("b", 20)]);
        assert!(c.trim(&[], 30).is_empty());
        assert_eq!(c.len(), 2);
        assert_eq!(c.trim(&[], 0).len(), 2);
        assert_eq!(c.bytes(), 0);
    }
}
