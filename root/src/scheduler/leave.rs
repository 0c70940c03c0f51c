//! Nodes the user removes ([`crate::Root::remove_node`]): a leaving node gets no new items
//! and is let go (told goodbye, so it frees itself) once it holds nothing; the items it
//! holds complete as usual, or, if it is lost first, go back to the queue as any lost
//! node's do. Leaving is not a loss: no items are sent again because of it.

use std::net::SocketAddr;

use bytes::BytesMut;
use protocol::{Frame, Msg, NodeId};

use super::Scheduler;

impl Scheduler {
    /// Marks every node at `addr` leaving; whether there was one.
    pub(super) fn leave(&mut self, addr: SocketAddr) -> bool {
        let mut found = false;
        for n in self.nodes.values_mut().filter(|n| n.addr == addr) {
            n.leaving = true;
            found = true;
        }
        if found {
            tracing::info!(node = %addr, "node removed: it gets no new items");
        }
        found
    }

    /// Lets the leaving nodes that hold nothing go.
    pub(super) fn let_go(&mut self) {
        let idle: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.leaving && n.in_items == 0 && n.batches.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            let Some(node) = self.nodes.remove(&id) else {
                continue;
            };
            // The writer sends the goodbye, then ends with the channel; the node's closing
            // reaches the scheduler as the loss of an id it no longer has, and is ignored.
            let mut bye = BytesMut::new();
            if protocol::codec::encode_frame(&Msg::Bye, &mut bye, 1024).is_ok() {
                let _ = node.tx.try_send(Frame::whole(bye.freeze()));
            }
            // A setup, reset or pause waiting for it waits no more.
            for w in &mut self.waiters {
                w.nodes.remove(&id);
            }
            if self.chain.is_some() && !self.placeable() {
                self.no_nodes_since
                    .get_or_insert_with(tokio::time::Instant::now);
            }
            tracing::info!(node = %node.addr, "removed node let go");
        }
    }
}
