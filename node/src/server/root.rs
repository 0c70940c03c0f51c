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

/// Encodes `m` for the root. Outputs that cannot be encoded are sent as failures of their
/// inputs instead, so the root never waits for them; any other failure closes the
/// connection (the root then sends what the node held elsewhere). Big batches of outputs
/// are queued as they lie, not copied.
fn feed(writer: &mut protocol::MessageWriter, m: &mut Msg) -> Result<(), protocol::ProtocolError> {
    match (writer.feed_mut(m), &*m) {
        (Err(e), Msg::Outputs(o)) => {
            tracing::error!("cannot send outputs of batch {}: {e}", o.seq);
            writer.feed(&Msg::Outputs(crate::worker::undeliverable(
                o,
                &e.to_string(),
            )))
        }
        (r, _) => r,
    }
}

pub(super) async fn serve_root(
    node: Arc<Node>,
    conn: Connection,
    conn_id: u64,
    peer: SocketAddr,
    shutdown: CancellationToken,
    kick: CancellationToken,
) {
    let (mut reader, mut writer) = conn.split();
    let (tx, mut rx) = crate::outbox::outbox(1024, crate::outbox::OUTBOX_BYTES);
    let heartbeat = node.config.heartbeat;
    let writer_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(heartbeat);
        loop {
            tokio::select! {
                m = rx.recv() => {
                    let Some(mut m) = m else { break };
                    rx.taken(&m);
                    let fed = feed(&mut writer, &mut m);
                    drop(m);
                    if fed.is_err() { break; }
                    // Write whatever else is ready in one go.
                    while writer.buffered() < (1 << 20) {
                        match rx.try_recv() {
                            Some(mut m) => {
                                rx.taken(&m);
                                let fed = feed(&mut writer, &mut m);
                                if fed.is_err() { break }
                            }
                            None => break,
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
    // `kick` is cancelled when this connection loses the node it holds (a release, or its
    // session taken over from a newer connection), or is evicted as the oldest guest before
    // it claimed the node: the connection closes, so its root sees the node lost and
    // re-dispatches what it held.
    let mut draining = false;
    let mut said_bye = false;
    // Set when draining starts: by then the items in flight must be done.
    let mut drain_deadline = tokio::time::Instant::now();
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
                tracing::warn!(node = &*node.addr, %peer, "closing a root connection that lost the node (or was the oldest of too many that hold nothing)");
                break;
            }
            _ = shutdown.cancelled(), if !draining => {
                draining = true;
                drain_deadline = tokio::time::Instant::now() + node.config.drain_timeout;
                tracing::info!(node = &*node.addr, "draining: finishing the items in flight");
                let _ = tx.send(Msg::Draining).await;
                if idle(pool.as_ref()) {
                    break;
                }
                continue;
            }
            () = drained(pool.as_ref()), if draining => {
                if idle(pool.as_ref()) {
                    break;
                }
                continue;
            }
            () = tokio::time::sleep_until(drain_deadline), if draining => {
                tracing::warn!(node = &*node.addr, timeout_s = node.config.drain_timeout.as_secs(),
                    "drain timed out with items in flight");
                break;
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
                    // It holds the node: no guest any more, never evicted.
                    node.gate.leave(conn_id);
                    // The claim dropped any earlier chain of this root; stop its workers.
                    pool = None;
                    let started = Instant::now();
                    let whole_items = setup.send_failed_items;
                    let set_up = setup_chain(&node, *setup, tx.clone())
                        .await
                        .map_err(RequestError::from)
                        .and_then(|(p, compiled, cached)| {
                            node.install(conn_id, &p.shared)?;
                            Ok((p, compiled, cached))
                        });
                    match set_up {
                        Ok((p, compiled, cached)) => {
                            // The holder's frames no longer count against the strangers'.
                            reader.set_frame_budget(None);
                            p.shared
                                .send_failed_items
                                .store(whole_items, Ordering::Relaxed);
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
    if said_bye {
        // The root wants nothing more and waits for this close to know the node is free.
        writer_task.abort();
    } else {
        let _ = tokio::time::timeout(Duration::from_secs(5), writer_task).await;
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
        let (chain, compiled, cached) = compile_chain(
            &node.cache,
            &spec,
            tagged_items,
            &node.config.labels,
            &withheld,
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
