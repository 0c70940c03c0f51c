//! The root's scheduler: one task owning all state. It queues fed items, sends batches to
//! nodes within their credit, hands outputs to the user's handlers, and, when a node is lost,
//! puts every input it held back in the queue.
//!
//! Exactly-once: a node answers a run of inputs with their outputs and their completion in
//! one message ([`protocol::Outputs`]). An input is marked done before its outputs are
//! handed over, and is re-dispatched only if its node is lost before that message arrived,
//! so each output reaches the handler exactly once.
//!
//! - `queue`: the queue of items not yet sent and the cut of batches; `dispatch`: sending;
//! - `inflight`: what each node holds; `settle`: its answers; `retry`: trying items again;
//! - `order`: the reorder buffer of ordered delivery; `placement`: tasks on labelled nodes;
//! - `commands`: the user's calls (attach, setup, reset, pause, …);
//! - `observer`: the hook through which the dashboard sees failures and node losses;
//! - `lost`: a lost node's items back in the queue, silent nodes, no node left;
//! - `leave`: nodes the user removes, let go once they hold nothing;
//! - `silence`: nodes that hold items and complete none are lost after a limit;
//! - `partial`: outputs sent ahead of their input's completion, held until it arrives.

mod answered;
mod commands;
mod dispatch;
mod handlers;
mod inflight;
mod leave;
mod ledger;
mod lost;
mod observer;
mod order;
mod partial;
mod placement;
mod queue;
mod retry;
mod settle;
mod silence;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use bytes::BytesMut;
use protocol::Frame;
use protocol::{ErrorKind, Msg, NodeId, SessionId};
use tokio::sync::{mpsc, oneshot, watch};

pub use answered::Answers;
pub(crate) use handlers::{Delivery, Reply};
pub use handlers::{Handler, Handlers, IDLE_EVERY, InputDone, Room};
#[cfg(feature = "dashboard")]
pub(crate) use observer::Observer;
pub(crate) use observer::SharedObserver;

use crate::RootOptions;
use crate::conn::Event;
use crate::error::RootError;
use crate::events::EventsTx;
pub(crate) use inflight::Blame;
use inflight::{Attempt, NodeConn};
use order::Reorder;
use queue::{Chunk, Queue};
use retry::Retries;

pub(crate) enum Cmd {
    Attach {
        addr: std::net::SocketAddr,
        /// Boxed: a connection's buffers would make every command that big.
        conn: Box<protocol::Connection>,
        workers: u32,
        labels: Vec<String>,
        reply: Reply<NodeId>,
    },
    Setup {
        chain: protocol::ChainSpec,
        handlers: Handlers,
        reply: Reply,
    },
    WaitInput(Reply),
    /// Waits until a node is attached, or the no-node timeout passed.
    WaitNode(Reply),
    /// Waits until the items fed so far (at least `fed` of them) are all done.
    WaitEmpty {
        fed: u64,
        reply: Reply,
    },
    Reset(Reply),
    Pause(Reply),
    Resume(Reply),
    Counters(oneshot::Sender<Counters>),
    /// Drops the items not yet sent (those still on the feed channel too); answers how many.
    Unqueue(oneshot::Sender<u64>),
    Nodes(oneshot::Sender<Vec<std::net::SocketAddr>>),
    /// The node at `addr` gets nothing new and goes once it holds nothing; answers whether
    /// such a node was attached.
    Leave {
        addr: std::net::SocketAddr,
        reply: Reply<bool>,
    },
    /// From now on `observer` sees failures and node losses (the nodes lost and attached so
    /// far are replayed to it first).
    #[cfg(feature = "dashboard")]
    Observe(SharedObserver),
    Close(Reply),
}

/// Items fed together, with the first of their consecutive ids.
pub(crate) struct Feed {
    pub start: u64,
    pub items: protocol::Packed,
    /// Inputs answered before they were sent (`answered`), besides `items`.
    pub answers: Option<Box<Answers>>,
}

