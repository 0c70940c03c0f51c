//! The root's input queue: chunks of fed items in feed order, with re-dispatched items put
//! back at the front, and the cut of a batch for a node out of its front.

use std::collections::VecDeque;

use protocol::{Ids, Packed};

/// Items fed together (or put back together), sent from `pos` on.
pub(crate) struct Chunk {
    pub ids: Ids,
    pub items: Packed,
    /// Next item to send.
    pos: usize,
    /// Offset of item `pos` in `items.data`.
    byte_pos: usize,
}

impl Chunk {
    pub fn new(ids: Ids, items: Packed) -> Chunk {
        Chunk {
            ids,
            items,
            pos: 0,
            byte_pos: 0,
        }
    }

    fn remaining(&self) -> usize {
        self.items.len() - self.pos
    }

    /// The id of the next item to send.
    fn next_id(&self) -> Option<u64> {
        self.ids.get(self.pos).map(|i| i.0)
    }
}

/// Bounds of one cut.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cut {
    /// Most items.
    pub items: usize,
    /// About this many bytes at most (a single item larger than this still goes alone).
    pub bytes: u64,
    /// Only items whose id is below this (ordered delivery: the reorder window).
    pub below_id: u64,
}

/// The queue of items not yet sent, in items and bytes.
#[derive(Default)]
pub(crate) struct Queue {
    chunks: VecDeque<Chunk>,
    items: u64,
    bytes: u64,
}

impl Queue {
    /// Items queued.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Bytes queued.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Fed items, at the back.
    pub fn push_back(&mut self, c: Chunk) {
        self.count_in(&c);
        self.chunks.push_back(c);
    }

    /// Items put back after their node was lost: they go first.
    pub fn push_front(&mut self, c: Chunk) {
        self.count_in(&c);
        self.chunks.push_front(c);
    }

    fn count_in(&mut self, c: &Chunk) {
        self.items += c.remaining() as u64;
        self.bytes += (c.items.bytes() - c.byte_pos) as u64;
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.chunks.clear();
        self.items = 0;
        self.bytes = 0;
    }

    /// The id of the next item that would be sent.
    #[cfg(test)]
    pub fn front_id(&self) -> Option<u64> {
        self.chunks.iter().find_map(Chunk::next_id)
    }

    /// Cuts a batch from the front; `None` when nothing may be sent.
    pub fn take(&mut self, cut: Cut) -> Option<(Ids, Packed)> {
        let front = self.chunks.front()?;
        // A whole fresh chunk that fits goes as it is: no copy.
        if front.pos == 0
            && front.remaining() <= cut.items
            && front.items.bytes() as u64 <= cut.bytes.max(1)
            && last_id(front).is_some_and(|last| last < cut.below_id)
        {
            let c = self.chunks.pop_front()?;
            self.items -= c.items.len() as u64;
            self.bytes -= c.items.bytes() as u64;
            return Some((c.ids, c.items));
        }
        self.take_runs(cut)
    }

    /// [`Queue::take`] of runs of items from one chunk or several.
    fn take_runs(&mut self, cut: Cut) -> Option<(Ids, Packed)> {
        let front = self.chunks.front()?;
        let mut ids = Vec::with_capacity(cut.items.min(front.remaining()));
        let mut items: Option<Packed> = None;
        let mut taken = 0u64;
        let mut contiguous = true;
        while ids.len() < cut.items {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            // The run of this chunk's items that goes, moved at once: shared when big (no
            // copy), copied when small or when a batch joins runs of several chunks.
            let (start, start_byte) = (front.pos, front.byte_pos);
            let (mut full, mut bad) = (false, false);
            while ids.len() < cut.items && front.pos < front.items.len() {
                let span = front.items.item_bytes(front.pos);
                if !ids.is_empty() && taken + span as u64 > cut.bytes {
                    full = true;
                    break;
                }
                let Some(id) = front.next_id() else {
                    bad = true;
                    break;
                };
                if id >= cut.below_id {
                    full = true;
                    break;
                }
                if let Some(&first) = ids.first() {
                    contiguous &= id == first + ids.len() as u64;
                }
                ids.push(id);
                front.pos += 1;
                front.byte_pos += span;
                taken += span as u64;
                self.items -= 1;
                self.bytes -= span as u64;
            }
            if front.pos > start {
                let run = front
                    .items
                    .run(start..front.pos, start_byte..front.byte_pos);
                match &mut items {
                    None => items = Some(run),
                    Some(p) => p.append(&run),
                }
            }
            if bad {
                // Ids and items disagree: drop the rest of this chunk rather than loop.
                self.items -= front.remaining() as u64;
                self.bytes -= (front.items.bytes() - front.byte_pos) as u64;
                self.chunks.pop_front();
                continue;
            }
            if front.pos >= front.items.len() {
                self.chunks.pop_front();
            }
            if full {
                break;
            }
        }
        let items = items?;
        let first = *ids.first()?;
        let ids = if contiguous {
            Ids::Range {
                start: first,
                count: ids.len() as u32,
            }
        } else {
            Ids::List(ids)
        };
        Some((ids, items))
    }
}

