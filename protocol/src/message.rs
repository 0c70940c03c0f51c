//! The messages exchanged after the handshake: one enum, one struct per variant.
//!
//! Flow: a root sends [`Setup`], then [`Items`] batches within the credit the node grants
//! ([`Credit`]); the node answers each part of a batch with [`Outputs`], which carries the
//! outputs of a run of inputs *together with* their completion, so a node that dies can
//! never have delivered half of an input's outputs. Either side sends [`Msg::Heartbeat`].

use serde::{Deserialize, Serialize};

pub use crate::error::Holder;
use crate::error::WireError;
use crate::ids::{ItemId, SessionId, TaskIndex};
use crate::packed::{Packed, U32s};

/// Every message after the handshake.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Msg {
    // --- authentication (right after the preamble) ---
    /// Client → server: a fresh nonce.
    Hello(Hello),
    /// Not sent: kept so that the messages after it keep their numbers on the wire (the
    /// split encoding of batches names them).
    Challenge(Challenge),
    /// Not sent, for the same reason.
    Auth(Auth),
    /// Server → client: authenticated (or no token in use); a summary of the node.
    Welcome(Welcome),

    // --- requests from a root ---
    /// Asks for the node's status.
    StatusRequest,
    /// Sets a chain up; the node answers [`Msg::SetupDone`] or [`Msg::Error`].
    Setup(Box<Setup>),
    /// A batch of input items.
    Items(Items),
    /// Stops the workers and drops the chain; answered by [`Msg::ResetDone`].
    Reset,
    /// Stops taking new items (items in flight finish); answered by [`Msg::Paused`].
    Pause,
    /// Takes items again; answered by [`Msg::Resumed`].
    Resume,
    /// The root leaves for good: the node frees itself at once, without grace period.
    Bye,

    // --- requests from a probe (status connection) ---
    /// Frees the node whoever holds it: the node drops the chain, closes the holder's
    /// connection (its root sees the node lost) and answers [`Msg::Released`]. For a root
    /// that is alive but stuck; a node with a token takes it only from peers that proved
    /// they hold the token.
    Release,

    // --- answers and events from a node ---
    /// The node's status.
    Status(Box<NodeStatus>),
    /// The chain is set up.
    SetupDone(SetupDone),
    /// Outputs and completion of a run of inputs of one batch.
    Outputs(Outputs),
    /// Some outputs of one input whose outputs do not fit one message; the [`Outputs`]
    /// completing the input follows on the same connection.
    Partial(Partial),
    /// The node's current credit window.
    Credit(Credit),
    /// Answer to [`Msg::Reset`].
    ResetDone,
    /// Answer to [`Msg::Pause`].
    Paused,
    /// Answer to [`Msg::Resume`].
    Resumed,
    /// The node is shutting down: it takes no more items and will hand back what it holds.
    Draining,
    /// Answer to [`Msg::Release`].
    Released(Released),

    // --- both ways ---
    /// Liveness signal.
    Heartbeat,
    /// A failure; whether the connection stays open depends on the kind.
    Error(WireError),

    // --- node to root, last so that the variant indexes above stay (`split.rs`) ---
    /// What a long setup is doing (building a Python environment); [`Msg::SetupDone`] or
    /// [`Msg::Error`] follows.
    SetupProgress(SetupProgress),
}

/// Variant indexes of the messages that carry a batch (their place in [`Msg`]), for
/// encodings that write a batch without building its message (`codec`, `split`).
pub(crate) const ITEMS_VARIANT: u32 = 6;
pub(crate) const OUTPUTS_VARIANT: u32 = 14;
pub(crate) const PARTIAL_VARIANT: u32 = 15;

impl Msg {
    /// Bytes of items the message carries — a batch's items, outputs, whole failed items,
    /// continuations — which byte bounds on queues of messages count (other messages are
    /// small and count 0).
    pub fn item_bytes(&self) -> u64 {
        match self {
            Msg::Items(i) => i.items.bytes() as u64,
            Msg::Outputs(o) => {
                o.items.bytes() as u64
                    + o.failures
                        .iter()
                        .map(|f| f.item.as_ref().map_or(0, |i| i.len() as u64))
                        .sum::<u64>()
                    + o.continuations
                        .iter()
                        .map(|c| c.items.bytes() as u64)
                        .sum::<u64>()
            }
            Msg::Partial(p) => p.items.bytes() as u64,
            _ => 0,
        }
    }

