//! `pcluster dashboard`: the live web page of a set of nodes, without running anything
//! (status probes only: it claims no node). Also what `top` shares with it: the choice of
//! nodes to watch, and the dashboard address parser of `pcluster run --dashboard`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use root::dashboard::{Monitor, WatchNodes};

use crate::setup::{Console, TokenArg, init_tracing, next_signal, node_addr, runtime};

#[derive(clap::Args, Debug)]
pub struct DashboardArgs {
    #[command(flatten)]
    pub watch: WatchArgs,
    /// Where to serve the page: `IP:PORT`, or a port on 127.0.0.1.
    #[arg(long, default_value = "127.0.0.1:8080", value_parser = parse_addr)]
    pub addr: SocketAddr,
    /// Allow a non-loopback --addr: anyone who reaches it sees the nodes.
    #[arg(long)]
    pub public: bool,
}

/// Which nodes to watch.
#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    /// Node addresses, comma-separated (`host[:port]`, `[v6]:port`; a missing port is --port).
    #[arg(short = 'n', long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Node addresses in a file, one `host[:port]` a line (`#` comments; a missing port is
    /// --port), read again when it changes.
    #[arg(long, value_name = "FILE")]
    pub nodes_file: Option<std::path::PathBuf>,
    /// Every A/AAAA record of NAME as a node address (`NAME[:PORT]`; a missing port is
    /// --port), resolved again every --rescan seconds.
    #[arg(long, value_name = "NAME")]
    pub nodes_dns: Option<String>,
    /// Scan this network for nodes, e.g. 127.0.0.0/24 (again every --rescan seconds).
    #[arg(long)]
    pub scan: Option<ipnetwork::IpNetwork>,
    /// Port of the scan, and of --nodes, --nodes-file and --nodes-dns entries that name none.
    #[arg(short, long, default_value_t = protocol::DEFAULT_NODE_PORT)]
    pub port: u16,
    /// Seconds between scans, and between resolutions of --nodes-dns.
    #[arg(long, default_value_t = 10)]
    pub rescan: u64,
    #[command(flatten)]
    pub token: TokenArg,
}

impl WatchArgs {
    /// Checked here rather than by clap, so `top --run` can do without both.
    ///
    /// # Errors
    /// Neither --nodes, --nodes-file, --nodes-dns nor --scan.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.nodes.is_empty() && self.scan.is_none() && !self.sources().any() {
            anyhow::bail!("name the nodes to watch: --nodes, --nodes-file, --nodes-dns or --scan");
        }
        Ok(())
    }

    /// --nodes-file and --nodes-dns.
    fn sources(&self) -> crate::discovery::Sources {
        crate::discovery::Sources {
            nodes_file: self.nodes_file.clone(),
            nodes_dns: self.nodes_dns.clone(),
            port: self.port,
            rescan: Some(Duration::from_secs(self.rescan.max(1))),
        }
    }

    /// Starts a monitor of these nodes (within a runtime).
    ///
    /// # Errors
    /// A --nodes entry that does not parse or resolve, a --nodes-file that cannot be read,
    /// a --nodes-dns name that does not resolve.
    pub async fn monitor(&self) -> anyhow::Result<Monitor> {
        self.check()?;
        let mut nodes = Vec::new();
        for n in &self.nodes {
            let a = node_addr(n, self.port).await?;
            if !nodes.contains(&a) {
                nodes.push(a);
            }
        }
        let listings = self.sources().start().await?;
        // Followed while watching: nodes that join a listing appear, nodes that leave it go.
        let listed = (!listings.is_empty()).then(|| crate::discovery::publish(listings));
        let options = root::RootOptions {
            token: self.token.token()?,
            ..Default::default()
        };
        Ok(Monitor::watch_nodes(
            WatchNodes {
                nodes,
                scan: self.scan.map(|n| (n, self.port)),
                rescan: Duration::from_secs(self.rescan.max(1)),
                listed,
            },
            options,
        ))
    }
}

/// A dashboard address: `IP:PORT`, `[v6]:PORT`, or a bare port (on 127.0.0.1).
///
/// # Errors
/// Neither form.
pub fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse()
        .map_err(|_| format!("`{s}` is not IP:PORT (e.g. 127.0.0.1:8080) nor a port"))
}

pub fn run(args: DashboardArgs) -> anyhow::Result<ExitCode> {
    init_tracing(Console::Stderr, None, "warn");
    runtime(false)?.block_on(async move {
        let monitor = args.watch.monitor().await?;
        let bound = root::dashboard::serve(monitor, args.addr, args.public)
            .await
            .context("cannot serve the dashboard")?;
        eprintln!("pcluster dashboard: http://{bound}/ (Ctrl-C to stop)");
        next_signal().await;
        Ok(ExitCode::SUCCESS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_bare_ports() {
        assert_eq!(
            parse_addr("8080").unwrap(),
            "127.0.0.1:8080".parse().unwrap()
        );
        assert_eq!(
            parse_addr("0.0.0.0:1").unwrap(),
            "0.0.0.0:1".parse().unwrap()
        );
        assert_eq!(parse_addr("[::1]:9").unwrap(), "[::1]:9".parse().unwrap());
        assert!(parse_addr("localhost").unwrap_err().contains("IP:PORT"));
    }

    #[test]
    fn nodes_or_a_scan_are_needed() {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from(["pcluster", "dashboard"]).unwrap();
        let crate::cli::Command::Dashboard(a) = cli.command else {
            panic!("not dashboard")
        };
        assert!(a.watch.check().is_err());
        let cli =
            crate::cli::Cli::try_parse_from(["pcluster", "top", "--scan", "127.0.0.0/24"]).unwrap();
        assert!(matches!(cli.command, crate::cli::Command::Top(_)));
        let cli = crate::cli::Cli::try_parse_from([
            "pcluster",
            "dashboard",
            "-n",
            "127.0.0.2,127.0.0.3:7",
            "--addr",
            "9000",
        ])
        .unwrap();
        let crate::cli::Command::Dashboard(a) = cli.command else {
            panic!("not dashboard")
        };
        assert_eq!(a.watch.nodes, ["127.0.0.2", "127.0.0.3:7"]);
        assert_eq!(a.addr, "127.0.0.1:9000".parse().unwrap());
    }
}
