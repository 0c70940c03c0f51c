//! Packed item batches: every item's bytes in one buffer plus a list of lengths.
//!
//! Decoding a batch of thousands of items is then two memcpys, and walking it allocates
//! nothing. Lengths travel as raw little-endian `u32`s rather than a serde sequence, which
//! would decode element by element. The bytes are [`Data`]: a vector while a batch is
//! built, or a shared slice of the frame it arrived in (big batches are decoded without a
//! copy, and written from where they are: [`crate::split`]).

use std::ops::Deref;

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

/// A batch whose item lengths do not add up to its bytes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("item lengths add up to {lengths} bytes but the batch holds {bytes}")]
pub struct PackedError {
    /// The sum of the lengths.
    pub lengths: u64,
    /// The bytes the batch holds.
    pub bytes: usize,
}

/// Items packed into one buffer: item `i` is `data[offset_i .. offset_i + lens[i]]`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Packed {
    /// Each item's length.
    pub lens: U32s,
    /// All items' bytes, back to back.
    #[serde(serialize_with = "serialize_data", deserialize_with = "bytes_once")]
    pub data: Data,
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
        }
    }

    /// Appends one item.
    ///
    /// # Panics
    /// If an item is 4 GiB or larger (callers bound item sizes far below that).
    #[inline]
    pub fn push(&mut self, item: &[u8]) {
        let len = u32::try_from(item.len()).expect("item under 4 GiB");
        self.lens.0.push(len);
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

    /// Total bytes of all items.
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
        let lens = U32s(self.lens.0[items].to_vec());
        let data = if bytes.len() >= crate::split::SPLIT_BYTES {
            Data::Shared(self.data.share().slice(bytes))
        } else {
            Data::Owned(self.data[bytes].to_vec())
        };
        Packed { lens, data }
    }

    /// Appends every item of `other`.
    pub fn append(&mut self, other: &Packed) {
        self.lens.0.extend_from_slice(&other.lens.0);
        self.data.extend_from_slice(&other.data);
    }

    /// Removes every item, keeping the allocations.
    pub fn clear(&mut self) {
        self.lens.0.clear();
        self.data.clear();
    }

    /// Checks that the lengths add up to the data, so iteration cannot go out of bounds.
    /// Call it once on every batch that came from the network.
    ///
    /// # Errors
    /// When they do not.
    pub fn validate(&self) -> Result<(), PackedError> {
        let total: u64 = self.lens.0.iter().map(|&l| u64::from(l)).sum();
        if total == self.data.len() as u64 {
            Ok(())
        } else {
            Err(PackedError {
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
        self.data = rest;
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
        };
        assert_eq!(
            p.validate(),
            Err(PackedError {
                lengths: 102,
                bytes: 3
            })
        );
        assert_eq!(p.iter().count(), 1);
    }
}
