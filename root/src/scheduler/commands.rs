//! The user's calls as the scheduler handles them: attach a node, set a chain up, reset,
//! pause and resume (each answered once every node has answered), and the waits.

use std::collections::HashSet;

use protocol::{Msg, NodeId, Setup};

use super::inflight::NodeConn;
use super::{Cmd, Scheduler, WaitKind, Waiter};
use crate::error::RootError;

impl Scheduler {
    pub(super) async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Attach {
                addr,
                conn,
                workers,
                labels,
                reply,
            } => {
                let id = self.attach(addr, *conn, workers, labels).await;
                let _ = reply.send(Ok(id));
            }
            Cmd::Setup {
                chain,
                handlers,
                reply,
            } => self.setup(chain, handlers, reply).await,
            Cmd::WaitInput(reply) => self.wait_input.push(reply),
            Cmd::WaitNode(reply) => self.wait_node(reply),
            Cmd::WaitEmpty { fed, reply } => {
                if self.chain.is_none() && (self.queue.items() > 0 || fed > self.counters.fed) {
                    let _ = reply.send(Err(RootError::NotSetUp));
                } else {
                    self.wait_empty.push((fed, reply));
                }
            }
            Cmd::Reset(reply) => self.reset(reply).await,
            Cmd::Pause(reply) => {
                self.paused = true;
                self.broadcast(WaitKind::Pause, Msg::Pause, reply).await;
            }
            Cmd::Resume(reply) => {
                self.paused = false;
                self.broadcast(WaitKind::Resume, Msg::Resume, reply).await;
            }
            Cmd::Counters(reply) => {
                let mut c = self.counters;
                c.pending = self.queue.items();
                c.in_flight = self.in_flight();
                c.nodes = self.nodes.len() as u32;
                c.pending_bytes = self.queue.bytes();
                let partial: u64 = self.nodes.values().map(|n| n.partials.bytes()).sum();
                c.held_bytes = partial + self.order.as_ref().map_or(0, |o| o.bytes());
                let _ = reply.send(c);
            }
            Cmd::Nodes(reply) => {
                let _ = reply.send(self.nodes.values().map(|n| n.addr).collect());
            }
            Cmd::Leave { addr, reply } => {
                let _ = reply.send(Ok(self.leave(addr)));
            }
            #[cfg(feature = "dashboard")]
            Cmd::Observe(o) => self.observe(o),
            // Handled by the loop, which owns the feed channel.
            Cmd::Close(_) | Cmd::Unqueue(_) => {}
        }
    }

    /// Adds a node's connection; with a chain set up, the node gets it.
    async fn attach(
        &mut self,
        addr: std::net::SocketAddr,
        conn: protocol::Connection,
        workers: u32,
        labels: Vec<String>,
    ) -> NodeId {
        let id = NodeId(self.next_node);
        self.next_node += 1;
        let rtt = conn.handshake_rtt();
        let tx = crate::conn::spawn(
            id,
            conn,
            self.events_tx.clone(),
            self.options.heartbeat,
            self.options.heartbeat_timeout,
        );
        let mut node = NodeConn::new(addr, tx);
        node.labels = labels;
        node.rtt = rtt;
        self.nodes.insert(id, node);
        // A node is back: waits for one end, and the root may go on (once every task has a
        // node that can run it).
        if self.placeable() {
            self.no_nodes_since = None;
            self.stall.send_replace(None);
        }
        tracing::info!(node = %addr, workers, rtt_us = rtt.as_micros() as u64, "node added");
        if let Some(o) = &self.observer {
            o.node_added(addr);
        }
        if self.chain.is_some() {
            // A node joining a running cluster gets the current chain.
            self.send_setup(id).await;
        }
        id
    }

    /// Sets `chain` up on every node; answered once every node has answered.
    async fn setup(
        &mut self,
        chain: protocol::ChainSpec,
        mut handlers: super::Handlers,
        reply: super::Reply,
    ) {
        if self.nodes.is_empty() {
            let _ = reply.send(Err(RootError::NoNodes {
                pending: self.queue.items(),
                lost: self.lost.join(", "),
            }));
            return;
        }
        let node_labels: Vec<&[String]> =
            self.nodes.values().map(|n| n.labels.as_slice()).collect();
        let tasks = chain
            .tasks
            .iter()
            .map(|t| (t.function.as_str(), t.labels.as_slice()));
        if let Some((task, label)) = super::placement::unplaceable(tasks, &node_labels) {
            let nodes = self.nodes.values().map(|n| n.addr.to_string());
            let nodes = nodes.collect::<Vec<_>>().join(", ");
            let error = if label == protocol::native::NATIVE_LABEL {
                RootError::NoNativeNode { task, nodes }
            } else {
                RootError::Placement { task, label }
            };
            let _ = reply.send(Err(error));
            return;
        }
        handlers.observer = self.observer.clone();
        self.handlers = Some(handlers);
        self.chain = Some(chain);
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in &ids {
            if let Some(n) = self.nodes.get_mut(id) {
                n.ready = false;
            }
            self.send_setup(*id).await;
        }
        self.waiters.push(Waiter {
            kind: WaitKind::Setup,
            nodes: ids.into_iter().collect(),
            error: None,
            reply,
        });
    }

    /// Every node has answered the setup (or was lost): it succeeded when at least
    /// `min_nodes` nodes set the chain up. The others are dropped from the run, each named in
    /// a warning: a lost one may rejoin like any lost node, a failed one gets no items.
    pub(super) fn setup_outcome(&mut self) -> Result<(), RootError> {
        let dropped = std::mem::take(&mut self.setup_dropped);
        let ready = self.nodes.values().filter(|n| n.ready).count();
        if ready < self.options.min_nodes.max(1) {
            return Err(dropped.into_iter().next().unwrap_or(RootError::NoNodes {
                pending: self.queue.items(),
                lost: self.lost.join(", "),
            }));
        }
        for e in dropped {
            tracing::warn!("{e}; going on without that node ({ready} set up)");
        }
        Ok(())
    }

    /// Answers once a node is attached, or at once when the no-node timeout has passed.
    fn wait_node(&mut self, reply: super::Reply) {
        match self.stall.borrow().as_ref() {
            Some(stall) if self.nodes.is_empty() || !self.placeable() => {
                let _ = reply.send(Err(stall.error()));
                return;
            }
            _ => {}
        }
        if self.nodes.is_empty() {
            // The clock of the no-node timeout runs from now at the latest.
            self.no_nodes_since
                .get_or_insert_with(tokio::time::Instant::now);
        }
        self.wait_node.push(reply);
    }

    /// Drops the chain and everything queued; the nodes stop their workers.
    async fn reset(&mut self, reply: super::Reply) {
        self.chain = None;
        self.handlers = None;
        self.queue.clear();
        self.attempts.clear();
        self.retries.clear();
        self.no_nodes_since = None;
        for n in self.nodes.values_mut() {
            n.forget();
        }
        if let Some(o) = self.order.as_mut() {
            o.restart(self.counters.fed);
        }
        self.broadcast(WaitKind::Reset, Msg::Reset, reply).await;
    }

    /// From now on `o` sees failures and node losses; the nodes lost and attached so far
    /// are replayed to it first.
    #[cfg(feature = "dashboard")]
    fn observe(&mut self, o: super::SharedObserver) {
        for addr in &self.lost {
            if let Ok(a) = addr.parse() {
                o.node_lost(a);
            }
        }
        for n in self.nodes.values() {
            o.node_added(n.addr);
        }
        if let Some(h) = self.handlers.as_mut() {
            h.observer = Some(o.clone());
        }
        self.observer = Some(o);
    }

    /// Sends the chain to node `id`, with only the modules of the tasks it can run (its
    /// labels): the others are withheld, so it neither receives nor compiles them.
    async fn send_setup(&mut self, id: NodeId) {
        let (Some(chain), Some(node)) = (self.chain.as_ref(), self.nodes.get(&id)) else {
            return;
        };
        if self.options.token.is_none() && !node.addr.ip().is_loopback() {
            tracing::warn!(
                node = %node.addr,
                "sending the chain without a cluster token: anyone on the path can read or \
                 change it, its items and outputs (set a token: `pcluster key new FILE`)"
            );
        }
        let (chain, withheld) = match super::placement::for_node(chain, &node.labels) {
            Some((chain, withheld)) => (chain, withheld),
            None => (chain.clone(), Vec::new()),
        };
        let msg = Msg::Setup(Box::new(Setup {
            session: self.session,
            chain,
            send_failed_items: self.options.retries > 0,
            tagged_items: self.options.tagged_items,
            withheld,
            rtt_us: node.rtt.as_micros().try_into().unwrap_or(u64::MAX),
        }));
        self.send(id, &msg).await;
    }

    async fn broadcast(&mut self, kind: WaitKind, msg: Msg, reply: super::Reply) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in &ids {
            self.send(*id, &msg).await;
        }
        self.waiters.push(Waiter {
            kind,
            nodes: ids.into_iter().collect::<HashSet<_>>(),
            error: None,
            reply,
        });
    }
}
