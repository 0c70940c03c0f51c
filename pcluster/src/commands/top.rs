//! `pcluster top`: the dashboard's numbers in the terminal, one line per node and one per
//! task, redrawn once a second until Ctrl-C. On a terminal (and without `NO_COLOR`) each
//! frame clears the screen; otherwise each second's snapshot is printed as plain lines.
//! `--once` prints the first frame and exits (`--json`: the snapshot, as `/api/status`).

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;

use root::dashboard::Snapshot;

use super::dashboard::WatchArgs;
use super::fetch;
use crate::setup::{Console, init_tracing, next_signal, runtime, use_colour};

#[derive(clap::Args, Debug)]
pub struct TopArgs {
    /// Show a run's progress too: the address of its dashboard (`pcluster run --dashboard
    /// ADDR`), instead of --nodes or --scan.
    #[arg(long, conflicts_with_all = ["nodes", "scan", "nodes_file", "nodes_dns"])]
    pub run: Option<SocketAddr>,
    /// Print one frame (after the first poll) and exit.
    #[arg(long)]
    pub once: bool,
    /// With --once: print the frame as one JSON document (the fields of the dashboard's
    /// /api/status) instead of text.
    #[arg(long, requires = "once")]
    pub json: bool,
    #[command(flatten)]
    pub watch: WatchArgs,
}

pub fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    init_tracing(Console::Stderr, None, "error");
    let redraw = use_colour(Console::Stdout);
    runtime(false)?.block_on(async move {
        let signal = next_signal();
        tokio::pin!(signal);
        if let Some(addr) = args.run {
            let mut tick = tokio::time::interval(root::dashboard::POLL);
            loop {
                tokio::select! {
                    _ = &mut signal => break,
                    _ = tick.tick() => {}
                }
                match fetch::snapshot(addr).await {
                    Ok(s) if args.once => return once(&s, args.json),
                    Ok(s) => draw(&render(&s), redraw)?,
                    // The run ended (its dashboard with it), or never was there.
                    Err(e) => {
                        eprintln!("pcluster top: {e:#}");
                        break;
                    }
                }
            }
            return Ok(ExitCode::SUCCESS);
        }
        let monitor = args.watch.monitor().await?;
        let mut snapshots = monitor.subscribe();
        loop {
            tokio::select! {
                _ = &mut signal => break,
                changed = snapshots.changed() => if changed.is_err() { break },
            }
            let snapshot = snapshots.borrow_and_update().clone();
            if args.once {
                return once(&snapshot, args.json);
            }
            draw(&render(&snapshot), redraw)?;
        }
        Ok(ExitCode::SUCCESS)
    })
}

