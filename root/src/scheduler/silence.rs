//! Nodes that hold items and complete none: alive (they answer heartbeats) yet stuck, or a
//! peer that never returns outputs. Past a limit the root treats such a node as lost and
//! re-dispatches what it holds, so no run hangs on it.

use std::time::Duration;

// The clock of tokio, so a paused clock drives the limit in tests.
use tokio::time::Instant;

/// How long a node may hold items without completing any: every task of the chain may take
/// its whole deadline on one item, plus the heartbeat timeout as a margin.
pub(crate) fn completion_limit(
    tasks: usize,
    deadline_ms: u64,
    heartbeat_timeout: Duration,
) -> Duration {
    Duration::from_millis(deadline_ms.saturating_mul(tasks.max(1) as u64))
        .saturating_add(heartbeat_timeout)
}

/// Whether a node that has held items since (or last completed one at) `progress` is silent
/// past `limit` at `now`.
pub(crate) fn is_silent(holding: bool, progress: Instant, now: Instant, limit: Duration) -> bool {
    holding && now.saturating_duration_since(progress) > limit
}

impl super::Scheduler {
    /// The handlers have room again after a wait: the nodes' outputs waited on us, not on
    /// them, so each node's clock of progress starts again now.
    pub(super) fn room_back(&mut self) {
        let now = Instant::now();
        for n in self.nodes.values_mut() {
            n.progress = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_limit_is_every_task_deadline_plus_the_heartbeat_timeout() {
        let hb = Duration::from_secs(10);
        assert_eq!(completion_limit(3, 1000, hb), Duration::from_secs(13));
        assert_eq!(completion_limit(0, 1000, hb), Duration::from_secs(11));
        assert!(
            completion_limit(2, u64::MAX, hb) > Duration::from_secs(1 << 40),
            "no overflow"
        );
    }

    #[test]
    fn only_a_node_holding_items_past_the_limit_is_silent() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(5);
        let later = t0 + Duration::from_secs(6);
        assert!(is_silent(true, t0, later, limit));
        assert!(
            !is_silent(false, t0, later, limit),
            "an idle node owes nothing"
        );
        assert!(!is_silent(true, t0, t0 + limit, limit));
        assert!(
            !is_silent(true, later, t0, limit),
            "a clock read before progress"
        );
    }
}
