//! Nodes joining and leaving a root: one by one ([`Root::add_node`]), all at once
//! ([`Root::add_nodes`], whose handshakes run side by side), by a scan
//! ([`Root::search_nodes`]) or a name ([`Root::search_dns`]), and leaving on request
//! ([`Root::remove_node`]).

use std::net::SocketAddr;

use protocol::handshake::Role;

use crate::scheduler::Cmd;
use crate::{Root, RootError, ScanReport, conn, scan};

impl Root {
    /// Connects to the node at `addr` and adds it; with a chain set up, the node gets it
    /// and starts taking items (nodes may join a running cluster).
    ///
    /// # Errors
    /// Unreachable, not a pcluster node, authentication failed, or busy with another root.
    pub async fn add_node(&self, addr: SocketAddr) -> Result<(), RootError> {
        let r = self.attach(addr).await;
        if let Err(e) = &r {
            self.note_tried(format!("{addr}: {e}"));
        }
        r
    }

    /// Removes the node at `addr` from the run: it gets no new items, and once the items it
    /// holds are done (their outputs handed over as usual) it is told goodbye and freed. If
    /// it is lost before that, its items are sent elsewhere as for any lost node. Returns
    /// whether such a node was attached (a node still finishing its items counts).
    ///
    /// # Errors
    /// Shut down.
    pub async fn remove_node(&self, addr: SocketAddr) -> Result<bool, RootError> {
        self.call(|reply| Cmd::Leave { addr, reply }).await
    }

    /// Connects to every node of `addrs` at once (a far node's handshake takes round trips:
    /// one after another they would add up) and adds each that answers, in order; one result
    /// per address, as [`Root::add_node`] gives.
    pub async fn add_nodes(&self, addrs: &[SocketAddr]) -> Vec<Result<(), RootError>> {
        let mut connecting = tokio::task::JoinSet::new();
        for (i, &addr) in addrs.iter().enumerate() {
            let options = self.options.clone();
            connecting
                .spawn(async move { (i, conn::connect(addr, Role::Root, &options, None).await) });
        }
        let mut connected: Vec<
            Option<Result<(protocol::Connection, protocol::Welcome), RootError>>,
        > = addrs.iter().map(|_| None).collect();
        while let Some(joined) = connecting.join_next().await {
            if let Ok((i, r)) = joined {
                connected[i] = Some(r);
            }
        }
        let mut out = Vec::with_capacity(addrs.len());
        for (&addr, c) in addrs.iter().zip(connected) {
            // A connecting task panicked: say so as a closed connection.
            let c = c.unwrap_or(Err(RootError::Closed));
            let r = match c {
                Ok(c) => self.attach_connected(addr, c).await,
                Err(e) => Err(e),
            };
            if let Err(e) = &r {
                self.note_tried(format!("{addr}: {e}"));
            }
            out.push(r);
        }
        out
    }

    async fn attach(&self, addr: SocketAddr) -> Result<(), RootError> {
        let connected = conn::connect(addr, Role::Root, &self.options, None).await?;
        self.attach_connected(addr, connected).await
    }

    async fn attach_connected(
        &self,
        addr: SocketAddr,
        (conn, welcome): (protocol::Connection, protocol::Welcome),
    ) -> Result<(), RootError> {
        if let Some(holder) = welcome.busy_with {
            return Err(RootError::Busy {
                addr: addr.to_string(),
                holder: holder.root,
                held_s: holder.held_s,
            });
        }
        self.call(|reply| Cmd::Attach {
            addr,
            conn: Box::new(conn),
            workers: welcome.workers,
            labels: welcome.labels,
            reply,
        })
        .await
        .map(|_| ())
    }

    /// Scans every host of `network` on `port` and adds the free pcluster nodes it finds.
    ///
    /// # Errors
    /// Only when the root has shut down: unreachable hosts, other services, busy or
    /// unauthenticated nodes are reported in the [`ScanReport`], not as errors.
    pub async fn search_nodes(
        &self,
        network: ipnetwork::IpNetwork,
        port: u16,
    ) -> Result<ScanReport, RootError> {
        let mut report = scan::scan(network, port, &self.options).await;
        let mut added = Vec::new();
        let free = std::mem::take(&mut report.free);
        for (node, r) in free.iter().zip(self.add_nodes(&free).await) {
            match r {
                Ok(()) => added.push(*node),
                Err(RootError::Closed) => return Err(RootError::Closed),
                Err(e) => {
                    tracing::warn!("could not add {node}: {e}");
                    report.failed.push((*node, e.to_string()));
                }
            }
        }
        if added.is_empty() {
            self.note_tried(format!(
                "a scan of {network} port {port} found no free node ({} hosts: {} busy, {} not authenticated)",
                report.hosts,
                report.busy.len(),
                report.unauthenticated.len()
            ));
        }
        report.free = added;
        Ok(report)
    }

    /// Adds a node at every address `name` resolves to (its A and AAAA records, each once:
    /// a Kubernetes headless Service, a round-robin record), side by side; returns each
    /// address with how adding it went.
    ///
    /// # Errors
    /// The name does not resolve.
    pub async fn search_dns(
        &self,
        name: &str,
        port: u16,
    ) -> Result<Vec<(SocketAddr, Result<(), RootError>)>, RootError> {
        let addrs = resolve_name(name, port).await?;
        let added = self.add_nodes(&addrs).await;
        Ok(addrs.into_iter().zip(added).collect())
    }
}

/// Every address `name` resolves to on `port` (its A and AAAA records), each once, first
/// seen first: getaddrinfo repeats an address once per socket type and may list a record
/// twice.
///
/// # Errors
/// The name does not resolve.
pub async fn resolve_name(name: &str, port: u16) -> Result<Vec<SocketAddr>, RootError> {
    let found = tokio::net::lookup_host((name, port))
        .await
        .map_err(|source| RootError::Resolve {
            name: name.to_owned(),
            source,
        })?;
    Ok(distinct(found))
}

/// The addresses, each once, in the order first seen.
fn distinct(addrs: impl IntoIterator<Item = SocketAddr>) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        if !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_addresses_count_once() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        let got = distinct([
            a("127.0.0.3:1"),
            a("127.0.0.2:1"),
            a("127.0.0.3:1"),
            a("[::1]:1"),
            a("127.0.0.2:1"),
        ]);
        assert_eq!(got, [a("127.0.0.3:1"), a("127.0.0.2:1"), a("[::1]:1")]);
    }
}
