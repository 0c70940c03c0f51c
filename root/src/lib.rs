//! The pcluster root: the library users program against.
//!
//! A [`Root`] finds nodes ([`Root::search_nodes`], [`Root::add_node`]), sets a chain up on
//! all of them ([`Root::setup`]), streams items through them ([`Root::feed`]) and hands every
//! output to the output handler. The handle talks to one background task, the
//! [`scheduler`], which owns all state.
//!
//! - [`blocking`]: [`blocking::BlockingRoot`], the same API for callers without async.
//! - [`chain`]: chain files, their modules turned into wasm by a [`chain::Modules`].
//! - [`native`]: native Python tasks' sources packed to travel with the chain.
//! - [`scan`]: finding nodes on a network; `membership`: nodes joining (one by one, all at
//!   once, by a scan) and leaving.
//! - `conn`: one node connection (reader and writer tasks); `events`: the channel from them
//!   to the scheduler, bounded in messages and bytes.
//! - `options`: [`RootOptions`]; `probe`: [`node_status`] and [`release_node`].
//! - [`dashboard`] (feature `dashboard`): a live web page of a run or of nodes, and the
//!   monitor behind it and behind `pcluster top`.
//!
//! The README's example, as a user outside this workspace writes it (the package is
//! `pcluster-root`, so the crate is `pcluster_root`):
//!
//! ```no_run
//! use pcluster_root::{Root, RootOptions};
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let cluster = Root::new(RootOptions::default());
//!     cluster.search_nodes("127.0.0.0/24".parse()?, 6000).await?; // or add_node(addr)
//!     // A chain of .wasm modules; `pcluster-build` builds task crates and Python packages.
//!     let chain = pcluster_root::chain::load("chain.toml".as_ref(), &pcluster_root::chain::WasmFiles)?;
//!     cluster
//!         .setup_with(
//!             chain,
//!             |input, item| println!("{}: {}", input.0, String::from_utf8_lossy(item)),
//!             |failure| eprintln!("{failure}"),
//!         )
//!         .await?;
//!     let items: Vec<String> = (0..100_000).map(|i| format!("item-{i}")).collect();
//!     for chunk in items.chunks(10_000) {
//!         cluster.wait_input().await?; // returns while the root's queue has room
//!         let ids = cluster.feed(chunk).await?; // backpressured; the ids name the inputs
//!         assert_eq!(ids.count, chunk.len() as u64);
//!     }
//!     cluster.wait_empty().await?; // every item processed, every output handed over
//!     cluster.reset().await?; // workers stopped; nodes ready for another setup
//!     cluster.close().await?; // nodes are freed at once (dropping the root does too)
//!     Ok(())
//! }
//! ```

mod answered;
pub mod blocking;
pub mod chain;
mod conn;
#[cfg(feature = "dashboard")]
pub mod dashboard;
pub mod error;
mod events;
mod failure;
pub mod graph;
mod membership;
pub use membership::resolve_name;
pub mod native;
mod options;
mod probe;
pub mod python;
pub mod scan;
pub mod scheduler;
mod tried;

use std::net::SocketAddr;

use protocol::{NodeStatus, Packed};
use tokio::sync::{Mutex, mpsc, oneshot, watch};

pub use error::RootError;
pub use failure::{FailureCause, ItemFailure};
pub use options::RootOptions;
pub use probe::{node_status, release_node};
pub use protocol::{ChainSpec, Holder, ItemId, Limits, TaskIndex, TaskSpec};
pub use scan::ScanReport;
pub use scheduler::{Answers, Counters, Handler, Handlers, InputDone, Room};

use scheduler::{Cmd, Feed, Stall};
use tried::Tried;

/// Each node's status, or why it could not be had.
pub type NodeStatuses = Vec<(SocketAddr, Result<NodeStatus, RootError>)>;

/// The ids given to the items of one feed: consecutive, in the items' order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FedIds {
    /// The first item's id.
    pub first: ItemId,
    /// How many items.
    pub count: u64,
}

impl FedIds {
    /// Each id, in order.
    pub fn iter(&self) -> impl Iterator<Item = ItemId> + use<> {
        let first = self.first.0;
        (first..first + self.count).map(ItemId)
    }
}

/// The feeding side of a root: ids are given under this lock, so they stay consecutive in
/// feed order and a cancelled feed leaves no gap.
#[derive(Debug)]
struct Feeder {
    tx: mpsc::Sender<Feed>,
    next_id: u64,
}