impl Feed {
    /// Its inputs, answered ones included.
    pub fn count(&self) -> u64 {
        (self.items.len() + self.answers.as_ref().map_or(0, |a| a.hits.len())) as u64
    }
}

/// Why the root cannot go on: no node for longer than the no-node timeout.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Stall {
    pub pending: u64,
    pub lost: String,
    /// With nodes left: the task none of them can run, and a label it needs.
    pub unplaced: Option<(String, String)>,
}

impl Stall {
    pub fn error(&self) -> RootError {
        match &self.unplaced {
            Some((task, label)) => RootError::NoNodeForTask {
                task: task.clone(),
                label: label.clone(),
                pending: self.pending,
                lost: self.lost.clone(),
            },
            None => RootError::NoNodes {
                pending: self.pending,
                lost: self.lost.clone(),
            },
        }
    }
}

/// Running totals of a root.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Items fed.
    pub fed: u64,
    /// Inputs completed (all their outputs delivered).
    pub completed: u64,
    /// Outputs handed to the output handler.
    pub outputs: u64,
    /// Failures handed to the failure handler.
    pub failed: u64,
    /// Inputs put back in the queue after their node was lost.
    pub redispatched: u64,
    /// Failed items tried again (`retries`).
    pub retried: u64,
    /// Items queued in the root, not yet sent.
    pub pending: u64,
    /// Items sent and not yet completed.
    pub in_flight: u64,
    /// Nodes connected.
    pub nodes: u32,
    /// Bytes of the items queued in the root.
    pub pending_bytes: u64,
    /// Bytes of outputs the root holds: parts of inputs not yet complete, and inputs waiting
    /// for their turn in ordered delivery.
    pub held_bytes: u64,
}

impl Counters {
    /// Adds what settling a message counted: outputs, failures, completions.
    fn absorb(&mut self, c: &Counters) {
        self.outputs += c.outputs;
        self.failed += c.failed;
        self.completed += c.completed;
    }
}

#[derive(PartialEq, Eq, Clone, Copy, Debug)]
enum WaitKind {
    Setup,
    Reset,
    Pause,
    Resume,
}

struct Waiter {
    kind: WaitKind,
    nodes: HashSet<NodeId>,
    error: Option<RootError>,
    reply: Reply,
}

pub(crate) struct Scheduler {
    options: RootOptions,
    session: SessionId,
    chain: Option<protocol::ChainSpec>,
    handlers: Option<Handlers>,
    nodes: HashMap<NodeId, NodeConn>,
    next_node: u32,
    lost: Vec<String>,
    queue: Queue,
    /// Re-dispatched inputs: how often they were sent and when first.
    attempts: HashMap<u64, Attempt>,
    counters: Counters,
    waiters: Vec<Waiter>,
    wait_input: Vec<Reply>,
    wait_empty: Vec<(u64, Reply)>,
    wait_node: Vec<Reply>,
    paused: bool,
    events_tx: EventsTx,
    frame: BytesMut,
    /// Ordered delivery (with `keep_order`).
    order: Option<Reorder<Delivery>>,
    /// Highest id sent to a node so far.
    sent_up_to: Option<u64>,
    /// Since when no node has been connected while a chain is set up.
    no_nodes_since: Option<tokio::time::Instant>,
    stall: watch::Sender<Option<Stall>>,
    retries: Retries,
    /// Nodes that failed or were lost during the setup under way: dropped from the run
    /// (named in a warning) while enough others set it up (`min_nodes`).
    setup_dropped: Vec<RootError>,
    /// Sees failures and node losses (the dashboard), when one watches.
    observer: Option<SharedObserver>,
}

