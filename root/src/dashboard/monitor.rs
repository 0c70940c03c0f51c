//! The monitor: a background task that, once a second, asks the root for its counters (the
//! existing `Counters` command: nothing is added to the per-item path), probes every node's
//! status over one long-lived status connection per node, and publishes a [`Snapshot`].
//!
//! It watches either a [`Root`] (a run) or a set of nodes (given, or found by scans) without
//! claiming them: status probes only.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use protocol::handshake::Role;
use protocol::{Connection, NodeStatus};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::recent::{Membership, Recorder, recent_logs};
use super::ring::{CounterSamples, Ring, eta_s};
use super::snapshot::{NodeShown, NodeView, RunProgress, Snapshot, task_totals};
use super::unix_ms;
use crate::scheduler::{Cmd, Counters};
use crate::{Root, RootError, RootOptions};

/// How often the monitor polls.
pub const POLL: Duration = Duration::from_secs(1);
/// Per-second samples kept for the charts (three minutes).
pub const CHART_SAMPLES: usize = 180;
/// The window of the rates and the ETA.
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// A probe that takes longer fails (the next poll tries again on a new connection).
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Status probes in flight at once.
const PROBES_AT_ONCE: usize = 64;
/// A root that does not answer its counters within this is taken as gone.
const ROOT_TIMEOUT: Duration = Duration::from_secs(10);

/// Nodes to watch without a run: given addresses, a list that changes and, optionally, a
/// network scanned again every `rescan`.
#[derive(Clone, Debug)]
pub struct WatchNodes {
    /// Node addresses.
    pub nodes: Vec<SocketAddr>,
    /// A network and port to scan for more.
    pub scan: Option<(ipnetwork::IpNetwork, u16)>,
    /// Time between scans.
    pub rescan: Duration,
    /// Addresses that change while watching (a nodes file, a DNS name): each poll watches
    /// the latest list too, and forgets a node that left it (unless `nodes` names it).
    pub listed: Option<watch::Receiver<Vec<SocketAddr>>>,
}

/// A running monitor; dropping it stops it.
#[derive(Debug)]
pub struct Monitor {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    stop: tokio_util::sync::DropGuard,
}

impl Monitor {
    /// Watches nodes (status probes only: it never claims them). Must be called within a
    /// tokio runtime. The options give the token and timeouts of the probes.
    pub fn watch_nodes(nodes: WatchNodes, options: RootOptions) -> Monitor {
        let stop = CancellationToken::new();
        let (found_tx, found) = mpsc::channel(4);
        if let Some((network, port)) = nodes.scan {
            tokio::spawn(rescan(
                network,
                port,
                nodes.rescan,
                options.clone(),
                found_tx,
                stop.clone(),
            ));
        }
        let source = Source::Nodes {
            fixed: nodes.nodes,
            found,
            scanning: nodes.scan.is_some(),
            listed: nodes.listed,
        };
        Monitor::start(source, options, stop)
    }

    /// Watches `root`'s run; the monitor ends when the root does.
    pub(crate) async fn for_root(root: &Root) -> Result<Monitor, RootError> {
        let numbers = root.input_numbers.lock().map_or(None, |n| n.clone());
        let recorder = Arc::new(Recorder::new(numbers));
        root.cmds
            .send(Cmd::Observe(recorder.clone()))
            .await
            .map_err(|_| RootError::Closed)?;
        let source = Source::Root {
            cmds: root.cmds.downgrade(),
            total: root.expected_total.subscribe(),
            recorder,
        };
        Ok(Monitor::start(
            source,
            root.options.clone(),
            CancellationToken::new(),
        ))
    }

    fn start(source: Source, options: RootOptions, stop: CancellationToken) -> Monitor {
        let (tx, snapshots) = watch::channel(Arc::new(Snapshot::default()));
        let state = State {
            source,
            options,
            nodes: BTreeMap::new(),
            run: RunTrack::new(),
        };
        tokio::spawn(run(state, tx, stop.clone()));
        Monitor {
            snapshots,
            stop: stop.drop_guard(),
        }
    }

    /// The snapshots, the newest first seen (it changes once a poll; it closes when the
    /// monitor stops).
    pub fn subscribe(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.snapshots.clone()
    }

    /// The newest snapshot.
    pub fn latest(&self) -> Arc<Snapshot> {
        self.snapshots.borrow().clone()
    }

    /// Stops it (as dropping it does).
    pub fn stop(self) {
        drop(self.stop);
    }
}

/// Where the nodes and the run's numbers come from.
enum Source {
    /// A run: the root's scheduler (weakly: the monitor must not keep it alive).
    Root {
        cmds: mpsc::WeakSender<Cmd>,
        total: watch::Receiver<Option<u64>>,
        recorder: Arc<Recorder>,
    },
    /// Nodes only.
    Nodes {
        fixed: Vec<SocketAddr>,
        found: mpsc::Receiver<Vec<SocketAddr>>,
        /// A scan runs and has not reported yet: the first snapshot waits for it.
        scanning: bool,
        listed: Option<watch::Receiver<Vec<SocketAddr>>>,
    },
}

