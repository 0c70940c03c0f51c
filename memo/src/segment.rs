//! The layout of a segment: the entries written together, as one value.
//!
//! A B-tree keyed by content hashes takes each entry at a random place, and redb rewrites
//! the pages it touches at every commit: about 4 µs per entry, far too slow for cheap chains.
//! So entries are appended in *segments* (numbered in order, so each commit appends at the
//! tree's end) and found through an in-memory index of keys (`index`). A segment is:
//!
//! ```text
//! body: n u32 | offsets (n+1) × u32 | entries
//! entry: key's high 64 bits | count u32 | lengths count × u32 | the outputs' bytes
//! info: parts u32 | body bytes u64 | n u32 | keys n × u128
//! ```
//!
//! All little-endian. The index holds a key's low 64 bits only (half the memory); the high
//! ones in the entry tell a rare collision of the low ones from a hit. The body is stored in parts of at most [`PART_BYTES`]; the info, kept
//! apart so the index is rebuilt without reading bodies, says how many parts there must be.

use crate::error::MemoError;
use crate::key::Key;

/// Largest part of a body.
pub const PART_BYTES: usize = 1 << 20;
/// A segment is sealed past this many entries or [`SEGMENT_BYTES`] of body: small enough that
/// a lookup out of order reads little, big enough that a commit appends few values.
pub const SEGMENT_ENTRIES: usize = 1024;
pub const SEGMENT_BYTES: usize = 256 << 10;

/// One input's outputs, gathered as they are handed over.
#[derive(Debug, Default, Clone)]
pub struct Outputs {
    lens: Vec<u32>,
    data: Vec<u8>,
}

impl Outputs {
    /// Appends an output.
    #[inline]
    pub fn push(&mut self, item: &[u8]) {
        self.lens.push(item.len() as u32);
        self.data.extend_from_slice(item);
    }

    pub fn clear(&mut self) {
        self.lens.clear();
        self.data.clear();
    }

    pub fn len(&self) -> usize {
        self.lens.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Bytes it takes in a segment.
    pub fn encoded_bytes(&self) -> usize {
        4 + 4 * self.lens.len() + self.data.len()
    }
}

/// Entries being gathered into a segment.
#[derive(Debug, Default)]
pub struct Builder {
    pub(crate) keys: Vec<Key>,
    offsets: Vec<u32>,
    entries: Vec<u8>,
}

impl Builder {
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Bytes of the body so far.
    pub fn bytes(&self) -> usize {
        self.entries.len() + 4 * (self.offsets.len() + 2)
    }

    /// Whether the segment should be sealed now.
    pub fn full(&self) -> bool {
        self.keys.len() >= SEGMENT_ENTRIES || self.bytes() >= SEGMENT_BYTES
    }

    /// Adds `key`'s outputs.
    pub fn add(&mut self, key: Key, outputs: &Outputs) {
        self.keys.push(key);
        self.offsets.push(self.entries.len() as u32);
        self.entries
            .extend_from_slice(&((key.0 >> 64) as u64).to_le_bytes());
        self.entries
            .extend_from_slice(&(outputs.lens.len() as u32).to_le_bytes());
        for l in &outputs.lens {
            self.entries.extend_from_slice(&l.to_le_bytes());
        }
        self.entries.extend_from_slice(&outputs.data);
    }

    /// The body, and the info for `parts`; the builder is empty after.
    pub fn seal(&mut self) -> (Vec<u8>, Vec<Key>) {
        let n = self.keys.len();
        let mut body = Vec::with_capacity(self.bytes());
        body.extend_from_slice(&(n as u32).to_le_bytes());
        for o in &self.offsets {
            body.extend_from_slice(&o.to_le_bytes());
        }
        body.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        body.extend_from_slice(&self.entries);
        self.offsets.clear();
        self.entries.clear();
        (body, std::mem::take(&mut self.keys))
    }
}

/// How many parts a body of `bytes` takes.
pub fn parts(bytes: usize) -> u32 {
    bytes.div_ceil(PART_BYTES).max(1) as u32
}

/// A segment's info: its parts, body bytes and keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Info {
    pub parts: u32,
    pub bytes: u64,
    pub keys: Vec<Key>,
}