pub(crate) async fn run(
    options: RootOptions,
    mut cmds: mpsc::Receiver<Cmd>,
    mut feeds: mpsc::Receiver<Feed>,
    stall: watch::Sender<Option<Stall>>,
    session: SessionId,
) {
    let (events_tx, mut events) = crate::events::channel(256, options.outputs_bytes);
    let mut s = Scheduler::new(options, session, stall, events_tx);
    let mut closing: Option<Reply> = None;
    let mut silence_check = tokio::time::interval(std::time::Duration::from_secs(1));
    let mut last_idle = Instant::now();
    // Set while the handlers have no room (a slow consumer of the outputs): no event is taken
    // and nothing sent until it ends, while the connections' tasks keep heartbeating.
    let mut full: Option<handlers::Room> = None;
    loop {
        // Answered inputs are handed over as their feed is taken: not while the handlers have
        // no room, nor past the reorder window.
        let room = s.queue.items() < s.options.queue_items as u64
            && s.queue.bytes() < s.options.queue_bytes
            && full.is_none()
            && s.order.as_ref().is_none_or(Reorder::has_room);
        let stall_at = s
            .no_nodes_since
            .filter(|_| s.stall.borrow().is_none())
            .map(|t| t + s.options.no_node_timeout);
        tokio::select! {
            biased;
            () = room_back(&mut full), if full.is_some() => {
                full = None;
                s.room_back();
            }
            e = events.recv(), if full.is_none() => match e {
                Some(e) => s.on_event(e),
                None => break,
            },
            c = cmds.recv() => match c {
                Some(Cmd::Close(reply)) => { closing = Some(reply); break; }
                Some(Cmd::Unqueue(reply)) => { let _ = reply.send(s.unqueue(&mut feeds)); }
                Some(c) => s.on_cmd(c).await,
                None => break,
            },
            f = feeds.recv(), if room => if let Some(f) = f {
                s.on_feed(f);
            },
            () = sleep_until(stall_at), if stall_at.is_some() => s.stalled(),
            // Nodes whose outputs wait on our handlers are not silent.
            _ = silence_check.tick() => if full.is_none() { s.drop_silent() },
        }
        if full.is_none() {
            s.dispatch().await;
        }
        s.let_go();
        s.check_waits();
        if events.is_empty() || last_idle.elapsed() >= handlers::IDLE_EVERY {
            last_idle = Instant::now();
            if let Some(h) = s.handlers.as_mut() {
                h.idle();
            }
        }
        if full.is_none() {
            full = s.handlers.as_mut().and_then(Handlers::room);
        }
    }
    leave::say_goodbye(&mut s, &mut events).await;
    if let Some(reply) = closing {
        let _ = reply.send(Ok(()));
    }
}

