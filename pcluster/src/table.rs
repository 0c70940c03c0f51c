//! Plain-text tables of node status for `scan` and `status`.

use std::net::SocketAddr;

use protocol::NodeStatus;

pub struct Row {
    cells: Vec<String>,
    tasks: Vec<String>,
}

pub fn status_row(addr: SocketAddr, st: Result<NodeStatus, root::RootError>) -> Row {
    match st {
        Ok(s) => Row {
            cells: vec![
                addr.to_string(),
                format!("{:?}", s.state).to_lowercase(),
                s.workers.to_string(),
                s.idle_workers.to_string(),
                s.chain.map(|(n, v)| format!("{n} {v}")).unwrap_or_else(|| "-".into()),
                s.root.unwrap_or_else(|| "-".into()),
                format!("{}s", s.uptime_s),
            ],
            tasks: s
                .tasks
                .iter()
                .map(|t| {
                    format!(
                        "    {:<16} in {:>10}  out {:>10}  dropped {:>10}  failed {:>6}  busy {:>8.3}s",
                        t.name,
                        t.items_in,
                        t.items_out,
                        t.dropped,
                        t.failed,
                        t.busy_ns as f64 / 1e9
                    )
                })
                .collect(),
        },
        Err(e) => note_row(addr, &e.to_string()),
    }
}

pub fn note_row(addr: SocketAddr, note: &str) -> Row {
    Row {
        cells: vec![addr.to_string(), note.to_string()],
        tasks: Vec::new(),
    }
}

pub fn print_status(rows: &[Row]) {
    println!(
        "{:<22} {:<9} {:>7} {:>5} {:<20} {:<22} {:>8}",
        "NODE", "STATE", "WORKERS", "IDLE", "CHAIN", "ROOT", "UPTIME"
    );
    for r in rows {
        if r.cells.len() == 7 {
            let c = &r.cells;
            println!(
                "{:<22} {:<9} {:>7} {:>5} {:<20} {:<22} {:>8}",
                c[0], c[1], c[2], c[3], c[4], c[5], c[6]
            );
        } else {
            println!("{:<22} {}", r.cells[0], r.cells.get(1).map_or("", |s| s));
        }
        for t in &r.tasks {
            println!("{t}");
        }
    }
}
