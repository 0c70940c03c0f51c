//! Finding nodes: a concurrent, bounded connect-and-handshake over every host of a network.
//!
//! Speed comes from concurrency, not from a tiny timeout: up to
//! [`crate::RootOptions::scan_concurrency`] connects are in flight, each with the LAN-sized
//! connect timeout.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use protocol::ProtocolError;
use protocol::handshake::Role;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::RootOptions;
use crate::error::RootError;

/// What a scan found.
#[derive(Clone, Debug, Default)]
pub struct ScanReport {
    /// Free pcluster nodes (after `search_nodes`: the ones added).
    pub free: Vec<SocketAddr>,
    /// Nodes held by another root, with that root.
    pub busy: Vec<(SocketAddr, protocol::Holder)>,
    /// Nodes we could not authenticate (or that could not authenticate us), with why.
    pub unauthenticated: Vec<(SocketAddr, String)>,
    /// Nodes found but not added, with why.
    pub failed: Vec<(SocketAddr, String)>,
    /// Hosts tried.
    pub hosts: u64,
}

enum Probe {
    Free,
    Busy(protocol::Holder),
    Unauthenticated(String),
    Other(String),
    Nothing,
}

fn hosts(network: ipnetwork::IpNetwork) -> Box<dyn Iterator<Item = IpAddr> + Send> {
    match network {
        ipnetwork::IpNetwork::V4(n) => {
            let (net, bcast, prefix) = (n.network(), n.broadcast(), n.prefix());
            Box::new(
                n.iter()
                    .filter(move |ip| prefix >= 31 || (*ip != net && *ip != bcast))
                    .map(IpAddr::V4),
            )
        }
        ipnetwork::IpNetwork::V6(n) => Box::new(n.iter().map(IpAddr::V6)),
    }
}

async fn probe(addr: SocketAddr, options: &RootOptions) -> Probe {
    match crate::conn::connect(addr, Role::Probe, options, None).await {
        Ok((_, welcome)) => match welcome.busy_with {
            Some(holder) => Probe::Busy(holder),
            None => Probe::Free,
        },
        Err(RootError::Node {
            source: ProtocolError::Auth(why),
            ..
        }) => Probe::Unauthenticated(why),
        Err(RootError::Node {
            source: ProtocolError::VersionMismatch { ours, theirs },
            ..
        }) => Probe::Other(format!("protocol version {theirs} (we speak {ours})")),
        Err(e) => {
            tracing::debug!(%addr, "not a usable node: {e}");
            Probe::Nothing
        }
    }
}

/// Scans `network` on `port` without adding anything.
///
/// The probes run on a multi-threaded runtime of their own: a scan is bound by the kernel's
/// connect work, which one thread (a root's runtime is often single-threaded) cannot spread
/// over the cores.
pub async fn scan(network: ipnetwork::IpNetwork, port: u16, options: &RootOptions) -> ScanReport {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let options = options.clone();
    let spawned = std::thread::Builder::new()
        .name("pcluster-scan".into())
        .spawn(move || {
            let threads = std::thread::available_parallelism().map_or(2, |n| n.get().min(4));
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .enable_all()
                .build();
            let report = match rt {
                Ok(rt) => rt.block_on(scan_here(network, port, &options)),
                Err(e) => {
                    tracing::warn!("cannot start the scan runtime: {e}");
                    ScanReport::default()
                }
            };
            let _ = tx.send(report);
        });
    match spawned {
        Ok(_) => rx.await.unwrap_or_default(),
        Err(e) => {
            tracing::warn!("cannot start the scan thread: {e}");
            ScanReport::default()
        }
    }
}

async fn scan_here(network: ipnetwork::IpNetwork, port: u16, options: &RootOptions) -> ScanReport {
    let limit = Arc::new(Semaphore::new(options.scan_concurrency.max(1)));
    let options = Arc::new(options.clone());
    let mut set = JoinSet::new();
    let mut report = ScanReport::default();
    let handle = |r: Result<(SocketAddr, Probe), tokio::task::JoinError>,
                  report: &mut ScanReport| {
        if let Ok((addr, p)) = r {
            match p {
                Probe::Free => report.free.push(addr),
                Probe::Busy(holder) => {
                    tracing::warn!(node = %addr, "node is busy with another root ({holder}); not added");
                    report.busy.push((addr, holder));
                }
                Probe::Unauthenticated(why) => {
                    tracing::warn!(node = %addr, "could not authenticate node: {why}");
                    report.unauthenticated.push((addr, why));
                }
                Probe::Other(why) => report.failed.push((addr, why)),
                Probe::Nothing => {}
            }
        }
    };
    for ip in hosts(network) {
        report.hosts += 1;
        let Ok(permit) = limit.clone().acquire_owned().await else {
            break;
        };
        let options = options.clone();
        let addr = SocketAddr::new(ip, port);
        set.spawn(async move {
            let p = probe(addr, &options).await;
            drop(permit);
            (addr, p)
        });
        // Reap finished probes as we go so the set stays small on a /16.
        while let Some(r) = set.try_join_next() {
            handle(r, &mut report);
        }
    }
    while let Some(r) = set.join_next().await {
        handle(r, &mut report);
    }
    report.free.sort();
    report
}
