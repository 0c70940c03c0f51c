//! Nodes the user removes ([`crate::Root::remove_node`]): a leaving node gets no new items
//! and is let go (told goodbye, so it frees itself) once it holds nothing; the items it
//! holds complete as usual, or, if it is lost first, go back to the queue as any lost
//! node's do. Leaving is not a loss: no items are sent again because of it. A closing
//! root says goodbye to every node the same way ([`say_goodbye`]).

use std::collections::HashMap;
use std::net::SocketAddr;

use bytes::BytesMut;
use protocol::{Frame, Msg, NodeId};

use super::Scheduler;
use crate::conn::Event;

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
            if let Some(bye) = bye_frame() {
                let _ = node.tx.try_send(bye);
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

/// The goodbye a node gets when the root lets it go (it then frees itself at once).
fn bye_frame() -> Option<Frame> {
    let mut bye = BytesMut::new();
    protocol::codec::encode_frame(&Msg::Bye, &mut bye, 1024).ok()?;
    Some(Frame::whole(bye.freeze()))
}

/// Tells every node we leave for good so they free themselves at once, and waits (bounded)
/// for them to acknowledge by closing.
pub(super) async fn say_goodbye(s: &mut Scheduler, events: &mut crate::events::EventsRx) {
    // A node frees itself and then closes the connection: waiting for that close means a
    // root started after close() returns finds the nodes free. The wait is bounded, and a node
    // whose channel is full (it stopped reading) is not waited on: it will not read the goodbye either.
    let deadline = tokio::time::sleep(BYE_WAIT);
    tokio::pin!(deadline);
    let bye = bye_frame();
    let mut leaving: HashMap<NodeId, std::net::SocketAddr> = HashMap::new();
    for (id, n) in &s.nodes {
        if let Some(bye) = &bye
            && n.tx.try_send(bye.clone()).is_ok()
        {
            leaving.insert(*id, n.addr);
        }
    }
    s.nodes.clear();
    // Dropping the handlers lets them flush whatever they buffer before close() returns.
    s.handlers = None;
    while !leaving.is_empty() {
        tokio::select! {
            e = events.recv() => match e {
                Some(Event::Gone(id, ..)) => { leaving.remove(&id); }
                Some(Event::Msg(..)) => {}
                None => break,
            },
            () = &mut deadline => {
                let addrs: Vec<String> = leaving.values().map(ToString::to_string).collect();
                tracing::warn!(nodes = %addrs.join(", "), wait_s = BYE_WAIT.as_secs(),
                    "closing without the nodes' acknowledgement of the goodbye");
                break;
            }
        }
    }
}

/// How long closing waits for the nodes to acknowledge the goodbye by closing.
const BYE_WAIT: std::time::Duration = std::time::Duration::from_secs(3);
