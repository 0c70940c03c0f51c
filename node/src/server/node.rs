//! The node's shared state: the root that holds it ([`Owner`]) and its chain ([`Slot`]),
//! under one lock so that every check-and-change of the owner is atomic; claims, orphans,
//! releases and the node's status.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use protocol::{Holder, NodeState, NodeStatus, SessionId};
use tokio_util::sync::CancellationToken;

use super::{NodeConfig, cores};
use crate::engine::ModuleCache;
use crate::error::RequestError;
use crate::worker::PoolShared;

/// The root that holds the node: it set a chain up over connection `conn`.
pub(super) struct Owner {
    pub(super) conn: u64,
    pub(super) root: String,
    pub(super) session: SessionId,
    /// When it claimed the node.
    pub(super) since: Instant,
    /// Set when its connection ended without a goodbye: the node is then free for any root
    /// (status shows it orphaned until the grace period ends or a root takes it).
    pub(super) orphaned_since: Option<Instant>,
    /// Cancelled to end the owner's connection: a release, or its own session taken over
    /// from a new connection.
    pub(super) kick: CancellationToken,
}

impl Owner {
    pub(super) fn holder(&self) -> Holder {
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
pub(super) struct Slot {
    pub(super) owner: Option<Owner>,
    pub(super) chain: Option<(String, String)>,
    pub(super) pool: Option<Arc<PoolShared>>,
    /// Counters of the last chain, shown until the next setup.
    pub(super) last_tasks: Vec<protocol::TaskCounters>,
    /// Counters of every chain that ended, for the node's metrics.
    pub(super) totals: super::totals::TaskTotals,
}

impl Slot {
    /// Drops the chain, keeping its counters for status.
    fn drop_chain(&mut self) {
        self.retire_pool();
        self.chain = None;
    }

    /// Stops showing the pool as live: its counters become the last chain's, and count in
    /// the node's totals.
    pub(super) fn retire_pool(&mut self) {
        if let Some(p) = self.pool.take() {
            self.last_tasks = p.task_counters();
            self.totals.add(&p.chain.name, &self.last_tasks);
        }
    }

    /// Refuses `conn` when another root holds the node over a live connection.
    pub(super) fn check_owner(&self, conn: u64) -> Result<(), RequestError> {
        match &self.owner {
            Some(o) if o.conn != conn && o.alive() => {
                Err(RequestError::Busy { holder: o.holder() })
            }
            _ => Ok(()),
        }
    }
}

pub(super) struct Node {
    pub(super) config: NodeConfig,
    pub(super) addr: Arc<str>,
    pub(super) started: Instant,
    pub(super) cache: ModuleCache,
    /// Who holds the node and its chain. Every check-and-change of the owner happens under
    /// this one lock, so two roots racing for the node cannot both claim it.
    pub(super) slot: Mutex<Slot>,
    pub(super) next_conn: AtomicU64,
    pub(super) draining: CancellationToken,
    /// Bytes that connections not holding the node (on a node without a token) may hold in
    /// partly read frames, all together.
    pub(super) strangers: protocol::framing::FramePool,
    /// Connections that hold a slot without having proven anything.
    pub(super) gate: super::gate::Gate,
    /// Native Python tasks' code and environments.
    pub(super) natives: crate::native::Natives,
}

impl Node {
    pub(super) fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn status(&self) -> NodeStatus {
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
            labels: self.config.labels.clone(),
        }
    }

    /// The root holding the node over a live connection, unless that is `conn` itself or
    /// the session `resume` (the same root on a new connection).
    pub(super) fn busy_with(&self, conn: u64, resume: Option<SessionId>) -> Option<Holder> {
        let slot = self.slot();
        let owner = slot.owner.as_ref()?;
        (owner.conn != conn && owner.alive() && Some(owner.session) != resume)
            .then(|| owner.holder())
    }

    /// Makes `conn` the owner, atomically: refused while another root's connection holds
    /// the node; an orphaned owner, or this root's own session on an older connection, is
    /// taken over (its chain dropped, its connection closed).
    pub(super) fn claim(
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
    pub(super) fn install(&self, conn: u64, pool: &Arc<PoolShared>) -> Result<(), RequestError> {
        let mut slot = self.slot();
        match &slot.owner {
            Some(o) if o.conn == conn => {
                slot.retire_pool();
                slot.chain = Some((pool.chain.name.clone(), pool.chain.version.clone()));
                slot.pool = Some(pool.clone());
                Ok(())
            }
            Some(o) if o.alive() => Err(RequestError::Busy { holder: o.holder() }),
            _ => Err(RequestError::Released),
        }
    }

    /// Drops the chain of `conn`, if it holds the node; refused when another root does.
    pub(super) fn reset(&self, conn: u64) -> Result<(), RequestError> {
        let mut slot = self.slot();
        slot.check_owner(conn)?;
        if slot.owner.as_ref().is_some_and(|o| o.conn == conn) {
            slot.drop_chain();
        }
        Ok(())
    }

    /// Frees the node whoever holds it (`pcluster release`): drops the chain and closes the
    /// holder's connection. Returns who held it.
    pub(super) fn release_by(&self, peer: SocketAddr) -> Option<Holder> {
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
    pub(super) fn disconnected(self: &Arc<Self>, conn: u64, said_bye: bool) {
        let mut guard = self.slot();
        let slot = &mut *guard;
        if slot.owner.as_ref().is_none_or(|o| o.conn != conn) {
            return;
        }
        if said_bye || slot.chain.is_none() {
            slot.drop_chain();
            slot.owner = None;
            return;
        }
        slot.retire_pool();
        let Some(owner) = slot.owner.as_mut() else {
            return;
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    fn node() -> Arc<Node> {
        Arc::new(Node {
            config: NodeConfig::default(),
            addr: "127.0.0.1:6000".into(),
            started: Instant::now(),
            cache: ModuleCache::default(),
            slot: Mutex::new(Slot::default()),
            next_conn: AtomicU64::new(1),
            draining: CancellationToken::new(),
            gate: crate::server::gate::Gate::new(64),
            strangers: protocol::framing::FramePool::new(1 << 20),
            natives: crate::native::Natives::default(),
        })
    }

    fn busy(r: Result<(), RequestError>) -> Option<String> {
        match r {
            Err(RequestError::Busy { holder }) => Some(holder.root),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_live_owner_keeps_others_out_and_an_orphan_does_not() {
        let n = node();
        let (k1, k2) = (CancellationToken::new(), CancellationToken::new());
        n.claim(1, "root-1", SessionId(1), &k1).unwrap();
        assert_eq!(n.busy_with(2, None).map(|h| h.root), Some("root-1".into()));
        assert_eq!(n.busy_with(1, None), None, "not busy for itself");
        assert_eq!(n.busy_with(2, Some(SessionId(1))), None, "nor its session");
        assert_eq!(
            busy(n.claim(2, "root-2", SessionId(2), &k2)),
            Some("root-1".into())
        );
        assert_eq!(busy(n.reset(2)), Some("root-1".into()));
        assert_eq!(n.status().state, NodeState::Busy);

        n.slot().chain = Some(("c".into(), "1".into()));
        n.disconnected(1, false);
        assert_eq!(n.status().state, NodeState::Orphaned);
        assert_eq!(n.busy_with(2, None), None, "orphaned means free");
        n.claim(2, "root-2", SessionId(2), &k2).unwrap();
        let s = n.status();
        assert_eq!(
            (s.state, s.root, s.chain),
            (NodeState::Busy, Some("root-2".into()), None)
        );
        assert!(k1.is_cancelled() && !k2.is_cancelled());
    }

    #[tokio::test]
    async fn a_release_ends_the_owner_and_a_goodbye_frees_at_once() {
        let n = node();
        let k = CancellationToken::new();
        n.claim(1, "root-1", SessionId(1), &k).unwrap();
        let peer: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(n.release_by(peer).map(|h| h.root), Some("root-1".into()));
        assert!(k.is_cancelled(), "the owner's connection is told to close");
        assert_eq!(n.status().state, NodeState::Free);
        assert_eq!(n.release_by(peer), None);
        // The released connection ending later changes nothing.
        n.disconnected(1, false);
        assert_eq!(n.status().state, NodeState::Free);

        n.claim(2, "root-2", SessionId(2), &k).unwrap();
        n.slot().chain = Some(("c".into(), "1".into()));
        n.disconnected(2, true);
        assert_eq!(n.status().state, NodeState::Free);
    }

    #[tokio::test]
    async fn a_second_setup_on_the_same_connection_keeps_the_holding_time() {
        let n = node();
        let k = CancellationToken::new();
        n.claim(1, "root-1", SessionId(1), &k).unwrap();
        let first = n.slot().owner.as_ref().map(|o| o.since);
        n.claim(1, "root-1", SessionId(1), &k).unwrap();
        assert_eq!(n.slot().owner.as_ref().map(|o| o.since), first);
    }
}
