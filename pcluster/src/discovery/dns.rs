//! `--nodes-dns NAME[:PORT]`: the nodes are every address the name resolves to (all its A
//! and AAAA records, as the system resolver gives them: DNS, `/etc/hosts`), as a Kubernetes
//! headless service or a round-robin record lists the machines behind it. [`DnsOrigin`]
//! resolves the name again every `--rescan` seconds.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use tokio::time::Instant;

use crate::setup::split_host_port;

/// A name whose addresses are the nodes, and their port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodesDns {
    pub host: String,
    pub port: u16,
}

impl NodesDns {
    /// `NAME` or `NAME:PORT` (`[v6]:PORT` too, for symmetry with `--nodes`); a missing port
    /// is `default_port`.
    ///
    /// # Errors
    /// A port that is not a number, or no name.
    pub fn parse(s: &str, default_port: u16) -> anyhow::Result<NodesDns> {
        let (host, port) = split_host_port(s, default_port).context("--nodes-dns")?;
        Ok(NodesDns { host, port })
    }

    /// Every address of the name, each once, in the resolver's order.
    ///
    /// # Errors
    /// The name does not resolve, or to nothing.
    pub async fn resolve(&self) -> anyhow::Result<Vec<SocketAddr>> {
        let addrs = root::resolve_name(&self.host, self.port)
            .await
            .context("--nodes-dns")?;
        anyhow::ensure!(
            !addrs.is_empty(),
            "--nodes-dns: {} has no address",
            self.host
        );
        Ok(addrs)
    }
}

/// A name resolved again every `every` (never when `None`).
#[derive(Clone, Debug)]
pub struct DnsOrigin {
    dns: NodesDns,
    every: Option<Duration>,
    next: Instant,
}

impl DnsOrigin {
    /// Resolves `dns` now; again every `every` from then on.
    ///
    /// # Errors
    /// As [`NodesDns::resolve`]: a run does not start on a name that gives no node.
    pub async fn start(
        dns: NodesDns,
        every: Option<Duration>,
    ) -> anyhow::Result<(DnsOrigin, Vec<SocketAddr>)> {
        let listed = dns.resolve().await?;
        let next = Instant::now() + every.unwrap_or_default();
        Ok((DnsOrigin { dns, every, next }, listed))
    }

    /// The name.
    pub fn name(&self) -> &NodesDns {
        &self.dns
    }

    /// The addresses again when it is time to resolve the name, `None` when it is not.
    pub async fn poll(&mut self) -> Option<anyhow::Result<Vec<SocketAddr>>> {
        let every = self.every?;
        let now = Instant::now();
        if now < self.next {
            return None;
        }
        // Counted from now: a resolver that took long does not make the next one due at once.
        self.next = now + every;
        Some(self.dns.resolve().await)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_and_without_a_port() {
        let p = |s| NodesDns::parse(s, 6000).unwrap();
        let n = |h: &str, port| NodesDns {
            host: h.into(),
            port,
        };
        assert_eq!(
            p("pcluster.default.svc.cluster.local"),
            n("pcluster.default.svc.cluster.local", 6000)
        );
        assert_eq!(p("nodes.test:7000"), n("nodes.test", 7000));
        assert_eq!(p(" nodes.test "), n("nodes.test", 6000));
        assert_eq!(p("[::1]:9"), n("::1", 9));
        for bad in ["nodes.test:x", "nodes.test:70000", "", ":6000"] {
            assert!(NodesDns::parse(bad, 6000).is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn an_address_resolves_to_itself_and_is_due_again_only_after_the_interval() {
        let dns = NodesDns::parse("127.0.0.2:7", 1).unwrap();
        let (mut o, listed) = DnsOrigin::start(dns.clone(), Some(Duration::from_secs(3600)))
            .await
            .unwrap();
        assert_eq!(listed, ["127.0.0.2:7".parse::<SocketAddr>().unwrap()]);
        assert!(o.poll().await.is_none(), "not due yet");
        let (mut never, _) = DnsOrigin::start(dns, None).await.unwrap();
        assert!(never.poll().await.is_none(), "--rescan 0 resolves once");
    }
}
