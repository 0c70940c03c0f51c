//! Per-task counters over the node's whole life, for Prometheus: a chain's counters start at
//! zero at each setup, so the counters of chains that ended are kept here, summed by chain
//! and task name, and a scrape adds the live chain's. Bounded: past [`KEYS`] names, the
//! counters of new ones are summed under the chain and task `(other)`.

use std::collections::BTreeMap;

use protocol::TaskCounters;

/// Most (chain, task) names kept apart.
pub(super) const KEYS: usize = 512;
/// The name the counters of names past [`KEYS`] are summed under.
pub(super) const OTHER: &str = "(other)";

/// Counters of ended chains, by chain and task name.
#[derive(Debug, Default)]
pub(super) struct TaskTotals {
    by_name: BTreeMap<(String, String), TaskCounters>,
}

impl TaskTotals {
    /// Adds the counters of chain `chain` (which just ended).
    pub(super) fn add(&mut self, chain: &str, tasks: &[TaskCounters]) {
        for t in tasks {
            let mut key = (chain.to_owned(), t.name.clone());
            if !self.by_name.contains_key(&key) && self.by_name.len() >= KEYS {
                key = (OTHER.to_owned(), OTHER.to_owned());
            }
            let sum = self.by_name.entry(key).or_default();
            sum.name.clone_from(&t.name);
            sum.items_in = sum.items_in.saturating_add(t.items_in);
            sum.items_out = sum.items_out.saturating_add(t.items_out);
            sum.dropped = sum.dropped.saturating_add(t.dropped);
            sum.failed = sum.failed.saturating_add(t.failed);
            sum.busy_ns = sum.busy_ns.saturating_add(t.busy_ns);
        }
    }

    /// The node's life so far: these totals plus the live chain's counters, by chain and
    /// task name.
    pub(super) fn with_live(
        &self,
        live: Option<(&str, &[TaskCounters])>,
    ) -> Vec<(String, TaskCounters)> {
        let mut all = TaskTotals {
            by_name: self.by_name.clone(),
        };
        if let Some((chain, tasks)) = live {
            all.add(chain, tasks);
        }
        all.by_name
            .into_iter()
            .map(|((chain, task), mut c)| {
                c.name = task;
                (chain, c)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, n: u64) -> TaskCounters {
        TaskCounters {
            name: name.into(),
            items_in: n,
            items_out: n / 2,
            ..TaskCounters::default()
        }
    }

    #[test]
    fn chains_that_ended_and_the_live_one_add_up() {
        let mut t = TaskTotals::default();
        t.add("w1", &[task("a", 10), task("b", 4)]);
        t.add("w1", &[task("a", 5)]);
        let all = t.with_live(Some(("w1", &[task("a", 1)])));
        let a = all
            .iter()
            .find(|(c, t)| c == "w1" && t.name == "a")
            .unwrap();
        assert_eq!((a.1.items_in, a.1.items_out), (16, 7));
        assert_eq!(all.len(), 2);
        assert_eq!(t.with_live(None).len(), 2, "the live chain is not kept");
    }

    #[test]
    fn names_past_the_bound_are_summed_as_other() {
        let mut t = TaskTotals::default();
        for i in 0..KEYS + 10 {
            t.add(&format!("chain{i}"), &[task("t", 1)]);
        }
        let all = t.with_live(None);
        assert_eq!(all.len(), KEYS + 1);
        let other = all.iter().find(|(c, _)| c == OTHER).unwrap();
        assert_eq!(other.1.items_in, 10);
    }
}
