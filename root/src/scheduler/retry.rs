//! Descendants of inputs waiting to run: failed items tried again (`retries`: an item that
//! failed in task `k` goes back to a node, another one where possible, entering the chain at
//! task `k`) and continuations (items a node's generator handed back, entering at the task
//! after it, on any node). Their input is complete only when every descendant is (the
//! [`Ledger`]): the input's other outputs are handed over once, never repeated, and the
//! descendants' outputs join them.

use std::collections::VecDeque;

use protocol::{Ids, ItemId, Items, NodeId, Packed, TaskIndex};

use super::Scheduler;
use super::ledger::Ledger;
use crate::ItemFailure;

/// Where a descendant came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A failed item tried again: a lost node counts as a try.
    Failed,
    /// A continuation: a lost node counts towards the poison limit, as for inputs.
    HandedBack {
        /// How often a node holding it was lost.
        lost: u32,
    },
}

/// What the root keeps of each descendant in a batch, to settle it or send it again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Try {
    pub attempt: u32,
    pub origin: Origin,
}

/// A descendant of an input waiting to run: a failed item, or a continuation.
#[derive(Debug, Clone)]
pub(crate) struct Retry {
    /// The input it descends from.
    pub parent: ItemId,
    /// The task it failed in: it enters the chain there.
    pub stage: TaskIndex,
    pub item: Vec<u8>,
    /// Which try this is (1: the first retry).
    pub attempt: u32,
    /// The node it last failed on.
    pub avoid: Option<NodeId>,
    pub origin: Origin,
}

/// Everything about descendants: those waiting to be sent, and the open inputs.
#[derive(Debug, Default)]
pub(crate) struct Retries {
    pub queue: VecDeque<Retry>,
    pub parents: Ledger,
}

impl Retries {
    /// Nothing outstanding.
    pub fn is_idle(&self) -> bool {
        self.queue.is_empty() && self.parents.is_empty()
    }

    pub fn clear(&mut self) {
        self.queue.clear();
        self.parents.clear();
    }

    /// A retry of `input` (try `attempt`) completed with `outputs` and `failures`: they join
    /// its input's held results, which wait for the input's last descendant.
    pub fn join(
        &mut self,
        input: ItemId,
        attempt: u32,
        outputs: &Packed,
        count: u32,
        failed: u32,
        failures: Vec<ItemFailure>,
    ) {
        let Some(held) = self.parents.get_mut(input).and_then(|p| p.held.as_mut()) else {
            return;
        };
        for item in outputs {
            held.outputs.push(item);
        }
        held.done.outputs += count;
        held.done.failed += failed;
        // Try `attempt` of an item is its input's try `attempt + 1` at least.
        held.done.attempts = held.done.attempts.max(attempt + 1);
        held.failures.extend(failures);
    }

    /// Takes up to `max` retries of one stage from the front (at most about `max_bytes`),
    /// for a node other than `node` when `other_nodes` says one could take them.
    pub fn take(
        &mut self,
        node: NodeId,
        other_nodes: bool,
        max: usize,
        max_bytes: u64,
    ) -> Option<(TaskIndex, Vec<Retry>)> {
        let first = self.queue.front()?;
        if other_nodes && first.avoid == Some(node) {
            return None;
        }
        let stage = first.stage;
        let mut out = Vec::new();
        let mut bytes = 0u64;
        while let Some(r) = self.queue.front() {
            if out.len() >= max
                || r.stage != stage
                || (!out.is_empty() && bytes + r.item.len() as u64 > max_bytes)
                || (other_nodes && r.avoid == Some(node))
            {
                break;
            }
            bytes += r.item.len() as u64;
            out.extend(self.queue.pop_front());
        }
        Some((stage, out))
    }
}

/// Packs retries into a batch's items.
pub(crate) fn pack(retries: &[Retry]) -> Packed {
    retries.iter().map(|r| r.item.as_slice()).collect()
}

impl Scheduler {
    /// Sends waiting retries, each to a node other than the one it failed on where one has
    /// room.
    pub(super) async fn dispatch_retries(&mut self) {
        while let Some(front) = self.retries.queue.front() {
            let (avoid, stage) = (front.avoid, front.stage.0 as usize);
            let Some((id, items, bytes, other)) = self.retry_node(avoid, stage) else {
                return;
            };
            let max = items.min(self.options.batch_items as u64) as usize;
            let max_bytes = super::queue::batch_bytes_cap(
                bytes.min(self.options.batch_bytes),
                self.options.max_frame,
                max,
            );
            let Some((stage, batch)) = self.retries.take(id, other, max, max_bytes) else {
                return;
            };
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            let seq = node.next_seq();
            let ids = Ids::List(batch.iter().map(|r| r.parent.0).collect());
            let tries: Vec<Try> = batch
                .iter()
                .map(|r| Try {
                    attempt: r.attempt,
                    origin: r.origin,
                })
                .collect();
            let mut msg = Items {
                seq,
                ids,
                items: pack(&batch),
                stage,
            };
            let frame = match self.encode_items(&mut msg) {
                Ok(f) => f,
                Err(e) => {
                    for r in batch {
                        self.give_up(
                            &r,
                            String::new(),
                            format!("cannot send the item again: {e}"),
                        );
                    }
                    continue;
                }
            };
            let Items { ids, items, .. } = msg;
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            node.hold(seq, ids, items, stage, Some(tries));
            if node.tx.send(frame).await.is_err() {
                return;
            }
        }
    }

