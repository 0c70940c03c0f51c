//! The one table printer, on comfy-table: plain columns for `scan` and `status` (a row per node,
//! then a row per task of each node's chain), markdown for `bench` (pasteable into the README).

use std::io::Write as _;
use std::net::SocketAddr;

use comfy_table::{CellAlignment, Table, presets};
use protocol::NodeStatus;

/// How a table is drawn.
#[derive(Clone, Copy, Debug)]
pub enum Style {
    /// Columns separated by spaces, no lines: for terminals and `grep`.
    Plain,
    /// `| a | b |` with a `|---|` line under the header (the bench's, for the docs).
    #[cfg_attr(not(feature = "bench"), allow(dead_code))]
    Markdown,
}

/// An empty table with `header`; the columns at `right` (numbers) are right-aligned.
pub fn new(style: Style, header: &[&str], right: &[usize]) -> Table {
    let mut table = Table::new();
    match style {
        Style::Plain => {
            table.load_preset(presets::NOTHING);
        }
        Style::Markdown => {
            table.load_preset(presets::ASCII_MARKDOWN);
        }
    }
    table.set_header(header.iter().copied());
    for (i, column) in table.column_iter_mut().enumerate() {
        if right.contains(&i) {
            column.set_cell_alignment(CellAlignment::Right);
        }
        if matches!(style, Style::Plain) {
            column.set_padding((0, 2));
        }
    }
    table
}

/// What `scan` and `status` show of one node.
pub struct Row {
    addr: SocketAddr,
    /// State, workers, idle, chain, root, labels and uptime; or one note saying why there
    /// are none.
    cells: Vec<String>,
    /// Per-task counters: name, in, out, dropped, failed, busy seconds, chain.
    tasks: Vec<[String; 7]>,
}

/// The row of a node that answered a status request, or of the error it gave.
pub fn status_row(addr: SocketAddr, st: Result<NodeStatus, root::RootError>) -> Row {
    match st {
        Ok(s) => Row {
            addr,
            // A node without a chain still reports the last one's counters: say so, so
            // they are not read as current.
            tasks: task_rows(&s),
            cells: vec![
                format!("{:?}", s.state).to_lowercase(),
                s.workers.to_string(),
                s.idle_workers.to_string(),
                s.chain
                    .map(|(n, v)| format!("{n} {v}"))
                    .unwrap_or_else(|| "-".into()),
                s.root.unwrap_or_else(|| "-".into()),
                if s.labels.is_empty() {
                    "-".into()
                } else {
                    s.labels.join(",")
                },
                format!("{}s", s.uptime_s),
            ],
        },
        Err(e) => note_row(addr, &e.to_string()),
    }
}

/// Per-task rows of a node's status, each naming its chain; those of a chain dropped
/// since say so.
fn task_rows(s: &NodeStatus) -> Vec<[String; 7]> {
    let chain = s
        .chain
        .as_ref()
        .map_or_else(|| "(last chain)".to_string(), |(n, v)| format!("{n} {v}"));
    s.tasks
        .iter()
        .map(|t| {
            [
                t.name.clone(),
                t.items_in.to_string(),
                t.items_out.to_string(),
                t.dropped.to_string(),
                t.failed.to_string(),
                format!("{:.3}", t.busy_ns as f64 / 1e9),
                chain.clone(),
            ]
        })
        .collect()
}

/// The row of a node with a note instead of a status (busy with another root, refused, ...).
pub fn note_row(addr: SocketAddr, note: &str) -> Row {
    Row {
        addr,
        cells: vec![note.to_owned()],
        tasks: Vec::new(),
    }
}

/// What `scan` and `status` print: a table of the nodes that answered, one of the tasks of
/// their chains (when one has a chain), and one of the notes of those that did not.
pub struct StatusTables {
    pub nodes: Table,
    pub tasks: Option<Table>,
    pub notes: Option<Table>,
}

/// The tables of `rows`.
pub fn status_tables(rows: &[Row]) -> StatusTables {
    let mut nodes = new(
        Style::Plain,
        &[
            "NODE", "STATE", "WORKERS", "IDLE", "CHAIN", "ROOT", "LABELS", "UPTIME",
        ],
        &[2, 3, 7],
    );
    let mut tasks = new(
        Style::Plain,
        &[
            "NODE", "TASK", "IN", "OUT", "DROPPED", "FAILED", "BUSY S", "CHAIN",
        ],
        &[2, 3, 4, 5, 6],
    );
    let mut notes = new(Style::Plain, &["NODE", "NOTE"], &[]);
    let (mut any_task, mut any_note) = (false, false);
    for r in rows {
        let cells = std::iter::once(r.addr.to_string()).chain(r.cells.iter().cloned());
        // A note is one long cell: in the node table it would widen a column for every row.
        if r.cells.len() == 1 {
            notes.add_row(cells);
            any_note = true;
        } else {
            nodes.add_row(cells);
        }
        for t in &r.tasks {
            tasks.add_row(std::iter::once(r.addr.to_string()).chain(t.iter().cloned()));
            any_task = true;
        }
    }
    StatusTables {
        nodes,
        tasks: any_task.then_some(tasks),
        notes: any_note.then_some(notes),
    }
}

