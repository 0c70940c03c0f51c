//! The in-memory index: key → (segment, entry). Rebuilt at open from the segments' infos
//! (keys only, no bodies), changed only by the writer after each commit, so it never names
//! an entry a crash could lose. It holds a key's low 64 bits (the entry its high ones): about
//! 17 bytes of memory per entry.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::key::Key;

/// Bits of a location that number the entry in its segment.
const IDX_BITS: u32 = 20;

/// Where an entry is: its segment and its number there, in one word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc(u64);

impl Loc {
    pub fn new(seg: u64, idx: u32) -> Loc {
        debug_assert!(idx < 1 << IDX_BITS && seg < 1 << (64 - IDX_BITS));
        Loc(seg << IDX_BITS | u64::from(idx))
    }

    pub fn seg(self) -> u64 {
        self.0 >> IDX_BITS
    }

    pub fn idx(self) -> u32 {
        (self.0 & ((1 << IDX_BITS) - 1)) as u32
    }
}

/// Keys are hash bits already: the map uses their low 64 bits as they are.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// The index of a store.
#[derive(Default)]
pub struct Index {
    map: HashMap<u64, Loc, BuildHasherDefault<KeyHasher>>,
}

impl Index {
    #[inline]
    pub fn get(&self, k: Key) -> Option<Loc> {
        self.map.get(&(k.0 as u64)).copied()
    }

    pub fn reserve(&mut self, entries: usize) {
        self.map.reserve(entries);
    }

    /// Entries of a segment just committed (a later segment wins over an earlier one).
    pub fn add_segment(&mut self, seg: u64, keys: &[Key]) {
        self.map.reserve(keys.len());
        for (i, k) in keys.iter().enumerate() {
            self.map.insert(k.0 as u64, Loc::new(seg, i as u32));
        }
    }

    /// Forgets the entries of an evicted segment (those a later segment holds stay).
    pub fn remove_segment(&mut self, seg: u64, keys: &[Key]) {
        for k in keys {
            if self.map.get(&(k.0 as u64)).is_some_and(|l| l.seg() == seg) {
                self.map.remove(&(k.0 as u64));
            }
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn clear(&mut self) {
        self.map = HashMap::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_segments_win_and_eviction_keeps_them() {
        let mut i = Index::default();
        i.add_segment(1, &[Key(10), Key(11)]);
        i.add_segment(2, &[Key(11)]);
        assert_eq!(i.get(Key(11)), Some(Loc::new(2, 0)));
        i.remove_segment(1, &[Key(10), Key(11)]);
        assert_eq!(i.get(Key(10)), None);
        assert_eq!(i.get(Key(11)).map(|l| (l.seg(), l.idx())), Some((2, 0)));
        let l = Loc::new(123_456_789, 1023);
        assert_eq!((l.seg(), l.idx()), (123_456_789, 1023));
    }
}
