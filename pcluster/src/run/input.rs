//! Reading items for `pcluster run` on a thread of its own: lines (a trailing `\r` is
//! dropped) or NUL-terminated records (length-prefixed ones in [`super::binary`]), in
//! batches that remember each item's line number. From a regular file, big items are read
//! into pooled buffers and sent as slices of them, each followed by its separator (a gap the
//! node skips); small items, a pipe's, and a resumed run's are copied into batches of their
//! own. An item over the size limit is not kept in memory: its bytes stream to the
//! failed-items writer and the run goes on. Lines a resumed run already did are skipped.

use std::io::Read;

use bytes::Bytes;
use protocol::{Data, Packed};
use tokio::sync::mpsc;

use super::buffers::{Pool, read_full, read_some};
use super::framing::Framing;
use super::lines::LineRuns;
use super::reader::{Batcher, Read_, ReaderConfig, Refused, write_failed};

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

/// Bytes read at a time for separated items. From a regular file, 1 MiB, read whole: W4
/// measured 2 MiB 15 % slower (bigger buffers are colder when their bytes are sent). From a
/// pipe or a terminal, 64 KiB (what a pipe holds), cut as soon as a read brings a separator,
/// so a slow writer's items go at once.
fn window(regular_file: bool) -> usize {
    if regular_file { 1 << 20 } else { 64 << 10 }
}

/// Batches whose items average fewer bytes than this are copied out into a buffer of their
/// own: for small items the copy costs less than the gaps do on the wire and at the node.
const SHARE_ITEM_BYTES: usize = 512;

/// A read buffer being cut into batches: the items of the batch being built are
/// `data[start..end]` (their lengths, gaps and lines are in the [`Batcher`]).
struct Cut {
    data: Bytes,
    /// The size of the buffer `data` holds (a slice keeps all of it alive).
    size: usize,
    /// Whether batches share `data` (with gaps) rather than copy their items out.
    share: bool,
    start: usize,
    end: usize,
    /// Items added from this buffer, and their bytes.
    items: usize,
    bytes: usize,
}

impl Batcher<'_> {
    /// Adds an item of `len` bytes followed by a `gap`, at the end of the cut.
    fn push_cut(&mut self, c: &mut Cut, line: u64, len: usize, gap: usize) -> bool {
        self.lines.push(self.items.len() as u32, line);
        c.items += 1;
        c.bytes += len;
        if c.share {
            self.items.lens.0.push(len as u32);
            self.items.gaps.0.push(gap as u8);
        } else {
            self.items.push(&c.data[c.end..c.end + len]);
        }
        c.end += len + gap;
        let bytes = if c.share {
            c.end - c.start
        } else {
            self.items.bytes()
        };
        if self.items.len() >= self.cfg.batch_items || bytes >= self.cfg.batch_bytes {
            return self.flush_cut(c);
        }
        true
    }

    /// Sends the batch built so far. A shared one goes as a slice of the buffer, unless its
    /// items are small or the slice is small beside the buffer it would keep alive: then
    /// its items are copied out.
    fn flush_cut(&mut self, c: &mut Cut) -> bool {
        let (start, end) = (c.start, c.end);
        c.start = c.end;
        if self.items.is_empty() {
            return true;
        }
        let room = self.cfg.batch_items.min(1024);
        let mut items = std::mem::replace(&mut self.items, Packed::with_capacity(room, 0));
        if c.share {
            self.items.gaps.0.reserve(room);
            let data = &c.data[start..end];
            if data.len() / items.len() < SHARE_ITEM_BYTES || data.len() * 4 < c.size {
                let mut packed = Packed::with_capacity(items.len(), data.len());
                let mut at = 0;
                for (&len, &gap) in items.lens.0.iter().zip(&items.gaps.0) {
                    packed.push(&data[at..at + len as usize]);
                    at += len as usize + usize::from(gap);
                }
                items = packed;
            } else {
                items.data = Data::Shared(c.data.slice(start..end));
            }
        } else {
            // Sized like the batch just sent, so items are not copied again as it grows.
            let bytes = items.bytes();
            self.items = Packed::with_capacity(room, (bytes + bytes / 8).max(room * 16));
        }
        let lines = std::mem::take(&mut self.lines);
        self.send(items, lines)
    }

    /// Passes over `n` bytes that go nowhere: a skipped item (its batch goes on), or a
    /// refused one, reported after the batch so far to keep input order.
    fn pass_cut(&mut self, c: &mut Cut, n: usize, refused: Option<Refused>) -> bool {
        // A shared batch is one slice: it ends here.
        let sent = if c.share || refused.is_some() {
            self.flush_cut(c)
        } else {
            true
        };
        c.end += n;
        if c.share {
            c.start = c.end;
        }
        sent && refused.is_none_or(|r| self.tx.blocking_send(Read_::Refused(r)).is_ok())
    }
}

