//! Big items through real `pcluster run` processes and node processes: batches and outputs
//! messages stay within the frame limit whatever the item sizes and the speed a node
//! remembers from an earlier run, and the root's memory stays bounded in bytes.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

const LONG: Duration = Duration::from_secs(240);

/// Runs `pcluster run` on `nodes` and returns its stderr; fails the test if it does not end
/// within `deadline` (a run that waits forever is the bug this guards against).
pub async fn run_on(
    chain: &Path,
    nodes: &str,
    input: &Path,
    output: &Path,
    extra: &[&str],
    deadline: Duration,
) -> String {
    let mut child = pcluster_cmd()
        .arg("run")
        .arg(chain)
        .args(["--nodes", nodes, "-q"])
        .arg("--input")
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stderr, &mut s).unwrap();
        s
    });
    let pid = child.id();
    let waited =
        tokio::time::timeout(deadline, tokio::task::spawn_blocking(move || child.wait())).await;
    let Ok(status) = waited else {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
        panic!(
            "pcluster run did not end within {deadline:?}: {}",
            reader.join().unwrap()
        );
    };
    let status = status.unwrap().unwrap();
    let stderr = reader.join().unwrap();
    assert!(status.success(), "pcluster run failed ({status}): {stderr}");
    stderr
}

/// Item `i` of `len` bytes: its number, then bytes that depend on it.
pub fn big_item(i: usize, len: usize) -> Vec<u8> {
    let mut item = format!("{i:07}-").into_bytes();
    item.extend((item.len()..len).map(|j| b'a' + ((i * 7 + j) % 26) as u8));
    item
}

/// `dir/in.txt` with one [`big_item`] per line, item `i` of the `i`-th length; returns its
/// path and the items.
fn big_lines_input(
    dir: &Path,
    lens: impl Iterator<Item = usize>,
) -> (std::path::PathBuf, Vec<Vec<u8>>) {
    let mut text = Vec::new();
    let mut expected = Vec::new();
    for (i, len) in lens.enumerate() {
        let item = big_item(i, len);
        text.extend_from_slice(&item);
        text.push(b'\n');
        expected.push(item);
    }
    let input = dir.join("in.txt");
    std::fs::write(&input, &text).unwrap();
    (input, expected)
}

/// The root's peak RSS in MiB, from the summary `pcluster run` prints.
pub fn summary_peak_rss_mib(stderr: &str) -> f64 {
    let at = stderr
        .rfind("peak RSS ")
        .expect("a summary with the peak RSS");
    let rest = &stderr[at + "peak RSS ".len()..];
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_items_twice_over_the_same_nodes_never_build_a_frame_past_the_limit() {
    let cluster = Cluster::start("bytes-big-items").await;
    let dir = cluster.dir.to_path_buf();
    let nodes = cluster.addrs().join(",");

    // 1,000 items of 100 KB: 100 MB, more than a 64 MiB frame if sent as one batch.
    let n = 1_000;
    let (input, expected) = big_lines_input(&dir, (0..n).map(|_| 100_000));
    let chain = chain_file(&dir, "identity", "w1_identity", "");
    // The second run starts from the speed the nodes remember from the first.
    for run in 0..2 {
        let output = dir.join(format!("out{run}.txt"));
        let stderr = run_on(&chain, &nodes, &input, &output, &[], LONG).await;
        let mut got: Vec<Vec<u8>> = std::fs::read(&output)
            .unwrap()
            .split(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(
            got.pop(),
            Some(Vec::new()),
            "run {run}: ends with a newline"
        );
        got.sort();
        assert!(got == expected, "run {run}: outputs differ: {stderr}");
        let rss = summary_peak_rss_mib(&stderr);
        assert!(rss <= 256.0, "run {run}: root peak RSS {rss} MiB");
        let _ = std::fs::remove_file(&output);
    }
}

/// A small deterministic generator (xorshift64*), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// An item of 0–63 bytes drawn from `alphabet`.
    fn item(&mut self, alphabet: &[u8]) -> Vec<u8> {
        let len = (self.next() % 64) as usize;
        (0..len)
            .map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize])
            .collect()
    }
}