/// Writes `table` to `out` without the padding comfy-table leaves at the end of each line.
///
/// # Errors
/// A write error (a closed pipe: the caller ends quietly).
pub fn print(out: &mut dyn std::io::Write, table: &Table) -> std::io::Result<()> {
    for line in table.lines() {
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// Prints the tables of `rows` (see [`status_tables`]) on stdout, a blank line between two.
///
/// # Errors
/// A write error (a closed pipe: the caller ends quietly).
pub fn print_status(rows: &[Row]) -> std::io::Result<()> {
    let tables = status_tables(rows);
    let mut out = std::io::stdout().lock();
    print(&mut out, &tables.nodes)?;
    for table in [tables.tasks, tables.notes].iter().flatten() {
        writeln!(out)?;
        print(&mut out, table)?;
    }
    out.flush()
}

#[cfg(test)]
mod tests {
    use protocol::{NodeState, TaskCounters};

    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn status() -> NodeStatus {
        NodeStatus {
            addr: addr(6000).to_string(),
            cores: 2,
            workers: 2,
            idle_workers: 1,
            state: NodeState::Busy,
            root: Some("127.0.0.9:40000".into()),
            chain: Some(("w1".into(), "1".into())),
            uptime_s: 42,
            modules_compiled: 1,
            module_cache_hits: 0,
            tasks: vec![TaskCounters {
                name: "w1_identity".into(),
                items_in: 10,
                items_out: 10,
                dropped: 0,
                failed: 0,
                busy_ns: 1_500_000_000,
            }],
            rss_bytes: Some(30 << 20),
            labels: vec!["cpu".into()],
        }
    }

    #[test]
    fn nodes_and_their_tasks_make_two_tables() {
        let rows = [
            status_row(addr(6000), Ok(status())),
            note_row(addr(6001), "busy with 127.0.0.8:1"),
        ];
        let tables = status_tables(&rows);
        let nodes = tables.nodes.to_string();
        let lines: Vec<&str> = nodes.lines().map(str::trim_end).collect();
        assert_eq!(lines.len(), 2, "{nodes}");
        assert!(lines[0].starts_with("NODE"), "{nodes}");
        assert!(
            lines[1].starts_with("127.0.0.1:6000")
                && lines[1].contains("busy")
                && lines[1].contains("w1 1")
                && lines[1].ends_with("42s"),
            "{nodes}"
        );
        let tasks = tables.tasks.expect("a task table").to_string();
        assert!(tasks.contains("w1_identity"), "{tasks}");
        assert!(tasks.contains("1.500"), "{tasks}");
        let notes = tables.notes.expect("a note table").to_string();
        assert!(
            notes.contains("127.0.0.1:6001  busy with 127.0.0.8:1"),
            "{notes}"
        );
    }

    #[test]
    fn without_a_chain_or_a_note_there_is_one_table() {
        let tables = status_tables(&[status_row(
            addr(1),
            Ok(NodeStatus {
                tasks: Vec::new(),
                ..status()
            }),
        )]);
        assert!(tables.tasks.is_none() && tables.notes.is_none());
    }

    #[test]
    fn a_free_nodes_counters_are_marked_as_the_last_chains() {
        let free = NodeStatus {
            state: NodeState::Free,
            chain: None,
            root: None,
            ..status()
        };
        let tables = status_tables(&[status_row(addr(1), Ok(free))]);
        let tasks = tables.tasks.expect("a task table").to_string();
        assert!(
            tasks
                .lines()
                .nth(1)
                .unwrap()
                .trim_end()
                .ends_with("(last chain)"),
            "{tasks}"
        );
        let busy = status_tables(&[status_row(addr(1), Ok(status()))]);
        let tasks = busy.tasks.expect("a task table").to_string();
        assert!(!tasks.contains("last chain"), "{tasks}");
    }

    #[test]
    fn markdown_tables_right_align_numbers() {
        let mut t = new(Style::Markdown, &["workload", "items"], &[1]);
        t.add_row(["W1", "1000000"]);
        t.add_row(["W2", "200"]);
        let text = t.to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "| workload |   items |");
        assert!(lines[1].starts_with("|---"), "{text}");
        assert_eq!(lines[3], "| W2       |     200 |");
    }
}
