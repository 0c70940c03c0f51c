//! Packed item batches: every item's bytes in one buffer plus a list of lengths, and
//! optionally a gap of a few bytes after each item (the separators of the input the bytes
//! were read from, sent as they lie rather than copied out: [`Gaps`]).
//!
//! Decoding a batch of thousands of items is then a few memcpys, and walking it allocates
//! nothing. Lengths travel as raw little-endian `u32`s rather than a serde sequence, which
//! would decode element by element. The bytes are [`Data`]: a vector while a batch is
//! built, or a shared slice of the frame it arrived in (big batches are decoded without a
//! copy, and written from where they are: [`crate::split`]).

use std::ops::Deref;

/// Batches whose bytes reach this size travel in parts; smaller ones are copied into the
/// frame (a copy is cheaper than a vectored write and a shared buffer).
pub const SPLIT_BYTES: usize = 64 << 10;

use bytes::Bytes;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A list of `u32` that (de)serializes as one byte string.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct U32s(pub Vec<u32>);

impl Serialize for U32s {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::with_capacity(self.0.len() * 4);
        for v in &self.0 {
            bytes.extend_from_slice(&v.to_le_bytes());
        }
        s.serialize_bytes(&bytes)
    }
}

impl<'de> Deserialize<'de> for U32s {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let bytes = serde_bytes::ByteBuf::deserialize(d)?.into_vec();
        if bytes.len() % 4 != 0 {
            return Err(serde::de::Error::custom(
                "u32 list length is not a multiple of 4",
            ));
        }
        Ok(U32s(
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        ))
    }
}

/// Bytes after each item of a batch that belong to no item: a batch read from a file of
/// lines shares the file's bytes, each item followed by its `\n` (or `\r\n`), instead of
/// copying the items out. Empty: no gaps (every batch built item by item). At most
/// [`MAX_GAP`] per item.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Gaps(pub Vec<u8>);

/// The largest gap after an item.
pub const MAX_GAP: u8 = 2;

impl Serialize for Gaps {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for Gaps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Gaps(serde_bytes::ByteBuf::deserialize(d)?.into_vec()))
    }
}

/// A byte string copied once from the frame: asking for borrowed bytes lets the decoder
/// hand over its slice, where asking for an owned buffer makes it zero-fill one and copy
/// into it (a pass over every item byte for nothing).
fn bytes_once<'de, D: Deserializer<'de>>(d: D) -> Result<Data, D::Error> {
    struct Once;
    impl<'de> serde::de::Visitor<'de> for Once {
        type Value = Vec<u8>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a byte string")
        }
        fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_borrowed_bytes<E: serde::de::Error>(self, v: &'de [u8]) -> Result<Vec<u8>, E> {
            Ok(v.to_vec())
        }
        fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
            Ok(v)
        }
    }
    d.deserialize_bytes(Once).map(Data::Owned)
}

/// The bytes of a [`Packed`] batch: owned while it is built, or shared with the frame it
/// came in (or with the sender that keeps it to send again) once it is whole.
#[derive(Clone, Debug)]
pub enum Data {
    /// A growable buffer.
    Owned(Vec<u8>),
    /// A slice of a shared buffer (a received frame, or a batch kept after sending).
    Shared(Bytes),
}

impl Default for Data {
    fn default() -> Self {
        Data::Owned(Vec::new())
    }
}

impl Deref for Data {
    type Target = [u8];
    #[inline]
    fn deref(&self) -> &[u8] {
        match self {
            Data::Owned(v) => v,
            Data::Shared(b) => b,
        }
    }
}

impl PartialEq for Data {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Data {}

impl From<Vec<u8>> for Data {
    fn from(v: Vec<u8>) -> Self {
        Data::Owned(v)
    }
}

impl From<Bytes> for Data {
    fn from(b: Bytes) -> Self {
        Data::Shared(b)
    }
}

impl Data {
    /// The growable buffer, copying shared bytes into one first.
    #[inline]
    pub fn make_mut(&mut self) -> &mut Vec<u8> {
        if let Data::Shared(b) = self {
            *self = Data::Owned(b.to_vec());
        }
        match self {
            Data::Owned(v) => v,
            Data::Shared(_) => unreachable!("made owned above"),
        }
    }

