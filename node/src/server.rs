//! The node's TCP server: accepts connections (bounded), runs the handshake, serves status
//! probes, and serves the one root that holds the node: setup, item batches, reset,
//! pause/resume, and draining on shutdown.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use protocol::auth::Token;
use protocol::handshake::{self, Role};
use protocol::{
    Connection, Holder, Msg, NodeState, NodeStatus, Released, SessionId, SetupDone, Welcome,
    WireError,
};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::engine::{ModuleCache, compile_chain};
use crate::error::{RequestError, SetupError};
use crate::worker::{Pool, PoolShared};

/// How a node runs.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Worker threads (default: the number of cores).
    pub workers: u32,
    /// The cluster token; `None` lets anyone who reaches the port use the node.
    pub token: Option<Token>,
    /// Most connections served at once.
    pub max_connections: usize,
    /// Deadline for a new connection's handshake.
    pub handshake_timeout: Duration,
    /// Largest frame accepted.
    pub max_frame: usize,
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
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            workers: cores(),
            token: None,
            max_connections: 1024,
            handshake_timeout: Duration::from_secs(5),
            max_frame: protocol::DEFAULT_MAX_FRAME,
            orphan_grace: Duration::from_secs(30),
            heartbeat: Duration::from_secs(1),
            drain_timeout: Duration::from_secs(60),
            probe_idle_timeout: Duration::from_secs(60),
            root_timeout: Duration::from_secs(30),
        }
    }
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
}

/// The root that holds the node: it set a chain up over connection `conn`.
struct Owner {
    conn: u64,
    root: String,
    session: SessionId,
    /// When it claimed the node.
    since: Instant,
    /// Set when its connection ended without a goodbye: the node is then free for any root
    /// (status shows it orphaned until the grace period ends or a root takes it).
    orphaned_since: Option<Instant>,
    /// Cancelled to end the owner's connection: a release, or its own session taken over
    /// from a new connection.
    kick: CancellationToken,
}

impl Owner {
    fn holder(&self) -> Holder {
        Holder {
            root: self.root.clone(),
            held_s: self.since.elapsed().as_secs(),
        }
    }

    /// Whether its connection is alive, so that it keeps other roots out.
    fn alive(&self) -> bool {
        self.orphaned_since.is_none()
    }
}

#[derive(Default)]
struct Slot {
    owner: Option<Owner>,
    chain: Option<(String, String)>,
    pool: Option<Arc<PoolShared>>,
    /// Counters of the last chain, shown until the next setup.
    last_tasks: Vec<protocol::TaskCounters>,
}

impl Slot {
    /// Drops the chain, keeping its counters for status.
    fn drop_chain(&mut self) {
        if let Some(p) = self.pool.take() {
            self.last_tasks = p.task_counters();
        }
        self.chain = None;
    }

    /// Refuses `conn` when another root holds the node over a live connection.
    fn check_owner(&self, conn: u64) -> Result<(), RequestError> {
        match &self.owner {
            Some(o) if o.conn != conn && o.alive() => {
                Err(RequestError::Busy { holder: o.holder() })
            }
            _ => Ok(()),
        }
    }
}

struct Node {
    config: NodeConfig,
    addr: Arc<str>,
    started: Instant,
    cache: ModuleCache,
    /// Who holds the node and its chain. Every check-and-change of the owner happens under
    /// this one lock, so two roots racing for the node cannot both claim it.
    slot: Mutex<Slot>,
    next_conn: AtomicU64,
    draining: CancellationToken,
}

impl Node {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn status(&self) -> NodeStatus {
        let slot = self.slot();
        let state = if self.draining.is_cancelled() {
            NodeState::Draining
        } else {
            match &slot.owner {
                None => NodeState::Free,
                Some(o) if !o.alive() => NodeState::Orphaned,
                Some(_) => NodeState::Busy,
            }
        };
        NodeStatus {
            addr: self.addr.to_string(),
            cores: cores(),
            workers: self.config.workers,
            idle_workers: slot
                .pool
                .as_ref()
                .map_or(self.config.workers, |p| p.idle.load(Ordering::Relaxed)),
            state,
            root: slot.owner.as_ref().map(|o| o.root.clone()),
            chain: slot.chain.clone(),
            uptime_s: self.started.elapsed().as_secs(),
            modules_compiled: self.cache.compiled.load(Ordering::Relaxed),
            module_cache_hits: self.cache.hits.load(Ordering::Relaxed),
            tasks: slot
                .pool
                .as_ref()
                .map_or_else(|| slot.last_tasks.clone(), |p| p.task_counters()),
            rss_bytes: crate::rss_bytes(),
        }
    }

