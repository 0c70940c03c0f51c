//! The root's scheduler: one task owning all state. It queues fed items, sends batches to
//! nodes within their credit, hands outputs to the user's handlers, and, when a node is lost,
//! puts every input it held back in the queue.
//!
//! Exactly-once: a node answers a run of inputs with their outputs and their completion in
//! one message ([`protocol::Outputs`]). An input is marked done before its outputs are
//! handed over, and is re-dispatched only if its node is lost before that message arrived,
//! so each output reaches the handler exactly once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use bytes::{Bytes, BytesMut};
use protocol::{
    ChainSpec, Credit, ErrorKind, Ids, ItemId, Items, Msg, NodeId, Outputs, Packed, SessionId,
    Setup,
};
use tokio::sync::{mpsc, oneshot};

use crate::conn::Event;
use crate::error::RootError;
use crate::{ItemFailure, RootOptions};

/// The output handler: gets each output with the id of its input.
pub(crate) type OutputFn = Box<dyn FnMut(ItemId, &[u8]) + Send>;
/// The failure handler.
pub(crate) type FailureFn = Box<dyn FnMut(ItemFailure) + Send>;

/// The user's handlers, called on the scheduler task in arrival order.
pub(crate) struct Handlers {
    pub output: OutputFn,
    pub failure: FailureFn,
}

pub(crate) type Reply<T = ()> = oneshot::Sender<Result<T, RootError>>;

pub(crate) enum Cmd {
    Attach {
        addr: SocketAddr,
        conn: protocol::Connection,
        workers: u32,
        reply: Reply<NodeId>,
    },
    Setup {
        chain: ChainSpec,
        handlers: Handlers,
        reply: Reply,
    },
    WaitInput(Reply),
    /// Waits until the items fed so far (at least `fed` of them) are all done.
    WaitEmpty {
        fed: u64,
        reply: Reply,
    },
    Reset(Reply),
    Pause(Reply),
    Resume(Reply),
    Counters(oneshot::Sender<Counters>),
    Nodes(oneshot::Sender<Vec<SocketAddr>>),
    Close(Reply),
}

/// A feed: items and a reply sent once they are queued.
pub(crate) struct Feed {
    pub items: Packed,
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
    /// Items queued in the root, not yet sent.
    pub pending: u64,
    /// Items sent and not yet completed.
    pub in_flight: u64,
    /// Nodes connected.
    pub nodes: u32,
}

struct Chunk {
    ids: Ids,
    items: Packed,
    /// Next item to send.
    pos: usize,
    /// Offset of item `pos` in `items.data`.
    byte_pos: usize,
}

impl Chunk {
    fn remaining(&self) -> usize {
        self.items.len() - self.pos
    }
}

struct InFlight {
    ids: Ids,
    items: Packed,
    done: Vec<bool>,
    remaining: u32,
}

struct NodeConn {
    addr: SocketAddr,
    tx: mpsc::Sender<Bytes>,
    credit: Credit,
    ready: bool,
    draining: bool,
    in_items: u64,
    in_bytes: u64,
    next_seq: u64,
    batches: HashMap<u64, InFlight>,
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
    chain: Option<ChainSpec>,
    handlers: Option<Handlers>,
    nodes: HashMap<NodeId, NodeConn>,
    next_node: u32,
    lost: Vec<String>,
    queue: VecDeque<Chunk>,
    queued: u64,
    next_id: u64,
    attempts: HashMap<u64, u32>,
    counters: Counters,
    waiters: Vec<Waiter>,
    wait_input: Vec<Reply>,
    wait_empty: Vec<(u64, Reply)>,
    paused: bool,
    events_tx: mpsc::Sender<Event>,
    frame: BytesMut,
}