    /// Appends bytes.
    #[inline]
    pub fn extend_from_slice(&mut self, bytes: &[u8]) {
        self.make_mut().extend_from_slice(bytes);
    }

    /// Keeps the first `len` bytes.
    pub fn truncate(&mut self, len: usize) {
        match self {
            Data::Owned(v) => v.truncate(len),
            Data::Shared(b) => b.truncate(len),
        }
    }

    /// Removes every byte (an owned buffer keeps its allocation).
    pub fn clear(&mut self) {
        match self {
            Data::Owned(v) => v.clear(),
            Data::Shared(_) => *self = Data::default(),
        }
    }

    /// The bytes as a shared buffer, without a copy: an owned buffer becomes shared (and
    /// stays so), so a batch can be sent and kept at once.
    pub fn share(&mut self) -> Bytes {
        if let Data::Owned(v) = self {
            *self = Data::Shared(Bytes::from(std::mem::take(v)));
        }
        match self {
            Data::Shared(b) => b.clone(),
            Data::Owned(_) => unreachable!("made shared above"),
        }
    }

    /// `item`, a slice of these bytes, as a shared buffer without a copy when they are
    /// shared (`None` when they are owned).
    pub fn shared_slice(&self, item: &[u8]) -> Option<Bytes> {
        match self {
            Data::Shared(b) if !item.is_empty() => Some(b.slice_ref(item)),
            _ => None,
        }
    }
}

fn serialize_data<S: Serializer>(d: &Data, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(d)
}

/// A batch whose item lengths (and gaps) do not add up to its bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PackedError {
    /// The lengths and gaps do not add up to the bytes.
    #[error("item lengths and gaps add up to {lengths} bytes but the batch holds {bytes}")]
    Bytes {
        /// The sum of the lengths and gaps.
        lengths: u64,
        /// The bytes the batch holds.
        bytes: usize,
    },
    /// There are gaps, but not one per item, or one too wide.
    #[error("{gaps} gaps (at most {MAX_GAP} bytes each) for {items} items")]
    Gaps {
        /// Gaps given.
        gaps: usize,
        /// Items.
        items: usize,
    },
}

/// Items packed into one buffer: item `i` is `data[offset_i .. offset_i + lens[i]]`, where
/// `offset_{i+1} = offset_i + lens[i] + gaps[i]` (gaps are zero when there are none).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packed {
    /// Each item's length.
    pub lens: U32s,
    /// All items' bytes, back to back (with their gaps).
    #[serde(serialize_with = "serialize_data", deserialize_with = "bytes_once")]
    pub data: Data,
    /// The bytes after each item that are not part of it; empty when there are none.
    pub gaps: Gaps,
}

impl Packed {
    /// An empty batch.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty batch with room for `items` items of `bytes` bytes in all.
    pub fn with_capacity(items: usize, bytes: usize) -> Self {
        Packed {
            lens: U32s(Vec::with_capacity(items)),
            data: Data::Owned(Vec::with_capacity(bytes)),
            gaps: Gaps::default(),
        }
    }

    /// The bytes after item `i` that are not part of it.
    #[inline]
    pub fn gap(&self, i: usize) -> usize {
        self.gaps.0.get(i).map_or(0, |&g| usize::from(g))
    }

    /// Bytes item `i` takes in `data`, its gap included (what it counts for in
    /// [`Packed::bytes`]).
    ///
    /// # Panics
    /// If `i` is out of bounds.
    #[inline]
    pub fn item_bytes(&self, i: usize) -> usize {
        self.lens.0[i] as usize + self.gap(i)
    }

    /// Bytes that items `first .. first + count` take in `data`, their gaps included.
    ///
    /// # Panics
    /// If the range is out of bounds.
    pub fn span(&self, first: usize, count: usize) -> usize {
        let lens: usize = self.lens.0[first..first + count]
            .iter()
            .map(|&l| l as usize)
            .sum();
        let gaps: usize = match self.gaps.0.get(first..first + count) {
            Some(g) => g.iter().map(|&g| usize::from(g)).sum(),
            None => 0,
        };
        lens + gaps
    }

