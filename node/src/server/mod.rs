//! The node's TCP server: accepts connections (bounded), runs the handshake, serves status
//! probes, and serves the one root that holds the node: setup, item batches, reset,
//! pause/resume, and draining on shutdown.

//!
//! - [`node`]: the node's shared state: who holds it (claims, orphans, releases) and its
//!   chain, all under one lock; its status.
//! - [`root`]: serving the root that holds the node.
//! - [`metrics`]: the node's Prometheus metrics (`NodeConfig::metrics`);
//!   [`totals`] keeps the counters of chains that ended for them.
//! - [`gate`]: guests (connections whose first message has not proved the token, or
//!   without a token not holding the node) hold few slots: past a cap the oldest guest of
//!   the source with the most is evicted.

mod gate;
mod metrics;
mod node;
mod root;
mod totals;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::auth::Token;
use protocol::handshake::{self, Role};
use protocol::{Connection, Msg, Released, Welcome, WireError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::ModuleCache;
use crate::error::RequestError;
use gate::Gate;
use node::{Node, Slot};

/// Bytes all connections that do not hold a token-less node may hold in partly read frames
/// together (each also holds up to [`protocol::framing::FREE_PARTIAL`] of its own): one whole
/// frame, so a root's setup fits, however many strangers announce big frames.
const STRANGER_FRAME_BYTES: usize = protocol::DEFAULT_MAX_FRAME;

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Worker threads (default: the number of cores).
    pub workers: u32,
    /// The cluster token; `None` lets anyone who reaches the port use the node.
    pub token: Option<Token>,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Most guests at once: connections that have not proved the token (with one) or do
    /// not hold the node (without one). Past it the oldest guest of the source address with
    /// the most guests is closed, so strangers cannot keep a root out.
    pub max_guests: usize,
    /// Deadline for a new connection's handshake.
    pub handshake_timeout: Duration,
    /// Largest frame accepted.
    pub max_frame: usize,
    /// MiB the chain's task instances (at their caps) plus the node's buffers may take.
    pub memory_mb: u64,
    /// How long a chain is kept for a root that disconnected without saying goodbye.
    pub orphan_grace: Duration,
    /// Interval of heartbeats to the root.
    pub heartbeat: Duration,
    /// How long a shutdown waits for items in flight to finish.
    pub drain_timeout: Duration,
    /// Idle time after which a status-only connection is closed.
    pub probe_idle_timeout: Duration,
    /// A root silent this long (no message, no heartbeat) is treated as gone: its
    /// connection is closed and the node is orphaned, as if the root had disconnected.
    pub root_timeout: Duration,
    /// Where compiled modules and components are kept across processes (`None`: in memory
    /// only). Default: [`crate::default_cache_dir`].
    pub cache_dir: Option<std::path::PathBuf>,
    /// MiB of compiled code kept in `cache_dir`, least recently used out (by every node
    /// process sharing it). Default: [`NodeConfig::DEFAULT_CACHE_MB`].
    pub cache_mb: u64,
    /// Free-form labels: tasks that need labels run only on nodes carrying all of them.
    /// `native` is reserved: [`run`] adds it when native tasks are allowed.
    pub labels: Vec<String>,
    /// Native Python tasks: whether they run here, and with which interpreter.
    pub native: crate::native::NativeConfig,
    /// Where to serve Prometheus metrics (`/metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            workers: cores(),
            token: None,
            max_connections: 1024,
            max_guests: 64,
            handshake_timeout: Duration::from_secs(5),
            max_frame: protocol::DEFAULT_MAX_FRAME,
            memory_mb: crate::budget::default_memory_mb(),
            orphan_grace: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(60),
            probe_idle_timeout: Duration::from_secs(60),
            root_timeout: Duration::from_secs(30),
            cache_dir: crate::default_cache_dir(),
            cache_mb: NodeConfig::DEFAULT_CACHE_MB,
            labels: Vec::new(),
            native: crate::native::NativeConfig::default(),
            metrics: None,
        }
    }
}

impl NodeConfig {
    /// The default bound of the disk cache: a few dozen Python components (~35 MB each) or
    /// a couple of thousand Rust task modules (~0.5 MB).
    pub const DEFAULT_CACHE_MB: u64 = 1024;
}

/// Checks the native settings and gives an allowing node the label `native`.
fn native_label(config: &mut NodeConfig) -> Result<(), NodeError> {
    let label = protocol::native::NATIVE_LABEL;
    if config.labels.iter().any(|l| l == label) {
        return Err(NodeError::ReservedLabel);
    }
    if config.native.allow {
        if config.token.is_none() {
            return Err(NodeError::NativeWithoutToken);
        }
        config.labels.push(label.to_owned());
    }
    Ok(())
}

/// Number of cores of this machine.
pub fn cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Errors that stop a node.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The listener failed.
    #[error("listener: {0}")]
    Io(#[from] std::io::Error),
    /// wasmtime could not be set up.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// Native tasks allowed without a token: anyone reaching the port could run any code.
    #[error(
        "native Python tasks run any code of whoever holds the node: --allow-native needs a \
         cluster token (--token-file, --token or PCLUSTER_TOKEN)"
    )]
    NativeWithoutToken,
    /// The metrics address cannot be bound.
    #[error("cannot serve metrics on {addr}: {source}")]
    MetricsBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// The reserved label given by hand.
    #[error("the label `native` is reserved: nodes get it with --allow-native")]
    ReservedLabel,
}