    /// The root holding the node over a live connection, unless that is `conn` itself or
    /// the session `resume` (the same root on a new connection).
    fn busy_with(&self, conn: u64, resume: Option<SessionId>) -> Option<Holder> {
        let slot = self.slot();
        let owner = slot.owner.as_ref()?;
        (owner.conn != conn && owner.alive() && Some(owner.session) != resume)
            .then(|| owner.holder())
    }

    /// Makes `conn` the owner, atomically: refused while another root's connection holds
    /// the node; an orphaned owner, or this root's own session on an older connection, is
    /// taken over (its chain dropped, its connection closed).
    fn claim(
        &self,
        conn: u64,
        root: &str,
        session: SessionId,
        kick: &CancellationToken,
    ) -> Result<(), RequestError> {
        let mut slot = self.slot();
        let mut since = Instant::now();
        if let Some(o) = &slot.owner {
            if o.conn == conn {
                since = o.since;
            } else if o.alive() && o.session != session {
                return Err(RequestError::Busy { holder: o.holder() });
            } else {
                tracing::info!(node = &*self.addr, old = %o.root, new = root,
                    "a new root takes the node over from a session whose connection is gone");
                o.kick.cancel();
            }
        }
        slot.drop_chain();
        slot.owner = Some(Owner {
            conn,
            root: root.to_string(),
            session,
            since,
            orphaned_since: None,
            kick: kick.clone(),
        });
        Ok(())
    }

    /// Installs the chain `conn` set up, unless it lost the node meanwhile (released or
    /// taken over while the chain compiled).
    fn install(&self, conn: u64, pool: &Arc<PoolShared>) -> Result<(), RequestError> {
        let mut slot = self.slot();
        match &slot.owner {
            Some(o) if o.conn == conn => {
                slot.chain = Some((pool.chain.name.clone(), pool.chain.version.clone()));
                slot.pool = Some(pool.clone());
                Ok(())
            }
            Some(o) if o.alive() => Err(RequestError::Busy { holder: o.holder() }),
            _ => Err(RequestError::Released),
        }
    }

    /// Drops the chain of `conn`, if it holds the node; refused when another root does.
    fn reset(&self, conn: u64) -> Result<(), RequestError> {
        let mut slot = self.slot();
        slot.check_owner(conn)?;
        if slot.owner.as_ref().is_some_and(|o| o.conn == conn) {
            slot.drop_chain();
        }
        Ok(())
    }

    /// Frees the node whoever holds it (`pcluster release`): drops the chain and closes the
    /// holder's connection. Returns who held it.
    fn release_by(&self, peer: SocketAddr) -> Option<Holder> {
        let mut slot = self.slot();
        slot.drop_chain();
        let owner = slot.owner.take()?;
        owner.kick.cancel();
        let holder = owner.holder();
        tracing::warn!(node = &*self.addr, %peer, root = %owner.root,
            "released by {peer}, was held by {}", owner.root);
        Some(holder)
    }

    /// `conn` ended: a goodbye frees the node; otherwise it is orphaned (free for any root
    /// at once; status shows it orphaned for the grace period).
    fn disconnected(self: &Arc<Self>, conn: u64, said_bye: bool) {
        let mut guard = self.slot();
        let slot = &mut *guard;
        let Some(owner) = slot.owner.as_mut() else {
            return;
        };
        if owner.conn != conn {
            return;
        }
        if said_bye || slot.chain.is_none() {
            slot.drop_chain();
            slot.owner = None;
            return;
        }
        if let Some(p) = slot.pool.take() {
            slot.last_tasks = p.task_counters();
        }
        let since = Instant::now();
        owner.orphaned_since = Some(since);
        tracing::info!(node = &*self.addr, root = %owner.root, grace_s = self.config.orphan_grace.as_secs(),
            "root disconnected; the node is free for any root, its chain shown for the grace period");
        let node = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(node.config.orphan_grace).await;
            let mut slot = node.slot();
            if slot.owner.as_ref().and_then(|o| o.orphaned_since) == Some(since) {
                tracing::info!(node = &*node.addr, "grace period over; node is free");
                slot.drop_chain();
                slot.owner = None;
            }
        });
    }
}