/// Reads separated items (lines or NUL-terminated) from `input`, a buffer at a time.
fn read(
    mut input: Box<dyn Read + Send>,
    cfg: &ReaderConfig,
    tx: &mpsc::Sender<Read_>,
) -> std::io::Result<()> {
    let Some(sep) = cfg.framing.separator() else {
        return super::binary::read(input, cfg, tx);
    };
    let lines = cfg.framing == Framing::Lines;
    let max = cfg.max_item_bytes as usize;
    // An item may be as long as the limit, plus its `\r`.
    let limit = max + usize::from(lines);
    let regular = cfg.regular_file;
    // A resumed run skips lines here and there: its batches are copied, so a skip does not
    // cut one short.
    let share = regular && cfg.skip.is_none();
    let mut line = 1u64;
    let mut b = Batcher {
        cfg,
        tx,
        items: Packed::new(),
        lines: LineRuns::default(),
    };
    // The unfinished item at the end of the last buffer.
    let mut carry: Vec<u8> = Vec::new();
    // Bytes of an over-long item already streamed out (`Some` while skipping one).
    let mut too_long: Option<u64> = None;
    let pool = Pool::new(window(regular));
    // Whether the last buffer's items were small (see [`SHARE_ITEM_BYTES`]).
    let mut small = false;
    loop {
        let mut buf = if carry.len() * 2 > pool.size {
            vec![0; (carry.len() * 2).min(limit + 2)]
        } else {
            pool.take()
        };
        buf[..carry.len()].copy_from_slice(&carry);
        let mut filled = carry.len();
        // No separator in what was carried over.
        let mut scan = carry.len();
        let eof = loop {
            if filled == buf.len() {
                break false;
            }
            let n = if regular {
                read_full(&mut input, &mut buf[filled..])
            } else {
                read_some(&mut input, &mut buf[filled..])
            };
            // Every pass ends by sending its batch: nothing read is pending here.
            let n = n?;
            filled += n;
            if n == 0 || (regular && filled < buf.len()) {
                break true;
            }
            if !regular && memchr::memchr(sep, &buf[scan..filled]).is_some() {
                break false;
            }
            scan = filled;
        };
        let size = buf.len();
        let mut c = Cut {
            data: pool.share(buf, filled),
            size,
            share: share && !small,
            start: 0,
            end: 0,
            items: 0,
            bytes: 0,
        };
        let mut scan = carry.len();
        while let Some(at) = memchr::memchr(sep, &c.data[scan..]) {
            let end = scan + at;
            scan = end + 1;
            let item = &c.data[c.end..end];
            let cr = usize::from(lines && item.ends_with(b"\r"));
            let len = item.len();
            let ok = if let Some(streamed) = too_long.take() {
                write_failed(cfg, item, true);
                let bytes = streamed + len as u64;
                b.pass_cut(&mut c, len + 1, Some(Refused { line, bytes }))
            } else if len - cr > max {
                write_failed(cfg, item, true);
                let bytes = len as u64;
                b.pass_cut(&mut c, len + 1, Some(Refused { line, bytes }))
            } else if cfg.skip.as_ref().is_some_and(|s| s.contains(line)) {
                b.pass_cut(&mut c, len + 1, None)
            } else {
                b.push_cut(&mut c, line, len - cr, 1 + cr)
            };
            if !ok {
                return Ok(());
            }
            line += 1;
        }
        let data = c.data.clone();
        let rest = &data[c.end..];
        if eof {
            // The end: a last item without a separator.
            let len = rest.len();
            let cr = usize::from(lines && rest.ends_with(b"\r"));
            if let Some(streamed) = too_long.take() {
                write_failed(cfg, rest, true);
                let bytes = streamed + len as u64;
                b.pass_cut(&mut c, len, Some(Refused { line, bytes }));
            } else if len > 0 {
                if len - cr > max {
                    write_failed(cfg, rest, true);
                    let bytes = len as u64;
                    b.pass_cut(&mut c, len, Some(Refused { line, bytes }));
                } else if !cfg.skip.as_ref().is_some_and(|s| s.contains(line)) {
                    b.push_cut(&mut c, line, len - cr, cr);
                }
            }
            b.flush_cut(&mut c);
            return Ok(());
        }
        // A buffer's batch goes with it (from a pipe: what one read brought).
        if !b.flush_cut(&mut c) {
            return Ok(());
        }
        // Small items are copied as they are read in the next buffer (no gaps to note and
        // then skip); items of the next buffer are shared again once big.
        if let Some(average) = c.bytes.checked_div(c.items) {
            small = average < SHARE_ITEM_BYTES;
        }
        carry.clear();
        if rest.len() > limit || too_long.is_some() {
            // Over the limit without an end in sight: stream it out, keep nothing.
            *too_long.get_or_insert(0) += rest.len() as u64;
            write_failed(cfg, rest, false);
        } else {
            carry.extend_from_slice(rest);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use super::super::output::FailedOut;
    use super::*;

    /// Items with their lines, refusals `(line, bytes)`, and what went to --failed.
    type Outcome = (Vec<(u64, Vec<u8>)>, Vec<(u64, u64)>, Vec<u8>);

    fn run(input: &'static [u8], framing: Framing, max: u64) -> Outcome {
        read_all(input.to_vec(), framing, max, 2, None, false).0
    }

    /// What [`read`] makes of `input`, and whether every batch of big items shared the
    /// bytes read (a slice with gaps) rather than a copy.
    fn read_all(
        input: Vec<u8>,
        framing: Framing,
        max: u64,
        batch_items: usize,
        skip: Option<super::super::joblog::LineSet>,
        regular_file: bool,
    ) -> (Outcome, bool) {
        let failed = Arc::new(Mutex::new(FailedOut::memory()));
        let cfg = ReaderConfig {
            framing,
            batch_items,
            batch_bytes: 1 << 20,
            regular_file,
            max_item_bytes: max,
            skip: skip.map(Arc::new),
            failed: failed.clone(),
            read_ahead: protocol::gate::ByteGate::new(u64::MAX),
        };
        let (tx, mut rx) = mpsc::channel(1024);
        std::thread::scope(|s| {
            s.spawn(|| read(Box::new(std::io::Cursor::new(input)), &cfg, &tx).unwrap());
        });
        drop(tx);
        let mut items = Vec::new();
        let mut refused = Vec::new();
        // Whether any batch of big items is a slice of a read buffer, with gaps.
        let mut shared = false;
        while let Some(r) = rx.blocking_recv() {
            match r {
                Read_::Batch(b) => {
                    assert!(b.items.validate().is_ok());
                    shared |= matches!(b.items.data, Data::Shared(_))
                        && b.items.gaps.0.len() == b.items.len();
                    for (i, item) in b.items.iter().enumerate() {
                        items.push((b.lines.line_of(i as u32), item.to_vec()));
                    }
                }
                Read_::Refused(r) => refused.push((r.line, r.bytes)),
                Read_::Error(e) => panic!("{e}"),
                Read_::Memo(_) => unreachable!("the reader sends no memo batch"),
            }
        }
        let raw = failed.lock().unwrap().memory_bytes();
        ((items, refused, raw), shared)
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

    #[test]
    fn big_items_share_the_bytes_read_across_buffers_and_keep_their_numbers() {
        // 40 items of up to 700 KB (past several read buffers), some with `\r\n`; line 7 is
        // done already (a resumed run); line 20 is over the limit of 1.5 MB and streams out
        // across buffers; the last has no newline and ends in `\r`.
        let item = |i: usize| -> Vec<u8> {
            let len = if i == 20 { 5_000_000 } else { 1 + i * 17_000 };
            (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect()
        };
        let mut input = Vec::new();
        for i in 1..=40 {
            input.extend(item(i));
            input.extend_from_slice(match i {
                40 => b"\r",
                _ if i % 3 == 0 => b"\r\n",
                _ => b"\n",
            });
        }
        let mut skip = super::super::joblog::LineSet::default();
        skip.insert(7);
        // A regular file's batches share its buffers; a pipe's, or a resumed run's, copy.
        for (regular_file, skip, shares) in [
            (true, None, true),
            (true, Some(skip.clone()), false),
            (false, None, false),
        ] {
            let skipped = skip.is_some();
            let want: Vec<(u64, Vec<u8>)> = (1..=40)
                .filter(|&i| !(i == 7 && skipped) && i != 20)
                .map(|i| (i as u64, item(i)))
                .collect();
            let ((items, refused, raw), shared) = read_all(
                input.clone(),
                Framing::Lines,
                1_500_000,
                4096,
                skip,
                regular_file,
            );
            assert_eq!(
                shared, shares,
                "regular file {regular_file}, skip {skipped}"
            );
            assert_eq!(items.len(), want.len());
            assert!(items == want, "every item whole, with its line");
            assert_eq!(refused, [(20, 5_000_000)]);
            assert_eq!(raw.len(), 5_000_001);
            assert!(raw[..5_000_000] == item(20)[..] && raw.ends_with(b"\n"));
        }
    }

    #[test]
    fn a_pipe_s_items_go_as_soon_as_a_read_brings_them() {
        use std::io::Write as _;
        let (r, mut w) = std::io::pipe().unwrap();
        let cfg = ReaderConfig {
            framing: Framing::Lines,
            batch_items: 4096,
            batch_bytes: 1 << 20,
            regular_file: false,
            max_item_bytes: 100,
            skip: None,
            failed: Arc::new(Mutex::new(FailedOut::memory())),
            read_ahead: protocol::gate::ByteGate::new(u64::MAX),
        };
        let (tx, mut rx) = mpsc::channel(16);
        let reader = std::thread::spawn(move || read(Box::new(r), &cfg, &tx));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let mut next = || {
            let wait = async { tokio::time::timeout(Duration::from_secs(30), rx.recv()).await };
            let got = rt.block_on(wait);
            match got.expect("a batch while the writer waits") {
                Some(Read_::Batch(b)) => b.items.iter().map(<[u8]>::to_vec).collect::<Vec<_>>(),
                other => panic!("{other:?}"),
            }
        };
        // The writer waits for each item to be read before it writes the next one.
        w.write_all(b"first\n").unwrap();
        assert_eq!(next(), [b"first".to_vec()]);
        w.write_all(b"sec").unwrap();
        w.write_all(b"ond\r\nthird").unwrap();
        assert_eq!(next(), [b"second".to_vec()]);
        drop(w);
        assert_eq!(next(), [b"third".to_vec()]);
        reader.join().unwrap().unwrap();
    }
}
