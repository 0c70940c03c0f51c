//! What each node holds: its batches in flight, its credit, and the settling of its
//! answers: which inputs an `Outputs` message completes (each once), and what goes back to
//! the queue when the node is lost.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use protocol::Frame;
use protocol::{Credit, Ids, ItemId, Packed, TaskIndex};
use tokio::sync::mpsc;

use super::partial::Partials;
use super::queue::Chunk;
use super::retry::{Retry, Try};

/// A batch sent to a node and not yet complete.
pub(crate) struct InFlight {
    pub ids: Ids,
    pub items: Packed,
    pub done: Vec<bool>,
    pub remaining: u32,
    pub sent: Instant,
    /// The task the items entered at.
    pub stage: TaskIndex,
    /// For a batch of descendants (retries, continuations): what each item is (its id is
    /// its input's).
    pub tries: Option<Vec<Try>>,
}

/// A re-dispatched input: how often it was sent, and when first.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Attempt {
    pub count: u32,
    pub first: Instant,
}

/// Room a node has for more items.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Room {
    pub items: u64,
    pub bytes: u64,
    pub window: u32,
}

impl Room {
    /// The room left once the root's own bound on bytes in flight per node (`node_bytes`,
    /// of which `in_bytes` are held) applies as well as the node's grant.
    pub fn capped(self, node_bytes: u64, in_bytes: u64) -> Room {
        Room {
            bytes: self.bytes.min(node_bytes.saturating_sub(in_bytes)),
            ..self
        }
    }
}

/// One node as the scheduler sees it.
pub(crate) struct NodeConn {
    pub addr: SocketAddr,
    pub tx: mpsc::Sender<Frame>,
    pub credit: Credit,
    pub ready: bool,
    pub draining: bool,
    /// The user removed it: nothing new is sent to it, and it goes once it holds nothing.
    pub leaving: bool,
    pub in_items: u64,
    pub in_bytes: u64,
    /// The node's labels: which tasks it can run.
    pub labels: Vec<String>,
    /// The round trip to it, measured on connecting (sent with the setup: see
    /// `protocol::Setup::rtt_us`).
    pub rtt: std::time::Duration,
    next_seq: u64,
    pub batches: HashMap<u64, InFlight>,
    /// When it last completed something, or began to hold items (see `silence`).
    pub progress: tokio::time::Instant,
    /// Outputs of its inputs too big for one message, held until they complete.
    pub partials: Partials,
}

impl NodeConn {
    /// `inputs` of batch `seq`, of `bytes` item bytes, were settled: they no longer count as
    /// in flight, and a batch with nothing left goes.
    pub fn settled(&mut self, seq: u64, inputs: u64, bytes: u64) {
        if self.batches.get(&seq).is_some_and(|b| b.remaining == 0) {
            self.batches.remove(&seq);
        }
        self.in_items -= inputs;
        self.in_bytes = self.in_bytes.saturating_sub(bytes);
    }

    pub fn new(addr: SocketAddr, tx: mpsc::Sender<Frame>) -> NodeConn {
        NodeConn {
            addr,
            tx,
            credit: Credit { items: 0, bytes: 0 },
            ready: false,
            draining: false,
            leaving: false,
            in_items: 0,
            in_bytes: 0,
            labels: Vec::new(),
            rtt: std::time::Duration::ZERO,
            next_seq: 0,
            batches: HashMap::new(),
            progress: tokio::time::Instant::now(),
            partials: Partials::default(),
        }
    }

    pub fn room(&self) -> Room {
        Room {
            items: u64::from(self.credit.items).saturating_sub(self.in_items),
            bytes: self.credit.bytes.saturating_sub(self.in_bytes),
            window: self.credit.items,
        }
    }

    /// The share of its credit a node has free, in millionths, by the tighter of items and
    /// bytes (the root's own `node_bytes` bound included). Work goes to the node with the
    /// largest: by items alone, big items all went to one node while bytes bound them.
    pub fn free_share(&self, node_bytes: u64) -> u64 {
        free_share(
            (self.in_items, u64::from(self.credit.items)),
            (self.in_bytes, self.credit.bytes.min(node_bytes)),
        )
    }