/// Runs a node on `listener` until `shutdown` is cancelled, then drains: it stops taking
/// items, finishes what it holds (or hands it back by closing), and returns.
///
/// # Errors
/// When the listener fails.
pub async fn run(
    listener: TcpListener,
    config: NodeConfig,
    shutdown: CancellationToken,
) -> Result<(), NodeError> {
    let local = listener.local_addr()?;
    if config.token.is_none() {
        tracing::warn!(node = %local, "no cluster token set: anyone who can reach {local} can run code on this node (set --token or PCLUSTER_TOKEN)");
    }
    // Compile-ready before the first root arrives.
    let _ = crate::engine::engine();
    let node = Arc::new(Node {
        addr: local.to_string().into(),
        started: Instant::now(),
        cache: ModuleCache::default(),
        slot: Mutex::new(Slot::default()),
        next_conn: AtomicU64::new(1),
        draining: shutdown.clone(),
        config,
    });
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
    let accepted = match handshake::accept(
        stream,
        node.config.token.as_ref(),
        node.config.max_frame,
        node.config.handshake_timeout,
    )
    .await
    {
        Ok(a) => a,
        Err(e) => {
            tracing::debug!(node = &*node.addr, %peer, "handshake failed: {e}");
            return;
        }
    };
    let conn_id = node.next_conn.fetch_add(1, Ordering::Relaxed);
    let mut conn = accepted.conn;
    let welcome = Welcome {
        node: node.addr.to_string(),
        busy_with: node.busy_with(conn_id, accepted.resume),
        workers: node.config.workers,
    };
    if conn.write_message(&Msg::Welcome(welcome)).await.is_err() {
        return;
    }
    match accepted.role {
        Role::Probe => serve_probe(&node, conn, peer, shutdown).await,
        Role::Root => serve_root(node, conn, conn_id, peer, shutdown).await,
    }
}

async fn serve_probe(
    node: &Node,
    mut conn: Connection,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(node.config.probe_idle_timeout, conn.read_message()) => match m {
                Ok(m) => m,
                Err(_) => return,
            },
            _ = shutdown.cancelled() => return,
        };
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

/// The answer refusing a request.
fn reject(e: RequestError) -> Msg {
    Msg::Error(WireError::from(&e))
}

