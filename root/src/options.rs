//! [`RootOptions`]: how a root behaves (timeouts, batch and queue bounds, ordering).

use std::time::Duration;

use protocol::auth::Token;

/// How a root behaves.
#[derive(Clone, Debug)]
pub struct RootOptions {
    /// The cluster token (`None`: only nodes without a token are usable).
    pub token: Option<Token>,
    /// Connect timeout for each address (scans and `add_node`).
    pub connect_timeout: Duration,
    /// Deadline of the handshake.
    pub handshake_timeout: Duration,
    /// Connections a scan opens at once.
    pub scan_concurrency: usize,
    /// Most items per batch sent to a node.
    pub batch_items: usize,
    /// Most item bytes per batch sent to a node (batches also stay far below `max_frame`).
    pub batch_bytes: u64,
    /// Most item bytes in flight on one node, whatever it grants (the root holds them until
    /// their outputs arrive, to send them again if the node is lost).
    pub node_bytes: u64,
    /// Items the root queues before `feed` waits.
    pub queue_items: usize,
    /// Bytes the root queues before `feed` waits.
    pub queue_bytes: u64,
    /// Largest input item.
    pub max_item_bytes: u64,
    /// Largest frame.
    pub max_frame: usize,
    /// Interval of heartbeats sent to nodes.
    pub heartbeat: Duration,
    /// A node silent this long is lost.
    pub heartbeat_timeout: Duration,
    /// How often an input whose node was lost is sent again before it is reported failed.
    pub max_redispatch: u32,
    /// How long the root waits for a node to join or come back when none is left; then
    /// `feed`, `wait_input` and `wait_empty` end with [`RootError::NoNodes`].
    pub no_node_timeout: Duration,
    /// Hand outputs over in feed order (each input's outputs, failures and completion
    /// before the next input's), holding back inputs that complete early.
    pub keep_order: bool,
    /// With `keep_order`: most inputs sent past the oldest incomplete one.
    pub reorder_items: u64,
    /// With `keep_order`: bytes of early outputs held before nothing new is sent.
    pub reorder_bytes: u64,
    /// How often an item that failed in a task is tried again, entering the chain at that
    /// task (on another node where there is one); its input's other outputs are not repeated.
    pub retries: u32,
    /// Items fed and handed out are *tagged* (a type tag byte first: `s` str, `b` bytes, `j`
    /// JSON, `p` pickle, `r` raw; docs/ABI.md, "Item tags"), as the Python package uses them:
    /// Python tasks then see each item's type, and outputs of Rust tasks come back as `b`.
    pub tagged_items: bool,
    /// Bytes of outputs held, over all nodes, for inputs whose outputs came in several
    /// messages and are not complete yet (docs/SCHEDULING.md); an input past it fails.
    pub partial_bytes: u64,
    /// Item bytes of messages from the nodes (outputs) waiting for the scheduler, over all
    /// nodes; past it the root stops reading from the nodes until it catches up (one message
    /// past it is taken alone).
    pub outputs_bytes: u64,
    /// Fewest nodes a setup must reach: a node lost or failing during setup is dropped from
    /// the run (named in a warning) while at least this many set the chain up.
    pub min_nodes: usize,
}

impl Default for RootOptions {
    fn default() -> Self {
        RootOptions {
            token: None,
            connect_timeout: Duration::from_millis(300),
            handshake_timeout: Duration::from_secs(5),
            scan_concurrency: 1024,
            batch_items: 4096,
            batch_bytes: 4 << 20,
            node_bytes: 16 << 20,
            queue_items: 1 << 18,
            queue_bytes: 4 << 20,
            max_item_bytes: 16 << 20,
            max_frame: protocol::DEFAULT_MAX_FRAME,
            heartbeat: Duration::from_secs(1),
            heartbeat_timeout: Duration::from_secs(10),
            max_redispatch: 2,
            no_node_timeout: Duration::from_secs(10),
            keep_order: false,
            reorder_items: 1 << 16,
            reorder_bytes: 64 << 20,
            retries: 0,
            tagged_items: false,
            partial_bytes: 1 << 30,
            outputs_bytes: 2 << 20,
            min_nodes: 1,
        }
    }
}
