//! The grant policy, as pure functions of the measured time items take: how many inputs a
//! node asks its root for (its credit window), how many go in one work unit, how a new
//! measurement moves the estimate, and how a generator's surplus splits between this worker,
//! the node's other workers and the root (continuations).
//!
//! The aim: no worker holds much more than [`HORIZON_NS`] of work while another idles, yet
//! cheap items (W1, tens of ns) still travel and run in batches of thousands. Before anything
//! is measured a node asks for little ([`FIRST_WINDOW_PER_WORKER`]) and cuts units of one
//! input, so the first slow items spread over every worker of every node; the window grows
//! as soon as the first unit says items are cheap.

/// How long one work unit should take: units are the grain idle workers take work at.
pub(crate) const UNIT_TARGET_NS: u64 = 2_000_000;
/// How much work (time) a node wants in flight per worker, and how much of a fan-out one
/// worker keeps for itself.
pub(crate) const HORIZON_NS: u64 = 50_000_000;
/// Most inputs in one work unit.
pub(crate) const MAX_UNIT: u32 = 4096;
/// Most items a node asks for per worker (the window's bytes are bounded apart).
pub(crate) const MAX_WINDOW_PER_WORKER: u64 = 512 * 1024;
/// The longest round trip a window grows for: a root claiming more gets no bigger window.
pub(crate) const MAX_RTT_NS: u64 = 1_000_000_000;
/// Items per worker a node asks for before it has measured anything.
pub(crate) const FIRST_WINDOW_PER_WORKER: u64 = 2;
/// Items of a fan-out a worker keeps when the cost of what follows is not measured yet.
pub(crate) const KEEP_UNKNOWN: usize = 4;
/// Items at least this slow move the estimate halfway whatever the unit's size.
const SLOW_ITEM_NS: u64 = 1_000_000;

/// Inputs per work unit for items that take `item_ns` (`None`: not measured yet).
pub(crate) fn unit_size(item_ns: Option<u64>) -> u32 {
    match item_ns {
        None => 1,
        Some(ns) => (UNIT_TARGET_NS / ns.max(1)).clamp(1, u64::from(MAX_UNIT)) as u32,
    }
}

/// The credit window in items for `workers` workers, items of `item_ns` and a round trip of
/// `rtt_ns` to the root: about [`HORIZON_NS`] of work per worker plus the round trip, so
/// that the items the root sends as answers come back arrive before the worker runs dry
/// (the bandwidth-delay product of the link, in work). At least one item each.
pub(crate) fn window_items(item_ns: Option<u64>, workers: u32, rtt_ns: u64) -> u32 {
    let per_worker = match item_ns {
        None => FIRST_WINDOW_PER_WORKER,
        Some(ns) => {
            let horizon = HORIZON_NS + rtt_ns.min(MAX_RTT_NS);
            (horizon / ns.max(1)).clamp(1, MAX_WINDOW_PER_WORKER)
        }
    };
    (per_worker * u64::from(workers.max(1))).min(u64::from(u32::MAX)) as u32
}

/// The new per-item estimate after a unit of `count` inputs took `unit_ns`. The first
/// measurement replaces the guess; later ones move it at most halfway, by how many items
/// they cover, except that slow items (a millisecond or more) always move it halfway: one
/// 300 ms item after cheap ones must shrink the window at once, while one cheap unit delayed
/// by the scheduler must not.
pub(crate) fn blend(old: Option<u64>, unit_ns: u64, count: u32) -> u64 {
    let ns = (unit_ns / u64::from(count.max(1))).max(1);
    let Some(old) = old else { return ns };
    let weight = if ns >= SLOW_ITEM_NS {
        64
    } else {
        (u64::from(count) * 2).clamp(1, 64)
    };
    ((u128::from(old) * u128::from(128 - weight) + u128::from(ns) * u128::from(weight)) / 128)
        .max(1) as u64
}

/// What one task did so far on this node: calls, outputs and time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct TaskCost {
    pub calls: u64,
    pub outputs: u64,
    pub busy_ns: u64,
}

/// Nanoseconds one item entering the first of `tasks` costs through all of them, counting
/// the items each task emits for the next (a linear run of tasks); `None` while one of them
/// has never run.
pub(crate) fn downstream_ns(tasks: &[TaskCost]) -> Option<u64> {
    let mut cost: u128 = 0;
    for t in tasks.iter().rev() {
        if t.calls == 0 {
            return None;
        }
        let own = u128::from(t.busy_ns) / u128::from(t.calls);
        cost = own + cost * u128::from(t.outputs) / u128::from(t.calls);
    }
    Some(cost.min(u128::from(u64::MAX)) as u64)
}

/// How a generator's `n` outputs split: the first `keep` stay with the worker, the next
/// `to_workers` go to the node's other workers in parts of `part_items`, and the last
/// `to_root` go back to the root as continuations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FanOut {
    pub keep: usize,
    pub to_workers: usize,
    pub part_items: usize,
    pub to_root: usize,
}

