//! Feeding inputs of which a result store answered some ([`Root::feed_answered`]).

use protocol::{ItemId, Packed};

use crate::scheduler::{self, Answers, Feed};
use crate::{FedIds, Root, RootError};

impl Root {
    /// Feeds `items.len() + answers.hits.len()` inputs in one run of ids: those answered
    /// (at their positions in `answers.hits`) are complete at once, their outputs handed
    /// over as if a node had sent them (in order with `keep_order`, each with its
    /// completion when the handler wants them), and never reach a node; `items` are the
    /// others, in order, and run as [`Root::feed_packed`]'s do.
    ///
    /// # Errors
    /// As [`Root::feed_packed`]; [`RootError::Answers`] when positions are out of order or
    /// past the inputs, or the output counts do not add up to `answers.outputs`.
    pub async fn feed_answered(
        &self,
        items: Packed,
        answers: Answers,
    ) -> Result<FedIds, RootError> {
        if answers.hits.is_empty() {
            return self.feed_packed(items).await;
        }
        items.validate()?;
        answers.outputs.validate()?;
        let total = (items.len() + answers.hits.len()) as u64;
        let outputs: u64 = answers.hits.iter().map(|&(_, n)| u64::from(n)).sum();
        let ordered = answers.hits.windows(2).all(|w| w[0].0 < w[1].0);
        let in_range = answers
            .hits
            .last()
            .is_some_and(|&(p, _)| u64::from(p) < total);
        if !ordered || !in_range {
            return Err(RootError::Answers(
                "positions out of order or past the inputs",
            ));
        }
        if outputs != answers.outputs.len() as u64 {
            return Err(RootError::Answers("output counts do not add up"));
        }
        self.check_item_sizes(&items)?;
        let mut feeder = self.feeder.lock().await;
        let first = ItemId(feeder.next_id);
        let mut stall = self.stall.clone();
        let feed = Feed {
            start: first.0,
            items,
            answers: Some(Box::new(answers)),
        };
        tokio::select! {
            sent = feeder.tx.send(feed) => sent.map_err(|_| RootError::Closed)?,
            e = scheduler::stalled(&mut stall) => return Err(self.explain(e)),
        }
        feeder.next_id += total;
        self.submitted
            .fetch_add(total, std::sync::atomic::Ordering::Relaxed);
        Ok(FedIds {
            first,
            count: total,
        })
    }
}
