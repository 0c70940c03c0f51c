//! What the dashboard shows, as one value: [`Snapshot`], served as JSON by `/api/status` and
//! `/api/events` and drawn by `pcluster top`. Built once a second by the monitor.

use protocol::{NodeState, NodeStatus, TaskCounters};
use serde::{Deserialize, Serialize};

pub use super::recent::{FailureLine, LogLine};

/// Everything shown, at one moment.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// When it was taken (Unix time, ms).
    pub at_ms: u64,
    /// The run's progress (`None` when only nodes are watched).
    pub run: Option<RunProgress>,
    /// Every node, in address order.
    pub nodes: Vec<NodeView>,
    /// Each task of the chain, summed over the nodes.
    pub tasks: Vec<TaskView>,
    /// The last failed items, oldest first.
    pub failures: Vec<FailureLine>,
    /// The last warnings and errors of the process serving the page, oldest first.
    pub logs: Vec<LogLine>,
}

/// A run's progress, from the root's counters.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunProgress {
    /// Inputs completed (all their outputs handed over).
    pub done: u64,
    /// Inputs expected in all, when the caller said ([`crate::Root::set_expected_total`]).
    pub total: Option<u64>,
    /// Inputs fed so far.
    pub fed: u64,
    /// Outputs handed over.
    pub outputs: u64,
    /// Items that failed.
    pub failed: u64,
    /// Inputs sent again after their node was lost.
    pub redispatched: u64,
    /// Failed items tried again (`retries`).
    #[serde(default)]
    pub retried: u64,
    /// Inputs queued in the root, not yet sent.
    pub pending: u64,
    /// Inputs sent and not yet complete.
    pub in_flight: u64,
    /// Nodes attached.
    pub nodes: u32,
    /// Bytes of the inputs queued in the root.
    #[serde(default)]
    pub pending_bytes: u64,
    /// Bytes of outputs the root holds (parts of inputs not yet complete, ordered delivery).
    #[serde(default)]
    pub held_bytes: u64,
    /// Inputs done per second, lately (`None` until two polls).
    pub rate: Option<f64>,
    /// Seconds left at that rate (`None` without a total or a rate).
    pub eta_s: Option<f64>,
    /// Seconds since the dashboard started watching the run.
    pub elapsed_s: f64,
    /// Inputs done per second, one sample a second, oldest first.
    pub rates: Vec<f64>,
}

/// A node as shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeShown {
    /// Not probed yet.
    Waiting,
    /// No root holds it.
    Free,
    /// A root holds it.
    Busy,
    /// Its root is gone; it is free for another.
    Orphaned,
    /// Shutting down.
    Draining,
    /// The root lost it (connection closed or silent).
    Lost,
    /// Its status probe fails.
    Unreachable,
}

impl NodeShown {
    /// The state a node reports.
    pub fn of(state: NodeState) -> NodeShown {
        match state {
            NodeState::Free => NodeShown::Free,
            NodeState::Busy => NodeShown::Busy,
            NodeState::Orphaned => NodeShown::Orphaned,
            NodeState::Draining => NodeShown::Draining,
        }
    }

    /// Its name, as in the JSON.
    pub fn name(self) -> &'static str {
        match self {
            NodeShown::Waiting => "waiting",
            NodeShown::Free => "free",
            NodeShown::Busy => "busy",
            NodeShown::Orphaned => "orphaned",
            NodeShown::Draining => "draining",
            NodeShown::Lost => "lost",
            NodeShown::Unreachable => "unreachable",
        }
    }
}