pub(crate) async fn run(
    options: RootOptions,
    mut cmds: mpsc::Receiver<Cmd>,
    mut feeds: mpsc::Receiver<Feed>,
) {
    let (events_tx, mut events) = mpsc::channel::<Event>(256);
    // A session id only tells this root's sessions apart from others': when the OS random
    // source fails, the handshake fails anyway, so any value does here.
    let session = SessionId(u64::from_le_bytes(
        protocol::auth::nonce().map_or([0; 8], |n| n[..8].try_into().unwrap_or([0; 8])),
    ));
    let mut s = Scheduler {
        options,
        session,
        chain: None,
        handlers: None,
        nodes: HashMap::new(),
        next_node: 0,
        lost: Vec::new(),
        queue: VecDeque::new(),
        queued: 0,
        next_id: 0,
        attempts: HashMap::new(),
        counters: Counters::default(),
        waiters: Vec::new(),
        wait_input: Vec::new(),
        wait_empty: Vec::new(),
        paused: false,
        events_tx,
        frame: BytesMut::with_capacity(1 << 20),
    };
    let mut closing: Option<Reply> = None;
    loop {
        let room = s.queued < s.options.queue_items as u64;
        tokio::select! {
            biased;
            e = events.recv() => match e {
                Some(e) => s.on_event(e).await,
                None => break,
            },
            c = cmds.recv() => match c {
                Some(Cmd::Close(reply)) => { closing = Some(reply); break; }
                Some(c) => s.on_cmd(c).await,
                None => break,
            },
            f = feeds.recv(), if room => if let Some(f) = f {
                s.on_feed(f);
            },
        }
        s.dispatch().await;
        s.check_waits();
    }
    // Tell every node we leave for good so they free themselves at once.
    let mut bye = BytesMut::new();
    let _ = protocol::codec::encode_frame(&Msg::Bye, &mut bye, 1024);
    let bye = bye.freeze();
    for n in s.nodes.values() {
        let _ = n.tx.send(bye.clone()).await;
    }
    s.nodes.clear();
    // Dropping the handlers lets them flush whatever they buffer before close() returns.
    s.handlers = None;
    if let Some(reply) = closing {
        let _ = reply.send(Ok(()));
    }
}

impl Scheduler {
    fn encode(&mut self, msg: &Msg) -> Bytes {
        self.frame.clear();
        if let Err(e) = protocol::codec::encode_frame(msg, &mut self.frame, self.options.max_frame)
        {
            tracing::error!("cannot encode {}: {e}", msg.name());
        }
        self.frame.split().freeze()
    }

    async fn send(&mut self, node: NodeId, msg: &Msg) {
        let frame = self.encode(msg);
        if let Some(n) = self.nodes.get(&node) {
            let _ = n.tx.send(frame).await;
        }
    }