impl Info {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + 16 * self.keys.len());
        v.extend_from_slice(&self.parts.to_le_bytes());
        v.extend_from_slice(&self.bytes.to_le_bytes());
        v.extend_from_slice(&(self.keys.len() as u32).to_le_bytes());
        for k in &self.keys {
            v.extend_from_slice(&k.0.to_le_bytes());
        }
        v
    }

    pub fn decode(b: &[u8]) -> Result<Info, MemoError> {
        let bad = MemoError::Malformed("segment info");
        let parts = u32_at(b, 0).ok_or(MemoError::Malformed("segment info"))?;
        let bytes = b
            .get(4..12)
            .and_then(|s| s.try_into().ok())
            .map(u64::from_le_bytes)
            .ok_or(MemoError::Malformed("segment info"))?;
        let n = u32_at(b, 12).ok_or(MemoError::Malformed("segment info"))? as usize;
        let keys = b.get(16..).filter(|k| k.len() == 16 * n).ok_or(bad)?;
        let keys = keys
            .chunks_exact(16)
            .map(|c| Key(u128::from_le_bytes(c.try_into().unwrap_or_default())))
            .collect();
        Ok(Info { parts, bytes, keys })
    }

    /// Bytes it takes on disk, about (its body and its info).
    pub fn stored_bytes(&self) -> u64 {
        self.bytes + 16 + 16 * self.keys.len() as u64
    }
}

#[inline]
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .and_then(|s| s.try_into().ok())
        .map(u32::from_le_bytes)
}

/// Entry `idx` of a body: its key's high 64 bits, its output lengths (raw) and bytes.
pub fn entry(body: &[u8], idx: u32) -> Result<(u64, &[u8], &[u8]), MemoError> {
    let bad = || MemoError::Malformed("segment body");
    let n = u32_at(body, 0).ok_or_else(bad)?;
    if idx >= n {
        return Err(bad());
    }
    let base = 4 + 4 * (n as usize + 1);
    let at = |i: u32| u32_at(body, 4 + 4 * i as usize).map(|o| base + o as usize);
    let (start, end) = (at(idx).ok_or_else(bad)?, at(idx + 1).ok_or_else(bad)?);
    let e = body.get(start..end).ok_or_else(bad)?;
    let hi = e
        .get(..8)
        .and_then(|h| h.try_into().ok())
        .map(u64::from_le_bytes)
        .ok_or_else(bad)?;
    let e = &e[8..];
    let count = u32_at(e, 0).ok_or_else(bad)? as usize;
    let lens = e.get(4..4 + 4 * count).ok_or_else(bad)?;
    let data = &e[4 + 4 * count..];
    let total: usize = lens
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize)
        .sum();
    if total != data.len() {
        return Err(bad());
    }
    Ok((hi, lens, data))
}

/// Appends an entry's outputs to `out`; how many.
pub fn append_outputs(lens: &[u8], data: &[u8], out: &mut protocol::Packed) -> u32 {
    let mut at = 0;
    let mut n = 0;
    for c in lens.chunks_exact(4) {
        let l = u32::from_le_bytes([c[0], c[1], c[2], c[3]]) as usize;
        out.push(&data[at..at + l]);
        at += l;
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_gives_back_each_entry() {
        let mut b = Builder::default();
        let mut o = Outputs::default();
        for i in 0..10u32 {
            o.clear();
            for j in 0..i % 3 {
                o.push(format!("out-{i}-{j}").as_bytes());
            }
            b.add(Key(u128::from(i)), &o);
        }
        let (body, keys) = b.seal();
        assert!(b.is_empty());
        assert_eq!(keys.len(), 10);
        for i in 0..10u32 {
            let (hi, lens, data) = entry(&body, i).unwrap();
            assert_eq!(hi, 0);
            let mut p = protocol::Packed::new();
            assert_eq!(append_outputs(lens, data, &mut p), i % 3);
            let got: Vec<&[u8]> = p.iter().collect();
            let want: Vec<String> = (0..i % 3).map(|j| format!("out-{i}-{j}")).collect();
            assert_eq!(got, want.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
        }
        assert!(entry(&body, 10).is_err());
        assert!(entry(&body[..body.len() - 1], 9).is_err(), "a cut body");
    }

    #[test]
    fn info_round_trips_and_parts_cover_the_body() {
        let i = Info {
            parts: 2,
            bytes: 1 << 20 | 5,
            keys: vec![Key(1), Key(u128::MAX)],
        };
        assert_eq!(Info::decode(&i.encode()).unwrap(), i);
        assert!(Info::decode(&i.encode()[..20]).is_err());
        assert_eq!(
            (parts(0), parts(PART_BYTES), parts(PART_BYTES + 1)),
            (1, 1, 2)
        );
    }
}
