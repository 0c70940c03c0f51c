//! The node's Prometheus metrics (`pcluster node --metrics ADDR`): its state, workers, what
//! it holds in flight, its compile cache, guests evicted, memory, and each task's counters
//! over the node's life. All read at scrape time from counters the node keeps anyway.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use metrics::Families;
use protocol::{NodeState, NodeStatus, TaskCounters};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::NodeError;
use super::node::Node;

/// Binds `addr` and serves the node's metrics at `/metrics` until `shutdown`; returns the
/// address bound.
pub(super) async fn start(
    node: Arc<Node>,
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> Result<SocketAddr, NodeError> {
    let bind = |source| NodeError::MetricsBind { addr, source };
    let listener = TcpListener::bind(addr).await.map_err(bind)?;
    let render = Arc::new(move || render(&node));
    let bound = metrics::serve(listener, render, shutdown).map_err(bind)?;
    tracing::info!(node = %bound, "metrics on http://{bound}/metrics");
    Ok(bound)
}

/// What the node holds now, beyond its status.
struct Held {
    items: u64,
    bytes: u64,
    credit_items: u64,
    tasks: Vec<(String, TaskCounters)>,
}

fn render(node: &Node) -> String {
    let status = node.status();
    let held = {
        let slot = node.slot();
        let live = slot
            .pool
            .as_ref()
            .map(|p| (p.chain.name.clone(), p.task_counters()));
        let pool = slot.pool.as_ref();
        let load =
            |a: Option<&std::sync::atomic::AtomicU64>| a.map_or(0, |a| a.load(Ordering::Relaxed));
        Held {
            items: load(pool.map(|p| &p.in_flight)),
            bytes: load(pool.map(|p| &*p.in_bytes)),
            credit_items: load(pool.map(|p| &p.announced)),
            tasks: slot
                .totals
                .with_live(live.as_ref().map(|(c, t)| (c.as_str(), t.as_slice()))),
        }
    };
    let mut f = Families::default();
    let node_label = [("node", status.addr.as_str())];
    node_families(&mut f, &status, &node_label);
    f.gauge(
        "pcluster_node_inflight_items",
        "Inputs the node holds, not yet answered.",
    )
    .count(&node_label, held.items);
    f.gauge(
        "pcluster_node_inflight_bytes",
        "Bytes of the batches the node holds, not yet done.",
    )
    .count(&node_label, held.bytes);
    f.gauge(
        "pcluster_node_credit_items",
        "Inputs the node last told its root it may send.",
    )
    .count(&node_label, held.credit_items);
    f.gauge(
        "pcluster_node_credit_bytes",
        "Bytes of batches the node lets its root send ahead.",
    )
    .count(&node_label, crate::worker::WINDOW_BYTES);
    f.counter(
        "pcluster_node_guests_evicted_total",
        "Guest connections evicted to let newer ones in.",
    )
    .count(&node_label, node.gate.evicted());
    task_families(&mut f, &status.addr, &held.tasks);
    f.render()
}

fn node_families(f: &mut Families, s: &NodeStatus, node: &[(&str, &str)]) {
    let mut state = f.gauge(
        "pcluster_node_state",
        "The node's state: 1 for its state, 0 for the others.",
    );
    for (st, name) in [
        (NodeState::Free, "free"),
        (NodeState::Busy, "busy"),
        (NodeState::Orphaned, "orphaned"),
        (NodeState::Draining, "draining"),
    ] {
        state.count(&[node[0], ("state", name)], u64::from(s.state == st));
    }
    let busy = s.workers.saturating_sub(s.idle_workers);
    f.gauge("pcluster_node_workers", "Worker threads.")
        .count(node, u64::from(s.workers));
    f.gauge(
        "pcluster_node_workers_busy",
        "Workers running a unit of items now.",
    )
    .count(node, u64::from(busy));
    f.gauge("pcluster_node_workers_idle", "Workers waiting for items.")
        .count(node, u64::from(s.idle_workers));
    f.counter(
        "pcluster_node_modules_compiled_total",
        "Modules and components compiled.",
    )
    .count(node, s.modules_compiled);
    f.counter(
        "pcluster_node_module_cache_hits_total",
        "Setups served from the compiled-code cache.",
    )
    .count(node, s.module_cache_hits);
    f.gauge(
        "pcluster_node_uptime_seconds",
        "Seconds since the node started.",
    )
    .count(node, s.uptime_s);
    if let Some(rss) = s.rss_bytes {
        f.gauge(
            "pcluster_node_resident_memory_bytes",
            "Resident memory of the node process.",
        )
        .count(node, rss);
    }
}

fn task_families(f: &mut Families, node: &str, tasks: &[(String, TaskCounters)]) {
    type Pick = fn(&TaskCounters) -> u64;
    let families: [(&str, &str, Pick); 4] = [
        (
            "pcluster_task_items_in_total",
            "Items the task was called with.",
            |t| t.items_in,
        ),
        (
            "pcluster_task_items_out_total",
            "Items the task emitted.",
            |t| t.items_out,
        ),
        (
            "pcluster_task_items_dropped_total",
            "Calls that emitted nothing and did not fail.",
            |t| t.dropped,
        ),
        (
            "pcluster_task_items_failed_total",
            "Calls that failed.",
            |t| t.failed,
        ),
    ];
    for (name, help, pick) in families {
        let mut fam = f.counter(name, help);
        for (chain, t) in tasks {
            fam.count(
                &[("node", node), ("chain", chain), ("task", &t.name)],
                pick(t),
            );
        }
    }
    let mut busy = f.counter(
        "pcluster_task_busy_seconds_total",
        "Time workers spent in the task.",
    );
    for (chain, t) in tasks {
        busy.sample(
            &[("node", node), ("chain", chain), ("task", &t.name)],
            t.busy_ns as f64 / 1e9,
        );
    }
}
