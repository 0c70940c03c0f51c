//! Node addresses that change while a command runs: a nodes file ([`file`]) and a DNS name
//! ([`dns`]). Both are a [`Listing`]: the addresses listed now, and what changed since the
//! last look. A run follows its listings ([`follow`]): an address added joins the run, one
//! removed gets no new items and leaves once its items are done. `dashboard` and `top`
//! follow them the same way ([`publish`]); `scan` and `status` read them once
//! ([`Sources::read_once`]).

pub mod dns;
pub mod file;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;

/// How the addresses of a listing changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
}

/// What went from `old` to `new`, each in its list's order.
pub fn diff(old: &[SocketAddr], new: &[SocketAddr]) -> Change {
    Change {
        added: new.iter().filter(|a| !old.contains(a)).copied().collect(),
        removed: old.iter().filter(|a| !new.contains(a)).copied().collect(),
    }
}

/// Where a listing's addresses come from.
#[derive(Clone, Debug)]
enum Origin {
    File(file::FileOrigin),
    Dns(dns::DnsOrigin),
}

/// A changing list of node addresses.
#[derive(Clone, Debug)]
pub struct Listing {
    origin: Origin,
    listed: Vec<SocketAddr>,
    /// The last error said, so that a name that keeps failing is said once, not each time.
    said: Option<String>,
}

impl Listing {
    /// The option it comes from, for messages: `--nodes-file PATH`, `--nodes-dns NAME`.
    pub fn what(&self) -> String {
        match &self.origin {
            Origin::File(f) => format!("--nodes-file {}", f.path().display()),
            Origin::Dns(d) => format!("--nodes-dns {}", d.name().host),
        }
    }

    /// The addresses listed now.
    pub fn listed(&self) -> &[SocketAddr] {
        &self.listed
    }

    /// What changed since the last call; nothing when it is not time to look again or the
    /// source did not change. A source that fails (a file gone or half-written, a resolver
    /// that does not answer) changes nothing: it is said once, and its last nodes are kept.
    pub async fn changes(&mut self) -> Change {
        let polled = match &mut self.origin {
            Origin::File(f) => f.poll().await,
            Origin::Dns(d) => d.poll().await,
        };
        let listed = match polled {
            None => return Change::default(),
            Some(Ok(l)) => l,
            Some(Err(e)) => {
                let e = format!("{e:#}");
                if self.said.as_ref() != Some(&e) {
                    eprintln!("pcluster: {e}; keeping its last nodes");
                    self.said = Some(e);
                }
                return Change::default();
            }
        };
        self.said = None;
        let change = diff(&self.listed, &listed);
        self.listed = listed;
        change
    }
}

/// The options that name changing node lists.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub nodes_file: Option<PathBuf>,
    pub nodes_dns: Option<String>,
    /// The port of entries that name none.
    pub port: u16,
    /// How often a name is resolved again (`None`: once).
    pub rescan: Option<Duration>,
}

impl Sources {
    /// Whether any is given.
    pub fn any(&self) -> bool {
        self.nodes_file.is_some() || self.nodes_dns.is_some()
    }

    /// Reads each and follows it from then on.
    ///
    /// # Errors
    /// A file that cannot be read or has a bad entry; a name that does not parse or resolve.
    pub async fn start(&self) -> anyhow::Result<Vec<Listing>> {
        let mut out = Vec::new();
        if let Some(path) = &self.nodes_file {
            let f = file::NodesFile {
                path: path.clone(),
                port: self.port,
            };
            let (origin, listed) = file::FileOrigin::start(f).await?;
            out.push(Listing {
                origin: Origin::File(origin),
                listed,
                said: None,
            });
        }
        if let Some(name) = &self.nodes_dns {
            let d = dns::NodesDns::parse(name, self.port)?;
            let (origin, listed) = dns::DnsOrigin::start(d, self.rescan).await?;
            out.push(Listing {
                origin: Origin::Dns(origin),
                listed,
                said: None,
            });
        }
        Ok(out)
    }

    /// Every address they list now, each once, appended to `out` where not there already.
    ///
    /// # Errors
    /// As [`Sources::start`].
    pub async fn read_once(&self, out: &mut Vec<SocketAddr>) -> anyhow::Result<()> {
        for l in self.start().await? {
            merge(out, l.listed());
        }
        Ok(())
    }
}

/// Appends the addresses of `more` that `out` lacks.
fn merge(out: &mut Vec<SocketAddr>, more: &[SocketAddr]) {
    for a in more {
        if !out.contains(a) {
            out.push(*a);
        }
    }
}

/// Every address the listings name, each once.
pub fn union(listings: &[Listing]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for l in listings {
        merge(&mut out, l.listed());
    }
    out
}

