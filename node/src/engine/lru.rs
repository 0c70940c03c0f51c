//! The eviction policies of the compiled-code cache, as plain logic. In memory ([`Lru`]):
//! entries weigh bytes; those the current chain uses are kept whatever they weigh, and of the
//! others only the most recently used are kept, up to a byte budget. On disk
//! ([`disk_plan`]): the files, with their sizes and last uses, are kept under a byte bound,
//! least recently used out, and a writer's temporary file left behind by a crash goes.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, SystemTime};

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

/// A temporary file untouched this long was left by a writer that died: writing one takes
/// a second or so (it is written after compiling, in one call).
pub const STALE_TEMP: Duration = Duration::from_secs(600);

/// What a file of the on-disk cache is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskKind {
    /// A compiled module or component.
    Entry,
    /// A writer's temporary file, renamed into an entry once written.
    Temp,
}

/// A file of the on-disk cache as its eviction sees it.
#[derive(Clone, Debug)]
pub struct DiskFile<K> {
    /// Its name.
    pub key: K,
    /// What it is.
    pub kind: DiskKind,
    /// Its size.
    pub bytes: u64,
    /// Its last use: an entry's is set on every use, a temporary file's as it is written.
    pub used: SystemTime,
}

/// What to do before writing an entry of `incoming` bytes (0: only trimming).
#[derive(Debug, PartialEq, Eq)]
pub struct DiskPlan<K> {
    /// Files to remove: stale temporary files, then entries, least recently used first.
    pub remove: Vec<K>,
    /// Whether the new entry may be written: it fits the bound on its own.
    pub write: bool,
}

/// Which files go so that the entries left, the temporary files being written and the new
/// entry (`incoming` bytes) fit in `bound` bytes: temporary files untouched for
/// [`STALE_TEMP`] before `now`, then entries, least recently used first. An entry larger
/// than the bound on its own is not written, and nothing goes for it.
pub fn disk_plan<K: Clone>(
    files: &[DiskFile<K>],
    incoming: u64,
    bound: u64,
    now: SystemTime,
) -> DiskPlan<K> {
    let stale = |f: &DiskFile<K>| {
        f.kind == DiskKind::Temp && now.duration_since(f.used).unwrap_or_default() >= STALE_TEMP
    };
    let mut remove: Vec<K> = files
        .iter()
        .filter(|f| stale(f))
        .map(|f| f.key.clone())
        .collect();
    let write = incoming <= bound;
    let mut held: u64 = files.iter().filter(|f| !stale(f)).map(|f| f.bytes).sum();
    let need = if write { incoming } else { 0 };
    let mut entries: Vec<&DiskFile<K>> =
        files.iter().filter(|f| f.kind == DiskKind::Entry).collect();
    entries.sort_by_key(|f| f.used);
    for f in entries {
        if held + need <= bound {
            break;
        }
        held -= f.bytes;
        remove.push(f.key.clone());
    }
    DiskPlan { remove, write }
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

    fn file(key: &'static str, kind: DiskKind, bytes: u64, used: u64) -> DiskFile<&'static str> {
        DiskFile {
            key,
            kind,
            bytes,
            used: SystemTime::UNIX_EPOCH + Duration::from_secs(used),
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_disk_loses_its_least_recently_used_entries_to_make_room() {
        let files = [
            file("b", DiskKind::Entry, 40, 20),
            file("a", DiskKind::Entry, 40, 10),
            file("c", DiskKind::Entry, 40, 30),
        ];
        // 120 held + 30 incoming in 100: a (oldest) then b go.
        let plan = disk_plan(&files, 30, 100, at(100));
        assert_eq!(plan.remove, ["a", "b"]);
        assert!(plan.write);
        // 120 + 0 in 120: nothing goes.
        assert_eq!(
            disk_plan(&files, 0, 120, at(100)).remove,
            Vec::<&str>::new()
        );
        // Trimming only (a smaller bound at start): down to 50.
        assert_eq!(disk_plan(&files, 0, 50, at(100)).remove, ["a", "b"]);
        assert_eq!(disk_plan(&files, 0, 0, at(100)).remove, ["a", "b", "c"]);
    }

    #[test]
    fn an_entry_larger_than_the_bound_is_not_written_and_evicts_nothing() {
        let files = [file("a", DiskKind::Entry, 10, 10)];
        let plan = disk_plan(&files, 101, 100, at(100));
        assert_eq!(
            plan,
            DiskPlan {
                remove: vec![],
                write: false
            }
        );
    }

    #[test]
    fn temporary_files_count_until_stale_then_go() {
        let stale_at = STALE_TEMP.as_secs();
        let files = [
            file("old.tmp", DiskKind::Temp, 50, 0),
            file("writing.tmp", DiskKind::Temp, 50, stale_at),
            file("a", DiskKind::Entry, 40, 5),
        ];
        let now = at(stale_at + 1);
        // The stale one goes and counts no more; the one being written counts but stays.
        let plan = disk_plan(&files, 10, 100, now);
        assert_eq!(plan.remove, ["old.tmp"]);
        // With less room, the entry goes too; the live temporary file never does.
        let plan = disk_plan(&files, 10, 59, now);
        assert_eq!(plan.remove, ["old.tmp", "a"]);
        assert!(plan.write);
    }
}