/// A handle to a root: cheap to share by reference; all calls go to its scheduler task.
///
/// Dropping it (or [`Root::close`]) frees its nodes at once.
#[derive(Debug)]
pub struct Root {
    options: RootOptions,
    cmds: mpsc::Sender<Cmd>,
    feeder: Mutex<Feeder>,
    stall: watch::Receiver<Option<Stall>>,
    /// Items handed to the scheduler's feed channel; `wait_empty` waits for at least these,
    /// since feeds and commands travel on different channels.
    submitted: std::sync::atomic::AtomicU64,
    /// The largest item `feed` takes: the options' limit, and the chain's once one is set
    /// up (a node refuses a batch holding an item over the chain's limit whole).
    item_limit: std::sync::atomic::AtomicU64,
    /// Nodes and scans tried without success, for the error when no node was ever found.
    tried: std::sync::Mutex<Tried>,
    session: protocol::SessionId,
    /// Inputs the caller expects to feed in all, when it knows (the dashboard's total).
    #[cfg(feature = "dashboard")]
    expected_total: watch::Sender<Option<u64>>,
    /// How the dashboard numbers inputs.
    #[cfg(feature = "dashboard")]
    input_numbers: std::sync::Mutex<Option<dashboard::InputNumbers>>,
}

impl Root {
    /// A root with no nodes yet. Must be called within a tokio runtime.
    pub fn new(options: RootOptions) -> Root {
        let (cmds, cmd_rx) = mpsc::channel(64);
        let (feeds, feed_rx) = mpsc::channel(4);
        let item_limit = options.max_item_bytes;
        let (stall_tx, stall) = watch::channel(None);
        // A session id only tells this root's sessions apart from others': when the OS
        // random source fails, the handshake fails anyway, so any value does here.
        let session = protocol::SessionId(u64::from_le_bytes(
            protocol::auth::nonce().map_or([0; 8], |n| n[..8].try_into().unwrap_or([0; 8])),
        ));
        tokio::spawn(scheduler::run(
            options.clone(),
            cmd_rx,
            feed_rx,
            stall_tx,
            session,
        ));
        Root {
            options,
            cmds,
            feeder: Mutex::new(Feeder {
                tx: feeds,
                next_id: 0,
            }),
            stall,
            submitted: std::sync::atomic::AtomicU64::new(0),
            item_limit: std::sync::atomic::AtomicU64::new(item_limit),
            tried: std::sync::Mutex::default(),
            session,
            #[cfg(feature = "dashboard")]
            expected_total: watch::Sender::new(None),
            #[cfg(feature = "dashboard")]
            input_numbers: std::sync::Mutex::new(None),
        }
    }

    /// A root with these nodes added.
    ///
    /// # Errors
    /// As [`Root::add_node`].
    pub async fn with_nodes(options: RootOptions, addrs: &[SocketAddr]) -> Result<Root, RootError> {
        let root = Root::new(options);
        for r in root.add_nodes(addrs).await {
            r?;
        }
        Ok(root)
    }

    /// The options.
    pub fn options(&self) -> &RootOptions {
        &self.options
    }

    /// The largest item [`Root::feed`] takes now: [`RootOptions::max_item_bytes`], or the
    /// chain's `max_item_bytes` while a chain with a smaller one is set up.
    pub fn max_item_bytes(&self) -> u64 {
        self.item_limit.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn call<T>(&self, make: impl FnOnce(scheduler::Reply<T>) -> Cmd) -> Result<T, RootError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(make(tx))
            .await
            .map_err(|_| RootError::Closed)?;
        rx.await
            .map_err(|_| RootError::Closed)?
            .map_err(|e| self.explain(e))
    }

    /// With no node ever attached, "no node is left" says nothing: name what was tried.
    fn explain(&self, e: RootError) -> RootError {
        match e {
            RootError::NoNodes { lost, .. } if lost.is_empty() => RootError::NoNodeFound {
                tried: self.tried.lock().map(|t| t.to_string()).unwrap_or_default(),
            },
            e => e,
        }
    }

    fn note_tried(&self, what: String) {
        if let Ok(mut t) = self.tried.lock() {
            t.add(what);
        }
    }