    pub fn next_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Records a batch as sent.
    pub fn hold(
        &mut self,
        seq: u64,
        ids: Ids,
        items: Packed,
        stage: TaskIndex,
        tries: Option<Vec<Try>>,
    ) {
        let count = items.len();
        if self.batches.is_empty() {
            self.progress = tokio::time::Instant::now();
        }
        self.in_items += count as u64;
        self.in_bytes += items.bytes() as u64;
        self.batches.insert(
            seq,
            InFlight {
                ids,
                items,
                done: vec![false; count],
                remaining: count as u32,
                sent: Instant::now(),
                stage,
                tries,
            },
        );
    }

    /// Forgets everything it holds (reset).
    pub fn forget(&mut self) {
        self.ready = false;
        self.batches.clear();
        self.partials.clear();
        self.in_items = 0;
        self.in_bytes = 0;
    }
}

/// An input given up on: its node was lost too often while holding it.
pub(crate) struct Poison {
    pub id: ItemId,
    pub item: Vec<u8>,
    pub attempts: u32,
    pub elapsed: Duration,
}

/// What a lost node's batches become.
pub(crate) struct Requeue {
    pub chunks: Vec<Chunk>,
    pub poison: Vec<Poison>,
    /// Retries in flight, to try again elsewhere.
    pub retries: Vec<Retry>,
}

/// Whether a node's loss may be laid on the items it held, counting toward the poison limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Blame {
    /// The connection broke, or the node held items and completed none: an item may have
    /// killed or hung it.
    Items,
    /// The node went silent, heartbeats too (a link cut without a reset, a stopped
    /// process): that says nothing about its items, which go back without a count.
    Link,
}

/// Puts back every input of `batches` not yet complete, counting its attempts; an input sent
/// more than `1 + max_redispatch` times becomes poison instead.
pub(crate) fn requeue(
    batches: HashMap<u64, InFlight>,
    attempts: &mut HashMap<u64, Attempt>,
    max_redispatch: u32,
    blame: Blame,
) -> Requeue {
    let mut out = Requeue {
        chunks: Vec::new(),
        poison: Vec::new(),
        retries: Vec::new(),
    };
    // Oldest batches first, so the queue's front keeps the lowest ids.
    let mut batches: Vec<(u64, InFlight)> = batches.into_iter().collect();
    batches.sort_by_key(|(seq, _)| std::cmp::Reverse(*seq));
    for (_, b) in batches {
        if let Some(tries) = &b.tries {
            for (i, item) in b.items.iter().enumerate() {
                if let (false, Some(parent)) = (b.done[i], b.ids.get(i)) {
                    out.retries.push(Retry {
                        parent,
                        stage: b.stage,
                        item: item.to_vec(),
                        attempt: tries[i].attempt,
                        avoid: None,
                        origin: tries[i].origin,
                    });
                }
            }
            continue;
        }
        let mut ids = Vec::new();
        let mut items = Packed::new();
        for (i, item) in b.items.iter().enumerate() {
            if b.done[i] {
                continue;
            }
            let Some(id) = b.ids.get(i) else {
                continue;
            };
            let a = attempts.entry(id.0).or_insert(Attempt {
                count: 1,
                first: b.sent,
            });
            if blame == Blame::Items {
                a.count += 1;
            }
            if a.count > max_redispatch + 1 {
                out.poison.push(Poison {
                    id,
                    item: item.to_vec(),
                    attempts: a.count - 1,
                    elapsed: a.first.elapsed(),
                });
                attempts.remove(&id.0);
                continue;
            }
            ids.push(id.0);
            items.push(item);
        }
        if !ids.is_empty() {
            out.chunks.push(Chunk::new(Ids::List(ids), items));
        }
    }
    // `chunks` go to the queue's front one by one: newest first so the oldest ends first.
    out
}

