//! W4 of `pcluster bench`: big items (5,000 × 100 KB by default) through a one-task identity
//! chain in a whole `pcluster run` process (input file → nodes → output file, start-up and
//! setup included), several runs in a row on the same nodes, every output verified, with the
//! root's and the nodes' peak RSS, and the loopback limit measured in the same run: a plain
//! TCP copy of the same bytes between two threads.
//!
//! [`w4`] takes [`W4Options`] so callers can add rows with other `pcluster run` options (a
//! token, encryption).

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use kit::{Pcluster, RssSampler};

/// What a W4 measurement runs.
#[derive(Clone, Debug)]
pub struct W4Options {
    /// The row's name.
    pub name: String,
    /// Items.
    pub items: u64,
    /// Bytes per item (newline excluded).
    pub item_bytes: usize,
    /// Runs in a row on the same nodes.
    pub runs: u32,
    /// Extra options for `pcluster run` (e.g. `--token T`).
    pub run_args: Vec<String>,
}

impl Default for W4Options {
    fn default() -> Self {
        W4Options {
            name: "W4 `pcluster run` 100 KB items".into(),
            items: 5_000,
            item_bytes: 100_000,
            runs: 3,
            run_args: Vec::new(),
        }
    }
}

/// One W4 run.
#[derive(Clone, Debug)]
pub struct W4Run {
    pub secs: f64,
    /// Input bytes per second, in MB/s (10^6).
    pub mb_per_s: f64,
    /// The root's peak RSS as `pcluster run` reports it, in MiB.
    pub root_rss_mib: f64,
    /// Each node's largest RSS seen during the run, in MiB.
    pub node_rss_mib: Vec<f64>,
}

/// A W4 measurement.
#[derive(Clone, Debug)]
pub struct W4Report {
    pub options: W4Options,
    pub runs: Vec<W4Run>,
}

/// Item `i` of `len` bytes: its number, then letters that depend on it, so a corrupted or
/// misplaced byte shows.
pub fn item(i: u64, len: usize) -> Vec<u8> {
    let mut item = format!("{i:07}-").into_bytes();
    let start = item.len();
    item.extend((start..len).map(|j| b'a' + ((i as usize * 7 + j) % 26) as u8));
    item.truncate(len.max(8));
    item
}

/// Runs W4 on `nodes` (a `--nodes` argument; `node_pids` for their RSS) in `dir`.
///
/// # Errors
/// When a run fails or its outputs differ from its inputs.
pub fn w4(
    pcluster: &Pcluster,
    nodes: &str,
    node_pids: &[u32],
    dir: &Path,
    options: &W4Options,
) -> anyhow::Result<W4Report> {
    let input = dir.join("w4-input.txt");
    let output = dir.join("w4-output.txt");
    let chain = kit::write_chain_file(dir, "w4", &[("w1_identity", false, "")])?;
    {
        let mut w = std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&input)?);
        for i in 0..options.items {
            w.write_all(&item(i, options.item_bytes))?;
            w.write_all(b"\n")?;
        }
        w.flush()?;
    }
    let bytes = options.items * options.item_bytes as u64;
    let mut runs = Vec::new();
    for run in 0..options.runs {
        let samplers: Vec<RssSampler> = node_pids
            .iter()
            .map(|&p| RssSampler::start(p, Duration::from_millis(20)))
            .collect();
        let t = Instant::now();
        let out = pcluster
            .command()
            .arg("run")
            .arg(&chain)
            .args(["--nodes", nodes, "--quiet"])
            .arg("--input")
            .arg(&input)
            .arg("--output")
            .arg(&output)
            .args(&options.run_args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()?;
        let secs = t.elapsed().as_secs_f64();
        let node_rss_mib = samplers
            .into_iter()
            .map(|s| s.finish() as f64 / 1024.0)
            .collect();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            bail!(
                "{} run {}: pcluster run failed: {stderr}",
                options.name,
                run + 1
            );
        }
        verify(&output, options).with_context(|| format!("{} run {}", options.name, run + 1))?;
        let root_rss_mib = stderr
            .rsplit("peak RSS ")
            .next()
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(f64::NAN);
        runs.push(W4Run {
            secs,
            mb_per_s: bytes as f64 / secs / 1e6,
            root_rss_mib,
            node_rss_mib,
        });
        let _ = std::fs::remove_file(&output);
    }
    let _ = std::fs::remove_file(&input);
    Ok(W4Report {
        options: options.clone(),
        runs,
    })
}

