//! Serving the root that holds the node: setup (claiming the node), item batches, reset,
//! pause/resume, release by another peer, heartbeats both ways, and draining on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use protocol::{Connection, Msg, SetupDone};
use tokio_util::sync::CancellationToken;

use super::node::Node;
use super::reject;
use crate::engine::compile_chain;
use crate::error::{RequestError, SetupError};
use crate::worker::Pool;

pub(super) async fn serve_root(
    node: Arc<Node>,
    conn: Connection,
    conn_id: u64,
    peer: SocketAddr,
    shutdown: CancellationToken,
    kick: CancellationToken,
) {
    let (mut reader, writer) = conn.split();
    let (tx, rx) = crate::outbox::outbox(1024, crate::outbox::OUTBOX_BYTES);
    let writer_task = spawn_writer(writer, rx, node.config.heartbeat);
    let mut s = Session {
        node,
        conn_id,
        root: peer.to_string(),
        tx,
        pool: None,
    };
    let mut drain = Drain::default();
    let mut said_bye = false;
    let mut proved = false;
    loop {
        let msg = match s
            .next_message(&mut reader, &kick, &shutdown, &mut drain)
            .await
        {
            Next::Message(m) => m,
            Next::Again => continue,
            Next::Stop => break,
        };
        let msg = match msg {
            Ok(Some(m)) => {
                if !proved {
                    proved = true;
                    super::confirmed(&s.node, conn_id);
                }
                m
            }
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(node = &*s.node.addr, root = %s.root, "closing root connection: {e}");
                let _ = s.tx.send(reject(e.into())).await;
                break;
            }
        };
        if matches!(msg, Msg::Bye) {
            said_bye = true;
            break;
        }
        if let Some(reply) = s.answer(msg, drain.on, &kick, &mut reader).await
            && s.tx.send(reply).await.is_err()
        {
            break;
        }
    }
    let Session { node, tx, pool, .. } = s;
    drop(pool);
    node.disconnected(conn_id, said_bye);
    drop(tx);
    if said_bye {
        // The root wants nothing more and waits for this close to know the node is free.
        writer_task.abort();
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
    }
}

/// The connection's writer: what the outbox holds, many messages per write, and a heartbeat
/// every `heartbeat`.
fn spawn_writer(
    writer: protocol::MessageWriter,
    rx: crate::outbox::OutboxRx,
    heartbeat: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(protocol::writer::write_loop(writer, rx, heartbeat))
}

/// What a root's connection holds.
struct Session {
    node: Arc<Node>,
    conn_id: u64,
    /// The root's address, as the node names its holder.
    root: String,
    tx: crate::outbox::Outbox,
    pool: Option<Pool>,
}

/// Draining on shutdown: once on, the items in flight must be done by `deadline`.
#[derive(Default)]
struct Drain {
    on: bool,
    deadline: Option<tokio::time::Instant>,
}

/// What waiting for the root's next message gave.
enum Next {
    Message(Result<Option<Msg>, protocol::ProtocolError>),
    /// Something changed (a drain began, or progressed): wait again.
    Again,
    /// The connection ends.
    Stop,
}

impl Session {
    /// The root's next message, unless the connection must end first: the root silent past
    /// the root timeout, `kick` cancelled (this connection lost the node it held, or was the
    /// oldest guest), or a shutdown's drain done or timed out.
    async fn next_message(
        &self,
        reader: &mut protocol::MessageReader,
        kick: &CancellationToken,
        shutdown: &CancellationToken,
        drain: &mut Drain,
    ) -> Next {
        let node = &self.node;
        let timeout = node.config.root_timeout;
        let pool = self.pool.as_ref();
        let deadline = drain.deadline.unwrap_or_else(tokio::time::Instant::now);
        tokio::select! {
            m = tokio::time::timeout(timeout, reader.read_message()) => match m {
                Ok(m) => Next::Message(m),
                Err(_) => {
                    tracing::warn!(node = &*node.addr, root = %self.root, timeout_s = timeout.as_secs(),
                        "root sent nothing, not even a heartbeat; treating it as gone");
                    Next::Stop
                }
            },
            _ = kick.cancelled() => {
                tracing::warn!(node = &*node.addr, root = %self.root, "closing a root connection that lost the node (or was the oldest of too many that hold nothing)");
                Next::Stop
            }
            _ = shutdown.cancelled(), if !drain.on => {
                drain.on = true;
                drain.deadline = Some(tokio::time::Instant::now() + node.config.drain_timeout);
                tracing::info!(node = &*node.addr, "draining: finishing the items in flight");
                let _ = self.tx.send(Msg::Draining).await;
                if idle(pool) { Next::Stop } else { Next::Again }
            }
            () = drained(pool), if drain.on => {
                if idle(pool) { Next::Stop } else { Next::Again }
            }
            () = tokio::time::sleep_until(deadline), if drain.on => {
                tracing::warn!(node = &*node.addr, timeout_s = node.config.drain_timeout.as_secs(),
                    "drain timed out with items in flight");
                Next::Stop
            }
        }
    }