/// Runs `items` through an identity chain on an embedded cluster with `framing` (and
/// `extra` options); the output file's bytes.
fn identity_run(dir: &Path, input: &[u8], framing: &str, extra: &[&str]) -> Vec<u8> {
    let chain = chain_file(dir, "identity", "w1_identity", "");
    let (inp, out) = (dir.join("in"), dir.join("out"));
    std::fs::write(&inp, input).unwrap();
    let run = pcluster_cmd()
        .arg("run")
        .arg(&chain)
        .args([framing, "-q", "-j", "1"])
        .args(extra)
        .arg("-i")
        .arg(&inp)
        .arg("-o")
        .arg(&out)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "pcluster run {framing} failed: {}",
        String::from_utf8_lossy(&run.stderr)
    );
    std::fs::read(&out).unwrap()
}

fn binary_record(item: &[u8]) -> Vec<u8> {
    let mut v = (item.len() as u32).to_le_bytes().to_vec();
    v.extend_from_slice(item);
    v
}

#[test]
fn null_framing_round_trips_items_holding_newlines_and_returns() {
    let dir = temp_dir("bytes-null");
    let mut rng = Rng(0x1234_5678);
    let mut input = Vec::new();
    for _ in 0..100_000 {
        input.extend(rng.item(b"ab\n\r \t"));
        input.push(0);
    }
    assert!(input.contains(&b'\n') && input.contains(&b'\r'));
    let out = identity_run(&dir, &input, "--null", &["--keep-order"]);
    assert!(out == input, "--null outputs differ from the inputs");
}

#[test]
fn binary_framing_round_trips_any_bytes_and_tags_records() {
    let dir = temp_dir("bytes-binary");
    let mut rng = Rng(0x9e37_79b9);
    let all: Vec<u8> = (0..=255).collect();
    let items: Vec<Vec<u8>> = (0..100_000).map(|_| rng.item(&all)).collect();
    let input: Vec<u8> = items.iter().flat_map(|i| binary_record(i)).collect();
    assert!(items.iter().any(|i| i.contains(&0)));
    let out = identity_run(&dir, &input, "--binary", &["--keep-order"]);
    assert!(out == input, "--binary outputs differ from the inputs");

    // --tag: each record is `LINE<TAB>item`, in any order without --keep-order.
    let out = identity_run(&dir, &input, "--binary", &["--tag"]);
    check_tagged(&out, &items, None);
}

/// Every item exactly once in `out`, each record `LINE<TAB>item`, in any order: records
/// ending with `sep`, or (`None`) each after its u32 little-endian length.
fn check_tagged(out: &[u8], items: &[Vec<u8>], sep: Option<u8>) {
    let mut seen = vec![false; items.len()];
    let mut rest = out;
    while !rest.is_empty() {
        let rec = match sep {
            None => {
                let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
                let rec = &rest[4..4 + len];
                rest = &rest[4 + len..];
                rec
            }
            Some(sep) => {
                let end = rest.iter().position(|&b| b == sep).expect("a separator");
                let rec = &rest[..end];
                rest = &rest[end + 1..];
                rec
            }
        };
        let tab = rec.iter().position(|&b| b == b'\t').expect("a tag");
        let line: usize = std::str::from_utf8(&rec[..tab]).unwrap().parse().unwrap();
        assert!(
            rec[tab + 1..] == items[line - 1][..],
            "record of item {line} differs"
        );
        assert!(
            !std::mem::replace(&mut seen[line - 1], true),
            "{line} twice"
        );
    }
    assert!(seen.iter().all(|s| *s), "every item once");
}