/// Runs a node on `listener` until `shutdown` is cancelled, then drains: it stops taking
/// items, finishes what it holds (or hands it back by closing), and returns.
///
/// # Errors
/// When the listener fails, or native tasks are allowed without a token.
pub async fn run(
    listener: TcpListener,
    mut config: NodeConfig,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let local = listener.local_addr()?;
    native_label(&mut config)?;
    if config.token.is_none() {
        tracing::warn!(node = %local, "no cluster token set: anyone who can reach {local} can run code on this node (set --token or PCLUSTER_TOKEN)");
    }
    // Compile-ready before the first root arrives.
    crate::engine::engine()?;
    let node = Arc::new(Node {
        addr: local.to_string().into(),
        started: Instant::now(),
        cache: ModuleCache::with_dir(config.cache_dir.clone())
            .with_disk_bound(config.cache_mb.saturating_mul(1 << 20)),
        slot: Mutex::new(Slot::default()),
        next_conn: AtomicU64::new(1),
        draining: shutdown.clone(),
        strangers: protocol::framing::FramePool::new(STRANGER_FRAME_BYTES),
        gate: Gate::new(config.max_guests),
        natives: crate::native::Natives::new(config.native.clone(), config.cache_dir.as_deref()),
        config,
    });
    if let Some(addr) = node.config.metrics {
        metrics::start(node.clone(), addr, shutdown.clone()).await?;
    }
    let limit = Arc::new(Semaphore::new(node.config.max_connections));
    let tracker = TaskTracker::new();
    tracing::info!(
        node = &*node.addr,
        workers = node.config.workers,
        "node listening"
    );
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(node = &*node.addr, "accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        let node = node.clone();
        let shutdown = shutdown.clone();
        tracker.spawn(async move {
            serve(node, stream, peer, shutdown).await;
            drop(permit);
        });
    }
    drop(listener);
    tracker.close();
    let deadline = node.config.drain_timeout + Duration::from_secs(1);
    if tokio::time::timeout(deadline, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            node = &*node.addr,
            "drain deadline passed; closing with items in flight (the root re-dispatches them)"
        );
    }
    tracing::info!(node = &*node.addr, "node stopped");
    Ok(())
}

async fn serve(node: Arc<Node>, stream: TcpStream, peer: SocketAddr, shutdown: CancellationToken) {
    let conn_id = node.next_conn.fetch_add(1, Ordering::Relaxed);
    // Cancelled to close this connection: evicted while a guest, or the node lost.
    let kick = CancellationToken::new();
    if node.gate.enter(conn_id, peer.ip(), &kick) > 0 {
        tracing::debug!(node = &*node.addr, %peer, "too many guests: closed the oldest of the source with the most");
    }
    serve_guest(&node, stream, peer, shutdown, conn_id, kick).await;
    node.gate.leave(conn_id);
}

async fn serve_guest(
    node: &Arc<Node>,
    stream: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    conn_id: u64,
    kick: CancellationToken,
) {
    let accepted = tokio::select! {
        a = handshake::accept(
            stream,
            node.config.token.as_ref(),
            node.config.max_frame,
            node.config.handshake_timeout,
        ) => a,
        _ = kick.cancelled() => return,
    };
    let accepted = match accepted {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(node = &*node.addr, %peer, "handshake failed: {e}");
            return;
        }
    };
    // With a token it stays a guest until its first message opens with the connection's
    // keys (`confirmed`): a replayed handshake message gets this far too, without the keys.
    let mut conn = accepted.conn;
    if node.config.token.is_none() {
        // Anyone may connect: until this connection holds the node, what it reads counts
        // against the node-wide bound (lifted on claim, see `root::serve_root`).
        conn.reader
            .set_frame_budget(Some(protocol::framing::FrameBudget::new(&node.strangers)));
    }
    let welcome = Welcome {
        node: node.addr.to_string(),
        busy_with: node.busy_with(conn_id, accepted.resume),
        workers: node.config.workers,
        labels: node.config.labels.clone(),
    };
    if conn.write_message(&Msg::Welcome(welcome)).await.is_err() {
        return;
    }
    match accepted.role {
        Role::Probe => serve_probe(node, conn, peer, shutdown, kick, conn_id).await,
        Role::Root => root::serve_root(node.clone(), conn, conn_id, peer, shutdown, kick).await,
    }
}

async fn serve_probe(
    node: &Node,
    mut conn: Connection,
    peer: SocketAddr,
    shutdown: CancellationToken,
    kick: CancellationToken,
    conn_id: u64,
) {
    let mut proved = false;
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(node.config.probe_idle_timeout, conn.read_message()) => match m {
                Ok(m) => m,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
            _ = kick.cancelled() => return,
        };
        if !proved && matches!(msg, Ok(Some(_))) {
            proved = true;
            confirmed(node, conn_id);
        }
        let reply = match msg {
            Ok(Some(Msg::StatusRequest)) => Msg::Status(Box::new(node.status())),
            Ok(Some(Msg::Release)) => Msg::Released(Released {
                was_held_by: node.release_by(peer),
            }),
            Ok(Some(Msg::Heartbeat)) => continue,
            Ok(Some(other)) => reject(RequestError::Unexpected {
                connection: "status",
                message: other.name(),
            }),
            Ok(None) => return,
            Err(e) => {
                tracing::debug!(node = &*node.addr, %peer, "probe connection: {e}");
                let _ = conn.write_message(&reject(e.into())).await;
                return;
            }
        };
        if conn.write_message(&reply).await.is_err() {
            return;
        }
    }
}

/// Connection `conn_id`'s first message opened with its keys: with a token, that proves it
/// holds the token (the handshake alone does not: a replayed first message completes it), so
/// it is a guest no more. Without a token only claiming the node does that.
fn confirmed(node: &Node, conn_id: u64) {
    if node.config.token.is_some() {
        node.gate.leave(conn_id);
    }
}

/// The answer refusing a request.
fn reject(e: RequestError) -> Msg {
    Msg::Error(WireError::from(&e))
}
