//! What `pcluster run`'s reader thread hands on, whatever the framing: batches of items with
//! their line numbers, refused items and errors ([`Read_`]), its settings
//! ([`ReaderConfig`]), and the [`Batcher`] that gathers items into batches within the
//! read-ahead bound. `input` reads separated items, `binary` length-prefixed ones.

use std::sync::{Arc, Mutex};

use protocol::Packed;
use tokio::sync::mpsc;

use super::framing::Framing;
use super::lines::LineRuns;
use super::output::FailedOut;
use protocol::gate::{ByteGate, Held};

/// A batch of items and the line number of each.
#[derive(Debug)]
pub struct ReadBatch {
    pub items: Packed,
    pub lines: LineRuns,
    /// Its bytes in the read-ahead, given back when the batch is dropped.
    #[allow(dead_code)] // A guard: only its drop matters.
    pub held: Held,
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
    /// A batch split by `--memo`'s lookup (never sent by the reader itself).
    Memo(super::memo::MemoBatch),
    Refused(Refused),
    Error(std::io::Error),
}

/// Settings of the reader.
pub struct ReaderConfig {
    pub framing: Framing,
    pub batch_items: usize,
    /// A batch is sent once it holds this many bytes (checked per item: one compare).
    pub batch_bytes: usize,
    /// Whether the input is a regular file: read a big buffer at a time and send items as
    /// slices of it ([`window`]).
    pub regular_file: bool,
    pub max_item_bytes: u64,
    /// Lines (1-based) already done by the run being resumed.
    pub skip: Option<Arc<super::joblog::LineSet>>,
    /// Where refused items are written, raw.
    pub failed: Arc<Mutex<FailedOut>>,
    /// Bytes read and not yet in the root's queue: the reader waits past them.
    pub read_ahead: Arc<ByteGate>,
}

pub(super) struct Batcher<'a> {
    pub cfg: &'a ReaderConfig,
    pub tx: &'a mpsc::Sender<Read_>,
    pub items: Packed,
    pub lines: LineRuns,
}

impl Batcher<'_> {
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
        self.send(items, lines)
    }

    /// Sends a batch once the read-ahead has room for it.
    pub(super) fn send(&self, items: Packed, lines: LineRuns) -> bool {
        let Some(held) = self.cfg.read_ahead.acquire(items.bytes() as u64) else {
            return false;
        };
        self.tx
            .blocking_send(Read_::Batch(ReadBatch { items, lines, held }))
            .is_ok()
    }

    /// Reports a refused item; its batch so far goes first, to keep input order.
    pub fn refuse(&mut self, r: Refused) -> bool {
        self.flush() && self.tx.blocking_send(Read_::Refused(r)).is_ok()
    }
}

/// Writes (part of) a refused item, raw; `end` finishes it with the separator.
pub(super) fn write_failed(cfg: &ReaderConfig, bytes: &[u8], end: bool) {
    if let Ok(mut f) = cfg.failed.lock() {
        f.write_raw(bytes, cfg.framing.separator().filter(|_| end));
    }
}
