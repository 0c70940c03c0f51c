//! [`Framing`]: how `pcluster run` separates items in its input, its output and `--failed`
//! (lines, NUL-terminated records, or length-prefixed records), and writing one item so.

/// How items are separated in the input and the output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One item per line; `\r\n` counts as a line end.
    Lines,
    /// Each item ends with a NUL byte (as `find -print0`), so items may hold newlines.
    Null,
    /// Each item is a `u32` little-endian length, then its bytes: any bytes round-trip.
    Binary,
}

impl Framing {
    /// The byte that ends an item (none in binary framing).
    pub fn separator(self) -> Option<u8> {
        match self {
            Framing::Lines => Some(b'\n'),
            Framing::Null => Some(b'\0'),
            Framing::Binary => None,
        }
    }

    /// Writes one item made of `prefix` then `item` in this framing; the bytes written.
    #[inline]
    pub fn write_item(
        self,
        w: &mut impl std::io::Write,
        prefix: &[u8],
        item: &[u8],
    ) -> std::io::Result<u64> {
        let len = prefix.len() + item.len();
        match self.separator() {
            Some(sep) => {
                w.write_all(prefix)?;
                w.write_all(item)?;
                w.write_all(&[sep])?;
                Ok(len as u64 + 1)
            }
            None => {
                let n = u32::try_from(len).map_err(|_| {
                    std::io::Error::new(std::io::ErrorKind::InvalidInput, "item over 4 GiB")
                })?;
                w.write_all(&n.to_le_bytes())?;
                w.write_all(prefix)?;
                w.write_all(item)?;
                Ok(len as u64 + 4)
            }
        }
    }
}
