//! W4 of `pcluster bench`: big items (5,000 × 100 KB by default) through a one-task identity
//! chain in a whole `pcluster run` process (input file → nodes → output file, start-up and
//! setup included), several runs in a row on the same nodes, every output verified, with the
//! root's and the nodes' peak RSS, and two limits measured in the same run: a plain TCP copy
//! of the same bytes between two threads (loopback), and the copies the design cannot avoid
//! done by three bare threads (the pipeline floor, [`pipeline_floor`]), with the CPU time
//! each took: a floor that needs more CPU than the cores have bounds W4 below what it moves.
//!
//! [`w4`] takes [`W4Options`] so callers can add rows with other `pcluster run` options (a
//! token, encryption).

use std::io::{BufRead as _, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use kit::{Cpu, CpuTime, Pcluster, RssSampler};

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
    /// The CPU time of the `pcluster run` process.
    pub root_cpu: CpuTime,
    /// The CPU time all nodes took during the run.
    pub nodes_cpu: CpuTime,
}

/// A W4 measurement.
#[derive(Clone, Debug)]
pub struct W4Report {
    pub options: W4Options,
    pub runs: Vec<W4Run>,
    /// The pipeline floor for the same file (its fastest of three).
    pub floor: Floor,
    /// Input bytes of one run.
    pub bytes: u64,
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
        // On disk before any run: its writeback must not land in a measured run.
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    // The best of three: a floor is an upper bound, and one run of it varies with the
    // machine's moment as much as W4 does.
    let mut floor = Floor::default();
    for _ in 0..3 {
        let f = pipeline_floor(&input, &dir.join("w4-floor.txt"))?;
        if f.mb_s > floor.mb_s {
            floor = f;
        }
    }
    let bytes = options.items * options.item_bytes as u64;
    let mut runs = Vec::new();
    for run in 0..options.runs {
        let samplers: Vec<RssSampler> = node_pids
            .iter()
            .map(|&p| RssSampler::start(p, Duration::from_millis(20)))
            .collect();
        // Zero when any node cannot be read (the run then fails on its outputs anyway).
        let nodes_cpu = || -> CpuTime {
            node_pids
                .iter()
                .map(|&p| kit::cpu_time(Cpu::Pid(p)))
                .sum::<Option<CpuTime>>()
                .unwrap_or_default()
        };
        let cpu = (
            kit::cpu_time(Cpu::Children).unwrap_or_default(),
            nodes_cpu(),
        );
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
        let root_cpu = kit::cpu_time(Cpu::Children).unwrap_or_default() - cpu.0;
        let nodes_cpu = nodes_cpu() - cpu.1;
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
            root_cpu,
            nodes_cpu,
        });
        let _ = std::fs::remove_file(&output);
    }
    let _ = std::fs::remove_file(&input);
    Ok(W4Report {
        options: options.clone(),
        runs,
        floor,
        bytes,
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

/// The least W4's data path costs here and now, in MB/s of input: the copies the design
/// cannot avoid, done by three bare threads in one process with nothing else: one reads
/// `input` and sends it over loopback TCP; one receives it, copies every byte in and out
/// (as a node copies items into and out of a task's memory) and sends it on; one receives
/// that and writes it to `output`. No framing, no items, no processes: an upper bound for
/// `pcluster run` on the same machine.
///
/// # Errors
/// On file or socket errors.
pub fn pipeline_floor(input: &Path, output: &Path) -> anyhow::Result<Floor> {
    const CHUNK: usize = 1 << 20;
    let bytes = std::fs::metadata(input)?.len();
    let to_node = TcpListener::bind("127.0.0.1:0")?;
    let to_root = TcpListener::bind("127.0.0.1:0")?;
    let (a, b) = (to_node.local_addr()?, to_root.local_addr()?);
    let t = Instant::now();
    let reader = {
        let input = input.to_path_buf();
        std::thread::spawn(move || -> std::io::Result<CpuTime> {
            let cpu = thread_cpu();
            let mut f = std::fs::File::open(input)?;
            let mut s = TcpStream::connect(a)?;
            let mut buf = AlignedBuf::new(CHUNK);
            let buf = buf.get();
            loop {
                let n = f.read(buf)?;
                if n == 0 {
                    return Ok(thread_cpu() - cpu);
                }
                s.write_all(&buf[..n])?;
            }
        })
    };
    let node = std::thread::spawn(move || -> std::io::Result<CpuTime> {
        let cpu = thread_cpu();
        let (mut r, _) = to_node.accept()?;
        let mut s = TcpStream::connect(b)?;
        let mut bufs = [CHUNK; 3].map(AlignedBuf::new);
        let [buf, guest, out] = bufs.each_mut().map(AlignedBuf::get);
        loop {
            let n = r.read(buf)?;
            if n == 0 {
                return Ok(thread_cpu() - cpu);
            }
            guest[..n].copy_from_slice(&buf[..n]);
            out[..n].copy_from_slice(std::hint::black_box(&guest[..n]));
            s.write_all(&out[..n])?;
        }
    });
    let mut ends = thread_cpu();
    let (mut r, _) = to_root.accept()?;
    let mut f = std::fs::File::create(output)?;
    let mut buf = AlignedBuf::new(CHUNK);
    let buf = buf.get();
    let mut got = 0u64;
    loop {
        let n = r.read(buf)?;
        if n == 0 {
            break;
        }
        f.write_all(&buf[..n])?;
        got += n as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    ends = thread_cpu() - ends;
    let joined = |h: std::thread::JoinHandle<std::io::Result<CpuTime>>| -> anyhow::Result<CpuTime> {
        Ok(h.join()
            .map_err(|_| anyhow::anyhow!("a pipeline thread panicked"))??)
    };
    ends = ends + joined(reader)?;
    let middle = joined(node)?;
    drop(f);
    let _ = std::fs::remove_file(output);
    ensure!(
        got == bytes,
        "the pipeline floor moved {got} of {bytes} bytes"
    );
    Ok(Floor {
        mb_s: bytes as f64 / secs / 1e6,
        cpu: ends + middle,
        ends,
        middle,
    })
}

/// A buffer whose bytes start on a page boundary. The floor is an upper bound, so its copies
/// must not depend on where the allocator puts a buffer: on this kind of CPU (AMD EPYC) a
/// kernel copy between a page and a buffer 1 to 31 bytes past a page boundary (as `malloc`
/// returns large blocks: 16 bytes past) runs at half speed, which halved the floor.
struct AlignedBuf {
    bytes: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    const PAGE: usize = 4096;

    fn new(len: usize) -> AlignedBuf {
        let bytes = vec![0u8; len + Self::PAGE];
        // `align_offset` may in principle give up (usize::MAX): then start unaligned.
        let start = bytes.as_ptr().align_offset(Self::PAGE).min(Self::PAGE);
        AlignedBuf { bytes, start, len }
    }

    fn get(&mut self) -> &mut [u8] {
        &mut self.bytes[self.start..self.start + self.len]
    }
}

/// The pipeline floor of one file.
#[derive(Clone, Copy, Debug, Default)]
pub struct Floor {
    /// MB of input per second.
    pub mb_s: f64,
    /// The CPU time its three threads took (zero where `/proc` cannot tell).
    pub cpu: CpuTime,
    /// Of which the two ends' (a root's part: read the file and send, receive and write).
    pub ends: CpuTime,
    /// And the middle's (a node's part: receive, copy in and out, send).
    pub middle: CpuTime,
}

impl Floor {
    /// The most MB/s `bytes` can move on `cores` if the floor's CPU time is all the work
    /// and every core does it all the time.
    pub fn cpu_bound_mb_s(&self, bytes: u64, cores: u32) -> Option<f64> {
        (self.cpu.total() > 0.0).then(|| bytes as f64 * f64::from(cores) / self.cpu.total() / 1e6)
    }
}

fn thread_cpu() -> CpuTime {
    kit::cpu_time(Cpu::Thread).unwrap_or_default()
}

/// The report's lines for a W4 measurement on `cores` cores.
pub fn lines(r: &W4Report, loopback_mb_s: f64, cores: u32) -> Vec<String> {
    let o = &r.options;
    let f = &r.floor;
    let bound = f
        .cpu_bound_mb_s(r.bytes, cores)
        .map(|b| format!("; with its CPU time alone, {cores} cores move at most {b:.0} MB/s"))
        .unwrap_or_default();
    let mut v = vec![
        format!(
            "{}: {} items of {} bytes through a one-task identity chain, whole `pcluster run` process (start-up and setup included), outputs verified each run; loopback TCP copy of the same bytes: {loopback_mb_s:.0} MB/s",
            o.name, o.items, o.item_bytes
        ),
        format!(
            "  pipeline floor (file → TCP → copy in and out → TCP → file, three bare threads): {:.0} MB/s, CPU {:.2} s ({:.2} s of it in the kernel; the ends, a root's part, {:.2} s, the middle, the nodes' part, {:.2} s){bound}",
            f.mb_s,
            f.cpu.total(),
            f.cpu.sys,
            f.ends.total(),
            f.middle.total(),
        ),
    ];
    for (i, run) in r.runs.iter().enumerate() {
        let nodes: Vec<String> = run
            .node_rss_mib
            .iter()
            .map(|m| format!("{m:.0} MiB"))
            .collect();
        v.push(format!(
            "  run {}: {:.3} s, {:.0} MB/s ({:.0}% of loopback, {:.0}% of the floor), root peak RSS {:.0} MiB, nodes {}; CPU: root {:.2} s ({:.2} kernel), nodes {:.2} s ({:.2} kernel)",
            i + 1,
            run.secs,
            run.mb_per_s,
            100.0 * run.mb_per_s / loopback_mb_s,
            100.0 * run.mb_per_s / f.mb_s,
            run.root_rss_mib,
            nodes.join(", "),
            run.root_cpu.total(),
            run.root_cpu.sys,
            run.nodes_cpu.total(),
            run.nodes_cpu.sys,
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
    fn the_pipeline_floor_moves_every_byte() {
        let dir = kit::temp_dir("w4-floor").unwrap();
        let input = dir.join("in");
        // Big enough that its CPU time shows in ticks of 10 ms (~0.1 s of copies).
        std::fs::write(&input, vec![7u8; 64 << 20]).unwrap();
        let floor = pipeline_floor(&input, &dir.join("out")).unwrap();
        assert!(floor.mb_s > 0.0);
        if kit::cpu_time(Cpu::Thread).is_some() {
            assert!(floor.cpu.total() > 0.0, "{:?}", floor.cpu);
            assert!(floor.cpu_bound_mb_s(64 << 20, 2).unwrap() > 0.0);
        }
    }

    #[test]
    fn loopback_copies_every_byte() {
        assert!(loopback_mb_per_s(8 << 20).unwrap() > 0.0);
    }
}