impl std::fmt::Display for NodeShown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One node: its last status, its recent speed, and how often it was lost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeView {
    /// Its address.
    pub addr: String,
    /// Its state.
    pub state: NodeShown,
    /// Its labels (`pcluster node --labels`), as its status reports them.
    pub labels: Vec<String>,
    /// Worker threads.
    pub workers: Option<u32>,
    /// Workers running an item now.
    pub busy_workers: Option<u32>,
    /// Workers waiting for items.
    pub idle_workers: Option<u32>,
    /// Resident memory of the node process.
    pub rss_bytes: Option<u64>,
    /// Inputs it took per second, lately.
    pub rate: Option<f64>,
    /// Inputs it took per second, one sample a second, oldest first.
    pub rates: Vec<f64>,
    /// Times the root lost it (or, when only watching, its probe began to fail).
    pub lost: u32,
    /// Times it came back after a loss.
    pub rejoined: u32,
    /// The chain set up: `name version`.
    pub chain: Option<String>,
    /// The root holding it.
    pub root: Option<String>,
    /// Seconds since the node started.
    pub uptime_s: Option<u64>,
    /// Why its last probe failed.
    pub error: Option<String>,
    /// When the status shown was taken (Unix time, ms).
    pub probed_at_ms: Option<u64>,
    /// Its per-task counters, as its status reports them.
    pub tasks: Vec<TaskCounters>,
    /// Whether those are the counters of its last chain: it has none now.
    #[serde(default)]
    pub last_chain: bool,
}

impl NodeView {
    /// A node known by address only.
    pub fn new(addr: String, state: NodeShown) -> NodeView {
        NodeView {
            addr,
            state,
            labels: Vec::new(),
            workers: None,
            busy_workers: None,
            idle_workers: None,
            rss_bytes: None,
            rate: None,
            rates: Vec::new(),
            lost: 0,
            rejoined: 0,
            chain: None,
            root: None,
            uptime_s: None,
            error: None,
            probed_at_ms: None,
            tasks: Vec::new(),
            last_chain: false,
        }
    }

    /// Fills in what a status says.
    pub fn fill(&mut self, s: &NodeStatus, probed_at_ms: u64) {
        self.workers = Some(s.workers);
        self.idle_workers = Some(s.idle_workers);
        self.busy_workers = Some(s.workers.saturating_sub(s.idle_workers));
        self.rss_bytes = s.rss_bytes;
        self.labels.clone_from(&s.labels);
        self.chain = s.chain.as_ref().map(|(n, v)| format!("{n} {v}"));
        self.root.clone_from(&s.root);
        self.uptime_s = Some(s.uptime_s);
        self.probed_at_ms = Some(probed_at_ms);
        self.tasks.clone_from(&s.tasks);
        self.last_chain = s.chain.is_none() && !s.tasks.is_empty();
    }
}

/// One task of the chain, summed over the nodes.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskView {
    /// Its position in the chain.
    pub index: u32,
    /// Its function name.
    pub name: String,
    /// Items it was called with.
    pub items_in: u64,
    /// Items it emitted.
    pub items_out: u64,
    /// Calls that emitted nothing.
    pub dropped: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Time spent in it, in nanoseconds.
    pub busy_ns: u64,
    /// Mean time per item, in nanoseconds.
    pub ns_per_item: Option<f64>,
}