    /// The variant's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Msg::Hello(_) => "Hello",
            Msg::Challenge(_) => "Challenge",
            Msg::Auth(_) => "Auth",
            Msg::Welcome(_) => "Welcome",
            Msg::StatusRequest => "StatusRequest",
            Msg::Setup(_) => "Setup",
            Msg::Items(_) => "Items",
            Msg::Reset => "Reset",
            Msg::Pause => "Pause",
            Msg::Resume => "Resume",
            Msg::Bye => "Bye",
            Msg::Release => "Release",
            Msg::Status(_) => "Status",
            Msg::SetupDone(_) => "SetupDone",
            Msg::Outputs(_) => "Outputs",
            Msg::Partial(_) => "Partial",
            Msg::Credit(_) => "Credit",
            Msg::ResetDone => "ResetDone",
            Msg::Paused => "Paused",
            Msg::Resumed => "Resumed",
            Msg::Draining => "Draining",
            Msg::SetupProgress(_) => "SetupProgress",
            Msg::Released(_) => "Released",
            Msg::Heartbeat => "Heartbeat",
            Msg::Error(_) => "Error",
        }
    }
}

/// Client's opening of authentication.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client's fresh nonce.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
    /// A root resuming its session after a reconnect.
    pub resume: Option<SessionId>,
}

/// Not sent (see [`Msg::Challenge`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// The server's fresh nonce.
    #[serde(with = "serde_bytes")]
    pub nonce: Vec<u8>,
}

/// Not sent (see [`Msg::Challenge`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Auth {}

/// The server accepted the client.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The address the node listens on, as it sees it.
    pub node: String,
    /// Another root that holds the node over a live connection. A node whose root's
    /// connection is gone (orphaned) is free: a new root's setup takes it over.
    pub busy_with: Option<Holder>,
    /// Number of workers.
    pub workers: u32,
    /// The node's labels (`pcluster node --labels`): tasks that need labels run only on
    /// nodes that carry all of them.
    #[serde(deserialize_with = "bounded::seq")]
    pub labels: Vec<String>,
}

/// The limits every call of a chain runs under.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Per-item deadline of one task call, in milliseconds.
    pub deadline_ms: u64,
    /// Memory cap of one task instance, in MiB.
    pub memory_mb: u64,
    /// Largest input or output item, in bytes.
    pub max_item_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline_ms: 30_000,
            memory_mb: 256,
            max_item_bytes: 16 << 20,
        }
    }
}

/// One task of a chain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Export name of the task function.
    pub function: String,
    /// Index into [`ChainSpec::modules`].
    pub module: u32,
    /// Whether the task may emit more than one item per input.
    pub generator: bool,
    /// Bytes handed to the task's init export.
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
    /// The tasks its outputs go to, by index (a branching chain); `None`: the next task
    /// listed, if any. Once a task of a chain has a list, those without are sinks.
    pub next: Option<Vec<u32>>,
    /// Labels a node must carry (all of them) to run this task.
    #[serde(deserialize_with = "bounded::seq")]
    pub labels: Vec<String>,
}

/// A taskchain with its modules.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainSpec {
    /// The chain's name.
    pub name: String,
    /// The chain's version.
    pub version: String,
    /// Distinct wasm modules, each sent once however many tasks use it.
    #[serde(deserialize_with = "bounded::seq")]
    pub modules: Vec<serde_bytes::ByteBuf>,
    /// The tasks, in order.
    #[serde(deserialize_with = "bounded::seq")]
    pub tasks: Vec<TaskSpec>,
    /// Limits for every call.
    pub limits: Limits,
}

/// Sets a chain up on a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setup {
    /// The root's session (kept by the node so the root can resume after a reconnect).
    pub session: SessionId,
    /// The chain.
    pub chain: ChainSpec,
    /// Whether failures carry the whole failing item (so the root can try it again).
    pub send_failed_items: bool,
    /// Whether the root feeds and wants *tagged* items (a type tag byte first, as Python
    /// handlers do; docs/ABI.md, "Item tags"). Without it items are raw bytes both ways.
    pub tagged_items: bool,
    /// Modules not shipped to this node, whose bytes in [`ChainSpec::modules`] are empty: no
    /// task it can run (by its labels) uses them, so it neither receives nor compiles them.
    #[serde(deserialize_with = "bounded::seq")]
    pub withheld: Vec<Withheld>,
    /// The round trip between root and node in microseconds, as the root measured it: the
    /// node's credit window covers it as well as the work, so a far node never idles
    /// waiting for items.
    pub rtt_us: u64,
}