    /// Appends one item.
    ///
    /// # Panics
    /// If an item is 4 GiB or larger (callers bound item sizes far below that).
    #[inline]
    pub fn push(&mut self, item: &[u8]) {
        let len = u32::try_from(item.len()).expect("item under 4 GiB");
        self.lens.0.push(len);
        if !self.gaps.0.is_empty() {
            self.gaps.0.push(0);
        }
        self.data.extend_from_slice(item);
    }

    /// Number of items.
    #[inline]
    pub fn len(&self) -> usize {
        self.lens.0.len()
    }

    /// Whether there are no items.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.lens.0.is_empty()
    }

    /// Total bytes of all items (and of their gaps).
    #[inline]
    pub fn bytes(&self) -> usize {
        self.data.len()
    }

    /// Items `items` (whose bytes are `bytes`) as a batch of their own: a big run shares
    /// these bytes (which become shared, without a copy), a small one is copied.
    ///
    /// # Panics
    /// If the ranges are out of bounds.
    pub fn run(&mut self, items: std::ops::Range<usize>, bytes: std::ops::Range<usize>) -> Packed {
        let gaps = Gaps(self.gaps.0.get(items.clone()).unwrap_or_default().to_vec());
        let lens = U32s(self.lens.0[items].to_vec());
        let data = if bytes.len() >= SPLIT_BYTES {
            Data::Shared(self.data.share().slice(bytes))
        } else {
            Data::Owned(self.data[bytes].to_vec())
        };
        Packed { lens, data, gaps }
    }

    /// Appends every item of `other` (with its gaps, if either batch has some).
    pub fn append(&mut self, other: &Packed) {
        if !other.gaps.0.is_empty() && self.gaps.0.is_empty() {
            self.gaps.0.resize(self.lens.0.len(), 0);
        }
        if !self.gaps.0.is_empty() {
            match other.gaps.0.is_empty() {
                true => self.gaps.0.resize(self.gaps.0.len() + other.len(), 0),
                false => self.gaps.0.extend_from_slice(&other.gaps.0),
            }
        }
        self.lens.0.extend_from_slice(&other.lens.0);
        self.data.extend_from_slice(&other.data);
    }

    /// Removes every item, keeping the allocations.
    pub fn clear(&mut self) {
        self.lens.0.clear();
        self.data.clear();
        self.gaps.0.clear();
    }

    /// Checks that the lengths add up to the data, so iteration cannot go out of bounds.
    /// Call it once on every batch that came from the network.
    ///
    /// # Errors
    /// When they do not.
    pub fn validate(&self) -> Result<(), PackedError> {
        let gaps = &self.gaps.0;
        if !gaps.is_empty()
            && (gaps.len() != self.lens.0.len() || gaps.iter().any(|&g| g > MAX_GAP))
        {
            return Err(PackedError::Gaps {
                gaps: gaps.len(),
                items: self.lens.0.len(),
            });
        }
        let total: u64 = self.lens.0.iter().map(|&l| u64::from(l)).sum::<u64>()
            + gaps.iter().map(|&g| u64::from(g)).sum::<u64>();
        if total == self.data.len() as u64 {
            Ok(())
        } else {
            Err(PackedError::Bytes {
                lengths: total,
                bytes: self.data.len(),
            })
        }
    }

    /// The items in order. On a batch that fails [`Packed::validate`], iteration stops early
    /// instead of panicking.
    #[inline]
    pub fn iter(&self) -> PackedIter<'_> {
        PackedIter {
            lens: self.lens.0.iter(),
            gaps: self.gaps.0.iter(),
            data: &self.data,
        }
    }
}

impl<'a> IntoIterator for &'a Packed {
    type Item = &'a [u8];
    type IntoIter = PackedIter<'a>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<T: AsRef<[u8]>> FromIterator<T> for Packed {
    fn from_iter<I: IntoIterator<Item = T>>(iter: I) -> Self {
        let mut p = Packed::new();
        for item in iter {
            p.push(item.as_ref());
        }
        p
    }
}

