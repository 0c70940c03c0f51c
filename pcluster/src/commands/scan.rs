//! `pcluster scan`: a table of the nodes found on a network.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use crate::setup::{Console, TokenArg, init_tracing, runtime};
use crate::table;

#[derive(clap::Args, Debug)]
pub struct ScanArgs {
    /// Network to scan, e.g. 127.0.0.0/24.
    pub network: ipnetwork::IpNetwork,
    #[arg(short, long, default_value_t = protocol::DEFAULT_NODE_PORT)]
    pub port: u16,
    /// Connect timeout per host, in milliseconds.
    #[arg(long, default_value_t = 300)]
    pub connect_timeout_ms: u64,
    #[command(flatten)]
    pub token: TokenArg,
}

pub fn run(args: ScanArgs) -> anyhow::Result<ExitCode> {
    init_tracing(Console::Stderr, None, "error");
    let (network, port) = (args.network, args.port);
    runtime(false)?.block_on(async move {
        let options = root::RootOptions {
            token: args.token.token()?,
            connect_timeout: Duration::from_millis(args.connect_timeout_ms),
            ..Default::default()
        };
        let started = Instant::now();
        let report = root::scan::scan(network, port, &options).await;
        let took = started.elapsed();
        let mut rows = Vec::new();
        for addr in &report.free {
            rows.push(table::status_row(*addr, root::node_status(*addr, &options).await));
        }
        for (addr, holder) in &report.busy {
            rows.push(table::note_row(*addr, &format!("busy with {holder}")));
        }
        for (addr, why) in report.unauthenticated.iter().chain(&report.failed) {
            rows.push(table::note_row(*addr, &format!("not authenticated: {why}")));
        }
        table::print_status(&rows)?;
        eprintln!(
            "scanned {} hosts of {network} on port {port} in {:.1} ms: {} free, {} busy, {} could not be authenticated",
            report.hosts,
            took.as_secs_f64() * 1000.0,
            report.free.len(),
            report.busy.len(),
            report.unauthenticated.len()
        );
        Ok(ExitCode::SUCCESS)
    })
}
