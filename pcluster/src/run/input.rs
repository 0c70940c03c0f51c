//! Reading items for `pcluster run` on a thread of its own: lines (a trailing `\r` is
//! dropped) or NUL-terminated records (length-prefixed ones in [`super::binary`]), packed into batches that remember each item's line
//! number. An item over the size limit is not kept in memory: its bytes stream to the
//! failed-items writer and the run goes on. Lines a resumed run already did are skipped.

use std::io::Read;
use std::sync::{Arc, Mutex};

use protocol::Packed;
use tokio::sync::mpsc;

use super::lines::LineRuns;
use super::output::FailedOut;

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

/// A batch of items and the line number of each.
#[derive(Debug)]
pub struct ReadBatch {
    pub items: Packed,
    pub lines: LineRuns,
}

/// An item the reader refused (it never reaches a node).
#[derive(Debug)]
pub struct Refused {
    pub line: u64,
    pub bytes: u64,
}

/// What the reader sends.
#[derive(Debug)]
pub enum Read_ {
    Batch(ReadBatch),
    Refused(Refused),
    Error(std::io::Error),
}

/// Settings of the reader.
pub struct ReaderConfig {
    pub framing: Framing,
    pub batch_items: usize,
    /// A batch is sent once it holds this many bytes (checked per item: one compare).
    pub batch_bytes: usize,
    pub max_item_bytes: u64,
    /// Lines (1-based) already done by the run being resumed.
    pub skip: Option<Arc<super::joblog::LineSet>>,
    /// Where refused items are written, raw.
    pub failed: Arc<Mutex<FailedOut>>,
}

/// Reads `input` on a thread of its own; batches and refusals go to `tx` in input order.
pub fn spawn(input: Box<dyn Read + Send>, cfg: ReaderConfig, tx: mpsc::Sender<Read_>) {
    std::thread::Builder::new()
        .name("pcluster-input".into())
        .spawn(move || {
            if let Err(e) = read(input, &cfg, &tx) {
                let _ = tx.blocking_send(Read_::Error(e));
            }
        })
        .expect("spawn the input thread");
}

pub(super) struct Batcher<'a> {
    pub cfg: &'a ReaderConfig,
    pub tx: &'a mpsc::Sender<Read_>,
    pub items: Packed,
    pub lines: LineRuns,
}

impl Batcher<'_> {
    /// Adds item `line`; false when the receiver is gone.
    fn push(&mut self, line: u64, item: &[u8]) -> bool {
        if self.cfg.skip.as_ref().is_some_and(|s| s.contains(line)) {
            return true;
        }
        let item = match self.cfg.framing {
            Framing::Lines => item.strip_suffix(b"\r").unwrap_or(item),
            Framing::Null | Framing::Binary => item,
        };
        self.lines.push(self.items.len() as u32, line);
        self.items.push(item);
        if self.items.len() >= self.cfg.batch_items || self.items.bytes() >= self.cfg.batch_bytes {
            return self.flush();
        }
        true
    }

    pub fn flush(&mut self) -> bool {
        if self.items.is_empty() {
            return true;
        }
        let cap = self.cfg.batch_items;
        // Sized like the batch just sent, so big items are not copied again and again as the
        // buffer doubles.
        let bytes = self.items.bytes();
        let items = std::mem::replace(
            &mut self.items,
            Packed::with_capacity(cap, (bytes + bytes / 8).max(cap * 16)),
        );
        let lines = std::mem::take(&mut self.lines);
        self.tx
            .blocking_send(Read_::Batch(ReadBatch { items, lines }))
            .is_ok()
    }

    /// Reports a refused item; its batch so far goes first, to keep input order.
    pub fn refuse(&mut self, r: Refused) -> bool {
        self.flush() && self.tx.blocking_send(Read_::Refused(r)).is_ok()
    }
}