/// `--once`: one frame, as text or JSON, and done.
fn once(s: &Snapshot, json: bool) -> anyhow::Result<ExitCode> {
    if json {
        crate::json::print(s)?;
    } else {
        draw(&render(s), false)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// One frame on stdout: over the last on a terminal, after it otherwise.
fn draw(text: &str, redraw: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    if redraw {
        // Clear the screen and go home: a whole frame each second.
        write!(out, "\x1b[2J\x1b[H")?;
    }
    write!(out, "{text}")?;
    if !redraw {
        writeln!(out)?;
    }
    out.flush()
}

/// One frame: a header, the nodes, then the tasks.
pub fn render(s: &Snapshot) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pcluster top  {} UTC  {} node{}",
        clock(s.at_ms),
        s.nodes.len(),
        if s.nodes.len() == 1 { "" } else { "s" }
    );
    if let Some(r) = &s.run {
        let total = r.total.map_or(String::new(), |t| format!(" / {t}"));
        let _ = writeln!(
            out,
            "run: done {}{total}{}  {} inputs/s  ETA {}  in flight {}  failed {}  retried {}  re-dispatched {}",
            r.done,
            r.total
                .filter(|&t| t > 0)
                .map_or(String::new(), |t| format!(
                    " ({:.1} %)",
                    100.0 * r.done as f64 / t as f64
                )),
            rate(r.rate),
            r.eta_s.map_or("-".into(), |e| format!("{e:.0} s")),
            r.in_flight,
            r.failed,
            r.retried,
            r.redispatched
        );
    }
    let _ = writeln!(
        out,
        "{:<24} {:<11} {:<6} {:>7} {:>5} {:>5} {:>9} {:>10} {:>5} {:>8}  CHAIN",
        "NODE", "STATE", "LABELS", "WORKERS", "BUSY", "IDLE", "INPUTS/S", "RSS", "LOST", "REJOINED"
    );
    for n in &s.nodes {
        let opt = |v: Option<u32>| v.map_or("-".into(), |v| v.to_string());
        let labels = if n.labels.is_empty() {
            "-".to_string()
        } else {
            n.labels.join(",")
        };
        let _ = writeln!(
            out,
            "{:<24} {:<11} {:<6} {:>7} {:>5} {:>5} {:>9} {:>10} {:>5} {:>8}  {}",
            n.addr,
            n.state.name(),
            labels,
            opt(n.workers),
            opt(n.busy_workers),
            opt(n.idle_workers),
            rate(n.rate),
            n.rss_bytes.map_or("-".into(), mib),
            n.lost,
            n.rejoined,
            n.error.as_deref().or(n.chain.as_deref()).unwrap_or("-")
        );
    }
    // Nodes without a chain report their last chain's counters: say so, not as current.
    let last = s.nodes.iter().any(|n| !n.tasks.is_empty())
        && s.nodes.iter().all(|n| n.tasks.is_empty() || n.last_chain);
    let _ = writeln!(
        out,
        "{:<24} {:>12} {:>12} {:>12} {:>9} {:>11}{}",
        "TASK",
        "IN",
        "OUT",
        "DROPPED",
        "FAILED",
        "TIME/ITEM",
        if last {
            "  (the nodes' last chain)"
        } else {
            ""
        }
    );
    for t in &s.tasks {
        let _ = writeln!(
            out,
            "{:<24} {:>12} {:>12} {:>12} {:>9} {:>11}",
            t.name,
            t.items_in,
            t.items_out,
            t.dropped,
            t.failed,
            t.ns_per_item.map_or("-".into(), per_item)
        );
    }
    out
}

fn rate(r: Option<f64>) -> String {
    match r {
        None => "-".into(),
        Some(r) if r >= 100.0 => format!("{r:.0}"),
        Some(r) => format!("{r:.1}"),
    }
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
}

fn per_item(ns: f64) -> String {
    if ns >= 1e6 {
        format!("{:.1} ms", ns / 1e6)
    } else if ns >= 1e3 {
        format!("{:.1} µs", ns / 1e3)
    } else {
        format!("{ns:.0} ns")
    }
}

/// `HH:MM:SS` of a Unix time in ms (UTC).
fn clock(ms: u64) -> String {
    let s = (ms / 1000) % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use root::dashboard::{NodeShown, NodeView, TaskView};

    #[test]
    fn a_frame_has_a_line_per_node_and_per_task() {
        let mut a = NodeView::new("127.0.0.2:6000".into(), NodeShown::Busy);
        (a.workers, a.busy_workers, a.idle_workers) = (Some(2), Some(2), Some(0));
        (a.rate, a.rss_bytes, a.chain) = (Some(1234.4), Some(33 << 20), Some("w1 1".into()));
        let mut b = NodeView::new("127.0.0.3:6000".into(), NodeShown::Unreachable);
        (b.lost, b.error) = (1, Some("connection refused".into()));
        let s = Snapshot {
            at_ms: 3_723_000,
            nodes: vec![a, b],
            tasks: vec![TaskView {
                name: "w1_identity".into(),
                items_in: 10,
                items_out: 10,
                ns_per_item: Some(2500.0),
                ..TaskView::default()
            }],
            ..Snapshot::default()
        };
        let text = render(&s);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[0].contains("01:02:03 UTC  2 nodes"), "{text}");
        assert!(lines[2].starts_with("127.0.0.2:6000"), "{text}");
        for want in ["busy", "1234", "33.0 MiB", "w1 1"] {
            assert!(lines[2].contains(want), "{want} in {}", lines[2]);
        }
        assert!(lines[3].contains("unreachable") && lines[3].contains("connection refused"));
        assert!(
            lines[5].starts_with("w1_identity") && lines[5].ends_with("2.5 µs"),
            "{text}"
        );
    }
}
