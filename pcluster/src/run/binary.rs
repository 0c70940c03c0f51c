//! `pcluster run --binary`: items as a `u32` little-endian length followed by that many
//! bytes, so any bytes round-trip (NUL and newlines included). Read into the batch's own
//! buffer (one copy from the reader), an item over the limit streams to `--failed` with its
//! length and is refused; an input that ends inside a record is an error.

use std::io::{BufReader, Read};

use protocol::Packed;
use tokio::sync::mpsc;

use super::buffers::read_full;
use super::lines::LineRuns;
use super::reader::{Batcher, Read_, ReaderConfig, Refused, write_failed};

fn truncated(record: u64, what: &str) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!(
            "the input ends inside the {what} of item {record} (--binary: a u32 little-endian length, then the bytes)"
        ),
    )
}

/// Reads length-prefixed items from `input`; batches and refusals go to `tx` in order.
pub(super) fn read(
    input: Box<dyn Read + Send>,
    cfg: &ReaderConfig,
    tx: &mpsc::Sender<Read_>,
) -> std::io::Result<()> {
    // Small enough that big items are read straight into the batch, past this buffer.
    let mut r = BufReader::with_capacity(64 << 10, input);
    let mut b = Batcher {
        cfg,
        tx,
        items: Packed::with_capacity(cfg.batch_items, cfg.batch_items * 16),
        lines: LineRuns::default(),
    };
    // What was read before an error still goes.
    let result = records(&mut r, &mut b);
    b.flush();
    result
}

fn records(r: &mut impl Read, b: &mut Batcher<'_>) -> std::io::Result<()> {
    let cfg = b.cfg;
    let mut record = 1u64;
    loop {
        let mut head = [0u8; 4];
        match read_full(r, &mut head)? {
            0 => break,
            4 => {}
            _ => return Err(truncated(record, "length")),
        }
        let len = u64::from(u32::from_le_bytes(head));
        let skip = cfg.skip.as_ref().is_some_and(|s| s.contains(record));
        if len > cfg.max_item_bytes && !skip {
            // Not kept in memory: straight to --failed, length first.
            write_failed(cfg, &head, false);
            let mut left = len;
            let mut chunk = vec![0u8; (64 << 10).min(len as usize)];
            while left > 0 {
                let n = read_full(r, &mut chunk[..left.min(64 << 10) as usize])?;
                if n == 0 {
                    return Err(truncated(record, "bytes"));
                }
                write_failed(cfg, &chunk[..n], false);
                left -= n as u64;
            }
            if !b.refuse(Refused {
                line: record,
                bytes: len,
            }) {
                return Ok(());
            }
        } else {
            // Read into the batch's buffer, then record the item (or drop it when skipped).
            let data = b.items.data.make_mut();
            let start = data.len();
            data.resize(start + len as usize, 0);
            if read_full(r, &mut data[start..])? < len as usize {
                return Err(truncated(record, "bytes"));
            }
            if skip {
                b.items.data.truncate(start);
            } else {
                b.lines.push(b.items.len() as u32, record);
                b.items.lens.0.push(len as u32);
                if (b.items.len() >= cfg.batch_items || b.items.bytes() >= cfg.batch_bytes)
                    && !b.flush()
                {
                    return Ok(());
                }
            }
        }
        record += 1;
    }
    Ok(())
}

/// Records in a `--binary` file, by walking its lengths (for the progress total).
pub fn count_records(path: &std::path::Path) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = BufReader::new(std::fs::File::open(path)?);
    let mut n = 0;
    loop {
        let mut head = [0u8; 4];
        if read_full(&mut f, &mut head)? < 4 {
            return Ok(n);
        }
        f.seek(SeekFrom::Current(i64::from(u32::from_le_bytes(head))))?;
        n += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::super::framing::Framing;
    use super::super::output::FailedOut;
    use super::*;

    fn record(item: &[u8]) -> Vec<u8> {
        let mut v = (item.len() as u32).to_le_bytes().to_vec();
        v.extend_from_slice(item);
        v
    }

    /// Items with their record numbers, refusals `(record, bytes)`, what went to --failed,
    /// and whether the read ended without error.
    type Outcome = (Vec<(u64, Vec<u8>)>, Vec<(u64, u64)>, Vec<u8>, bool);

    fn run(input: Vec<u8>, max: u64) -> Outcome {
        let failed = Arc::new(Mutex::new(FailedOut::memory()));
        let cfg = ReaderConfig {
            framing: Framing::Binary,
            batch_items: 2,
            batch_bytes: 1 << 20,
            regular_file: true,
            max_item_bytes: max,
            skip: None,
            failed: failed.clone(),
            read_ahead: protocol::gate::ByteGate::new(u64::MAX),
        };
        let (tx, mut rx) = mpsc::channel(1024);
        let ok = read(Box::new(std::io::Cursor::new(input)), &cfg, &tx).is_ok();
        drop(tx);
        let (mut items, mut refused) = (Vec::new(), Vec::new());
        while let Some(r) = rx.blocking_recv() {
            match r {
                Read_::Batch(b) => {
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
        (items, refused, raw, ok)
    }

    #[test]
    fn any_bytes_round_trip_and_big_items_are_refused_raw() {
        let mut input = record(b"a\0\n\r");
        input.extend(record(b""));
        input.extend(record(b"toolong"));
        input.extend(record(b"ok"));
        let (items, refused, raw, ok) = run(input, 4);
        assert!(ok);
        assert_eq!(
            items,
            [(1, b"a\0\n\r".to_vec()), (2, vec![]), (4, b"ok".to_vec())]
        );
        assert_eq!(refused, [(3, 7)]);
        assert_eq!(raw, record(b"toolong"));
    }

    #[test]
    fn an_input_ending_inside_a_record_is_an_error() {
        let mut input = record(b"whole");
        input.extend(&record(b"cut short")[..6]);
        let (items, _, _, ok) = run(input.clone(), 100);
        assert!(!ok);
        assert_eq!(
            items,
            [(1, b"whole".to_vec())],
            "what came before still goes"
        );
        let (_, _, _, ok) = run(vec![1, 0], 100);
        assert!(!ok, "a torn length");
    }

    #[test]
    fn writing_then_counting_records() {
        let mut out = Vec::new();
        Framing::Binary
            .write_item(&mut out, b"7\t", b"x\0y")
            .unwrap();
        assert_eq!(out, record(b"7\tx\0y"));
        let path = std::env::temp_dir().join(format!("pcluster-count-{}.bin", std::process::id()));
        std::fs::write(
            &path,
            [record(b"a"), record(b""), record(&[0; 300])].concat(),
        )
        .unwrap();
        let counted = count_records(&path);
        let _ = std::fs::remove_file(&path);
        assert_eq!(counted.unwrap(), 3);
    }
}