/// Splits `n` outputs that cost `item_ns` each from here on (`None`: not measured), with
/// `idle_others` other workers of the node idle. A worker keeps what it finishes within the
/// horizon; each idle worker takes as much; the rest goes back to the root, which hands it
/// to whichever node has room. `None`: no split, the worker runs all of it.
pub(crate) fn split_fan_out(n: usize, item_ns: Option<u64>, idle_others: u32) -> Option<FanOut> {
    let keep = match item_ns {
        None => KEEP_UNKNOWN,
        Some(ns) => (HORIZON_NS / ns.max(1)).max(1).min(usize::MAX as u64) as usize,
    };
    if n <= keep {
        return None;
    }
    let surplus = n - keep;
    let to_workers = surplus.min(keep.saturating_mul(idle_others as usize));
    let part_items = match item_ns {
        None => 1,
        Some(ns) => (UNIT_TARGET_NS / ns.max(1)).max(1) as usize,
    };
    Some(FanOut {
        keep,
        to_workers,
        part_items,
        to_root: surplus - to_workers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nothing_measured_means_little_work_in_small_units() {
        assert_eq!(unit_size(None), 1);
        assert_eq!(window_items(None, 3, 0), 6);
        assert_eq!(
            window_items(None, 3, 50_000_000),
            6,
            "nothing measured: still little"
        );
    }

    #[test]
    fn cheap_items_go_in_thousands_and_slow_ones_one_by_one() {
        // W1: ~50 ns an item.
        assert_eq!(unit_size(Some(50)), MAX_UNIT);
        assert_eq!(window_items(Some(50), 2, 0), 2 * 512 * 1024);
        // 1 µs: 2,000 a unit, 50,000 a worker.
        assert_eq!(unit_size(Some(1_000)), 2_000);
        assert_eq!(window_items(Some(1_000), 1, 0), 50_000);
        // W5: ~300 ms an item: one at a time per worker.
        assert_eq!(unit_size(Some(300_000_000)), 1);
        assert_eq!(window_items(Some(300_000_000), 2, 0), 2);
        // ~5 ms: ten per worker, so no node holds more than ~50 ms per worker.
        assert_eq!(window_items(Some(5_000_000), 1, 0), 10);
    }

    #[test]
    fn a_far_root_gets_a_window_covering_the_round_trip() {
        // 1 µs items, 50 ms away: 50 ms of work plus 50 ms in flight.
        assert_eq!(window_items(Some(1_000), 1, 50_000_000), 100_000);
        // ~5 ms items, 10 ms away: twelve per worker instead of ten.
        assert_eq!(window_items(Some(5_000_000), 2, 10_000_000), 24);
        // A root claiming an hour's round trip gets a second's worth at most.
        assert_eq!(window_items(Some(10_000), 1, u64::MAX), 105_000);
    }

    #[test]
    fn slow_items_move_the_estimate_at_once_and_a_tiny_cheap_unit_barely() {
        assert_eq!(blend(None, 3_000, 3), 1_000);
        // One 300 ms item after a 1 ms estimate: halfway at once, so the window shrinks.
        assert_eq!(blend(Some(1_000_000), 300_000_000, 1), 150_500_000);
        assert_eq!(window_items(Some(150_500_000), 1, 0), 1);
        // One 100 ns item after a 50 ns estimate: barely moves.
        let e = blend(Some(50), 100, 1);
        assert!((50..52).contains(&e), "{e}");
        // A unit of thousands moves it halfway, however long it took (a delayed unit).
        assert_eq!(blend(Some(50), 4096 * 150, 4096), 100);
    }

    #[test]
    fn downstream_cost_follows_each_tasks_fan_out() {
        let t = |calls, outputs, busy_ns| TaskCost {
            calls,
            outputs,
            busy_ns,
        };
        // Task A: 10 ns, two outputs each; task B: 100 ns → 10 + 2 × 100.
        assert_eq!(downstream_ns(&[t(5, 10, 50), t(10, 10, 1000)]), Some(210));
        assert_eq!(downstream_ns(&[t(5, 10, 50), t(0, 0, 0)]), None);
        assert_eq!(downstream_ns(&[]), Some(0));
    }

    #[test]
    fn a_fan_out_keeps_a_horizon_here_and_sends_the_surplus_out() {
        // Cheap items: never split.
        assert_eq!(split_fan_out(10_000, Some(50), 1), None);
        // W3: 400 items of 5 ms, one idle worker: ten here, ten there, the rest to the root.
        assert_eq!(
            split_fan_out(400, Some(5_000_000), 1),
            Some(FanOut {
                keep: 10,
                to_workers: 10,
                part_items: 1,
                to_root: 380
            })
        );
        // Nothing measured yet: keep a few, the rest out.
        assert_eq!(
            split_fan_out(400, None, 0),
            Some(FanOut {
                keep: KEEP_UNKNOWN,
                to_workers: 0,
                part_items: 1,
                to_root: 400 - KEEP_UNKNOWN
            })
        );
        assert_eq!(split_fan_out(KEEP_UNKNOWN, None, 3), None);
        // Enough idle workers: nothing leaves the node.
        let f = split_fan_out(30, Some(5_000_000), 7).unwrap();
        assert_eq!((f.keep, f.to_workers, f.to_root), (10, 20, 0));
    }
}