/// Encoding overhead of one item in a batch beyond its bytes: its `u32` length and, at worst,
/// a varint id (10 bytes).
const PER_ITEM_OVERHEAD: u64 = 14;
/// Encoding overhead of a batch beyond its items (tag, seq, stage, list lengths).
const PER_BATCH_OVERHEAD: u64 = 64;

/// Most item bytes in one batch of at most `items` items: within `wanted` (the options' batch
/// bytes and the node's room), and always far below the frame limit (half of it, less the
/// per-item overhead), whatever the node grants or the items weigh. At least 1, so a single
/// item can always be cut; one larger than the frame then fails to encode and is failed.
pub(crate) fn batch_bytes_cap(wanted: u64, max_frame: usize, items: usize) -> u64 {
    let frame_cap = (max_frame as u64 / 2)
        .saturating_sub(PER_BATCH_OVERHEAD + PER_ITEM_OVERHEAD * items as u64);
    wanted.min(frame_cap).max(1)
}

fn last_id(c: &Chunk) -> Option<u64> {
    max_id(&c.ids)
}

/// The highest id of a batch.
pub(crate) fn max_id(ids: &Ids) -> Option<u64> {
    match ids {
        Ids::Range { start, count } => (*count > 0).then(|| start + u64::from(*count) - 1),
        Ids::List(v) => v.iter().copied().max(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(items: &[&str]) -> Packed {
        items.iter().collect()
    }

    const ALL: Cut = Cut {
        items: usize::MAX,
        bytes: u64::MAX,
        below_id: u64::MAX,
    };

    #[test]
    fn items_read_with_their_separators_are_cut_whole_and_counted_with_them() {
        // `a\nbb\r\n\nccc` as read, then a gapless chunk: cuts of two items each.
        let read = Packed {
            lens: protocol::U32s(vec![1, 2, 0, 3]),
            data: protocol::Data::Shared(bytes::Bytes::from_static(b"a\nbb\r\n\nccc")),
            gaps: protocol::Gaps(vec![1, 2, 1, 0]),
        };
        let mut q = Queue::default();
        q.push_back(Chunk::new(Ids::Range { start: 0, count: 4 }, read));
        q.push_back(Chunk::new(
            Ids::Range { start: 4, count: 1 },
            packed(&["dd"]),
        ));
        assert_eq!((q.items(), q.bytes()), (5, 12));
        let two = Cut { items: 2, ..ALL };
        let mut got = Vec::new();
        while let Some((_, items)) = q.take(two) {
            assert!(items.validate().is_ok());
            got.push(items.iter().map(<[u8]>::to_vec).collect::<Vec<_>>());
        }
        let want: [&[&[u8]]; 3] = [&[b"a", b"bb"], &[b"", b"ccc"], &[b"dd"]];
        assert_eq!(got, want);
        assert_eq!((q.items(), q.bytes()), (0, 0));
    }

    #[test]
    fn a_fitting_fresh_chunk_goes_whole() {
        let mut q = Queue::default();
        q.push_back(Chunk::new(
            Ids::Range {
                start: 10,
                count: 2,
            },
            packed(&["a", "bb"]),
        ));
        assert_eq!((q.items(), q.bytes()), (2, 3));
        let (ids, items) = q.take(ALL).unwrap();
        assert_eq!(
            ids,
            Ids::Range {
                start: 10,
                count: 2
            }
        );
        assert_eq!(items, packed(&["a", "bb"]));
        assert_eq!((q.items(), q.bytes()), (0, 0));
        assert!(q.take(ALL).is_none());
    }

    #[test]
    fn cuts_respect_items_bytes_and_the_order_window() {
        let mut q = Queue::default();
        q.push_back(Chunk::new(
            Ids::Range { start: 0, count: 4 },
            packed(&["a", "b", "c", "d"]),
        ));
        q.push_back(Chunk::new(
            Ids::Range { start: 4, count: 2 },
            packed(&["e", "f"]),
        ));
        let (ids, items) = q.take(Cut { items: 3, ..ALL }).unwrap();
        assert_eq!(
            (ids, items),
            (Ids::Range { start: 0, count: 3 }, packed(&["a", "b", "c"]))
        );
        let (ids, _) = q.take(Cut { bytes: 2, ..ALL }).unwrap();
        assert_eq!(
            ids,
            Ids::Range { start: 3, count: 2 },
            "spans chunks, stops at 2 bytes"
        );
        assert!(
            q.take(Cut { below_id: 5, ..ALL }).is_none(),
            "id 5 is outside the window"
        );
        assert_eq!(q.front_id(), Some(5));
        let (ids, _) = q.take(Cut { below_id: 6, ..ALL }).unwrap();
        assert_eq!(ids, Ids::Range { start: 5, count: 1 });
        assert_eq!((q.items(), q.bytes()), (0, 0));
    }

    #[test]
    fn put_back_items_go_first_and_keep_their_ids() {
        let mut q = Queue::default();
        q.push_back(Chunk::new(
            Ids::Range {
                start: 100,
                count: 1,
            },
            packed(&["new"]),
        ));
        q.push_front(Chunk::new(Ids::List(vec![7, 3]), packed(&["x", "y"])));
        assert_eq!(q.front_id(), Some(7));
        let (ids, items) = q.take(ALL).unwrap();
        assert_eq!(ids, Ids::List(vec![7, 3]));
        assert_eq!(items, packed(&["x", "y"]));
        let (ids, _) = q.take(Cut { items: 1, ..ALL }).unwrap();
        assert_eq!(
            ids,
            Ids::Range {
                start: 100,
                count: 1
            }
        );
    }

    #[test]
    fn the_byte_cap_stays_far_below_the_frame_whatever_is_wanted() {
        let frame = 64 << 20;
        assert_eq!(batch_bytes_cap(4 << 20, frame, 4096), 4 << 20);
        let huge = batch_bytes_cap(u64::MAX, frame, 4096);
        assert!(huge <= 32 << 20, "{huge}");
        assert!(huge + 14 * 4096 + 64 <= 32 << 20);
        assert_eq!(batch_bytes_cap(u64::MAX, 100, 100), 1, "never zero");
    }

    #[test]
    fn cuts_of_big_items_encode_within_the_frame_whatever_the_room() {
        // 700 items of 100 KB (70 MB): a node granting 256 MiB must not get one 70 MB batch.
        let item = vec![b'x'; 100_000];
        let mut q = Queue::default();
        q.push_back(Chunk::new(
            Ids::Range {
                start: 0,
                count: 700,
            },
            (0..700).map(|_| &item[..]).collect(),
        ));
        let frame = 64 << 20;
        let mut buf = bytes::BytesMut::new();
        let mut sent = 0;
        while q.items() > 0 {
            let cut = Cut {
                items: 4096,
                bytes: batch_bytes_cap(256 << 20, frame, 4096),
                below_id: u64::MAX,
            };
            let (ids, items) = q.take(cut).unwrap();
            sent += items.len();
            let msg = protocol::Msg::Items(protocol::Items {
                seq: 0,
                ids,
                items,
                stage: protocol::TaskIndex(0),
            });
            buf.clear();
            protocol::codec::encode_frame(&msg, &mut buf, frame).expect("fits in a frame");
        }
        assert_eq!(sent, 700);
    }

    #[test]
    fn a_large_item_still_goes_alone() {
        let mut q = Queue::default();
        q.push_back(Chunk::new(
            Ids::Range { start: 0, count: 2 },
            packed(&["0123456789", "x"]),
        ));
        let (ids, _) = q.take(Cut { bytes: 4, ..ALL }).unwrap();
        assert_eq!(ids, Ids::Range { start: 0, count: 1 });
    }
}