/// The per-task counters of every node, summed by position in the chain (a node on another
/// chain, whose task at that position has another name, is left out of that row).
pub fn task_totals(nodes: &[NodeView]) -> Vec<TaskView> {
    let mut out: Vec<TaskView> = Vec::new();
    for n in nodes {
        for (i, t) in n.tasks.iter().enumerate() {
            if out.len() == i {
                out.push(TaskView {
                    index: i as u32,
                    name: t.name.clone(),
                    ..TaskView::default()
                });
            }
            let v = &mut out[i];
            if v.name != t.name {
                continue;
            }
            // Counters nodes report: added without trusting them not to overflow.
            v.items_in = v.items_in.saturating_add(t.items_in);
            v.items_out = v.items_out.saturating_add(t.items_out);
            v.dropped = v.dropped.saturating_add(t.dropped);
            v.failed = v.failed.saturating_add(t.failed);
            v.busy_ns = v.busy_ns.saturating_add(t.busy_ns);
        }
    }
    for v in &mut out {
        v.ns_per_item = (v.items_in > 0).then(|| v.busy_ns as f64 / v.items_in as f64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counters(name: &str, items_in: u64, busy_ns: u64) -> TaskCounters {
        TaskCounters {
            name: name.into(),
            items_in,
            items_out: items_in * 2,
            dropped: 1,
            failed: 0,
            busy_ns,
        }
    }

    fn node(addr: &str, tasks: Vec<TaskCounters>) -> NodeView {
        let mut n = NodeView::new(addr.into(), NodeShown::Busy);
        n.tasks = tasks;
        n
    }

    #[test]
    fn tasks_are_summed_over_nodes() {
        let nodes = [
            node("a", vec![counters("t0", 10, 1000), counters("t1", 20, 0)]),
            node("b", vec![counters("t0", 30, 3000)]),
            node("c", vec![counters("other", 99, 1)]),
        ];
        let t = task_totals(&nodes);
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].name.as_str(), t[0].items_in, t[0].items_out),
            ("t0", 40, 80)
        );
        assert_eq!(
            (t[0].dropped, t[0].busy_ns, t[0].ns_per_item),
            (2, 4000, Some(100.0))
        );
        assert_eq!(
            (t[1].index, t[1].items_in, t[1].ns_per_item),
            (1, 20, Some(0.0))
        );
        assert_eq!(
            task_totals(&[node("x", vec![counters("t", 0, 0)])])[0].ns_per_item,
            None
        );
    }

    #[test]
    fn the_json_has_the_fields_the_page_reads() {
        let mut n = node("127.0.0.2:6000", vec![counters("t0", 4, 8)]);
        n.workers = Some(2);
        n.busy_workers = Some(1);
        n.rates = vec![1.0, 2.5];
        let s = Snapshot {
            at_ms: 7,
            run: Some(RunProgress {
                done: 3,
                total: Some(10),
                rate: Some(1.5),
                ..RunProgress::default()
            }),
            tasks: task_totals(std::slice::from_ref(&n)),
            nodes: vec![n],
            failures: vec![FailureLine {
                at_ms: 1,
                task: "t0".into(),
                node: "127.0.0.2:6000".into(),
                input: 9,
                item: "<b>".into(),
                message: "boom".into(),
            }],
            logs: Vec::new(),
        };
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["at_ms"], 7);
        let run = &v["run"];
        assert_eq!(
            (run["done"].as_u64(), run["total"].as_u64()),
            (Some(3), Some(10))
        );
        assert!(run["eta_s"].is_null());
        let node = &v["nodes"][0];
        assert_eq!(node["addr"], "127.0.0.2:6000");
        assert_eq!(node["state"], "busy");
        assert_eq!(node["labels"], serde_json::json!([]));
        assert_eq!(
            (node["workers"].as_u64(), node["busy_workers"].as_u64()),
            (Some(2), Some(1))
        );
        assert!(node["rss_bytes"].is_null());
        assert_eq!(node["rates"], serde_json::json!([1.0, 2.5]));
        assert_eq!(node["tasks"][0]["items_in"], 4);
        for key in ["lost", "rejoined", "rate", "chain", "error", "probed_at_ms"] {
            assert!(node.get(key).is_some(), "node.{key}");
        }
        let task = &v["tasks"][0];
        assert_eq!(
            (task["name"].as_str(), task["ns_per_item"].as_f64()),
            (Some("t0"), Some(2.0))
        );
        for key in ["items_out", "dropped", "failed", "busy_ns", "index"] {
            assert!(task.get(key).is_some(), "task.{key}");
        }
        assert_eq!(v["failures"][0]["item"], "<b>");
        assert_eq!(v["failures"][0]["input"], 9);
        assert_eq!(v["logs"], serde_json::json!([]));
    }
}