/// Ends once the handlers that had no room have some again (never without such a wait).
async fn room_back(full: &mut Option<handlers::Room>) {
    match full {
        Some(room) => room.await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Scheduler {
    fn new(
        options: RootOptions,
        session: SessionId,
        stall: watch::Sender<Option<Stall>>,
        events_tx: EventsTx,
    ) -> Scheduler {
        Scheduler {
            order: options
                .keep_order
                .then(|| Reorder::new(0, options.reorder_items, options.reorder_bytes)),
            options,
            session,
            chain: None,
            handlers: None,
            nodes: HashMap::new(),
            next_node: 0,
            lost: Vec::new(),
            queue: Queue::default(),
            attempts: HashMap::new(),
            counters: Counters::default(),
            waiters: Vec::new(),
            wait_input: Vec::new(),
            wait_empty: Vec::new(),
            wait_node: Vec::new(),
            paused: false,
            events_tx,
            frame: BytesMut::with_capacity(1 << 20),
            sent_up_to: None,
            no_nodes_since: None,
            stall,
            retries: Retries::default(),
            setup_dropped: Vec::new(),
            observer: None,
        }
    }
}

impl Scheduler {
    fn encode(&mut self, msg: &Msg) -> Result<Frame, protocol::ProtocolError> {
        self.frame.clear();
        protocol::codec::encode_frame(msg, &mut self.frame, self.options.max_frame)?;
        Ok(Frame::whole(self.frame.split().freeze()))
    }

    /// Encodes a batch: big ones in parts, their bytes shared with the batch kept in
    /// `items` (so they are neither copied to be sent nor to be sent again).
    fn encode_items(
        &mut self,
        items: &mut protocol::Items,
    ) -> Result<Frame, protocol::ProtocolError> {
        protocol::split::encode_items(items, &mut self.frame, self.options.max_frame)
    }

    async fn send(&mut self, node: NodeId, msg: &Msg) {
        let frame = match self.encode(msg) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!("cannot encode {}: {e}", msg.name());
                return;
            }
        };
        if let Some(n) = self.nodes.get(&node) {
            let _ = n.tx.send(frame).await;
        }
    }

    /// Drops every item not yet sent to a node, those still on the feed channel included
    /// (counted as fed, so waits for the items fed so far end); how many.
    fn unqueue(&mut self, feeds: &mut mpsc::Receiver<Feed>) -> u64 {
        let mut dropped = self.queue.items();
        self.queue.clear();
        while let Ok(f) = feeds.try_recv() {
            let n = f.count();
            self.counters.fed += n;
            dropped += n;
        }
        dropped
    }

    fn on_feed(&mut self, mut f: Feed) {
        if let Some(a) = f.answers.take() {
            return self.on_answered(f, *a);
        }
        let n = f.items.len() as u64;
        if n == 0 {
            return;
        }
        self.counters.fed += n;
        self.queue.push_back(Chunk::new(
            protocol::Ids::Range {
                start: f.start,
                count: n as u32,
            },
            f.items,
        ));
    }

    fn on_event(&mut self, e: Event) {
        match e {
            Event::Gone(id, why, blame) => self.node_lost(id, &why, blame),
            Event::Msg(id, msg) => {
                let Some(addr) = self.nodes.get(&id).map(|n| n.addr) else {
                    return;
                };
                match msg {
                    Msg::Outputs(o) => {
                        if let Some(n) = self.nodes.get_mut(&id) {
                            n.progress = tokio::time::Instant::now();
                        }
                        self.on_outputs(id, o)
                    }
                    Msg::Partial(p) => self.on_partial(id, p),
                    Msg::Credit(c) => {
                        if let Some(n) = self.nodes.get_mut(&id) {
                            n.credit = c;
                        }
                    }
                    Msg::SetupDone(done) => {
                        if let Some(n) = self.nodes.get_mut(&id) {
                            n.ready = true;
                            n.credit = done.credit;
                        }
                        tracing::info!(node = %addr, compiled = done.compiled, cached = done.cached, "chain set up");
                        self.answer(id, Some(WaitKind::Setup), None);
                    }
                    Msg::SetupProgress(p) => {
                        if let Some(h) = self.handlers.as_mut() {
                            h.progress(addr, &p.message);
                        }
                    }
                    Msg::ResetDone => self.answer(id, Some(WaitKind::Reset), None),
                    Msg::Paused => self.answer(id, Some(WaitKind::Pause), None),
                    Msg::Resumed => self.answer(id, Some(WaitKind::Resume), None),
                    Msg::Draining => {
                        tracing::info!(node = %addr, "node is draining; sending it nothing more");
                        if let Some(n) = self.nodes.get_mut(&id) {
                            n.draining = true;
                        }
                    }
                    Msg::Error(err) => {
                        let addr_s = addr.to_string();
                        let e = match err.kind {
                            ErrorKind::Busy(holder) => RootError::Busy {
                                addr: addr_s,
                                holder: holder.root,
                                held_s: holder.held_s,
                            },
                            ErrorKind::Setup => RootError::Setup {
                                addr: addr_s,
                                message: err.message,
                            },
                            _ => RootError::Node {
                                addr: addr_s,
                                source: protocol::ProtocolError::Remote(err),
                            },
                        };
                        self.answer(id, None, Some(e));
                    }
                    other => tracing::debug!(node = %addr, "unexpected {}", other.name()),
                }
            }
        }
    }

    fn answer(&mut self, node: NodeId, kind: Option<WaitKind>, error: Option<RootError>) {
        let Some(i) = self
            .waiters
            .iter()
            .position(|w| w.nodes.contains(&node) && kind.is_none_or(|k| w.kind == k))
        else {
            if let Some(e) = error {
                tracing::warn!("node {node}: {e}");
            }
            return;
        };
        let w = &mut self.waiters[i];
        w.nodes.remove(&node);
        match error {
            Some(e) if w.kind == WaitKind::Setup => self.setup_dropped.push(e),
            Some(e) if w.error.is_none() => w.error = Some(e),
            _ => {}
        }
    }

    /// Hands a completed input's outputs over, in order when delivery is ordered.
    fn deliver(&mut self, d: Delivery) {
        let Some(h) = self.handlers.as_mut() else {
            return;
        };
        match self.order.as_mut() {
            None => h.deliver(d, &mut self.counters),
            Some(order) => {
                let bytes = d.bytes();
                for d in order.complete(d.done.input.0, d, bytes) {
                    h.deliver(d, &mut self.counters);
                }
            }
        }
    }

    /// Items waiting in the root: fresh inputs and descendants (retries, continuations).
    fn waiting(&self) -> u64 {
        self.queue.items() + self.retries.queue.len() as u64
    }

    fn in_flight(&self) -> u64 {
        self.nodes.values().map(|n| n.in_items).sum()
    }

    fn check_waits(&mut self) {
        let mut i = 0;
        while i < self.waiters.len() {
            if self.waiters[i].nodes.is_empty() {
                let w = self.waiters.remove(i);
                let _ = w.reply.send(match w.error {
                    Some(e) => Err(e),
                    None if w.kind == WaitKind::Setup => self.setup_outcome(),
                    None => Ok(()),
                });
            } else {
                i += 1;
            }
        }
        let stalled = self.stall.borrow().clone();
        if !self.wait_input.is_empty() {
            if let Some(stall) = &stalled {
                for r in self.wait_input.drain(..) {
                    let _ = r.send(Err(stall.error()));
                }
            } else if self.queue.items() < (self.options.queue_items / 2) as u64
                && self.queue.bytes() < self.options.queue_bytes / 2
            {
                for r in self.wait_input.drain(..) {
                    let _ = r.send(Ok(()));
                }
            }
        }
        if !self.wait_empty.is_empty() {
            if self.queue.items() == 0 && self.in_flight() == 0 && self.retries.is_idle() {
                let fed = self.counters.fed;
                let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wait_empty)
                    .into_iter()
                    .partition(|(want, _)| *want <= fed);
                self.wait_empty = waiting;
                for (_, r) in done {
                    let _ = r.send(Ok(()));
                }
            } else if self.nodes.is_empty() {
                // Never a hang: with no node, say so at once (the items stay queued).
                let pending = self.waiting();
                for (_, r) in self.wait_empty.drain(..) {
                    let _ = r.send(Err(RootError::NoNodes {
                        pending,
                        lost: self.lost.join(", "),
                    }));
                }
            } else if let Some(stall) = &stalled {
                // Nodes are left but, past the timeout, none for some task: say so at once.
                for (_, r) in self.wait_empty.drain(..) {
                    let _ = r.send(Err(stall.error()));
                }
            }
        }
        if !self.wait_node.is_empty() && !self.nodes.is_empty() && self.placeable() {
            for r in self.wait_node.drain(..) {
                let _ = r.send(Ok(()));
            }
        }
    }
}

/// Waits for the root to give up for lack of nodes, with the error to return then.
pub(crate) async fn stalled(rx: &mut watch::Receiver<Option<Stall>>) -> RootError {
    match rx.wait_for(Option::is_some).await {
        Ok(s) => s.as_ref().map_or(RootError::Closed, Stall::error),
        Err(_) => RootError::Closed,
    }
}