/// One look at a run's listings: the addresses gone from all of them are removed from the
/// run (unless `fixed`, the `--nodes` entries, names them too), and those listed but not
/// attached are added: new ones, and ones lost or refused before (as `--nodes` entries are
/// retried).
pub async fn follow(root: &root::Root, listings: &mut [Listing], fixed: &[SocketAddr]) {
    let mut added = Vec::new();
    let mut removed = Vec::new();
    for l in listings.iter_mut() {
        let change = l.changes().await;
        added.extend(change.added.into_iter().map(|a| (a, l.what())));
        removed.extend(change.removed.into_iter().map(|a| (a, l.what())));
    }
    let listed = union(listings);
    for (a, what) in removed {
        // Another listing, or --nodes, may still name it.
        if listed.contains(&a) || fixed.contains(&a) {
            continue;
        }
        if let Ok(true) = root.remove_node(a).await {
            eprintln!("pcluster run: node {a} left {what}: it gets no new items");
        }
    }
    let Ok(have) = root.nodes().await else { return };
    let missing = listed
        .iter()
        .filter(|a| !have.contains(a) && !fixed.contains(a));
    for &a in missing {
        let new = added.iter().find(|(b, _)| *b == a).map(|(_, what)| what);
        match (root.add_node(a).await, new) {
            (Ok(()), Some(what)) => eprintln!("pcluster run: node {a} joined from {what}"),
            (Ok(()), None) => eprintln!("pcluster run: node {a} is back"),
            // Said once; it is tried again each look, as a lost node is.
            (Err(e), Some(_)) => eprintln!("pcluster run: cannot add node {a} yet: {e}"),
            (Err(_), None) => {}
        }
    }
}

/// Follows `listings` once a second for a monitor: the receiver holds every address they
/// list now. The follower stops when the receiver is dropped.
pub fn publish(mut listings: Vec<Listing>) -> watch::Receiver<Vec<SocketAddr>> {
    let (tx, rx) = watch::channel(union(&listings));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = tx.closed() => return,
                _ = tick.tick() => {}
            }
            let mut changed = false;
            for l in &mut listings {
                changed |= l.changes().await != Change::default();
            }
            if changed {
                tx.send_replace(union(&listings));
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        format!("{s}:6000").parse().unwrap()
    }

    #[test]
    fn a_diff_names_what_came_and_what_went() {
        let old = [a("127.0.0.2"), a("127.0.0.3"), a("127.0.0.4")];
        let new = [a("127.0.0.4"), a("127.0.0.5"), a("127.0.0.2")];
        assert_eq!(
            diff(&old, &new),
            Change {
                added: vec![a("127.0.0.5")],
                removed: vec![a("127.0.0.3")],
            }
        );
        assert_eq!(
            diff(&old, &old),
            Change::default(),
            "the order does not matter"
        );
        assert_eq!(diff(&[], &old).added, old);
        assert_eq!(diff(&old, &[]).removed, old);
    }

    #[tokio::test]
    async fn file_changes_are_seen_once_and_a_broken_file_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("pcluster-nodes-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nodes");
        std::fs::write(&path, "127.0.0.2\n127.0.0.3\n").unwrap();
        let sources = Sources {
            nodes_file: Some(path.clone()),
            port: 6000,
            ..Sources::default()
        };
        let mut listings = sources.start().await.unwrap();
        let [w] = &mut listings[..] else {
            panic!("one listing")
        };
        assert_eq!(w.changes().await, Change::default(), "unchanged");
        std::fs::write(&path, "127.0.0.3\n127.0.0.4 # new\n").unwrap();
        let c = w.changes().await;
        assert_eq!(
            (c.added, c.removed),
            (vec![a("127.0.0.4")], vec![a("127.0.0.2")])
        );
        assert_eq!(w.changes().await, Change::default(), "seen once");
        std::fs::write(&path, "127.0.0.3:x\n").unwrap();
        assert_eq!(w.changes().await, Change::default(), "a broken file");
        std::fs::remove_file(&path).unwrap();
        assert_eq!(w.changes().await, Change::default(), "a file gone");
        assert_eq!(w.listed(), [a("127.0.0.3"), a("127.0.0.4")]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn file_and_name_together_list_each_address_once() {
        let dir = std::env::temp_dir().join(format!("pcluster-listings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nodes");
        std::fs::write(&path, "127.0.0.2\n127.0.0.3\n").unwrap();
        let sources = Sources {
            nodes_file: Some(path),
            nodes_dns: Some("127.0.0.3".into()),
            port: 6000,
            rescan: None,
        };
        let mut got = vec![a("127.0.0.9")];
        sources.read_once(&mut got).await.unwrap();
        assert_eq!(got, [a("127.0.0.9"), a("127.0.0.2"), a("127.0.0.3")]);
        let what: Vec<String> = sources
            .start()
            .await
            .unwrap()
            .iter()
            .map(Listing::what)
            .collect();
        assert_eq!(what[1], "--nodes-dns 127.0.0.3");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