struct State {
    source: Source,
    options: RootOptions,
    nodes: BTreeMap<SocketAddr, NodeTrack>,
    run: RunTrack,
}

/// One node over time.
struct NodeTrack {
    view: NodeView,
    conn: Option<Connection>,
    /// Inputs it took (its first task's `items_in`).
    taken: CounterSamples,
    rates: Ring<f64>,
    /// Whether its last probe worked (when only watching, a failure after success is a loss).
    reachable: Option<bool>,
}

impl NodeTrack {
    fn new(addr: SocketAddr) -> NodeTrack {
        NodeTrack {
            view: NodeView::new(addr.to_string(), NodeShown::Waiting),
            conn: None,
            taken: CounterSamples::new(RATE_WINDOW, CHART_SAMPLES),
            rates: Ring::new(CHART_SAMPLES),
            reachable: None,
        }
    }

    /// Records a probe's outcome.
    fn update(&mut self, probe: Result<NodeStatus, RootError>, now: Instant, now_ms: u64) {
        match probe {
            Ok(s) => {
                self.view.fill(&s, now_ms);
                self.view.state = NodeShown::of(s.state);
                self.view.error = None;
                self.taken
                    .push(now, s.tasks.first().map_or(0, |t| t.items_in));
                self.view.rate = self.taken.rate();
                if let Some(r) = self.taken.last_rate() {
                    self.rates.push(r);
                }
            }
            Err(e) => {
                self.view.state = NodeShown::Unreachable;
                self.view.error = Some(e.to_string());
                self.view.idle_workers = None;
                self.view.busy_workers = None;
                self.view.rate = None;
                self.rates.push(0.0);
            }
        }
        self.view.rates = self.rates.iter().copied().collect();
    }

    /// Asks for the node's status, (re)connecting when needed.
    async fn probe(
        &mut self,
        addr: SocketAddr,
        options: &RootOptions,
    ) -> Result<NodeStatus, RootError> {
        let ask = async {
            let conn = match &mut self.conn {
                Some(c) => c,
                None => self.conn.insert(
                    crate::conn::connect(addr, Role::Probe, options, None)
                        .await?
                        .0,
                ),
            };
            crate::conn::request_status(conn, addr, options).await
        };
        let got = match tokio::time::timeout(PROBE_TIMEOUT, ask).await {
            Ok(r) => r,
            Err(_) => Err(RootError::Timeout("status")),
        };
        if got.is_err() {
            self.conn = None;
        }
        got
    }
}

/// The run's counters over time.
struct RunTrack {
    since: Instant,
    done: CounterSamples,
    rates: Ring<f64>,
}

impl RunTrack {
    fn new() -> RunTrack {
        RunTrack {
            since: Instant::now(),
            done: CounterSamples::new(RATE_WINDOW, CHART_SAMPLES),
            rates: Ring::new(CHART_SAMPLES),
        }
    }

    fn progress(&mut self, c: &Counters, total: Option<u64>, now: Instant) -> RunProgress {
        self.done.push(now, c.completed);
        if let Some(r) = self.done.last_rate() {
            self.rates.push(r);
        }
        let rate = self.done.rate();
        RunProgress {
            done: c.completed,
            total,
            fed: c.fed,
            outputs: c.outputs,
            failed: c.failed,
            redispatched: c.redispatched,
            retried: c.retried,
            pending: c.pending,
            in_flight: c.in_flight,
            nodes: c.nodes,
            pending_bytes: c.pending_bytes,
            held_bytes: c.held_bytes,
            rate,
            eta_s: eta_s(c.completed, total, rate),
            elapsed_s: now.duration_since(self.since).as_secs_f64(),
            rates: self.rates.iter().copied().collect(),
        }
    }
}

/// What the root says in one poll.
struct RootPoll {
    counters: Counters,
    attached: Vec<SocketAddr>,
    members: std::collections::HashMap<SocketAddr, Membership>,
    total: Option<u64>,
}

/// Asks the scheduler for its counters and nodes; `None` when the root is gone.
async fn poll_root(
    cmds: &mpsc::WeakSender<Cmd>,
    total: &watch::Receiver<Option<u64>>,
    recorder: &Recorder,
) -> Option<RootPoll> {
    let ask = async {
        let cmds = cmds.upgrade()?;
        let (ctx, crx) = oneshot::channel();
        cmds.send(Cmd::Counters(ctx)).await.ok()?;
        let (ntx, nrx) = oneshot::channel();
        cmds.send(Cmd::Nodes(ntx)).await.ok()?;
        drop(cmds);
        Some((crx.await.ok()?, nrx.await.ok()?))
    };
    let (counters, attached) = tokio::time::timeout(ROOT_TIMEOUT, ask).await.ok()??;
    Some(RootPoll {
        counters,
        attached,
        members: recorder.members(),
        total: *total.borrow(),
    })
}

async fn run(mut s: State, tx: watch::Sender<Arc<Snapshot>>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let snapshot = tokio::select! {
            () = stop.cancelled() => return,
            snap = s.poll() => match snap {
                Some(snap) => snap,
                None => return,
            },
        };
        tx.send_replace(Arc::new(snapshot));
    }
}

