//! Ordered delivery: inputs complete in any order across nodes; with `keep_order` their
//! outputs are held here until every earlier input is complete, then handed over in feed
//! order. The scheduler sends no new item past the window this buffer allows, which bounds
//! it in items and bytes (backpressure instead of growth).

use std::collections::BTreeMap;

/// What an input produced, held until its turn.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Held<T> {
    pub value: T,
    pub bytes: u64,
}

/// Inputs completed ahead of their turn, keyed by id (ids are dense in feed order).
#[derive(Debug)]
pub(crate) struct Reorder<T> {
    /// The id whose completion is awaited next.
    next: u64,
    ahead: BTreeMap<u64, Held<T>>,
    bytes: u64,
    window_items: u64,
    window_bytes: u64,
}

impl<T> Reorder<T> {
    pub fn new(first: u64, window_items: u64, window_bytes: u64) -> Self {
        Reorder {
            next: first,
            ahead: BTreeMap::new(),
            bytes: 0,
            window_items: window_items.max(1),
            window_bytes,
        }
    }

    /// Inputs held.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.ahead.len()
    }

    /// Bytes held.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Whether more may be held: within the window in items and bytes.
    pub fn has_room(&self) -> bool {
        (self.ahead.len() as u64) < self.window_items && self.bytes < self.window_bytes
    }

    /// Ids below this may be sent to nodes: the awaited input plus the window.
    /// `sent_up_to` is the highest id sent so far; while the buffer is over its byte bound
    /// nothing new (above it) may go, but items put back after a node loss still may.
    pub fn send_below(&self, sent_up_to: Option<u64>) -> u64 {
        let by_items = self.next.saturating_add(self.window_items);
        if self.bytes >= self.window_bytes {
            sent_up_to.map_or(self.next + 1, |s| (s + 1).max(self.next + 1).min(by_items))
        } else {
            by_items
        }
    }

    /// Input `id` completed with `value`; returns what may be handed over now, in order.
    pub fn complete(&mut self, id: u64, value: T, bytes: u64) -> Vec<T> {
        if id < self.next {
            // Already handed over: a duplicate completion is dropped by the caller before;
            // nothing to do here.
            return Vec::new();
        }
        if id != self.next {
            self.bytes += bytes;
            self.ahead.insert(id, Held { value, bytes });
            return Vec::new();
        }
        let mut out = vec![value];
        self.next += 1;
        while let Some(entry) = self.ahead.first_entry() {
            if *entry.key() != self.next {
                break;
            }
            let held = entry.remove();
            self.bytes -= held.bytes;
            out.push(held.value);
            self.next += 1;
        }
        out
    }

    /// Forgets everything (reset), starting again at `first`.
    pub fn restart(&mut self, first: u64) {
        self.ahead.clear();
        self.bytes = 0;
        self.next = first;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hands_over_in_id_order() {
        let mut r = Reorder::new(0, 100, 1 << 20);
        assert!(r.complete(2, "c", 1).is_empty());
        assert!(r.complete(1, "b", 1).is_empty());
        assert_eq!((r.held(), r.bytes()), (2, 2));
        assert_eq!(r.complete(0, "a", 1), ["a", "b", "c"]);
        assert_eq!((r.held(), r.bytes()), (0, 0));
        assert_eq!(r.complete(3, "d", 1), ["d"]);
    }

    #[test]
    fn the_window_bounds_what_may_be_sent() {
        let mut r = Reorder::new(10, 4, 100);
        assert_eq!(r.send_below(Some(13)), 14);
        // Over the byte bound: nothing new past what was sent.
        assert!(r.complete(12, (), 100).is_empty());
        assert_eq!(r.send_below(Some(12)), 13);
        assert_eq!(
            r.send_below(None),
            11,
            "the awaited input itself may always go"
        );
        r.complete(10, (), 0);
        r.complete(11, (), 0);
        assert_eq!(r.send_below(Some(12)), 17);
    }

    #[test]
    fn restart_forgets() {
        let mut r = Reorder::new(0, 4, 100);
        r.complete(3, (), 5);
        r.restart(50);
        assert_eq!((r.held(), r.bytes()), (0, 0));
        assert_eq!(r.complete(50, (), 0).len(), 1);
    }
}