    /// Handles one message of the root; the reply, if any.
    async fn answer(
        &mut self,
        msg: Msg,
        draining: bool,
        kick: &CancellationToken,
        reader: &mut protocol::MessageReader,
    ) -> Option<Msg> {
        let node = self.node.clone();
        match msg {
            Msg::StatusRequest => Some(Msg::Status(Box::new(node.status()))),
            Msg::Heartbeat => None,
            Msg::Setup(_) if draining => Some(reject(RequestError::ShuttingDown)),
            Msg::Setup(setup) => Some(self.setup(*setup, kick, reader).await),
            Msg::Items(items) => match &self.pool {
                None => Some(reject(RequestError::NotSetUp)),
                Some(p) => p.accept(items).err().map(reject),
            },
            // Only the connection holding the node may reset, pause or resume it: another
            // root's connection is told who holds it.
            Msg::Reset => match node.reset(self.conn_id) {
                Ok(()) => {
                    self.pool = None;
                    Some(Msg::ResetDone)
                }
                Err(busy) => Some(reject(busy)),
            },
            Msg::Pause | Msg::Resume => {
                let pause = matches!(msg, Msg::Pause);
                let done = if pause { Msg::Paused } else { Msg::Resumed };
                match &self.pool {
                    Some(p) => {
                        p.shared.set_paused(pause);
                        Some(done)
                    }
                    None => match node.slot().check_owner(self.conn_id) {
                        Ok(()) => Some(done),
                        Err(busy) => Some(reject(busy)),
                    },
                }
            }
            other => Some(reject(RequestError::Unexpected {
                connection: "root",
                message: other.name(),
            })),
        }
    }

    /// A setup: claims the node for this root (or says who holds it) and sets the chain up.
    async fn setup(
        &mut self,
        setup: protocol::Setup,
        kick: &CancellationToken,
        reader: &mut protocol::MessageReader,
    ) -> Msg {
        let node = self.node.clone();
        if let Err(busy) = node.claim(self.conn_id, &self.root, setup.session, kick) {
            return reject(busy);
        }
        // It holds the node: no guest any more, never evicted.
        node.gate.leave(self.conn_id);
        // The claim dropped any earlier chain of this root; stop its workers.
        self.pool = None;
        let started = Instant::now();
        let whole_items = setup.send_failed_items;
        let rtt_ns = setup.rtt_us.saturating_mul(1000);
        let set_up = setup_chain(&node, setup, self.tx.clone())
            .await
            .map_err(RequestError::from)
            .and_then(|(p, compiled, cached)| {
                node.install(self.conn_id, &p.shared)?;
                Ok((p, compiled, cached))
            });
        let (p, compiled, cached) = match set_up {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(node = &*node.addr, "setup failed: {e}");
                return reject(e);
            }
        };
        // The holder's frames no longer count against the strangers'.
        reader.set_frame_budget(None);
        p.shared
            .send_failed_items
            .store(whole_items, Ordering::Relaxed);
        p.shared.rtt_ns.store(rtt_ns, Ordering::Relaxed);
        let credit = p.shared.credit();
        p.shared
            .announced
            .store(u64::from(credit.items), Ordering::Relaxed);
        tracing::info!(node = &*node.addr, chain = %p.shared.chain.name, compiled, cached,
            ms = started.elapsed().as_millis() as u64, "chain set up");
        self.pool = Some(p);
        Msg::SetupDone(SetupDone {
            compiled,
            cached,
            credit,
        })
    }
}

async fn setup_chain(
    node: &Arc<Node>,
    setup: protocol::Setup,
    out: crate::outbox::Outbox,
) -> Result<(Pool, u32, u32), SetupError> {
    let protocol::Setup {
        chain: spec,
        tagged_items,
        withheld,
        ..
    } = setup;
    let node = node.clone();
    let workers = node.config.workers.max(1);
    crate::budget::check(
        workers,
        spec.tasks.len(),
        spec.limits.memory_mb,
        crate::budget::buffers_mb(node.config.max_frame),
        node.config.memory_mb,
    )?;
    tokio::task::spawn_blocking(move || {
        let progress = |message: &str| {
            let message = message.to_owned();
            let _ = out.blocking_send(Msg::SetupProgress(protocol::SetupProgress { message }));
        };
        let (chain, compiled, cached) = compile_chain(
            &node.cache,
            &spec,
            tagged_items,
            &node.config.labels,
            &withheld,
            (&node.natives, &progress),
        )?;
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

/// Whether the connection's pool (if any) holds no inputs.
fn idle(pool: Option<&Pool>) -> bool {
    pool.is_none_or(|p| p.shared.in_flight.load(Ordering::Relaxed) == 0)
}

/// Waits until the pool's inputs in flight fall to zero (at once if a fall happened since
/// the last wait; the caller checks again). Without a pool, never.
async fn drained(pool: Option<&Pool>) {
    match pool {
        Some(p) => p.shared.drained.notified().await,
        None => std::future::pending().await,
    }
}
