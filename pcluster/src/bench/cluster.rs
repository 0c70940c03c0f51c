//! The bench's cluster: a log server on 127.0.0.1 and node processes on 127.0.0.2, .3, …,
//! all on one port (the scans are of one port), killed when dropped.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use anyhow::Context as _;
use kit::{Child, Pcluster, Process, peak_rss_mib};

/// The log server and node processes the bench runs on; killed when dropped.
pub(super) struct Cluster {
    /// The log server first, then the nodes.
    pub(super) processes: Vec<Child>,
    pub(super) nodes: Vec<SocketAddr>,
    /// The port every node listens on, each on an address of its own.
    pub(super) port: u16,
    /// Workers of each node.
    pub(super) workers: u32,
    /// The log server's port (on 127.0.0.1).
    pub(super) log_port: u16,
}

impl Cluster {
    /// A log server on 127.0.0.1 and `nodes` node processes on 127.0.0.2, .3, …, all with
    /// `extra` arguments.
    pub(super) async fn start(
        pcluster: &Pcluster,
        dir: &Path,
        nodes: u32,
        workers: u32,
        extra: &[&str],
    ) -> anyhow::Result<Cluster> {
        Cluster::start_with(pcluster, dir, nodes, workers, extra, &[]).await
    }

    /// The same, with `node_extra` arguments for the nodes only.
    pub(super) async fn start_with(
        pcluster: &Pcluster,
        dir: &Path,
        nodes: u32,
        workers: u32,
        extra: &[&str],
        node_extra: &[&str],
    ) -> anyhow::Result<Cluster> {
        let extra_node: Vec<&str> = extra.iter().chain(node_extra).copied().collect();
        let (log, log_port) = pcluster.start_log(&dir.join("bench.log"), extra).await?;
        let mut processes = vec![log];
        // The first node on a port the OS chooses, the others on the same one (the scans
        // are of one port).
        let mut port = 0;
        let mut addrs = Vec::new();
        for i in 0..nodes {
            let last = u8::try_from(2 + i).context("too many nodes for 127.0.0.0/24")?;
            let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, last));
            let (node, bound) = pcluster
                .start_node(ip, port, log_port, workers, &extra_node)
                .await?;
            processes.push(node);
            port = bound;
            addrs.push(SocketAddr::new(ip, port));
        }
        Ok(Cluster {
            processes,
            nodes: addrs,
            port,
            workers,
            log_port,
        })
    }

    /// The peak RSS of each node process so far, in MiB.
    pub(super) fn node_rss_mib(&self) -> Vec<f64> {
        self.processes[1..]
            .iter()
            .filter_map(|p| peak_rss_mib(Process::Pid(p.id())))
            .collect()
    }

    /// `--nodes` for `pcluster run`.
    pub(super) fn nodes_arg(&self) -> String {
        let addrs: Vec<String> = self.nodes.iter().map(ToString::to_string).collect();
        addrs.join(",")
    }
}

/// Where a `pcluster run` of the bench goes: the cluster's nodes, or proxies in front of them.
pub(super) trait Target {
    /// `--nodes` for `pcluster run`.
    fn nodes_arg(&self) -> String;
    /// Workers behind them, in all.
    fn workers(&self) -> u64;
}

impl Target for Cluster {
    fn nodes_arg(&self) -> String {
        Cluster::nodes_arg(self)
    }

    fn workers(&self) -> u64 {
        self.nodes.len() as u64 * u64::from(self.workers)
    }
}
