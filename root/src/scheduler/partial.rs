//! Outputs of inputs too big for one message, held until their input completes: a node sends
//! such an input's outputs ahead in [`protocol::Partial`] messages, then the [`protocol::Outputs`]
//! that completes the input. The root hands nothing of them over before that completion, so a
//! node lost halfway through delivered nothing of the input, which runs again whole
//! elsewhere; the parts die with the node's state. What is held is bounded in bytes over all
//! nodes (`RootOptions::partial_bytes`): an input past the bound fails instead (its parts are
//! dropped at once, and its completion brings the failure).

use std::collections::HashMap;

use protocol::Packed;

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
        let bytes = items.bytes() as u64;
        if bytes > room {
            let freed = held.items.bytes() as u64;
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
        self.bytes -= held.items.bytes() as u64;
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
        assert_eq!(p.add(1, 3, &packed(&["ab", "c"]), 100), Added::Held(3));
        assert_eq!(p.add(2, 0, &packed(&["x"]), 100), Added::Held(1));
        assert_eq!(p.add(1, 3, &packed(&["de"]), 100), Added::Held(2));
        assert_eq!(p.bytes(), 6);
        let held = p.take(1, 3).expect("held");
        assert!(!held.over);
        let items: Vec<&[u8]> = held.items.iter().collect();
        assert_eq!(items, [&b"ab"[..], b"c", b"de"]);
        assert_eq!(p.bytes(), 1);
        assert!(p.take(1, 3).is_none(), "taken once");
        p.clear();
        assert!(p.is_empty() && p.bytes() == 0);
    }

    #[test]
    fn an_input_past_the_bound_drops_its_parts_and_is_marked() {
        let mut p = Partials::default();
        assert_eq!(p.add(1, 0, &packed(&["abcd"]), 10), Added::Held(4));
        assert_eq!(p.add(1, 0, &packed(&["efgh"]), 3), Added::Over(4));
        assert_eq!(p.bytes(), 0, "freed at once");
        assert_eq!(p.add(1, 0, &packed(&["i"]), 100), Added::Dropped);
        let held = p.take(1, 0).expect("still known, to fail it");
        assert!(held.over && held.items.is_empty());
        assert!(p.is_empty());
    }
}
