//! Typed errors of the root library: each says which node and what happened.

use protocol::ProtocolError;

/// What went wrong in a root call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RootError {
    /// Could not reach or talk to a node.
    #[error("node {addr}: {source}")]
    Node {
        /// The node.
        addr: String,
        /// What failed.
        #[source]
        source: ProtocolError,
    },
    /// A node is held by another root whose connection is alive.
    #[error("node {addr} is busy: held by {holder} for {held_s} s")]
    Busy {
        /// The node.
        addr: String,
        /// The root holding it.
        holder: String,
        /// Seconds it has held the node.
        held_s: u64,
    },
    /// Setting the chain up failed on a node.
    #[error("setup failed on node {addr}: {message}")]
    Setup {
        /// The node.
        addr: String,
        /// The node's reason.
        message: String,
    },
    /// No chain is set up.
    #[error("no chain is set up: call setup first")]
    NotSetUp,
    /// A task needs a label that no node carries (all of them on one node).
    #[error("task `{task}` needs label `{label}`, which no node has")]
    Placement {
        /// The task.
        task: String,
        /// The label (or the task's labels, when each is somewhere but no node has all).
        label: String,
    },
    /// A native Python task, and no node allows native tasks.
    #[error(
        "task `{task}` runs native Python, which none of the nodes allows ({nodes}): start \
         nodes with --allow-native (and a token)"
    )]
    NoNativeNode {
        /// The task.
        task: String,
        /// The nodes attached, comma-separated.
        nodes: String,
    },
    /// The cluster has no node.
    #[error("no node is left ({pending} items wait in the queue); lost nodes: {lost}")]
    NoNodes {
        /// Items still queued.
        pending: u64,
        /// Nodes that were lost, comma-separated.
        lost: String,
    },
    /// No node was ever attached: what was tried, and why each failed.
    #[error("no node to run on: {tried}")]
    NoNodeFound {
        /// The addresses and scans tried, and their errors; or that none was tried.
        tried: String,
    },
    /// Nodes are left, but none that can run some task (labels), for longer than the
    /// no-node timeout: the items at that stage wait in the queue.
    #[error(
        "no node left can run task `{task}` (it needs label `{label}`); {pending} items wait \
         in the queue; lost nodes: {lost}"
    )]
    NoNodeForTask {
        /// The task.
        task: String,
        /// A label it needs that no connected node has.
        label: String,
        /// Items still queued.
        pending: u64,
        /// Nodes that were lost, comma-separated.
        lost: String,
    },
    /// A name given to [`crate::Root::search_dns`] does not resolve.
    #[error("cannot resolve {name}: {source}")]
    Resolve {
        name: String,
        #[source]
        source: std::io::Error,
    },
    /// A packed batch given to feed is not well formed.
    #[error("a packed batch to feed is malformed: {0}")]
    Packed(#[from] protocol::PackedError),
    /// Answers given to feed do not fit it (`Root::feed_answered`).
    #[error("answers to feed do not fit the inputs: {0}")]
    Answers(&'static str),
    /// An input item is larger than allowed.
    #[error("item of {size} bytes exceeds the per-item limit of {limit} bytes")]
    ItemTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: u64,
    },
    /// The chain file is wrong, or one of its modules cannot be had.
    #[error("chain file {path}: {source}")]
    Chain {
        /// The file.
        path: String,
        /// What is wrong (boxed: a failed build's output would make every result big).
        #[source]
        source: Box<crate::chain::ChainError>,
    },
    /// The root's background task is gone.
    #[error("the root has shut down")]
    Closed,
    /// A wait passed its deadline.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The dashboard was asked to listen beyond loopback without saying it is meant.
    #[error(
        "dashboard address {addr} is not a loopback address: serving beyond this machine must \
         be asked for (`pcluster run --dashboard-public`, `pcluster dashboard --public`), as \
         the page shows the start of failed items to whoever reaches it"
    )]
    DashboardNotLoopback {
        /// The address asked for.
        addr: std::net::SocketAddr,
    },
    /// The dashboard could not listen.
    #[error("dashboard cannot listen on {addr}: {source}")]
    DashboardBind {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}
