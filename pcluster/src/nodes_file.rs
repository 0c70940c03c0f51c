//! `--nodes-file FILE`: node addresses kept in a file, one `host[:port]` a line (`#` starts
//! a comment, blank lines are ignored, a missing port is `--port`), as a batch system or a
//! config tool writes them. `pcluster run` re-reads the file when it changes ([`Watch`]):
//! an address added joins the run, one removed gets no new items and leaves once its items
//! are done.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::Context as _;

use crate::setup::{resolve, split_host_port};

/// A nodes file and the port of its entries that name none.
#[derive(Clone, Debug)]
pub struct NodesFile {
    pub path: PathBuf,
    pub port: u16,
}

impl NodesFile {
    /// Its addresses, resolved, each once, in file order.
    ///
    /// # Errors
    /// The file cannot be read, or an entry does not parse or resolve (named by line).
    pub async fn read(&self) -> anyhow::Result<Vec<SocketAddr>> {
        let text = std::fs::read_to_string(&self.path)
            .with_context(|| format!("cannot read --nodes-file {}", self.path.display()))?;
        let mut out = Vec::new();
        for (line, host, port) in parse(&text, self.port, &self.path)? {
            let a = resolve(&host, port)
                .await
                .with_context(|| format!("{}:{line}", self.path.display()))?;
            if !out.contains(&a) {
                out.push(a);
            }
        }
        Ok(out)
    }
}

/// The entries of a nodes file: line number, host, port.
///
/// # Errors
/// An entry that does not parse, named by file and line.
pub fn parse(text: &str, port: u16, path: &Path) -> anyhow::Result<Vec<(usize, String, u16)>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let entry = line.split('#').next().unwrap_or_default().trim();
        if entry.is_empty() {
            continue;
        }
        let (host, port) = split_host_port(entry, port)
            .with_context(|| format!("{}:{}", path.display(), i + 1))?;
        out.push((i + 1, host, port));
    }
    Ok(out)
}

/// What tells a file's versions apart without reading it: a rewrite in place changes its
/// modification time or length, a new file renamed over it its inode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

/// How the addresses of a nodes file changed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Change {
    pub added: Vec<SocketAddr>,
    pub removed: Vec<SocketAddr>,
}

/// A nodes file watched by polling its metadata (one `stat` a call: the caller polls once a
/// second); it is read again only when that changed.
#[derive(Clone, Debug)]
pub struct Watch {
    file: NodesFile,
    stamp: Option<Stamp>,
    listed: Vec<SocketAddr>,
}

impl Watch {
    /// Reads `file` and watches it from then on.
    ///
    /// # Errors
    /// As [`NodesFile::read`].
    pub async fn start(file: NodesFile) -> anyhow::Result<Watch> {
        // Taken before the read: a change made during it is seen at the next poll.
        let stamp = stamp(&file.path);
        let listed = file.read().await?;
        Ok(Watch {
            file,
            stamp,
            listed,
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The addresses listed now.
    pub fn listed(&self) -> &[SocketAddr] {
        &self.listed
    }

    /// What changed since the last call; nothing when the file did not. A file that is gone
    /// or does not parse changes nothing (an editor may be saving it): it is said once.
    pub async fn changes(&mut self) -> Change {
        let now = stamp(&self.file.path);
        if now == self.stamp {
            return Change::default();
        }
        self.stamp = now;
        let read = match now {
            Some(_) => self.file.read().await,
            None => Err(anyhow::anyhow!(
                "--nodes-file {} is gone",
                self.file.path.display()
            )),
        };
        let listed = match read {
            Ok(l) => l,
            Err(e) => {
                eprintln!("pcluster: {e:#}; keeping its last nodes");
                return Change::default();
            }
        };
        let change = Change {
            added: listed
                .iter()
                .filter(|a| !self.listed.contains(a))
                .copied()
                .collect(),
            removed: self
                .listed
                .iter()
                .filter(|a| !listed.contains(a))
                .copied()
                .collect(),
        };
        self.listed = listed;
        change
    }
}

/// One poll of a run's nodes file: the addresses gone from it are removed from the run
/// (unless `fixed`, the `--nodes` entries, names them too), and those listed but not
/// attached are added: new ones, and ones lost or refused before (as `--nodes` entries are
/// retried).
pub async fn follow(root: &root::Root, watch: &mut Watch, fixed: &[SocketAddr]) {
    let change = watch.changes().await;
    for &a in change.removed.iter().filter(|a| !fixed.contains(a)) {
        if let Ok(true) = root.remove_node(a).await {
            eprintln!("pcluster run: node {a} left --nodes-file: it gets no new items");
        }
    }
    let Ok(have) = root.nodes().await else { return };
    let missing = watch
        .listed()
        .iter()
        .filter(|a| !have.contains(a) && !fixed.contains(a));
    for &a in missing {
        let new = change.added.contains(&a);
        match root.add_node(a).await {
            Ok(()) if new => eprintln!("pcluster run: node {a} joined from --nodes-file"),
            Ok(()) => eprintln!("pcluster run: node {a} is back"),
            // Said once; it is tried again each poll, as a lost node is.
            Err(e) if new => eprintln!("pcluster run: cannot add node {a} yet: {e}"),
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_blank_lines_and_default_ports() {
        let text = "# the cluster\n127.0.0.2\n\n  127.0.0.3:7  # a comment\n[::1]:9\nnode-a\n";
        let got = parse(text, 6000, Path::new("n.txt")).unwrap();
        let want = [
            (2, "127.0.0.2", 6000),
            (4, "127.0.0.3", 7),
            (5, "::1", 9),
            (6, "node-a", 6000),
        ];
        let got: Vec<(usize, &str, u16)> =
            got.iter().map(|(l, h, p)| (*l, h.as_str(), *p)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn a_bad_line_is_named() {
        let e = parse("127.0.0.2\n127.0.0.3:x\n", 1, Path::new("n.txt")).unwrap_err();
        let e = format!("{e:#}");
        assert!(e.starts_with("n.txt:2: bad port `x`"), "{e}");
    }

    #[tokio::test]
    async fn changes_are_seen_once_and_a_broken_file_changes_nothing() {
        let dir = std::env::temp_dir().join(format!("pcluster-nodes-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("nodes");
        std::fs::write(&path, "127.0.0.2\n127.0.0.3\n").unwrap();
        let file = NodesFile {
            path: path.clone(),
            port: 6000,
        };
        let a = |s: &str| format!("{s}:6000").parse::<SocketAddr>().unwrap();
        let mut w = Watch::start(file).await.unwrap();
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
}