/// Every input exactly once in the output, byte for byte (in any order).
fn verify(output: &Path, o: &W4Options) -> anyhow::Result<()> {
    let mut seen = vec![false; o.items as usize];
    let f = std::io::BufReader::with_capacity(1 << 20, std::fs::File::open(output)?);
    for line in f.split(b'\n') {
        let line = line?;
        let i: u64 = std::str::from_utf8(line.get(..7).unwrap_or_default())
            .ok()
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("an output that is no input ({} bytes)", line.len()))?;
        ensure!(i < o.items, "output {i} was never an input");
        ensure!(
            line == item(i, o.item_bytes),
            "output {i} differs from its input"
        );
        ensure!(
            !std::mem::replace(&mut seen[i as usize], true),
            "output {i} twice"
        );
    }
    let missing = seen.iter().filter(|s| !**s).count();
    ensure!(missing == 0, "{missing} inputs have no output");
    Ok(())
}

/// Loopback's limit here and now: `bytes` copied over TCP on 127.0.0.1 from one thread to
/// another in 1 MiB writes and reads; MB/s.
///
/// # Errors
/// On socket errors.
pub fn loopback_mb_per_s(bytes: u64) -> anyhow::Result<f64> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr: SocketAddr = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        let mut s = TcpStream::connect(addr)?;
        let buf = vec![b'x'; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            s.write_all(&buf[..n])?;
            left -= n as u64;
        }
        Ok(())
    });
    let (mut r, _) = listener.accept()?;
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut got = 0u64;
    while got < bytes {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    sender
        .join()
        .map_err(|_| anyhow::anyhow!("the sender panicked"))??;
    ensure!(got == bytes, "loopback copy got {got} of {bytes} bytes");
    Ok(bytes as f64 / secs / 1e6)
}

/// The report's lines for a W4 measurement.
pub fn lines(r: &W4Report, loopback_mb_s: f64) -> Vec<String> {
    let o = &r.options;
    let mut v = vec![format!(
        "{}: {} items of {} bytes through a one-task identity chain, whole `pcluster run` process (start-up and setup included), outputs verified each run; loopback TCP copy of the same bytes: {loopback_mb_s:.0} MB/s",
        o.name, o.items, o.item_bytes
    )];
    for (i, run) in r.runs.iter().enumerate() {
        let nodes: Vec<String> = run
            .node_rss_mib
            .iter()
            .map(|m| format!("{m:.0} MiB"))
            .collect();
        v.push(format!(
            "  run {}: {:.3} s, {:.0} MB/s ({:.0}% of loopback), root peak RSS {:.0} MiB, nodes {}",
            i + 1,
            run.secs,
            run.mb_per_s,
            100.0 * run.mb_per_s / loopback_mb_s,
            run.root_rss_mib,
            nodes.join(", ")
        ));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_are_numbered_sized_and_distinct() {
        let a = item(3, 100);
        assert_eq!(a.len(), 100);
        assert!(a.starts_with(b"0000003-"));
        assert_ne!(a[8..], item(4, 100)[8..]);
        assert!(!a.contains(&b'\n'));
    }

    #[test]
    fn loopback_copies_every_byte() {
        assert!(loopback_mb_per_s(8 << 20).unwrap() > 0.0);
    }
}
