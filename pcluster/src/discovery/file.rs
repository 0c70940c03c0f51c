//! `--nodes-file FILE`: node addresses kept in a file, one `host[:port]` a line (`#` starts
//! a comment, blank lines are ignored, a missing port is `--port`), as a batch system or a
//! config tool writes them. [`FileOrigin`] notices when the file changes, cheaply enough to
//! be asked once a second.

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

/// A nodes file watched by polling its metadata (one `stat` a call); it is read again only
/// when that changed.
#[derive(Clone, Debug)]
pub struct FileOrigin {
    file: NodesFile,
    stamp: Option<Stamp>,
}

impl FileOrigin {
    /// Reads `file` and watches it from then on.
    ///
    /// # Errors
    /// As [`NodesFile::read`].
    pub async fn start(file: NodesFile) -> anyhow::Result<(FileOrigin, Vec<SocketAddr>)> {
        // Taken before the read: a change made during it is seen at the next poll.
        let stamp = stamp(&file.path);
        let listed = file.read().await?;
        Ok((FileOrigin { file, stamp }, listed))
    }

    /// The file, as the user named it.
    pub fn path(&self) -> &Path {
        &self.file.path
    }

    /// The addresses again when the file changed since the last call, `None` when it did
    /// not; a file that is gone is an error.
    pub async fn poll(&mut self) -> Option<anyhow::Result<Vec<SocketAddr>>> {
        let now = stamp(&self.file.path);
        if now == self.stamp {
            return None;
        }
        self.stamp = now;
        Some(match now {
            Some(_) => self.file.read().await,
            None => Err(anyhow::anyhow!(
                "--nodes-file {} is gone",
                self.file.path.display()
            )),
        })
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
}
