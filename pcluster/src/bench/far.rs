//! W1 and W4 through `pcluster run` to nodes far away: a delay proxy (the kit's) in front of
//! each node adds a round trip of 0, 10 or 50 ms. A node's window covers the round trip as
//! well as the work, so a far node should be nearly as busy as a near one; the 0 ms rows are
//! the peers (the same proxy, no delay), so the proxy's own cost cancels out.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use kit::{DelayProxy, Pcluster};

use super::cluster::{Cluster, Target};
use super::w4::{W4Options, W4Report};
use super::{Floors, Row, w1_process};

/// Round trips of the W1 rows, in ms.
const W1_RTT_MS: [u64; 3] = [0, 10, 50];
/// Round trips of the W4 rows, in ms.
const W4_RTT_MS: [u64; 2] = [0, 10];

/// A proxy in front of every node of a cluster, relaying on a runtime of its own (the
/// bench's runtime blocks while a `pcluster run` process runs).
struct Proxied {
    addrs: Vec<SocketAddr>,
    workers: u64,
    proxies: Vec<DelayProxy>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Proxied {
    /// Proxies adding `rtt` (half each way) in front of `cluster`'s nodes.
    fn start(cluster: &Cluster, rtt: Duration) -> anyhow::Result<Proxied> {
        let rt = crate::setup::runtime(true)?;
        let one_way = rtt / 2;
        let nodes = cluster.nodes.clone();
        // Started from a thread of its own: the bench's thread is inside its runtime.
        let proxies = std::thread::scope(|s| {
            s.spawn(|| {
                rt.block_on(async {
                    let mut proxies = Vec::new();
                    for n in nodes {
                        proxies
                            .push(DelayProxy::start(Ipv4Addr::LOCALHOST.into(), n, one_way).await?);
                    }
                    Ok::<_, kit::Error>(proxies)
                })
            })
            .join()
        })
        .map_err(|_| anyhow::anyhow!("starting the proxies panicked"))??;
        Ok(Proxied {
            addrs: proxies.iter().map(DelayProxy::addr).collect(),
            workers: Target::workers(cluster),
            proxies,
            rt: Some(rt),
        })
    }
}

impl Target for Proxied {
    fn nodes_arg(&self) -> String {
        let addrs: Vec<String> = self.addrs.iter().map(ToString::to_string).collect();
        addrs.join(",")
    }

    fn workers(&self) -> u64 {
        self.workers
    }
}

impl Drop for Proxied {
    fn drop(&mut self) {
        self.proxies.clear();
        // Dropped on the bench's runtime, where a runtime may not block to shut down.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// W1 over `n` items at each round trip; each note gives the rate against the 0 ms row.
pub fn w1_rows(
    pcluster: &Pcluster,
    cluster: &Cluster,
    dir: &Path,
    n: u64,
    floors: Floors,
) -> anyhow::Result<Vec<Row>> {
    let mut rows: Vec<Row> = Vec::new();
    for ms in W1_RTT_MS {
        let proxied = Proxied::start(cluster, Duration::from_millis(ms))?;
        let name = format!("W1 `pcluster run`, {ms} ms RTT (proxy)");
        let mut row = w1_process(pcluster, &proxied, dir, &name, n, floors, &[])?;
        if let Some(near) = rows.first() {
            let ratio = near.secs / row.secs;
            row.note = format!("{:.0}% of the 0 ms rate; {}", 100.0 * ratio, row.note);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// W4 (`items` of 100 KB) at each round trip, one run each.
pub fn w4_reports(
    pcluster: &Pcluster,
    cluster: &Cluster,
    dir: &Path,
    items: u64,
) -> anyhow::Result<Vec<W4Report>> {
    let pids: Vec<u32> = cluster.processes[1..].iter().map(|p| p.id()).collect();
    let mut reports = Vec::new();
    for ms in W4_RTT_MS {
        let proxied = Proxied::start(cluster, Duration::from_millis(ms))?;
        let options = W4Options {
            name: format!("W4, {ms} ms RTT (proxy)"),
            items,
            runs: 1,
            ..W4Options::default()
        };
        reports.push(super::w4::w4(
            pcluster,
            &proxied.nodes_arg(),
            &pids,
            dir,
            &options,
        )?);
    }
    Ok(reports)
}
