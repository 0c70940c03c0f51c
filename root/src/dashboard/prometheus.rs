//! The dashboard's snapshot as Prometheus metrics (`/metrics`): the run's counters and each
//! node's losses as the root sees them. Per-task counters come from the nodes' own
//! `/metrics` (`pcluster node --metrics`), so a sum over both never counts an item twice.

use metrics::Families;

use super::snapshot::{NodeShown, RunProgress, Snapshot};

/// Every state a node can be shown in, one sample each (1 for its state, 0 for the others).
const STATES: [NodeShown; 7] = [
    NodeShown::Waiting,
    NodeShown::Free,
    NodeShown::Busy,
    NodeShown::Orphaned,
    NodeShown::Draining,
    NodeShown::Lost,
    NodeShown::Unreachable,
];

/// `s` in Prometheus' text format.
pub fn render(s: &Snapshot) -> String {
    let mut f = Families::default();
    if let Some(run) = &s.run {
        run_families(&mut f, run);
    }
    node_families(&mut f, s);
    f.render()
}

fn run_families(f: &mut Families, r: &RunProgress) {
    let counters: [(&str, &str, u64); 6] = [
        (
            "pcluster_root_inputs_fed_total",
            "Inputs fed to the run.",
            r.fed,
        ),
        (
            "pcluster_root_inputs_done_total",
            "Inputs completed: all their outputs handed over.",
            r.done,
        ),
        (
            "pcluster_root_outputs_total",
            "Outputs handed over.",
            r.outputs,
        ),
        (
            "pcluster_root_items_failed_total",
            "Items that failed.",
            r.failed,
        ),
        (
            "pcluster_root_inputs_redispatched_total",
            "Inputs sent again after their node was lost.",
            r.redispatched,
        ),
        (
            "pcluster_root_items_retried_total",
            "Failed items tried again.",
            r.retried,
        ),
    ];
    for (name, help, v) in counters {
        f.counter(name, help).count(&[], v);
    }
    let gauges: [(&str, &str, u64); 5] = [
        (
            "pcluster_root_queued_items",
            "Inputs queued in the root, not yet sent.",
            r.pending,
        ),
        (
            "pcluster_root_queued_bytes",
            "Bytes of the inputs queued in the root.",
            r.pending_bytes,
        ),
        (
            "pcluster_root_inflight_items",
            "Inputs sent and not yet complete.",
            r.in_flight,
        ),
        (
            "pcluster_root_held_bytes",
            "Bytes of outputs the root holds for inputs not yet complete or not yet in turn.",
            r.held_bytes,
        ),
        (
            "pcluster_root_nodes",
            "Nodes attached to the run.",
            u64::from(r.nodes),
        ),
    ];
    for (name, help, v) in gauges {
        f.gauge(name, help).count(&[], v);
    }
    if let Some(total) = r.total {
        f.gauge(
            "pcluster_root_inputs_expected",
            "Inputs the run expects in all.",
        )
        .count(&[], total);
    }
}

fn node_families(f: &mut Families, s: &Snapshot) {
    let mut lost = f.counter(
        "pcluster_root_node_lost_total",
        "Times the root lost the node (connection closed or silent).",
    );
    for n in &s.nodes {
        lost.count(&[("node", &n.addr)], u64::from(n.lost));
    }
    let mut rejoined = f.counter(
        "pcluster_root_node_rejoined_total",
        "Times the node came back after a loss.",
    );
    for n in &s.nodes {
        rejoined.count(&[("node", &n.addr)], u64::from(n.rejoined));
    }
    let mut state = f.gauge(
        "pcluster_root_node_state",
        "The node's state as the root sees it: 1 for its state, 0 for the others.",
    );
    for n in &s.nodes {
        for st in STATES {
            let on = u64::from(n.state == st);
            state.count(&[("node", &n.addr), ("state", st.name())], on);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::NodeView;

    #[test]
    fn a_run_and_its_nodes_are_metrics() {
        let mut n = NodeView::new("127.0.0.2:7070".into(), NodeShown::Busy);
        n.lost = 2;
        let s = Snapshot {
            run: Some(RunProgress {
                done: 7,
                outputs: 9,
                pending_bytes: 1 << 20,
                ..RunProgress::default()
            }),
            nodes: vec![n],
            ..Snapshot::default()
        };
        let text = render(&s);
        for line in [
            "pcluster_root_inputs_done_total 7\n",
            "pcluster_root_outputs_total 9\n",
            "pcluster_root_queued_bytes 1048576\n",
            "pcluster_root_node_lost_total{node=\"127.0.0.2:7070\"} 2\n",
            "pcluster_root_node_state{node=\"127.0.0.2:7070\",state=\"busy\"} 1\n",
            "pcluster_root_node_state{node=\"127.0.0.2:7070\",state=\"lost\"} 0\n",
            "# TYPE pcluster_root_inputs_fed_total counter\n",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        assert!(!text.contains("expected"), "no total, no expected inputs");
    }

    #[test]
    fn watching_nodes_alone_has_no_run_metrics() {
        let s = Snapshot {
            nodes: vec![NodeView::new("127.0.0.2:1".into(), NodeShown::Free)],
            ..Snapshot::default()
        };
        let text = render(&s);
        assert!(!text.contains("pcluster_root_inputs"), "{text}");
        assert!(text.contains("pcluster_root_node_state"), "{text}");
    }
}