async fn serve_root(
    node: Arc<Node>,
    conn: Connection,
    conn_id: u64,
    peer: SocketAddr,
    shutdown: CancellationToken,
) {
    let (mut reader, mut writer) = conn.split();
    let (tx, mut rx) = mpsc::channel::<Msg>(1024);
    let heartbeat = node.config.heartbeat;
    let writer_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat);
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(m) = m else { break };
                    if writer.feed(&m).is_err() { break; }
                    // Write whatever else is ready in one go.
                    while writer.buffered() < (1 << 20) {
                        match rx.try_recv() {
                            Ok(m) => if writer.feed(&m).is_err() { break },
                            Err(_) => break,
                        }
                    }
                    if writer.flush().await.is_err() { break; }
                }
                _ = tick.tick() => {
                    if writer.write_message(&Msg::Heartbeat).await.is_err() { break; }
                }
            }
        }
        writer.shutdown().await;
    });

    let mut pool: Option<Pool> = None;
    // Cancelled when this connection loses the node it holds (a release, or its session
    // taken over from a newer connection): the connection closes, so its root sees the node
    // lost and re-dispatches what it held.
    let kick = CancellationToken::new();
    let mut draining = false;
    let mut said_bye = false;
    let mut drain_check = tokio::time::interval(Duration::from_millis(10));
    let drain_started = Instant::now();
    let root = peer.to_string();
    loop {
        let msg = tokio::select! {
            m = tokio::time::timeout(node.config.root_timeout, reader.read_message()) => match m {
                Ok(m) => m,
                Err(_) => {
                    tracing::warn!(node = &*node.addr, %peer, timeout_s = node.config.root_timeout.as_secs(),
                        "root sent nothing, not even a heartbeat; treating it as gone");
                    break;
                }
            },
            _ = kick.cancelled() => {
                tracing::warn!(node = &*node.addr, %peer, "this root no longer holds the node; closing its connection");
                break;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                tracing::info!(node = &*node.addr, "draining: finishing the items in flight");
                let _ = tx.send(Msg::Draining).await;
                continue;
            }
            _ = drain_check.tick(), if draining => {
                let idle = pool.as_ref().is_none_or(|p| p.shared.in_flight.load(Ordering::Relaxed) == 0);
                if idle || drain_started.elapsed() > node.config.drain_timeout {
                    break;
                }
                continue;
            }
        };
        let msg = match msg {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(node = &*node.addr, %peer, "closing root connection: {e}");
                let _ = tx.send(reject(e.into())).await;
                break;
            }
        };
        let reply = match msg {
            Msg::StatusRequest => Some(Msg::Status(Box::new(node.status()))),
            Msg::Heartbeat => None,
            Msg::Setup(_) if draining => Some(reject(RequestError::ShuttingDown)),
            Msg::Setup(setup) => {
                if let Err(busy) = node.claim(conn_id, &root, setup.session, &kick) {
                    Some(reject(busy))
                } else {
                    // The claim dropped any earlier chain of this root; stop its workers.
                    pool = None;
                    let started = Instant::now();
                    let set_up = setup_chain(&node, setup.chain, tx.clone())
                        .await
                        .map_err(RequestError::from)
                        .and_then(|(p, compiled, cached)| {
                            node.install(conn_id, &p.shared)?;
                            Ok((p, compiled, cached))
                        });
                    match set_up {
                        Ok((p, compiled, cached)) => {
                            let credit = p.shared.credit();
                            p.shared
                                .announced
                                .store(u64::from(credit.items), Ordering::Relaxed);
                            tracing::info!(node = &*node.addr, chain = %p.shared.chain.name, compiled, cached,
                                ms = started.elapsed().as_millis() as u64, "chain set up");
                            pool = Some(p);
                            Some(Msg::SetupDone(SetupDone {
                                compiled,
                                cached,
                                credit,
                            }))
                        }
                        Err(e) => {
                            tracing::warn!(node = &*node.addr, "setup failed: {e}");
                            Some(reject(e))
                        }
                    }
                }
            }
            Msg::Items(items) => match &pool {
                None => Some(reject(RequestError::NotSetUp)),
                Some(p) => p.accept(items).err().map(reject),
            },
            // Only the connection holding the node may reset, pause or resume it: another
            // root's connection is told who holds it.
            Msg::Reset => match node.reset(conn_id) {
                Ok(()) => {
                    pool = None;
                    Some(Msg::ResetDone)
                }
                Err(busy) => Some(reject(busy)),
            },
            Msg::Pause | Msg::Resume => {
                let pause = matches!(msg, Msg::Pause);
                match &pool {
                    Some(p) => {
                        p.shared.set_paused(pause);
                        Some(if pause { Msg::Paused } else { Msg::Resumed })
                    }
                    None => match node.slot().check_owner(conn_id) {
                        Ok(()) => Some(if pause { Msg::Paused } else { Msg::Resumed }),
                        Err(busy) => Some(reject(busy)),
                    },
                }
            }
            Msg::Bye => {
                said_bye = true;
                break;
            }
            other => Some(reject(RequestError::Unexpected {
                connection: "root",
                message: other.name(),
            })),
        };
        if let Some(reply) = reply
            && tx.send(reply).await.is_err()
        {
            break;
        }
    }
    drop(pool);
    node.disconnected(conn_id, said_bye);
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
}

async fn setup_chain(
    node: &Arc<Node>,
    spec: protocol::ChainSpec,
    out: mpsc::Sender<Msg>,
) -> Result<(Pool, u32, u32), SetupError> {
    let node = node.clone();
    tokio::task::spawn_blocking(move || {
        let (chain, compiled, cached) = compile_chain(&node.cache, &spec)?;
        let pool = Pool::start(
            Arc::new(chain),
            node.config.workers.max(1),
            node.addr.clone(),
            out,
        )?;
        Ok((pool, compiled, cached))
    })
    .await
    .map_err(|e| SetupError::Join(e.to_string()))?
}
