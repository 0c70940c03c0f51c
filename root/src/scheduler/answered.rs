//! Inputs answered before they were sent: a result store found their outputs
//! ([`crate::Root::feed_answered`]). They get ids in feed order with the others, so ordered
//! delivery, completions and counters treat them like any input, but they never reach a
//! node: their outputs are handed over when the feed is taken, and the inputs left are
//! queued with their own ids.

use std::time::Duration;

use protocol::{Ids, ItemId, Packed};

use super::handlers::{Delivery, InputDone};
use super::queue::Chunk;
use super::{Feed, Scheduler};

/// The answered inputs of a feed and their outputs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Answers {
    /// `(position among the feed's inputs, how many outputs it has)`, positions increasing.
    pub hits: Vec<(u32, u32)>,
    /// Every answered input's outputs, one input after the other.
    pub outputs: Packed,
}

/// The ids of a feed's inputs not answered: `start + position` for each position not hit.
pub(crate) fn unanswered_ids(start: u64, total: u64, hits: &[(u32, u32)]) -> Ids {
    if hits.is_empty() {
        return Ids::Range {
            start,
            count: total as u32,
        };
    }
    let mut ids = Vec::with_capacity((total as usize).saturating_sub(hits.len()));
    let mut next_hit = hits.iter().map(|&(p, _)| u64::from(p)).peekable();
    for pos in 0..total {
        if next_hit.peek() == Some(&pos) {
            next_hit.next();
        } else {
            ids.push(start + pos);
        }
    }
    Ids::List(ids)
}

impl Scheduler {
    /// Takes a feed with answers: hands the answered inputs over and queues the others.
    pub(super) fn on_answered(&mut self, f: Feed, answers: Answers) {
        // `f.answers` was taken out: count them here.
        let total = (f.items.len() + answers.hits.len()) as u64;
        if total == 0 {
            return;
        }
        self.counters.fed += total;
        let ids = unanswered_ids(f.start, total, &answers.hits);
        if !f.items.is_empty() {
            self.queue.push_back(Chunk::new(ids, f.items));
        }
        let mut outputs = answers.outputs.iter();
        let Some(h) = self.handlers.as_mut() else {
            return;
        };
        let wants_done = h.wants_done();
        for &(pos, count) in &answers.hits {
            let input = ItemId(f.start + u64::from(pos));
            let done = InputDone {
                input,
                outputs: count,
                failed: 0,
                attempts: 1,
                elapsed: Duration::ZERO,
            };
            if self.order.is_some() {
                let mut held = Packed::new();
                for item in outputs.by_ref().take(count as usize) {
                    held.push(item);
                }
                self.deliver(Delivery {
                    outputs: held,
                    failures: Vec::new(),
                    done,
                });
                continue;
            }
            // Unordered: straight to the handler, as a node's plain answer goes.
            let Some(h) = self.handlers.as_mut() else {
                return;
            };
            for item in outputs.by_ref().take(count as usize) {
                h.output(input, item);
            }
            self.counters.outputs += u64::from(count);
            self.counters.completed += 1;
            if wants_done {
                h.done(done);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_inputs_left_keep_their_place_in_feed_order() {
        assert_eq!(
            unanswered_ids(10, 3, &[]),
            Ids::Range {
                start: 10,
                count: 3
            }
        );
        assert_eq!(
            unanswered_ids(10, 5, &[(0, 1), (2, 0), (4, 3)]),
            Ids::List(vec![11, 13])
        );
        assert_eq!(unanswered_ids(0, 2, &[(0, 0), (1, 0)]), Ids::List(vec![]));
    }
}