    /// The node for the retries at the front, which enter the chain at task `stage`: of the
    /// ready nodes that can run it and have room, the one with the largest free share of
    /// its credit, other than `avoid` where another can; its room in items and bytes, and
    /// whether another than `avoid` could take them. With none, they wait (as items wait
    /// when no node is left).
    fn retry_node(&self, avoid: Option<NodeId>, stage: usize) -> Option<(NodeId, u64, u64, bool)> {
        let labels: &[String] = self
            .chain
            .as_ref()
            .and_then(|c| c.tasks.get(stage))
            .map_or(&[], |t| t.labels.as_slice());
        let node_bytes = self.options.node_bytes;
        let ready: Vec<(NodeId, u64, u64, u64)> = self
            .nodes
            .iter()
            .filter(|(_, n)| {
                n.ready && !n.draining && !n.leaving && super::placement::can_run(&n.labels, labels)
            })
            .map(|(id, n)| {
                let room = n.room().capped(node_bytes, n.in_bytes);
                (*id, room.items, room.bytes, n.free_share(node_bytes))
            })
            .filter(|&(_, items, bytes, _)| items > 0 && bytes > 0)
            .collect();
        let other = ready.iter().any(|(id, ..)| Some(*id) != avoid);
        ready
            .iter()
            .filter(|(id, ..)| !other || Some(*id) != avoid)
            .max_by_key(|(_, items, _, share)| (*share, *items))
            .map(|&(id, items, bytes, _)| (id, items, bytes, other))
    }

    /// Gives up on a retried item or continuation: its input gets a failure naming the
    /// stage it was at and why (see [`Scheduler::retry_failed`]).
    pub(super) fn give_up(&mut self, r: &Retry, node: String, message: String) {
        let input_item = self
            .retries
            .parents
            .get(r.parent)
            .map(|p| p.input_item.clone())
            .unwrap_or_default();
        self.retry_failed(ItemFailure {
            input: r.parent,
            node,
            task: String::new(),
            task_index: Some(r.stage),
            item_start: r.item[..r.item.len().min(200)].to_vec(),
            input_item,
            message,
        });
    }

    /// A retried item failed for good: its input gets the failure, and is complete once no
    /// other retry of it is outstanding.
    pub(super) fn retry_failed(&mut self, f: ItemFailure) {
        let input = f.input;
        let Some(p) = self.retries.parents.get_mut(input) else {
            return;
        };
        match p.held.as_mut() {
            Some(held) => {
                held.done.failed += 1;
                held.failures.push(f);
            }
            None => {
                self.counters.failed += 1;
                if let Some(h) = self.handlers.as_mut() {
                    h.failure(f);
                }
            }
        }
        if self.retries.parents.child_done(input, 0) {
            self.finish_parent(input);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(parent: u64, stage: u32, avoid: Option<u32>) -> Retry {
        Retry {
            parent: ItemId(parent),
            stage: TaskIndex(stage),
            item: vec![b'x'; 10],
            attempt: 1,
            avoid: avoid.map(NodeId),
            origin: Origin::Failed,
        }
    }

    #[test]
    fn takes_one_stage_at_a_time() {
        let mut r = Retries::default();
        r.queue
            .extend([retry(1, 2, None), retry(2, 2, None), retry(3, 1, None)]);
        let (stage, got) = r.take(NodeId(0), false, 10, 1 << 20).unwrap();
        assert_eq!((stage, got.len()), (TaskIndex(2), 2));
        let (stage, got) = r.take(NodeId(0), false, 10, 1 << 20).unwrap();
        assert_eq!((stage, got.len()), (TaskIndex(1), 1));
        assert!(r.take(NodeId(0), false, 10, 1 << 20).is_none());
    }

    #[test]
    fn another_node_is_preferred_when_there_is_one() {
        let mut r = Retries::default();
        r.queue.push_back(retry(1, 0, Some(7)));
        assert!(r.take(NodeId(7), true, 10, 1 << 20).is_none());
        assert!(
            r.take(NodeId(7), false, 10, 1 << 20).is_some(),
            "no other node: same one"
        );
    }

    #[test]
    fn bytes_bound_a_batch_but_one_item_always_goes() {
        let mut r = Retries::default();
        r.queue.extend([retry(1, 0, None), retry(2, 0, None)]);
        let (_, got) = r.take(NodeId(0), false, 10, 5).unwrap();
        assert_eq!(got.len(), 1);
    }
}
