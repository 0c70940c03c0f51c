//! The ledger of inputs whose work outlived their first answer: an input that completed on
//! its node but left descendants behind (continuations its generator handed back, or failed
//! items to try again) stays open here until every descendant has completed; each
//! descendant may leave descendants of its own. The root alone owns this count, so an input
//! completes exactly once, after all of its work, wherever that ran.

use std::collections::HashMap;

use protocol::ItemId;

use super::handlers::Delivery;

/// An input with descendants outstanding.
#[derive(Debug)]
pub(crate) struct Parent {
    /// Descendants not yet complete.
    pub pending: u32,
    /// What it produced so far, when completions or order are wanted (otherwise outputs
    /// are handed over as they come).
    pub held: Option<Delivery>,
    /// The input as fed, for the failure handler.
    pub input_item: Vec<u8>,
}

/// Every open input, by id.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    open: HashMap<u64, Parent>,
}

impl Ledger {
    /// No input open.
    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Forgets everything (reset).
    pub fn clear(&mut self) {
        self.open.clear();
    }

    /// Inputs open.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn get(&self, input: ItemId) -> Option<&Parent> {
        self.open.get(&input.0)
    }

    pub fn get_mut(&mut self, input: ItemId) -> Option<&mut Parent> {
        self.open.get_mut(&input.0)
    }

    /// `input` came back from its node with `children` descendants outstanding (at least
    /// one); it stays open until they complete.
    pub fn open(
        &mut self,
        input: ItemId,
        children: u32,
        held: Option<Delivery>,
        input_item: Vec<u8>,
    ) {
        debug_assert!(children > 0);
        self.open.insert(
            input.0,
            Parent {
                pending: children,
                held,
                input_item,
            },
        );
    }

    /// A descendant of `input` completed, leaving `children` new ones. Returns whether the
    /// input is now complete (then [`Ledger::close`] hands it over). A descendant of an input
    /// not open (already closed) changes nothing.
    pub fn child_done(&mut self, input: ItemId, children: u32) -> bool {
        let Some(p) = self.open.get_mut(&input.0) else {
            return false;
        };
        p.pending = p.pending.saturating_sub(1).saturating_add(children);
        p.pending == 0
    }

    /// Removes a complete input.
    pub fn close(&mut self, input: ItemId) -> Option<Parent> {
        self.open.remove(&input.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_input_completes_when_its_last_descendant_does() {
        let mut l = Ledger::default();
        l.open(ItemId(7), 2, None, b"7".to_vec());
        assert!(!l.child_done(ItemId(7), 0), "one left");
        // The second descendant hands back three more (a nested fan-out).
        assert!(!l.child_done(ItemId(7), 3));
        assert_eq!(l.get(ItemId(7)).map(|p| p.pending), Some(3));
        assert!(!l.child_done(ItemId(7), 0));
        assert!(!l.child_done(ItemId(7), 0));
        assert!(l.child_done(ItemId(7), 0), "the last one closes it");
        let p = l.close(ItemId(7)).expect("open until closed");
        assert_eq!(p.input_item, b"7");
        assert!(l.is_empty());
    }

    #[test]
    fn descendants_of_unknown_or_closed_inputs_change_nothing() {
        let mut l = Ledger::default();
        assert!(!l.child_done(ItemId(1), 5));
        l.open(ItemId(1), 1, None, Vec::new());
        l.open(ItemId(2), 1, None, Vec::new());
        assert!(l.child_done(ItemId(1), 0));
        assert!(l.close(ItemId(1)).is_some());
        assert!(
            !l.child_done(ItemId(1), 0),
            "closed: a late duplicate is ignored"
        );
        assert!(l.close(ItemId(1)).is_none());
        assert_eq!(l.len(), 1);
        l.clear();
        assert!(l.is_empty());
    }
}
