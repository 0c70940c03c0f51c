//! The nodes of a run: `--nodes` entries (de-duplicated, unreachable ones skipped while at
//! least `--min-nodes` work), a `--scan`, and keeping membership elastic while the run goes:
//! lost `--nodes` entries are retried and re-added when back, `--nodes-file` and
//! `--nodes-dns` are followed, and `--scan` networks are scanned again every `--rescan` seconds for new or restarted
//! nodes.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::bail;
use tokio_util::sync::CancellationToken;

use crate::setup::node_addr;

/// Where nodes come from.
#[derive(Clone, Debug)]
pub struct Sources {
    pub nodes: Vec<SocketAddr>,
    pub scan: Option<(ipnetwork::IpNetwork, u16)>,
    /// `--nodes-file` and `--nodes-dns`, as first read.
    pub listings: Vec<crate::discovery::Listing>,
}

/// Resolves `--nodes` entries (a missing port is `port`), without duplicates.
///
/// # Errors
/// An entry that does not parse or resolve.
pub async fn resolve_all(entries: &[String], port: u16) -> anyhow::Result<Vec<SocketAddr>> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for e in entries {
        let a = node_addr(e, port).await?;
        if out.contains(&a) {
            eprintln!("pcluster run: node {a} is listed twice; using it once");
        } else {
            out.push(a);
        }
    }
    Ok(out)
}

/// Adds the nodes; returns how many were added.
///
/// # Errors
/// Fewer than `min_nodes` nodes could be added (each failure is named).
pub async fn attach(root: &root::Root, src: &Sources, min_nodes: usize) -> anyhow::Result<usize> {
    let mut added = 0;
    let mut failures = Vec::new();
    for l in src.listings.iter().filter(|l| l.listed().is_empty()) {
        failures.push(format!("{} lists no node", l.what()));
    }
    let listed = crate::discovery::union(&src.listings);
    let from_listings = listed.iter().filter(|a| !src.nodes.contains(a));
    let all: Vec<SocketAddr> = src.nodes.iter().chain(from_listings).copied().collect();
    // Side by side: a far node's handshake takes round trips.
    for (&a, r) in all.iter().zip(root.add_nodes(&all).await) {
        match r {
            Ok(()) => added += 1,
            Err(e) => {
                eprintln!("pcluster run: skipping node {a}: {e}");
                failures.push(format!("{a}: {e}"));
            }
        }
    }
    if let Some((net, port)) = src.scan {
        let t = Instant::now();
        let report = root.search_nodes(net, port).await?;
        eprintln!(
            "pcluster run: scan of {net} port {port}: {} nodes added in {:.1} ms ({} busy, {} not authenticated)",
            report.free.len(),
            t.elapsed().as_secs_f64() * 1000.0,
            report.busy.len(),
            report.unauthenticated.len()
        );
        for (a, why) in &report.unauthenticated {
            eprintln!("pcluster run: could not authenticate {a}: {why}");
        }
        for (a, why) in &report.busy {
            eprintln!("pcluster run: node {a} is busy with {why}");
        }
        if report.free.is_empty() {
            failures.push(format!(
                "the scan of {net} port {port} found no free node among {} hosts",
                report.hosts
            ));
        }
        added += report.free.len();
    }
    if added < min_nodes.max(1) {
        bail!(
            "{added} nodes could be used, {} needed: {}",
            min_nodes.max(1),
            failures.join("; ")
        );
    }
    Ok(added)
}

/// Keeps membership elastic until `stop`: `--nodes` entries that are not (or no longer)
/// attached are tried every `retry`, `--nodes-file` and `--nodes-dns` are followed at the
/// same pace (a name is resolved again only every `--rescan`), and a `--scan` network is
/// scanned every `rescan`.
pub async fn keep_elastic(
    root: &root::Root,
    src: &Sources,
    retry: Duration,
    rescan: Option<Duration>,
    stop: CancellationToken,
) {
    let mut listings = src.listings.clone();
    let mut retry_tick = tokio::time::interval(retry);
    retry_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rescan_tick = rescan.map(|d| {
        let mut t = tokio::time::interval_at(tokio::time::Instant::now() + d, d);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    loop {
        tokio::select! {
            // A stop wins over a tick that is due as well: the run is over.
            biased;
            () = stop.cancelled() => return,
            _ = retry_tick.tick(), if !src.nodes.is_empty() || !listings.is_empty() => {
                // Adding a node may wait for a handshake, resolving a name for the resolver:
                // the end of the run waits for neither.
                if !listings.is_empty() {
                    tokio::select! {
                        biased;
                        () = stop.cancelled() => return,
                        () = crate::discovery::follow(root, &mut listings, &src.nodes) => {}
                    }
                }
                let Ok(have) = root.nodes().await else { return };
                for &a in src.nodes.iter().filter(|a| !have.contains(a)) {
                    // A node that is stopped, not gone, holds its handshake to the deadline:
                    // the end of the run does not wait for it.
                    let added = tokio::select! {
                        biased;
                        () = stop.cancelled() => return,
                        r = root.add_node(a) => r,
                    };
                    if added.is_ok() {
                        eprintln!("pcluster run: node {a} is back");
                    }
                }
            }
            _ = tick(&mut rescan_tick) => {
                let Some((net, port)) = src.scan else { continue };
                if let Ok(r) = root.search_nodes(net, port).await {
                    for a in &r.free {
                        eprintln!("pcluster run: node {a} joined");
                    }
                }
            }
        }
    }
}

async fn tick(t: &mut Option<tokio::time::Interval>) {
    match t {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}