/// A module a node does not receive (see [`Setup::withheld`]), with what the node must know
/// of it all the same: whether it is a component, which decides the form of the items its
/// tasks hand on (docs/ABI.md, "Item tags").
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Withheld {
    /// Index into [`ChainSpec::modules`].
    pub module: u32,
    /// Whether it is a component (a Python task) rather than a core module.
    pub component: bool,
}

/// What a node's setup is doing while it takes long.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupProgress {
    /// One line for people, e.g. "installing numpy>=1.26 (pip)".
    pub message: String,
}

/// The chain is ready.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetupDone {
    /// Modules compiled for this setup.
    pub compiled: u32,
    /// Modules found in the node's compiled-module cache.
    pub cached: u32,
    /// The initial credit window.
    pub credit: Credit,
}

/// How much a node is willing to hold at once: the root keeps the items and bytes it has
/// in flight to a node within these.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credit {
    /// Items in flight at most.
    pub items: u32,
    /// Bytes in flight at most.
    pub bytes: u64,
}

/// Ids of the items in a batch.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Ids {
    /// `start, start+1, …, start+count-1` (the common case: a fresh run of inputs).
    Range {
        /// First id.
        start: u64,
        /// Number of ids.
        count: u32,
    },
    /// Any ids (re-dispatched items).
    List(#[serde(deserialize_with = "bounded::seq")] Vec<u64>),
}

impl Ids {
    /// Number of ids.
    pub fn len(&self) -> usize {
        match self {
            Ids::Range { count, .. } => *count as usize,
            Ids::List(v) => v.len(),
        }
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The id at `index`.
    pub fn get(&self, index: usize) -> Option<ItemId> {
        match self {
            Ids::Range { start, count } => {
                (index < *count as usize).then(|| ItemId(start + index as u64))
            }
            Ids::List(v) => v.get(index).map(|&i| ItemId(i)),
        }
    }
}

/// A batch of input items.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Items {
    /// The batch's sequence number on this connection; [`Outputs`] refer to it.
    pub seq: u64,
    /// The items' ids.
    pub ids: Ids,
    /// The items.
    pub items: Packed,
    /// The task the items enter the chain at: the first for fed inputs, the failing one for
    /// an item tried again (`--retries`).
    pub stage: TaskIndex,
}

/// The task an item failed in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedTask {
    /// Its position in the chain.
    pub index: TaskIndex,
    /// Its function name.
    pub name: String,
}

/// An item that failed, in a task or on its way out of the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    /// Index of the input within its batch.
    pub index: u32,
    /// The failing task; `None` when the input failed outside any task (its outputs did
    /// not fit in a message).
    pub task: Option<FailedTask>,
    /// The start of the failing item (at most a few hundred bytes).
    #[serde(with = "serde_bytes")]
    pub item_start: Vec<u8>,
    /// The whole failing item, when the setup asked for it.
    #[serde(with = "serde_bytes")]
    pub item: Option<Vec<u8>>,
    /// What happened.
    pub message: String,
}

/// Outputs and completion of inputs `first .. first+count` of batch `seq`.
///
/// Input `first + i` produced `counts[i]` outputs, which come in order in `items`. Every
/// input in the range is complete: failures of its items are in `failures`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    /// The batch.
    pub seq: u64,
    /// First input index of the range.
    pub first: u32,
    /// Outputs per input of the range.
    pub counts: U32s,
    /// All outputs of the range in input order.
    pub items: Packed,
    /// Items of the range that failed in some task.
    #[serde(deserialize_with = "bounded::seq")]
    pub failures: Vec<Failure>,
    /// Work of inputs of the range handed back to the root (continuations). The root owns
    /// it from this message on: the input completes when all of it has.
    #[serde(deserialize_with = "bounded::seq")]
    pub continuations: Vec<Continuation>,
}

/// Outputs of input `index` of batch `seq`, ahead of the [`Outputs`] that completes it: an
/// input whose outputs exceed one message sends them in parts. The root holds the parts and
/// hands them over only with the completion, so a node lost before it delivered nothing of
/// the input, which then runs again whole elsewhere (docs/SCHEDULING.md).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// The batch.
    pub seq: u64,
    /// Index of the input within its batch.
    pub index: u32,
    /// Outputs of the input, in order; those of the completion come after them.
    pub items: Packed,
}

