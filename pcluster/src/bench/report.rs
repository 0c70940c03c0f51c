//! How `pcluster bench` prints its results: the table of workloads (rate, ratios to the
//! floors, notes) and the lines around it (floors, setup times, peak RSS, scans).

use kit::{Process, peak_rss_mib};
use std::io::Write as _;

use super::{Report, Row, w4};
use crate::table::{self, Style};

/// The table: each workload's rate and its ratio to the floors' rate on all workers.
pub(super) fn rows_table(rows: &[Row]) -> comfy_table::Table {
    let mut t = table::new(
        Style::Markdown,
        &[
            "workload",
            "items",
            "wall s",
            "items/s",
            "vs native",
            "vs wasm",
            "notes",
        ],
        &[1, 2, 3, 4, 5],
    );
    for r in rows {
        let rate = r.items as f64 / r.secs;
        let ratio = |ns: f64| {
            if ns.is_nan() {
                "–".to_string()
            } else {
                format!("{:.0}%", 100.0 * rate / (1e9 / ns * r.workers as f64))
            }
        };
        t.add_row([
            r.name.clone(),
            r.items.to_string(),
            format!("{:.3}", r.secs),
            format!("{rate:.0}"),
            ratio(r.floors.native_ns),
            ratio(r.floors.wasm_ns),
            r.note.clone(),
        ]);
    }
    t
}

/// # Errors
/// A write error (a closed pipe: the command ends quietly).
pub(super) fn print_report(r: &Report) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "pcluster bench — {} node process(es) × {} worker(s) on loopback, {} cores",
        r.nodes,
        r.workers,
        node::cores()
    )?;
    writeln!(out)?;
    table::print(&mut out, &rows_table(&r.rows))?;
    writeln!(out)?;
    let f = r.w1_floors;
    writeln!(
        out,
        "floors (one thread, no network): native W1 {:.1} ns/item ({:.1} M items/s); in-process wasm W1 {:.1} ns/item ({:.1} M items/s)",
        f.native_ns,
        1e3 / f.native_ns,
        f.wasm_ns,
        1e3 / f.wasm_ns
    )?;
    writeln!(
        out,
        "setup of the 3-task W1 chain on {} nodes: cold {:.1} ms (compiled, or loaded from the disk cache), warm {:.1} ms (in-memory cache)",
        r.nodes,
        r.setup.cold.as_secs_f64() * 1e3,
        r.setup.warm.as_secs_f64() * 1e3
    )?;
    let nodes: Vec<String> = r
        .node_rss_mib
        .iter()
        .map(|m| format!("{m:.1} MiB"))
        .collect();
    writeln!(
        out,
        "peak RSS: bench root {:.1} MiB; nodes {}",
        peak_rss_mib(Process::Current).unwrap_or(0.0),
        nodes.join(", ")
    )?;
    if let Some((w4, loopback)) = &r.w4 {
        for line in w4::lines(w4, *loopback, node::cores()) {
            writeln!(out, "{line}")?;
        }
        if let Some((encrypted, ratio)) = &r.w4_encrypted {
            for line in w4::lines(encrypted, *loopback, node::cores()) {
                writeln!(out, "{line}")?;
            }
            writeln!(
                out,
                "W4 with a token (encrypted: Noise, AES-GCM): {:.0}% of the rate without (goal ≥ 50%)",
                100.0 * ratio
            )?;
        }
    }
    if let Some(near) = r.w4_far.first().and_then(|w| w.runs.first()) {
        for w in &r.w4_far {
            if let Some(run) = w.runs.first() {
                writeln!(
                    out,
                    "{}: {:.0} MB/s, {:.0}% of the 0 ms rate",
                    w.options.name,
                    run.mb_per_s,
                    100.0 * run.mb_per_s / near.mb_per_s
                )?;
            }
        }
    }
    if let Some(q) = &r.quick {
        writeln!(out, "{}", q.line())?;
    }
    for s in &r.scans {
        writeln!(
            out,
            "scan of {}: {} hosts in {:.1} ms, {} nodes found",
            s.net,
            s.hosts,
            s.took.as_secs_f64() * 1e3,
            s.found
        )?;
    }
    out.flush()
}