    /// Sets `chain` up on every node. `on_output` gets every output item with the id of its
    /// input; failures are logged as warnings (see [`Root::setup_with`]).
    ///
    /// # Errors
    /// No node, or a node refused the chain (invalid module, missing export, init failure).
    pub async fn setup(
        &self,
        chain: ChainSpec,
        on_output: impl FnMut(ItemId, &[u8]) + Send + 'static,
    ) -> Result<(), RootError> {
        self.setup_with(chain, on_output, |f| tracing::warn!("{f}"))
            .await
    }

    /// Like [`Root::setup`], with a handler for failed items.
    ///
    /// # Errors
    /// As [`Root::setup`].
    pub async fn setup_with(
        &self,
        chain: ChainSpec,
        on_output: impl FnMut(ItemId, &[u8]) + Send + 'static,
        on_failure: impl FnMut(ItemFailure) + Send + 'static,
    ) -> Result<(), RootError> {
        self.setup_handlers(chain, Handlers::new(on_output).on_failure(on_failure))
            .await
    }

    /// Like [`Root::setup`], with all the handlers (outputs, failures, completions).
    ///
    /// # Errors
    /// As [`Root::setup`].
    pub async fn setup_handlers(
        &self,
        chain: ChainSpec,
        handlers: Handlers,
    ) -> Result<(), RootError> {
        self.item_limit.store(
            self.options.max_item_bytes.min(chain.limits.max_item_bytes),
            std::sync::atomic::Ordering::Relaxed,
        );
        self.call(|reply| Cmd::Setup {
            chain,
            handlers,
            reply,
        })
        .await
    }

    /// Queues items; waits while the root's queue is full (backpressure). Returns the ids
    /// given to them, in order: the output handler names the input by these.
    ///
    /// # Errors
    /// An item over the size limit (nothing of this call is queued then), no node for
    /// longer than `no_node_timeout`, or shut down.
    pub async fn feed<I, T>(&self, items: I) -> Result<FedIds, RootError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<[u8]>,
    {
        let mut batch = Packed::with_capacity(self.options.batch_items, 0);
        let mut batches = Vec::new();
        for item in items {
            let item = item.as_ref();
            let limit = self.max_item_bytes();
            if item.len() as u64 > limit {
                return Err(RootError::ItemTooLarge {
                    size: item.len(),
                    limit,
                });
            }
            batch.push(item);
            if batch.len() >= self.options.batch_items {
                batches.push(std::mem::replace(
                    &mut batch,
                    Packed::with_capacity(self.options.batch_items, 0),
                ));
            }
        }
        batches.push(batch);
        let mut ids: Option<FedIds> = None;
        for b in batches {
            let got = self.feed_packed(b).await?;
            ids = Some(match ids {
                None => got,
                Some(f) => FedIds {
                    first: f.first,
                    count: f.count + got.count,
                },
            });
        }
        Ok(ids.unwrap_or(FedIds {
            first: ItemId(self.feeder.lock().await.next_id),
            count: 0,
        }))
    }

    /// Refuses a batch holding an item over [`Root::max_item_bytes`], naming its size.
    fn check_item_sizes(&self, items: &Packed) -> Result<(), RootError> {
        let limit = self.max_item_bytes();
        match items.lens.0.iter().find(|&&l| u64::from(l) > limit) {
            Some(&big) => Err(RootError::ItemTooLarge {
                size: big as usize,
                limit,
            }),
            None => Ok(()),
        }
    }

    /// Queues a packed batch as it is (the fastest way to feed); returns the ids given.
    ///
    /// # Errors
    /// As [`Root::feed`], and [`RootError::Packed`] when the lengths (and gaps) do not fit
    /// the bytes.
    pub async fn feed_packed(&self, items: Packed) -> Result<FedIds, RootError> {
        items.validate()?;
        self.check_item_sizes(&items)?;
        let mut feeder = self.feeder.lock().await;
        let first = ItemId(feeder.next_id);
        let n = items.len() as u64;
        if n == 0 {
            return Ok(FedIds { first, count: 0 });
        }
        let mut stall = self.stall.clone();
        let feed = Feed {
            start: first.0,
            items,
            answers: None,
        };
        tokio::select! {
            sent = feeder.tx.send(feed) => sent.map_err(|_| RootError::Closed)?,
            e = scheduler::stalled(&mut stall) => return Err(self.explain(e)),
        }
        feeder.next_id += n;
        self.submitted
            .fetch_add(n, std::sync::atomic::Ordering::Relaxed);
        Ok(FedIds { first, count: n })
    }