/// Of `(held, limit)` in items and in bytes, the smaller free share, in millionths.
fn free_share(items: (u64, u64), bytes: (u64, u64)) -> u64 {
    let share = |(held, limit): (u64, u64)| {
        if limit == 0 {
            return 0;
        }
        let free = u128::from(limit.saturating_sub(held));
        (free * 1_000_000 / u128::from(limit)) as u64
    };
    share(items).min(share(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(ids: Vec<u64>, done: Vec<bool>) -> InFlight {
        let items: Packed = ids.iter().map(|i| i.to_string()).collect();
        let remaining = done.iter().filter(|d| !**d).count() as u32;
        InFlight {
            ids: Ids::List(ids),
            items,
            done,
            remaining,
            sent: Instant::now(),
            stage: TaskIndex(0),
            tries: None,
        }
    }

    #[test]
    fn the_free_share_is_that_of_the_tighter_bound() {
        // Big items: plenty of item room on both, bytes decide.
        let a = free_share((4, 1024), (12 << 20, 16 << 20));
        let b = free_share((2, 1024), (2 << 20, 16 << 20));
        assert!(b > a, "the node holding fewer bytes has more room");
        assert_eq!(a, 250_000);
        // Small items: bytes hardly used, items decide.
        assert_eq!(free_share((768, 1024), (1 << 10, 16 << 20)), 250_000);
        // Full, over-full (a smaller grant) and empty limits have no room.
        assert_eq!(free_share((1024, 1024), (0, 1 << 20)), 0);
        assert_eq!(free_share((1, 1024), (2 << 20, 1 << 20)), 0);
        assert_eq!(free_share((0, 0), (0, 1 << 20)), 0);
        assert_eq!(free_share((0, 1), (0, u64::MAX)), 1_000_000);
    }

    #[test]
    fn only_unfinished_inputs_go_back() {
        let mut attempts = HashMap::new();
        let batches = HashMap::from([(0, batch(vec![1, 2, 3], vec![false, true, false]))]);
        let r = requeue(batches, &mut attempts, 2, Blame::Items);
        assert!(r.poison.is_empty());
        assert_eq!(r.chunks.len(), 1);
        assert_eq!(r.chunks[0].ids, Ids::List(vec![1, 3]));
        assert_eq!(attempts[&1].count, 2);
    }

    #[test]
    fn an_input_lost_too_often_is_poison() {
        let mut attempts = HashMap::new();
        for round in 1..=3 {
            let batches = HashMap::from([(0, batch(vec![9], vec![false]))]);
            let r = requeue(batches, &mut attempts, 2, Blame::Items);
            if round < 3 {
                assert_eq!(r.chunks.len(), 1, "round {round} re-dispatches");
            } else {
                assert!(r.chunks.is_empty());
                assert_eq!(r.poison.len(), 1);
                assert_eq!(r.poison[0].attempts, 3);
                assert_eq!(r.poison[0].item, b"9");
                assert!(attempts.is_empty(), "a poison item's count is forgotten");
            }
        }
    }

    #[test]
    fn silent_links_are_not_the_items_fault() {
        let mut attempts = HashMap::new();
        // A cut link, again and again: the input always goes back, never poison.
        for _ in 0..10 {
            let batches = HashMap::from([(0, batch(vec![9], vec![false]))]);
            let r = requeue(batches, &mut attempts, 2, Blame::Link);
            assert_eq!((r.chunks.len(), r.poison.len()), (1, 0));
        }
        // Broken connections still count, from where they stood.
        for round in 1..=3 {
            let batches = HashMap::from([(0, batch(vec![9], vec![false]))]);
            let r = requeue(batches, &mut attempts, 2, Blame::Items);
            assert_eq!(r.poison.len(), usize::from(round == 3), "round {round}");
        }
    }

    #[test]
    fn older_batches_end_up_first() {
        let mut attempts = HashMap::new();
        let batches = HashMap::from([
            (5, batch(vec![50], vec![false])),
            (4, batch(vec![40], vec![false])),
        ]);
        let r = requeue(batches, &mut attempts, 2, Blame::Items);
        // Pushed to the front in this order, the last pushed (seq 4) is sent first.
        assert_eq!(r.chunks[0].ids, Ids::List(vec![50]));
        assert_eq!(r.chunks[1].ids, Ids::List(vec![40]));
    }
}