/// Iterator over a [`Packed`] batch.
#[derive(Debug, Clone)]
pub struct PackedIter<'a> {
    lens: std::slice::Iter<'a, u32>,
    gaps: std::slice::Iter<'a, u8>,
    data: &'a [u8],
}

impl<'a> Iterator for PackedIter<'a> {
    type Item = &'a [u8];

    #[inline]
    fn next(&mut self) -> Option<&'a [u8]> {
        let len = *self.lens.next()? as usize;
        if len > self.data.len() {
            return None;
        }
        let (item, rest) = self.data.split_at(len);
        let gap = self
            .gaps
            .next()
            .map_or(0, |&g| usize::from(g))
            .min(rest.len());
        self.data = &rest[gap..];
        Some(item)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (0, Some(self.lens.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_and_iterate() {
        let p: Packed = ["a", "", "ccc"].into_iter().collect();
        assert_eq!(p.len(), 3);
        assert!(p.validate().is_ok());
        let items: Vec<&[u8]> = p.iter().collect();
        assert_eq!(items, vec![&b"a"[..], b"", b"ccc"]);
    }

    #[test]
    fn inconsistent_batch_is_rejected_and_iteration_stays_in_bounds() {
        let p = Packed {
            lens: U32s(vec![2, 100]),
            data: b"abc".to_vec().into(),
            gaps: Gaps::default(),
        };
        assert_eq!(
            p.validate(),
            Err(PackedError::Bytes {
                lengths: 102,
                bytes: 3
            })
        );
        assert_eq!(p.iter().count(), 1);
    }

    /// `a\nbb\r\n\nccc`, shared as it lies: items `a`, `bb`, ``, `ccc`.
    fn lines() -> Packed {
        Packed {
            lens: U32s(vec![1, 2, 0, 3]),
            data: Data::Shared(Bytes::from_static(b"a\nbb\r\n\nccc")),
            gaps: Gaps(vec![1, 2, 1, 0]),
        }
    }

    #[test]
    fn items_with_gaps_skip_their_separators() {
        let p = lines();
        assert!(p.validate().is_ok());
        let items: Vec<&[u8]> = p.iter().collect();
        assert_eq!(items, vec![&b"a"[..], b"bb", b"", b"ccc"]);
        assert_eq!(p.span(1, 2), 5, "bb\r\n and \n");
        assert_eq!(p.gap(1), 2);
        let each: usize = (0..p.len()).map(|i| p.item_bytes(i)).sum();
        assert_eq!(
            each,
            p.bytes(),
            "items and their gaps make up the batch's bytes"
        );
    }

    #[test]
    fn runs_and_appends_keep_the_gaps_where_they_are() {
        let mut p = lines();
        let mut run = p.run(1..3, 2..7);
        assert!(run.validate().is_ok());
        assert_eq!(run.iter().collect::<Vec<_>>(), vec![&b"bb"[..], b""]);
        // A gapless batch joined to a gapped one, and the other way round.
        let mut plain: Packed = ["x", "yz"].into_iter().collect();
        plain.append(&run);
        assert!(plain.validate().is_ok());
        assert_eq!(
            plain.iter().collect::<Vec<_>>(),
            vec![&b"x"[..], b"yz", b"bb", b""]
        );
        run.append(&["q"].into_iter().collect());
        run.push(b"r");
        assert!(run.validate().is_ok());
        assert_eq!(
            run.iter().collect::<Vec<_>>(),
            vec![&b"bb"[..], b"", b"q", b"r"]
        );
    }

    #[test]
    fn gaps_that_do_not_fit_the_items_are_refused() {
        let mut p = lines();
        p.gaps.0.pop();
        assert_eq!(p.validate(), Err(PackedError::Gaps { gaps: 3, items: 4 }));
        let mut p = lines();
        p.gaps.0[3] = 3;
        p.lens.0[3] = 0;
        assert!(matches!(p.validate(), Err(PackedError::Gaps { .. })));
        let mut p = lines();
        p.gaps.0[0] = 2;
        assert!(matches!(p.validate(), Err(PackedError::Bytes { .. })));
        assert!(p.iter().count() <= 4, "iteration stays in bounds");
    }
}
