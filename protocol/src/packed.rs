//! Packed item batches: every item's bytes in one buffer plus a list of lengths.
//!
//! Decoding a batch of thousands of items is then two memcpys, and walking it allocates
//! nothing. Lengths travel as raw little-endian `u32`s rather than a serde sequence, which
//! would decode element by element.

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
fn bytes_once<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
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
    d.deserialize_bytes(Once)
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
    #[serde(
        serialize_with = "serde_bytes::serialize",
        deserialize_with = "bytes_once"
    )]
    pub data: Vec<u8>,
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
            data: Vec::with_capacity(bytes),
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
            data: b"abc".to_vec(),
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