    fn on_feed(&mut self, f: Feed) {
        let n = f.items.len();
        if n == 0 {
            return;
        }
        let start = self.next_id;
        self.next_id += n as u64;
        self.counters.fed += n as u64;
        self.queued += n as u64;
        self.queue.push_back(Chunk {
            ids: Ids::Range {
                start,
                count: n as u32,
            },
            items: f.items,
            pos: 0,
            byte_pos: 0,
        });
    }

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Attach {
                addr,
                conn,
                workers,
                reply,
            } => {
                let id = NodeId(self.next_node);
                self.next_node += 1;
                let tx = crate::conn::spawn(
                    id,
                    conn,
                    self.events_tx.clone(),
                    self.options.heartbeat,
                    self.options.heartbeat_timeout,
                );
                self.nodes.insert(
                    id,
                    NodeConn {
                        addr,
                        tx,
                        credit: Credit { items: 0, bytes: 0 },
                        ready: false,
                        draining: false,
                        in_items: 0,
                        in_bytes: 0,
                        next_seq: 0,
                        batches: HashMap::new(),
                    },
                );
                tracing::info!(node = %addr, workers, "node added");
                if let Some(chain) = self.chain.clone() {
                    // A node joining a running cluster gets the current chain.
                    let msg = Msg::Setup(Box::new(Setup {
                        session: self.session,
                        chain,
                    }));
                    self.send(id, &msg).await;
                }
                let _ = reply.send(Ok(id));
            }
            Cmd::Setup {
                chain,
                handlers,
                reply,
            } => {
                if self.nodes.is_empty() {
                    let _ = reply.send(Err(RootError::NoNodes {
                        pending: self.queued,
                        lost: self.lost.join(", "),
                    }));
                    return;
                }
                self.handlers = Some(handlers);
                self.chain = Some(chain.clone());
                let msg = Msg::Setup(Box::new(Setup {
                    session: self.session,
                    chain,
                }));
                let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
                for id in &ids {
                    if let Some(n) = self.nodes.get_mut(id) {
                        n.ready = false;
                    }
                    self.send(*id, &msg).await;
                }
                self.waiters.push(Waiter {
                    kind: WaitKind::Setup,
                    nodes: ids.into_iter().collect(),
                    error: None,
                    reply,
                });
            }
            Cmd::WaitInput(reply) => self.wait_input.push(reply),
            Cmd::WaitEmpty { fed, reply } => {
                if self.chain.is_none() && (self.queued > 0 || fed > self.counters.fed) {
                    let _ = reply.send(Err(RootError::NotSetUp));
                } else {
                    self.wait_empty.push((fed, reply));
                }
            }
            Cmd::Reset(reply) => {
                self.chain = None;
                self.handlers = None;
                self.queue.clear();
                self.queued = 0;
                self.attempts.clear();
                for n in self.nodes.values_mut() {
                    n.ready = false;
                    n.batches.clear();
                    n.in_items = 0;
                    n.in_bytes = 0;
                }
                self.broadcast(WaitKind::Reset, Msg::Reset, reply).await;
            }
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
                c.pending = self.queued;
                c.in_flight = self.nodes.values().map(|n| n.in_items).sum();
                c.nodes = self.nodes.len() as u32;
                let _ = reply.send(c);
            }
            Cmd::Nodes(reply) => {
                let _ = reply.send(self.nodes.values().map(|n| n.addr).collect());
            }
            Cmd::Close(_) => {}
        }
    }

    async fn broadcast(&mut self, kind: WaitKind, msg: Msg, reply: Reply) {
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in &ids {
            self.send(*id, &msg).await;
        }
        self.waiters.push(Waiter {
            kind,
            nodes: ids.into_iter().collect(),
            error: None,
            reply,
        });
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
        if error.is_some() && w.error.is_none() {
            w.error = error;
        }
    }

    async fn on_event(&mut self, e: Event) {
        match e {
            Event::Gone(id, why) => self.node_lost(id, &why),
            Event::Msg(id, msg) => {
                let Some(addr) = self.nodes.get(&id).map(|n| n.addr) else {
                    return;
                };
                match msg {
                    Msg::Outputs(o) => self.on_outputs(id, o),
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

    fn on_outputs(&mut self, id: NodeId, o: Outputs) {
        let Some(node) = self.nodes.get_mut(&id) else {
            return;
        };
        let addr = node.addr;
        let Some(batch) = node.batches.get_mut(&o.seq) else {
            tracing::warn!(node = %addr, seq = o.seq, "outputs for an unknown batch; ignored");
            return;
        };
        let first = o.first as usize;
        let n = o.counts.0.len();
        if first + n > batch.done.len()
            || first + n > batch.ids.len()
            || o.items.validate().is_err()
        {
            tracing::warn!(node = %addr, seq = o.seq, "malformed outputs; ignored");
            return;
        }
        let Some(handlers) = self.handlers.as_mut() else {
            return;
        };
        let mut items = o.items.iter();
        let mut freed_bytes = 0u64;
        let mut completed = 0u64;
        let mut outputs = 0u64;
        // Failures by input index, to skip duplicates along with their input.
        let mut fresh = Vec::with_capacity(n);
        let mut byte_index = batch
            .items
            .lens
            .0
            .iter()
            .take(first)
            .map(|&l| l as u64)
            .sum::<u64>();
        let _ = &mut byte_index;
        for i in 0..n {
            let idx = first + i;
            let count = o.counts.0[i] as usize;
            let dup = batch.done[idx];
            fresh.push(!dup);
            let Some(id) = batch.ids.get(idx) else {
                break; // checked above: every index of the range has an id
            };
            if !dup {
                batch.done[idx] = true;
                batch.remaining -= 1;
                completed += 1;
                freed_bytes += u64::from(batch.items.lens.0[idx]);
                // Forget how often a re-dispatched item was tried once it is done.
                if !self.attempts.is_empty() {
                    self.attempts.remove(&id.0);
                }
            }
            for _ in 0..count {
                let Some(item) = items.next() else { break };
                if !dup {
                    (handlers.output)(id, item);
                    outputs += 1;
                }
            }
        }
        for f in o.failures {
            let idx = f.index as usize;
            if idx < first || idx >= first + n || !fresh[idx - first] {
                continue;
            }
            let Some(input) = batch.ids.get(idx) else {
                continue;
            };
            self.counters.failed += 1;
            let (task, task_index) = match f.task {
                Some(t) => (t.name, Some(t.index)),
                None => (String::new(), None),
            };
            (handlers.failure)(ItemFailure {
                input,
                node: addr.to_string(),
                task,
                task_index,
                item_start: f.item_start,
                message: f.message,
            });
        }
        let finished = batch.remaining == 0;
        if finished {
            node.batches.remove(&o.seq);
        }
        node.in_items -= completed;
        node.in_bytes = node.in_bytes.saturating_sub(freed_bytes);
        self.counters.completed += completed;
        self.counters.outputs += outputs;
    }

    fn node_lost(&mut self, id: NodeId, why: &str) {
        let Some(node) = self.nodes.remove(&id) else {
            return;
        };
        let mut back = 0u64;
        let mut poison = Vec::new();
        for (_, b) in node.batches {
            let mut ids = Vec::new();
            let mut items = Packed::new();
            for (i, item) in b.items.iter().enumerate() {
                if b.done[i] {
                    continue;
                }
                let Some(item_id) = b.ids.get(i) else {
                    continue;
                };
                let a = self.attempts.entry(item_id.0).or_insert(0);
                *a += 1;
                if *a > self.options.max_redispatch {
                    poison.push((item_id, item[..item.len().min(200)].to_vec(), *a));
                    continue;
                }
                ids.push(item_id.0);
                items.push(item);
            }
            back += ids.len() as u64;
            if !ids.is_empty() {
                self.queue.push_front(Chunk {
                    ids: Ids::List(ids),
                    items,
                    pos: 0,
                    byte_pos: 0,
                });
            }
        }
        self.queued += back;
        self.counters.redispatched += back;
        self.lost.push(node.addr.to_string());
        tracing::warn!(node = %node.addr, requeued = back, "node lost: {why}");
        for w in &mut self.waiters {
            if w.nodes.remove(&id) && w.kind == WaitKind::Setup && w.error.is_none() {
                w.error = Some(RootError::Setup {
                    addr: node.addr.to_string(),
                    message: format!("node lost during setup: {why}"),
                });
            }
        }
        if let Some(h) = self.handlers.as_mut() {
            for (input, item_start, attempts) in poison {
                self.counters.failed += 1;
                (h.failure)(ItemFailure {
                    input,
                    node: node.addr.to_string(),
                    task: String::new(),
                    task_index: None,
                    item_start,
                    message: format!(
                        "poison item: its node was lost {attempts} times while holding it (last: {why})"
                    ),
                });
            }
        }
    }

    async fn dispatch(&mut self) {
        if self.paused || self.chain.is_none() {
            return;
        }
        while self.queued > 0 {
            // The ready node with the most room.
            let best = self
                .nodes
                .iter()
                .filter(|(_, n)| n.ready && !n.draining)
                .map(|(id, n)| {
                    let items = u64::from(n.credit.items).saturating_sub(n.in_items);
                    let bytes = n.credit.bytes.saturating_sub(n.in_bytes);
                    (*id, items, bytes, n.credit.items)
                })
                .max_by_key(|&(_, items, _, _)| items);
            let Some((id, room, room_bytes, window)) = best else {
                return;
            };
            let want = (self.options.batch_items as u64)
                .min(u64::from(window) / 4)
                .max(1);
            if room == 0 || room_bytes == 0 || (room < want && self.queued > room) {
                return;
            }
            let take = room.min(self.options.batch_items as u64) as usize;
            let Some((ids, items)) = self.take(take, room_bytes) else {
                return;
            };
            let n = items.len() as u64;
            let bytes = items.bytes() as u64;
            let node = match self.nodes.get_mut(&id) {
                Some(n) => n,
                None => return,
            };
            let seq = node.next_seq;
            node.next_seq += 1;
            node.in_items += n;
            node.in_bytes += bytes;
            let msg = Msg::Items(Items { seq, ids, items });
            self.frame.clear();
            if let Err(e) =
                protocol::codec::encode_frame(&msg, &mut self.frame, self.options.max_frame)
            {
                tracing::error!("cannot encode a batch: {e}");
            }
            let frame = self.frame.split().freeze();
            let Msg::Items(Items { ids, items, .. }) = msg else {
                unreachable!()
            };
            let node = match self.nodes.get_mut(&id) {
                Some(n) => n,
                None => return,
            };
            let count = items.len();
            node.batches.insert(
                seq,
                InFlight {
                    ids,
                    items,
                    done: vec![false; count],
                    remaining: count as u32,
                },
            );
            if node.tx.send(frame).await.is_err() {
                // The writer is gone; the reader reports the loss and we requeue then.
                return;
            }
        }
    }

    /// Takes up to `max` items (and about `max_bytes`) from the front of the queue.
    fn take(&mut self, max: usize, max_bytes: u64) -> Option<(Ids, Packed)> {
        let front = self.queue.front_mut()?;
        if front.pos == 0
            && front.remaining() <= max
            && front.items.bytes() as u64 <= max_bytes.max(1)
        {
            let c = self.queue.pop_front()?;
            self.queued -= c.items.len() as u64;
            return Some((c.ids, c.items));
        }
        let mut ids = Vec::with_capacity(max.min(front.remaining()));
        let mut items = Packed::new();
        let mut first_id = None;
        let mut contiguous = true;
        while ids.len() < max {
            let Some(front) = self.queue.front_mut() else {
                break;
            };
            if front.pos >= front.items.len() {
                self.queue.pop_front();
                continue;
            }
            let len = front.items.lens.0[front.pos] as usize;
            if !ids.is_empty() && (items.bytes() + len) as u64 > max_bytes {
                break;
            }
            let item = &front.items.data[front.byte_pos..front.byte_pos + len];
            let id = front.ids.get(front.pos).map_or(0, |i| i.0);
            match first_id {
                None => first_id = Some(id),
                Some(f) => contiguous &= id == f + ids.len() as u64,
            }
            ids.push(id);
            items.push(item);
            front.pos += 1;
            front.byte_pos += len;
            if front.pos >= front.items.len() {
                self.queue.pop_front();
            }
        }
        self.queued -= ids.len() as u64;
        if ids.is_empty() {
            return None;
        }
        let ids = match first_id {
            Some(start) if contiguous => Ids::Range {
                start,
                count: ids.len() as u32,
            },
            _ => Ids::List(ids),
        };
        Some((ids, items))
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
                    None => Ok(()),
                });
            } else {
                i += 1;
            }
        }
        if !self.wait_input.is_empty() && self.queued < (self.options.queue_items / 2) as u64 {
            for r in self.wait_input.drain(..) {
                let _ = r.send(Ok(()));
            }
        }
        if !self.wait_empty.is_empty() {
            if self.queued == 0 && self.in_flight() == 0 {
                let fed = self.counters.fed;
                let (done, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.wait_empty)
                    .into_iter()
                    .partition(|(want, _)| *want <= fed);
                self.wait_empty = waiting;
                for (_, r) in done {
                    let _ = r.send(Ok(()));
                }
            } else if self.nodes.is_empty() {
                for (_, r) in self.wait_empty.drain(..) {
                    let _ = r.send(Err(RootError::NoNodes {
                        pending: self.queued,
                        lost: self.lost.join(", "),
                    }));
                }
            }
        }
    }
}
