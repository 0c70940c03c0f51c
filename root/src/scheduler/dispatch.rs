//! Sending work: batches cut from the queue's front to the ready node with the most room
//! (the largest free share of its credit, in items or bytes, whichever is tighter),
//! within its credit in items and bytes, far below the frame limit, and, with ordered
//! delivery, within the reorder window. Retries go first.

use std::time::Instant;

use protocol::{Items, Msg};

use super::Scheduler;
use super::handlers::Delivery;
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
            // The ready node with the most room (of those that can run the first task).
            let node_bytes = self.options.node_bytes;
            let best = self
                .nodes
                .iter()
                .filter(|(_, n)| {
                    n.ready && !n.draining && super::placement::can_run(&n.labels, &first_labels)
                })
                .map(|(id, n)| {
                    let share = n.free_share(node_bytes);
                    (*id, n.room().capped(node_bytes, n.in_bytes), share)
                })
                .max_by_key(|&(_, room, share)| (share, room.items));
            let Some((id, room, _)) = best else {
                return;
            };
            let want = (self.options.batch_items as u64)
                .min(u64::from(room.window) / 4)
                .max(1);
            if room.items == 0
                || room.bytes == 0
                || (room.items < want && self.queue.items() > room.items)
            {
                return;
            }
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
            let mut msg = Msg::Items(Items {
                seq,
                ids,
                items,
                stage: protocol::TaskIndex(0),
            });
            let frame = self.encode_batch(&mut msg);
            let Msg::Items(Items { ids, items, .. }) = msg else {
                unreachable!("built as Items above")
            };
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    // Only an item larger than the frame gets here (cuts stay far below it):
                    // fail the items rather than wait for outputs that will never come.
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
}
