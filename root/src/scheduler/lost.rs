//! Nodes lost and what they held: a lost node's batches go back to the queue (inputs at its
//! front, descendants to the front of theirs), up to the poison limit; nodes that hold
//! items and complete none are lost after a limit; and with no node left (for some task),
//! waits end after the no-node timeout.

use protocol::NodeId;

use super::handlers::Delivery;
use super::inflight::Blame;
use super::{Scheduler, Stall, WaitKind, inflight, placement, retry, silence};
use crate::ItemFailure;
use crate::error::RootError;

impl Scheduler {
    /// Nodes that hold items and completed none for longer than the chain allows are lost.
    pub(super) fn drop_silent(&mut self) {
        let Some(chain) = &self.chain else { return };
        let limit = silence::completion_limit(
            chain.tasks.len(),
            chain.limits.deadline_ms,
            self.options.heartbeat_timeout,
        );
        let now = tokio::time::Instant::now();
        let silent: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| silence::is_silent(!n.batches.is_empty(), n.progress, now, limit))
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            let why = format!("held items and completed none for {} s", limit.as_secs());
            self.node_lost(id, &why, Blame::Items);
        }
    }

    /// No node came back within the no-node timeout: every wait ends with an error.
    pub(super) fn stalled(&mut self) {
        let stall = Stall {
            pending: self.waiting(),
            lost: self.lost.join(", "),
            unplaced: if self.nodes.is_empty() {
                None
            } else {
                self.unplaced()
            },
        };
        tracing::warn!(
            pending = stall.pending,
            task = stall.unplaced.as_ref().map(|(t, _)| t.as_str()),
            "no node (for some task) for {:?}; giving up on waits",
            self.options.no_node_timeout
        );
        for (_, r) in self.wait_empty.drain(..) {
            let _ = r.send(Err(stall.error()));
        }
        for r in self.wait_input.drain(..).chain(self.wait_node.drain(..)) {
            let _ = r.send(Err(stall.error()));
        }
        self.stall.send_replace(Some(stall));
    }

    pub(super) fn node_lost(&mut self, id: NodeId, why: &str, blame: Blame) {
        let Some(node) = self.nodes.remove(&id) else {
            return;
        };
        let addr = node.addr.to_string();
        let requeue = inflight::requeue(
            node.batches,
            &mut self.attempts,
            self.options.max_redispatch,
            blame,
        );
        let back = requeue
            .chunks
            .iter()
            .map(|c| c.items.len() as u64)
            .sum::<u64>();
        for c in requeue.chunks {
            self.queue.push_front(c);
        }
        let back = back + self.requeue_descendants(requeue.retries, &addr, why, blame);
        self.counters.redispatched += back;
        self.lost.push(addr.clone());
        if let Some(o) = &self.observer {
            o.node_lost(node.addr);
        }
        tracing::warn!(node = %addr, requeued = back, "node lost: {why}");
        for w in &mut self.waiters {
            if w.nodes.remove(&id) && w.kind == WaitKind::Setup {
                // Dropped from the run unless too few nodes set it up (`setup_outcome`).
                self.setup_dropped.push(RootError::Setup {
                    addr: addr.clone(),
                    message: format!("node lost during setup: {why}"),
                });
            }
        }
        for p in requeue.poison {
            let failure = ItemFailure {
                input: p.id,
                node: addr.clone(),
                task: String::new(),
                task_index: None,
                item_start: p.item[..p.item.len().min(200)].to_vec(),
                input_item: p.item,
                message: format!(
                    "poison item: its node was lost {} times while holding it (last: {why})",
                    p.attempts
                ),
            };
            self.deliver(Delivery::failed(p.id, failure, p.attempts, p.elapsed));
        }
        // No node left, or none left that can run some task (labels): items wait, for
        // up to the no-node timeout.
        if self.chain.is_some() && !self.placeable() {
            self.no_nodes_since
                .get_or_insert_with(tokio::time::Instant::now);
        }
    }

    /// A lost node's descendants go back to the root's queue: a continuation (work the
    /// root owns, like an input) up to the poison limit, a retried item while tries are
    /// left (a lost node counts as a try, unless it only went silent); the others fail. How
    /// many were the node's continuations.
    fn requeue_descendants(
        &mut self,
        retries: Vec<retry::Retry>,
        addr: &str,
        why: &str,
        blame: Blame,
    ) -> u64 {
        let mut back = 0;
        for mut r in retries {
            if blame == Blame::Link {
                // Not the item's fault: back as it was, neither a loss nor a try counted.
                back += u64::from(matches!(r.origin, retry::Origin::HandedBack { .. }));
                self.retries.queue.push_front(r);
                continue;
            }
            if let retry::Origin::HandedBack { lost } = &mut r.origin {
                *lost += 1;
                back += 1;
                if *lost <= self.options.max_redispatch {
                    self.retries.queue.push_front(r);
                    continue;
                }
                let message = format!(
                    "poison item: its node was lost {} times while holding it (last: {why})",
                    *lost
                );
                self.give_up(&r, addr.to_string(), message);
            } else if r.attempt >= self.options.retries {
                // Counted as a try: a retry that takes nodes down stops here.
                let message = format!("its node was lost while trying the item again: {why}");
                self.give_up(&r, addr.to_string(), message);
            } else {
                r.attempt += 1;
                self.retries.queue.push_front(r);
            }
        }
        back
    }

    /// Whether every task of the chain has a connected node that can run it (true without
    /// a chain; false without nodes).
    pub(super) fn placeable(&self) -> bool {
        self.unplaced().is_none()
    }

    /// The first task of the chain that no connected node can run, with a label to name.
    pub(super) fn unplaced(&self) -> Option<(String, String)> {
        let chain = self.chain.as_ref()?;
        let nodes: Vec<&[String]> = self.nodes.values().map(|n| n.labels.as_slice()).collect();
        let tasks = chain
            .tasks
            .iter()
            .map(|t| (t.function.as_str(), t.labels.as_slice()));
        placement::unplaceable(tasks, &nodes)
    }
}