// --- continuations (scheduling, issue #10) ---

/// Items a generator of one input produced and the node handed back rather than run: the
/// root sends them to any node, entering the chain at `stage`, as descendants of input
/// `index` of the batch. Stage and parent travel once per run of items, not per item.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Continuation {
    /// Index of the input within its batch.
    pub index: u32,
    /// The task the items enter the chain at.
    pub stage: TaskIndex,
    /// The items.
    pub items: Packed,
}

/// Answer to [`Msg::Release`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The root that held the node (its connection alive or not), if any.
    pub was_held_by: Option<Holder>,
}

/// State of a node as seen from outside.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    /// No root holds the node.
    Free,
    /// A root is connected.
    Busy,
    /// Its root disconnected; the chain is kept for a grace period for it to come back.
    Orphaned,
    /// Shutting down.
    Draining,
}

/// Counters of one task of the chain on one node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskCounters {
    /// Task function name.
    pub name: String,
    /// Items the task was called with.
    pub items_in: u64,
    /// Items it emitted.
    pub items_out: u64,
    /// Calls that emitted nothing.
    pub dropped: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Time spent in the task, in nanoseconds.
    pub busy_ns: u64,
}

/// A node's status.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// The address the node listens on.
    pub addr: String,
    /// Cores of its machine.
    pub cores: u32,
    /// Worker threads.
    pub workers: u32,
    /// Workers not running an item now.
    pub idle_workers: u32,
    /// Free, busy, orphaned or draining.
    pub state: NodeState,
    /// The root that holds the node.
    pub root: Option<String>,
    /// The chain set up: name and version.
    pub chain: Option<(String, String)>,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Modules compiled since start.
    pub modules_compiled: u64,
    /// Setups served from the compiled-module cache.
    pub module_cache_hits: u64,
    /// Per-task counters of the current chain.
    #[serde(deserialize_with = "bounded::seq")]
    pub tasks: Vec<TaskCounters>,
    /// Resident memory of the node process, in bytes (`None` where the OS does not say).
    pub rss_bytes: Option<u64>,
    /// The node's labels.
    #[serde(deserialize_with = "bounded::seq")]
    pub labels: Vec<String>,
}

/// Lists decoded without trusting their announced length.
pub(crate) mod bounded {
    use std::marker::PhantomData;

    use serde::de::{Deserialize, Deserializer, SeqAccess, Visitor};

    /// Bytes' worth of elements reserved up front, whatever length the list announces.
    const RESERVE_BYTES: usize = 4096;

    /// A list that reserves room for what a few KiB could hold and grows with the elements
    /// that actually decode, each of which took bytes of the frame: serde's own cap is 1 MiB
    /// per list, so a 4 KiB frame announcing long lists could reserve mebibytes.
    pub(crate) fn seq<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
    where
        D: Deserializer<'de>,
        T: Deserialize<'de>,
    {
        struct Bounded<T>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>> Visitor<'de> for Bounded<T> {
            type Value = Vec<T>;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
                let fit = RESERVE_BYTES / size_of::<T>().max(1);
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(fit));
                while let Some(x) = seq.next_element()? {
                    v.push(x);
                }
                Ok(v)
            }
        }

        d.deserialize_seq(Bounded(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_of_a_range_and_of_a_list() {
        let range = Ids::Range {
            start: 10,
            count: 3,
        };
        assert_eq!((range.len(), range.is_empty()), (3, false));
        assert_eq!(range.get(0), Some(ItemId(10)));
        assert_eq!(range.get(2), Some(ItemId(12)));
        assert_eq!(range.get(3), None);
        let list = Ids::List(vec![7, 3]);
        assert_eq!(list.get(1), Some(ItemId(3)));
        assert_eq!(list.get(2), None);
        assert!(Ids::List(vec![]).is_empty());
    }

    #[test]
    fn a_holder_reads_as_who_and_for_how_long() {
        let h = Holder {
            root: "10.0.0.2:41000".into(),
            held_s: 12,
        };
        assert_eq!(h.to_string(), "10.0.0.2:41000 (for 12 s)");
    }

    #[test]
    fn message_names_match_their_variants() {
        assert_eq!(Msg::Release.name(), "Release");
        assert_eq!(
            Msg::Released(Released { was_held_by: None }).name(),
            "Released"
        );
        assert_eq!(Msg::Heartbeat.name(), "Heartbeat");
        assert_eq!(Msg::Bye.name(), "Bye");
    }
}