/// Adds the nodes a scan found since the last poll to `fixed`; the first poll waits for the
/// first scan.
async fn take_found(
    fixed: &mut Vec<SocketAddr>,
    found: &mut tokio::sync::mpsc::Receiver<Vec<SocketAddr>>,
    scanning: &mut bool,
) {
    let mut more = Vec::new();
    if std::mem::take(scanning)
        && let Some(first) = found.recv().await
    {
        more.push(first);
    }
    while let Ok(m) = found.try_recv() {
        more.push(m);
    }
    for a in more.into_iter().flatten() {
        if !fixed.contains(&a) {
            fixed.push(a);
        }
    }
}

impl State {
    /// Probes the nodes of `probe`; when only `watching` (no root), a probe's failure and
    /// recovery count as the node's losses and rejoins.
    async fn probe_all(
        &mut self,
        probe: &HashSet<SocketAddr>,
        watching: bool,
        now: Instant,
        now_ms: u64,
    ) {
        // Futures of a named async fn, gathered in a loop: closures over the map's `IterMut`
        // would make this future not `Send` for every lifetime, as `tokio::spawn` needs.
        let mut asks = Vec::with_capacity(probe.len());
        for (a, t) in &mut self.nodes {
            if probe.contains(a) {
                asks.push(probe_node(*a, t, &self.options));
            }
        }
        let probes: Vec<_> = futures_util::stream::iter(asks)
            .buffer_unordered(PROBES_AT_ONCE)
            .collect()
            .await;
        for (t, r) in probes {
            let ok = r.is_ok();
            t.update(r, now, now_ms);
            if watching {
                match (t.reachable, ok) {
                    (Some(true), false) => t.view.lost += 1,
                    (Some(false), true) if t.view.lost > t.view.rejoined => t.view.rejoined += 1,
                    _ => {}
                }
                t.reachable = Some(ok);
            }
        }
    }

    /// One poll; `None` when the watched root is gone.
    async fn poll(&mut self) -> Option<Snapshot> {
        let (root, probe): (Option<RootPoll>, HashSet<SocketAddr>) = match &mut self.source {
            Source::Root {
                cmds,
                total,
                recorder,
            } => {
                let p = poll_root(cmds, total, recorder).await?;
                let attached = p.attached.iter().copied().collect();
                (Some(p), attached)
            }
            Source::Nodes {
                fixed,
                found,
                scanning,
                listed,
            } => {
                take_found(fixed, found, scanning).await;
                let mut probe: HashSet<SocketAddr> = fixed.iter().copied().collect();
                if let Some(l) = listed {
                    probe.extend(l.borrow().iter().copied());
                    self.nodes.retain(|a, _| probe.contains(a));
                }
                (None, probe)
            }
        };
        for a in probe
            .iter()
            .chain(root.iter().flat_map(|r| r.members.keys()))
        {
            self.nodes.entry(*a).or_insert_with(|| NodeTrack::new(*a));
        }
        let now = Instant::now();
        let now_ms = unix_ms();
        self.probe_all(&probe, root.is_none(), now, now_ms).await;
        let mut snapshot = Snapshot {
            at_ms: now_ms,
            logs: recent_logs(),
            ..Snapshot::default()
        };
        if let Some(r) = &root {
            for (a, t) in &mut self.nodes {
                let m = r.members.get(a).copied().unwrap_or_default();
                (t.view.lost, t.view.rejoined) = (m.lost, m.rejoined);
                if !probe.contains(a) {
                    t.view.state = NodeShown::Lost;
                    t.view.rate = None;
                    t.view.idle_workers = None;
                    t.view.busy_workers = None;
                }
            }
            snapshot.run = Some(self.run.progress(&r.counters, r.total, now));
            if let Source::Root { recorder, .. } = &self.source {
                snapshot.failures = recorder.failures();
            }
        }
        snapshot.nodes = self.nodes.values().map(|t| t.view.clone()).collect();
        snapshot.tasks = task_totals(&snapshot.nodes);
        Some(snapshot)
    }
}

async fn probe_node<'a>(
    addr: SocketAddr,
    track: &'a mut NodeTrack,
    options: &RootOptions,
) -> (&'a mut NodeTrack, Result<NodeStatus, RootError>) {
    let r = track.probe(addr, options).await;
    (track, r)
}

/// Scans `network` now and every `every`, sending the nodes found (free or held by a root).
async fn rescan(
    network: ipnetwork::IpNetwork,
    port: u16,
    every: Duration,
    options: RootOptions,
    found: mpsc::Sender<Vec<SocketAddr>>,
    stop: CancellationToken,
) {
    loop {
        let report = tokio::select! {
            () = stop.cancelled() => return,
            r = crate::scan::scan(network, port, &options) => r,
        };
        let nodes: Vec<SocketAddr> = report
            .free
            .iter()
            .copied()
            .chain(report.busy.iter().map(|(a, _)| *a))
            .collect();
        if found.send(nodes).await.is_err() {
            return;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
    }
}