    /// Returns when the root's queue has room for more input.
    ///
    /// # Errors
    /// Shut down.
    pub async fn wait_input(&self) -> Result<(), RootError> {
        self.call(Cmd::WaitInput).await
    }

    /// Returns when every fed item is processed and every output reached the handler.
    ///
    /// # Errors
    /// When no node is left while items remain (they stay queued: add a node and wait
    /// again), or no chain is set up.
    pub async fn wait_empty(&self) -> Result<(), RootError> {
        let fed = self.submitted.load(std::sync::atomic::Ordering::Relaxed);
        self.call(|reply| Cmd::WaitEmpty { fed, reply }).await
    }

    /// Returns once a node is attached: at once when one is, else when one joins or comes
    /// back, or with [`RootError::NoNodes`] once none has been there for `no_node_timeout`.
    ///
    /// # Errors
    /// No node for longer than `no_node_timeout`, or shut down.
    pub async fn wait_for_node(&self) -> Result<(), RootError> {
        self.call(Cmd::WaitNode).await
    }

    /// Stops the workers everywhere and drops the chain and every queued item; the nodes
    /// stay connected, ready for another setup.
    ///
    /// # Errors
    /// Shut down.
    pub async fn reset(&self) -> Result<(), RootError> {
        self.item_limit.store(
            self.options.max_item_bytes,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.call(Cmd::Reset).await
    }

    /// Stops nodes from taking new items (items in flight finish).
    ///
    /// # Errors
    /// Shut down.
    pub async fn pause(&self) -> Result<(), RootError> {
        self.call(Cmd::Pause).await
    }

    /// Undoes [`Root::pause`].
    ///
    /// # Errors
    /// Shut down.
    pub async fn resume(&self) -> Result<(), RootError> {
        self.call(Cmd::Resume).await
    }

    /// The root's own counters.
    ///
    /// # Errors
    /// Shut down.
    pub async fn counters(&self) -> Result<Counters, RootError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Counters(tx))
            .await
            .map_err(|_| RootError::Closed)?;
        rx.await.map_err(|_| RootError::Closed)
    }

    /// Drops the items fed but not yet sent to a node; the items nodes hold go on. Returns
    /// how many were dropped: they produce no output and are never done. For stopping
    /// early: [`Root::wait_empty`] then waits only for the items in flight.
    ///
    /// # Errors
    /// Shut down.
    pub async fn unqueue(&self) -> Result<u64, RootError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Unqueue(tx))
            .await
            .map_err(|_| RootError::Closed)?;
        rx.await.map_err(|_| RootError::Closed)
    }

    /// The addresses of the nodes attached now.
    ///
    /// # Errors
    /// Shut down.
    pub async fn nodes(&self) -> Result<Vec<SocketAddr>, RootError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Nodes(tx))
            .await
            .map_err(|_| RootError::Closed)?;
        rx.await.map_err(|_| RootError::Closed)
    }

    /// The status of every node (asked over a separate status connection per node).
    ///
    /// # Errors
    /// Shut down. A node that does not answer appears as an `Err` entry.
    pub async fn status(
        &self,
    ) -> Result<Vec<(SocketAddr, Result<NodeStatus, RootError>)>, RootError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Nodes(tx))
            .await
            .map_err(|_| RootError::Closed)?;
        let nodes = rx.await.map_err(|_| RootError::Closed)?;
        let mut out = Vec::with_capacity(nodes.len());
        for addr in nodes {
            out.push((addr, node_status(addr, &self.options).await));
        }
        Ok(out)
    }

    /// Says goodbye to every node (they free themselves at once) and stops the scheduler,
    /// after handing over every output that arrived before; the handlers are dropped then.
    /// Returns once every node has acknowledged by closing its connection, so a root started
    /// next finds them free; a node that does not within 3 s is not waited for (a warning
    /// names it).
    ///
    /// # Errors
    /// Already shut down.
    pub async fn close(self) -> Result<(), RootError> {
        self.call(Cmd::Close).await
    }

    /// Like [`Root::close`], for a shared handle: later calls fail with [`RootError::Closed`].
    ///
    /// # Errors
    /// Already shut down.
    pub async fn close_shared(&self) -> Result<(), RootError> {
        self.call(Cmd::Close).await
    }

    /// This root's session (nodes know their owner by it).
    pub fn session(&self) -> protocol::SessionId {
        self.session
    }
}