fn read(
    mut input: Box<dyn Read + Send>,
    cfg: &ReaderConfig,
    tx: &mpsc::Sender<Read_>,
) -> std::io::Result<()> {
    let Some(sep) = cfg.framing.separator() else {
        return super::binary::read(input, cfg, tx);
    };
    // An item may be as long as the limit, plus its `\r`.
    let limit = cfg.max_item_bytes as usize + usize::from(cfg.framing == Framing::Lines);
    let mut buf = vec![0u8; 1 << 20];
    let mut filled = 0usize;
    let mut line = 1u64;
    let mut b = Batcher {
        cfg,
        tx,
        items: Packed::with_capacity(cfg.batch_items, cfg.batch_items * 16),
        lines: LineRuns::default(),
    };
    // Bytes of an over-long item already streamed out (`Some` while skipping one).
    let mut too_long: Option<u64> = None;
    loop {
        let n = input.read(&mut buf[filled..])?;
        let eof = n == 0;
        filled += n;
        let mut start = 0;
        for end in memchr::memchr_iter(sep, &buf[..filled]) {
            let item = &buf[start..end];
            if let Some(streamed) = too_long.take() {
                let bytes = streamed + item.len() as u64;
                write_failed(cfg, item, true);
                if !b.refuse(Refused { line, bytes }) {
                    return Ok(());
                }
            } else if item.len() > limit
                || (cfg.framing == Framing::Lines
                    && item.strip_suffix(b"\r").unwrap_or(item).len() as u64 > cfg.max_item_bytes)
            {
                write_failed(cfg, item, true);
                if !b.refuse(Refused {
                    line,
                    bytes: item.len() as u64,
                }) {
                    return Ok(());
                }
            } else if !b.push(line, item) {
                return Ok(());
            }
            line += 1;
            start = end + 1;
        }
        if eof {
            let rest = &buf[start..filled];
            if let Some(streamed) = too_long.take() {
                write_failed(cfg, rest, true);
                let _ = b.refuse(Refused {
                    line,
                    bytes: streamed + rest.len() as u64,
                });
            } else if !rest.is_empty() {
                if rest.len() as u64 > cfg.max_item_bytes {
                    write_failed(cfg, rest, true);
                    let _ = b.refuse(Refused {
                        line,
                        bytes: rest.len() as u64,
                    });
                } else {
                    b.push(line, rest);
                }
            }
            b.flush();
            return Ok(());
        }
        buf.copy_within(start..filled, 0);
        filled -= start;
        if filled == buf.len() {
            if filled > limit || too_long.is_some() {
                // Over the limit without an end in sight: stream it out, keep nothing.
                let streamed = too_long.get_or_insert(0);
                *streamed += filled as u64;
                write_failed(cfg, &buf[..filled], false);
                filled = 0;
            } else {
                buf.resize((buf.len() * 2).min(limit + 2), 0);
            }
        }
    }
}

/// Writes (part of) a refused item, raw; `end` finishes it with the separator.
pub(super) fn write_failed(cfg: &ReaderConfig, bytes: &[u8], end: bool) {
    if let Ok(mut f) = cfg.failed.lock() {
        f.write_raw(bytes, cfg.framing.separator().filter(|_| end));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Items with their lines, refusals `(line, bytes)`, and what went to --failed.
    type Outcome = (Vec<(u64, Vec<u8>)>, Vec<(u64, u64)>, Vec<u8>);

    fn run(input: &'static [u8], framing: Framing, max: u64) -> Outcome {
        let failed = Arc::new(Mutex::new(FailedOut::memory()));
        let cfg = ReaderConfig {
            framing,
            batch_items: 2,
            batch_bytes: 1 << 20,
            max_item_bytes: max,
            skip: None,
            failed: failed.clone(),
        };
        let (tx, mut rx) = mpsc::channel(1024);
        read(Box::new(input), &cfg, &tx).unwrap();
        drop(tx);
        let mut items = Vec::new();
        let mut refused = Vec::new();
        while let Some(r) = rx.blocking_recv() {
            match r {
                Read_::Batch(b) => {
                    for (i, item) in b.items.iter().enumerate() {
                        items.push((b.lines.line_of(i as u32), item.to_vec()));
                    }
                }
                Read_::Refused(r) => refused.push((r.line, r.bytes)),
                Read_::Error(e) => panic!("{e}"),
            }
        }
        let raw = failed.lock().unwrap().memory_bytes();
        (items, refused, raw)
    }

    #[test]
    fn lines_lose_their_cr_and_keep_their_numbers() {
        let (items, refused, _) = run(b"a\r\nb\n\nlast", Framing::Lines, 100);
        assert_eq!(
            items,
            [
                (1, b"a".to_vec()),
                (2, b"b".to_vec()),
                (3, vec![]),
                (4, b"last".to_vec())
            ]
        );
        assert!(refused.is_empty());
    }

    #[test]
    fn an_item_over_the_limit_is_refused_alone_and_written_raw() {
        let (items, refused, raw) = run(b"ok\ntoolong\nfine\n", Framing::Lines, 4);
        assert_eq!(items, [(1, b"ok".to_vec()), (3, b"fine".to_vec())]);
        assert_eq!(refused, [(2, 7)]);
        assert_eq!(raw, b"toolong\n");
    }

    #[test]
    fn nul_framing_keeps_newlines() {
        let (items, _, _) = run(b"a\nb\0c\r\n\0", Framing::Null, 100);
        assert_eq!(items, [(1, b"a\nb".to_vec()), (2, b"c\r\n".to_vec())]);
    }
}
