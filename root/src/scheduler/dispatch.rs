//! Sending work: batches cut from the queue's front to the ready node with the most room
//! (the largest free share of its credit, in items or bytes, whichever is tighter),
//! within its credit in items and bytes, far below the frame limit, and, with ordered
//! delivery, within the reorder window. Retries go first.

use std::time::Instant;

use protocol::Items;

use super::Scheduler;
use super::handlers::Delivery;
use super::inflight::Room;
use super::queue::{self, Cut};
use crate::ItemFailure;

impl Scheduler {
    pub(super) async fn dispatch(&mut self) {
        if self.paused || self.chain.is_none() {
            return;
        }
        self.dispatch_retries().await;
        let first_labels = self
            .chain
            .as_ref()
            .and_then(|c| c.tasks.first())
            .map(|t| t.labels.clone())
            .unwrap_or_default();
        while self.queue.items() > 0 {
            let Some((id, room)) = self.best_node(&first_labels) else {
                return;
            };
            let below_id = self
                .order
                .as_ref()
                .map_or(u64::MAX, |o| o.send_below(self.sent_up_to));
            let items = room.items.min(self.options.batch_items as u64) as usize;
            let cut = Cut {
                items,
                // Far below the frame limit, whatever the node grants or items weigh.
                bytes: queue::batch_bytes_cap(
                    room.bytes.min(self.options.batch_bytes),
                    self.options.max_frame,
                    items,
                ),
                below_id,
            };
            let Some((ids, items)) = self.queue.take(cut) else {
                return;
            };
            if let Some(last) = queue::max_id(&ids) {
                self.sent_up_to = Some(self.sent_up_to.map_or(last, |s| s.max(last)));
            }
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            let seq = node.next_seq();
            let mut msg = Items {
                seq,
                ids,
                items,
                stage: protocol::TaskIndex(0),
            };
            let frame = self.encode_items(&mut msg);
            let Items { ids, items, .. } = msg;
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    self.fail_unsendable(&ids, &items, &e);
                    continue;
                }
            };
            let Some(node) = self.nodes.get_mut(&id) else {
                return;
            };
            node.hold(seq, ids, items, protocol::TaskIndex(0), None);
            if node.tx.send(frame).await.is_err() {
                // The writer is gone; the reader reports the loss and we requeue then.
                return;
            }
        }
    }

    /// Of the ready nodes that can run the first task and have room for a batch worth
    /// sending, the one with the largest free share of its credit, and its room.
    fn best_node(&self, first_labels: &[String]) -> Option<(protocol::NodeId, Room)> {
        let node_bytes = self.options.node_bytes;
        let queued = self.queue.items();
        let batch_items = self.options.batch_items as u64;
        self.nodes
            .iter()
            .filter(|(_, n)| {
                n.ready
                    && !n.draining
                    && !n.leaving
                    && super::placement::can_run(&n.labels, first_labels)
            })
            .map(|(id, n)| {
                let share = n.free_share(node_bytes);
                (*id, n.room().capped(node_bytes, n.in_bytes), share)
            })
            .filter(|(_, room, _)| worth_a_batch(room, batch_items, queued))
            .max_by_key(|&(_, room, share)| (share, room.items))
            .map(|(id, room, _)| (id, room))
    }

    /// A batch that cannot be encoded fails its items rather than waiting for outputs that
    /// will never come. Only an item larger than the frame gets here (cuts stay far below
    /// it).
    fn fail_unsendable(
        &mut self,
        ids: &protocol::Ids,
        items: &protocol::Packed,
        e: &protocol::ProtocolError,
    ) {
        tracing::error!("cannot encode a batch: {e}");
        let at = Instant::now();
        for (i, item) in items.iter().enumerate() {
            let Some(input) = ids.get(i) else { continue };
            let failure = ItemFailure {
                input,
                node: String::new(),
                task: String::new(),
                task_index: None,
                item_start: item[..item.len().min(200)].to_vec(),
                input_item: item.to_vec(),
                message: format!("cannot send the item: {e}"),
            };
            self.deliver(Delivery::failed(input, failure, 1, at.elapsed()));
        }
    }
}

/// Whether a node with `room` should get a batch now: it has room in items and bytes, and
/// either room for a batch of a useful size (a quarter of its window, at most `batch_items`)
/// or for everything queued; otherwise waiting for more room makes fewer, fuller batches.
fn worth_a_batch(room: &super::inflight::Room, batch_items: u64, queued: u64) -> bool {
    let want = batch_items.min(u64::from(room.window) / 4).max(1);
    room.items > 0 && room.bytes > 0 && (room.items >= want || queued <= room.items)
}

#[cfg(test)]
mod tests {
    use super::super::inflight::Room;
    use super::worth_a_batch;

    #[test]
    fn a_node_gets_a_batch_when_it_has_room_for_a_useful_one_or_for_all() {
        let room = |items, bytes| Room {
            items,
            bytes,
            window: 1024,
        };
        assert!(worth_a_batch(&room(256, 1 << 20), 4096, 10_000));
        assert!(
            !worth_a_batch(&room(255, 1 << 20), 4096, 10_000),
            "too little room"
        );
        assert!(worth_a_batch(&room(10, 1 << 20), 4096, 10), "room for all");
        assert!(!worth_a_batch(&room(1024, 0), 4096, 10), "no bytes");
        assert!(!worth_a_batch(&room(0, 1 << 20), 4096, 0), "no items");
    }
}