#[test]
fn big_items_come_out_whole_in_every_framing_with_tags() {
    // Items past 64 KiB travel as slices of their frames and are written from there.
    let dir = temp_dir("bytes-big-framings");
    let mut rng = Rng(0x5151_7777);
    let all: Vec<u8> = (0..=255).collect();
    let big = |rng: &mut Rng, alphabet: &[u8]| -> Vec<u8> {
        let len = 65_536 + (rng.next() % 150_000) as usize;
        (0..len)
            .map(|_| alphabet[(rng.next() % alphabet.len() as u64) as usize])
            .collect()
    };
    let items: Vec<Vec<u8>> = (0..48).map(|_| big(&mut rng, &all)).collect();
    let input: Vec<u8> = items.iter().flat_map(|i| binary_record(i)).collect();
    let out = identity_run(&dir, &input, "--binary", &["--tag"]);
    check_tagged(&out, &items, None);

    let no_nul: Vec<u8> = (1..=255).collect();
    let items: Vec<Vec<u8>> = (0..48).map(|_| big(&mut rng, &no_nul)).collect();
    let input: Vec<u8> = items
        .iter()
        .flat_map(|i| [&i[..], b"\0"].concat())
        .collect();
    let out = identity_run(&dir, &input, "--null", &["--tag"]);
    check_tagged(&out, &items, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_chain_past_its_memory_budget_naming_the_numbers() {
    let dir = temp_dir("bytes-memory-budget");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (_node, port) = node_process("127.0.0.4", 0, log_port, 4, &["--memory-mb", "4096"]).await;
    let addr: std::net::SocketAddr = format!("127.0.0.4:{port}").parse().unwrap();
    let tasks = [
        ("w1_identity", false, ""),
        ("w1_identity", false, ""),
        ("w1_identity", false, ""),
    ];
    let big = root::Limits {
        memory_mb: 512,
        ..root::Limits::default()
    };
    let root = root_with(&[addr]).await;
    let e = match setup_collect(&root, chain_with("too-big", &tasks, big)).await {
        Ok(_) => panic!("a chain needing 6240 MiB was set up on a node allowing 4096 MiB"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains(
            "chain needs 4 workers × 3 tasks × 512 MiB + 96 MiB buffers = 6240 MiB, \
             node allows 4096 MiB (--memory-mb)"
        ),
        "{e}"
    );
    // close() returns once the node has freed itself, so the next root finds it free.
    root.close().await.expect("close");
    let status = root::node_status(addr, &root::RootOptions::default())
        .await
        .expect("status");
    assert_eq!(
        status.state,
        protocol::NodeState::Free,
        "free when close() returns"
    );

    // The same chain with smaller instances fits, on the same node.
    let small = root::Limits {
        memory_mb: 64,
        ..root::Limits::default()
    };
    let root = root_with(&[addr]).await;
    setup_collect(&root, chain_with("fits", &tasks, small))
        .await
        .expect("4 × 3 × 64 MiB + 96 MiB fits in 4096 MiB");
}

/// `pcluster run` with every memory bound at 1 MiB, items from 1 KB to 2.5 MB (past every
/// bound: each passes alone): all outputs exact, in order with `-k`; a bound of 0 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_with_one_mib_bounds_completes_exactly() {
    let cluster = Cluster::start("bytes-small-bounds").await;
    let dir = cluster.dir.to_path_buf();
    let nodes = cluster.addrs().join(",");
    let n = 400;
    let lens = (0..n).map(|i| {
        if i % 50 == 7 {
            2_500_000
        } else {
            1_000 + i * 500
        }
    });
    let (input, expected) = big_lines_input(&dir, lens);
    let chain = chain_file(&dir, "identity", "w1_identity", "");
    let bounds = [
        "--queue-mb",
        "1",
        "--node-mb",
        "1",
        "--outputs-mb",
        "1",
        "--partial-mb",
        "1",
        "--reorder-mb",
        "1",
    ];
    for keep_order in [false, true] {
        let output = dir.join(format!("out-{keep_order}.txt"));
        let mut extra = bounds.to_vec();
        if keep_order {
            extra.push("-k");
        }
        let stderr = run_on(&chain, &nodes, &input, &output, &extra, LONG).await;
        let mut got: Vec<Vec<u8>> = std::fs::read(&output)
            .unwrap()
            .split(|&b| b == b'\n')
            .map(<[u8]>::to_vec)
            .collect();
        assert_eq!(got.pop(), Some(Vec::new()), "ends with a newline");
        if !keep_order {
            got.sort();
        }
        assert!(got == expected, "-k {keep_order}: outputs differ: {stderr}");
    }
    let refused = pcluster_cmd()
        .arg("run")
        .arg(&chain)
        .args(["--nodes", &nodes, "--node-mb", "0", "-i"])
        .arg(&input)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--node-mb must be at least 1"), "{stderr}");
}
