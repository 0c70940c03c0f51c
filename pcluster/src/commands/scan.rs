//! `pcluster scan`: a table of the nodes found on a network, listed in a file or under a DNS
//! name (or, with
//! `--json`, the dashboard's snapshot of them).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use protocol::{NodeState, NodeStatus};
use root::ScanReport;

use crate::setup::{Console, TokenArg, init_tracing, runtime};
use crate::table;

#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    /// Network to scan, e.g. 127.0.0.0/24.
    #[arg(required_unless_present_any = ["nodes_file", "nodes_dns"])]
    pub network: Option<ipnetwork::IpNetwork>,
    /// Probe the addresses of this file too, one `host[:port]` a line (`#` comments; a
    /// missing port is --port).
    #[arg(long, value_name = "FILE")]
    pub nodes_file: Option<PathBuf>,
    /// Probe every A/AAAA record of NAME too (`NAME[:PORT]`; a missing port is --port).
    #[arg(long, value_name = "NAME")]
    pub nodes_dns: Option<String>,
    #[arg(short, long, default_value_t = protocol::DEFAULT_NODE_PORT)]
    pub port: u16,
    /// Connect timeout per host, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub connect_timeout_ms: u64,
    /// Print one JSON document (the fields of the dashboard's /api/status) instead of tables.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub token: TokenArg,
}

pub fn run(args: ScanArgs) -> anyhow::Result<ExitCode> {
    init_tracing(Console::Stderr, None, "error");
    let port = args.port;
    runtime(false)?.block_on(async move {
        let options = root::RootOptions {
            token: args.token.token()?,
            connect_timeout: Duration::from_millis(args.connect_timeout_ms),
            ..Default::default()
        };
        let started = Instant::now();
        let report = match args.network {
            Some(network) => root::scan::scan(network, port, &options).await,
            None => ScanReport::default(),
        };
        let mut listed = Vec::new();
        let sources = crate::discovery::Sources {
            nodes_file: args.nodes_file.clone(),
            nodes_dns: args.nodes_dns.clone(),
            port,
            rescan: None,
        };
        sources.read_once(&mut listed).await?;
        // Listed addresses the scan did not find are probed as `status` does: their row says
        // what answered, or why nothing did.
        let found =
            |a: &SocketAddr| report.free.contains(a) || report.busy.iter().any(|(b, _)| b == a);
        let mut extra = Vec::new();
        for a in listed.iter().filter(|a| !found(a)) {
            extra.push((*a, root::node_status(*a, &options).await));
        }
        // What the listed nodes the scan did not find said they are, for the summary.
        let state = |want: NodeState| {
            let says = |st: &Result<NodeStatus, _>| st.as_ref().is_ok_and(|s| s.state == want);
            extra.iter().filter(|(_, st)| says(st)).count()
        };
        let (free, busy) = (state(NodeState::Free), state(NodeState::Busy));
        let took = started.elapsed();
        if args.json {
            print_json(&report, &extra, &options).await?;
        } else {
            print_table(&report, extra, &options).await?;
        }
        let mut what = Vec::new();
        if let Some(n) = args.network {
            what.push(format!("{} hosts of {n} on port {port}", report.hosts));
        }
        match (&args.nodes_file, &args.nodes_dns) {
            (Some(f), None) => what.push(format!("{} addresses of {}", listed.len(), f.display())),
            (None, Some(n)) => what.push(format!("{} addresses of {n}", listed.len())),
            (Some(f), Some(n)) => what.push(format!(
                "{} addresses of {} and {n}",
                listed.len(),
                f.display()
            )),
            (None, None) => {}
        }
        eprintln!(
            "scanned {} in {:.1} ms: {} free, {} busy, {} could not be authenticated",
            what.join(" and "),
            took.as_secs_f64() * 1000.0,
            report.free.len() + free,
            report.busy.len() + busy,
            report.unauthenticated.len()
        );
        Ok(ExitCode::SUCCESS)
    })
}

async fn print_table(
    report: &ScanReport,
    extra: Vec<(SocketAddr, Result<NodeStatus, root::RootError>)>,
    options: &root::RootOptions,
) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for addr in &report.free {
        rows.push(table::status_row(
            *addr,
            root::node_status(*addr, options).await,
        ));
    }
    rows.extend(extra.into_iter().map(|(a, st)| table::status_row(a, st)));
    for (addr, holder) in &report.busy {
        rows.push(table::note_row(*addr, &format!("busy with {holder}")));
    }
    for (addr, why) in report.unauthenticated.iter().chain(&report.failed) {
        rows.push(table::note_row(*addr, &format!("not authenticated: {why}")));
    }
    table::print_status(&rows)?;
    Ok(())
}

/// The JSON of a scan: every node that answered, busy ones too, with its status (a status
/// probe claims no node); the others with why not.
async fn print_json(
    report: &ScanReport,
    extra: &[(SocketAddr, Result<NodeStatus, root::RootError>)],
    options: &root::RootOptions,
) -> anyhow::Result<()> {
    let mut views = Vec::new();
    let answered = report.busy.iter().map(|(a, _)| a);
    for addr in report.free.iter().chain(answered) {
        let st = root::node_status(*addr, options).await;
        views.push((*addr, crate::json::node_view(*addr, &st)));
    }
    for (addr, st) in extra {
        views.push((*addr, crate::json::node_view(*addr, st)));
    }
    for (addr, why) in report.unauthenticated.iter().chain(&report.failed) {
        let note = format!("not authenticated: {why}");
        views.push((*addr, crate::json::note_view(*addr, &note)));
    }
    crate::json::print(&crate::json::snapshot(views))
}
