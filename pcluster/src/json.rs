//! `--json` of `scan`, `status` and `top --once`: one JSON document a command, the
//! dashboard's [`Snapshot`] (the fields its `/api/status` serves), so that scripts read one
//! schema wherever the numbers come from.

use std::io::Write as _;
use std::net::SocketAddr;

use protocol::NodeStatus;
use root::dashboard::{NodeShown, NodeView, Snapshot, task_totals};

/// A node as the dashboard shows it, from a status probe's outcome.
pub fn node_view(addr: SocketAddr, status: &Result<NodeStatus, root::RootError>) -> NodeView {
    match status {
        Ok(s) => {
            let mut v = NodeView::new(addr.to_string(), NodeShown::of(s.state));
            v.fill(s, unix_ms());
            v
        }
        Err(e) => note_view(addr, &e.to_string()),
    }
}

/// A node known by address only, with why it was not probed (or why its probe failed).
pub fn note_view(addr: SocketAddr, note: &str) -> NodeView {
    let mut v = NodeView::new(addr.to_string(), NodeShown::Unreachable);
    v.error = Some(note.to_owned());
    v
}

/// A snapshot of `nodes` (no run): sorted by address, with the per-task totals.
pub fn snapshot(mut nodes: Vec<(SocketAddr, NodeView)>) -> Snapshot {
    nodes.sort_by_key(|(a, _)| *a);
    let nodes: Vec<NodeView> = nodes.into_iter().map(|(_, v)| v).collect();
    Snapshot {
        at_ms: unix_ms(),
        tasks: task_totals(&nodes),
        nodes,
        ..Snapshot::default()
    }
}

/// Prints `s` on stdout as one JSON document and a newline.
///
/// # Errors
/// A write error (a closed pipe: the caller ends quietly).
pub fn print(s: &Snapshot) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, s)?;
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

/// Now, as Unix time in milliseconds (the snapshot's clock).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use protocol::{NodeState, TaskCounters};

    use super::*;

    #[test]
    fn nodes_are_sorted_and_their_tasks_summed() {
        let status = |items_in| NodeStatus {
            addr: String::new(),
            cores: 2,
            workers: 2,
            idle_workers: 2,
            state: NodeState::Free,
            root: None,
            chain: None,
            uptime_s: 1,
            modules_compiled: 0,
            module_cache_hits: 0,
            tasks: vec![TaskCounters {
                name: "t".into(),
                items_in,
                items_out: items_in,
                dropped: 0,
                failed: 0,
                busy_ns: 0,
            }],
            rss_bytes: None,
            labels: Vec::new(),
        };
        let (a, b, c) = (
            "127.0.0.3:1".parse().unwrap(),
            "127.0.0.2:1".parse().unwrap(),
            "127.0.0.4:1".parse().unwrap(),
        );
        let s = snapshot(vec![
            (a, node_view(a, &Ok(status(3)))),
            (b, node_view(b, &Ok(status(4)))),
            (c, note_view(c, "busy with 127.0.0.9:1")),
        ]);
        let addrs: Vec<&str> = s.nodes.iter().map(|n| n.addr.as_str()).collect();
        assert_eq!(addrs, ["127.0.0.2:1", "127.0.0.3:1", "127.0.0.4:1"]);
        assert_eq!((s.tasks.len(), s.tasks[0].items_in), (1, 7));
        assert_eq!(s.nodes[0].state, NodeShown::Free);
        assert!(
            s.nodes[0].last_chain,
            "no chain: the counters are its last chain's"
        );
        assert_eq!(s.nodes[2].error.as_deref(), Some("busy with 127.0.0.9:1"));
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert!(v["run"].is_null() && v["nodes"][1]["tasks"][0]["items_in"] == 3);
    }
}
