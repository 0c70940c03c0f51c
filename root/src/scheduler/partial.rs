//! Outputs of inputs too big for one message, held until their input completes: a node sends
//! such an input's outputs ahead in [`protocol::Partial`] messages, then the [`protocol::Outputs`]
//! that completes the input. The root hands nothing of them over before that completion, so a
//! node lost halfway through delivered nothing of the input, which runs again whole
//! elsewhere; the parts die with the node's state. What is held is bounded in bytes over all
//! nodes (`RootOptions::partial_bytes`), each item counting [`ITEM_COST`] bytes beyond its own
//! so that empty outputs are not free: an input past the bound fails instead (its parts are
//! dropped at once, and its completion brings the failure).

use std::collections::HashMap;

use protocol::Packed;

/// What holding one item costs beyond its bytes: its place in a [`Packed`].
pub(crate) const ITEM_COST: u64 = 16;

/// Bytes `items` take to hold.
fn cost(items: &Packed) -> u64 {
    items.bytes() as u64 + ITEM_COST * items.len() as u64
}

/// The parts one input has sent so far.
#[derive(Debug, Default)]
pub(crate) struct Held {
    /// Its outputs so far, in order.
    pub items: Packed,
    /// Its outputs went past the bound: they were dropped, and the input fails.
    pub over: bool,
}

/// What adding a part did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Added {
    /// Held; this many bytes more are held.
    Held(u64),
    /// Past the bound: the input's parts were dropped, freeing this many bytes.
    Over(u64),
    /// The input had gone past the bound already: dropped.
    Dropped,
}

/// The parts held for one node's batches, by batch and input index.
#[derive(Debug, Default)]
pub(crate) struct Partials {
    held: HashMap<(u64, u32), Held>,
    bytes: u64,
}

impl Partials {
    /// Nothing held (the common case: every input fits one message).
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Adds a part of input `index` of batch `seq`, when `room` bytes may still be held over
    /// all nodes.
    pub fn add(&mut self, seq: u64, index: u32, items: &Packed, room: u64) -> Added {
        let held = self.held.entry((seq, index)).or_default();
        if held.over {
            return Added::Dropped;
        }
        let bytes = cost(items);
        if bytes > room {
            let freed = cost(&held.items);
            held.items = Packed::new();
            held.over = true;
            self.bytes -= freed;
            return Added::Over(freed);
        }
        for item in items {
            held.items.push(item);
        }
        self.bytes += bytes;
        Added::Held(bytes)
    }

    /// The parts of input `index` of batch `seq`, removed: its completion arrived.
    pub fn take(&mut self, seq: u64, index: u32) -> Option<Held> {
        let held = self.held.remove(&(seq, index))?;
        self.bytes -= cost(&held.items);
        Some(held)
    }

    /// Forgets everything (reset).
    pub fn clear(&mut self) {
        self.held.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packed(items: &[&str]) -> Packed {
        items.iter().copied().collect()
    }

    #[test]
    fn parts_are_held_in_order_until_the_completion_takes_them() {
        let mut p = Partials::default();
        assert!(p.is_empty());
        assert_eq!(p.add(1, 3, &packed(&["ab", "c"]), 100), Added::Held(35));
        assert_eq!(p.add(2, 0, &packed(&["x"]), 100), Added::Held(17));
        assert_eq!(p.add(1, 3, &packed(&["de"]), 100), Added::Held(18));
        assert_eq!(p.bytes(), 70);
        let held = p.take(1, 3).expect("held");
        assert!(!held.over);
        let items: Vec<&[u8]> = held.items.iter().collect();
        assert_eq!(items, [&b"ab"[..], b"c", b"de"]);
        assert_eq!(p.bytes(), 17);
        assert!(p.take(1, 3).is_none(), "taken once");
        p.clear();
        assert!(p.is_empty() && p.bytes() == 0);
    }

    #[test]
    fn an_input_past_the_bound_drops_its_parts_and_is_marked() {
        let mut p = Partials::default();
        assert_eq!(p.add(1, 0, &packed(&["abcd"]), 30), Added::Held(20));
        assert_eq!(p.add(1, 0, &packed(&["efgh"]), 10), Added::Over(20));
        assert_eq!(p.bytes(), 0, "freed at once");
        assert_eq!(p.add(1, 0, &packed(&["i"]), 100), Added::Dropped);
        let held = p.take(1, 0).expect("still known, to fail it");
        assert!(held.over && held.items.is_empty());
        assert!(p.is_empty());
    }

    #[test]
    fn empty_outputs_count_toward_the_bound() {
        let mut p = Partials::default();
        let empties: Packed = std::iter::repeat_n(&b""[..], 100).collect();
        assert_eq!(p.add(1, 0, &empties, 1000), Added::Over(0));
    }
}
