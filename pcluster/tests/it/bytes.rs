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
    let started = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pcluster run did not end within {deadline:?}: {}",
                reader.join().unwrap()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
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
    let dir = temp_dir("bytes-big-items");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let port = free_port("127.0.0.2".parse().unwrap());
    let _a = node_process("127.0.0.2", port, log_port, 1, &[]).await;
    let _b = node_process("127.0.0.3", port, log_port, 1, &[]).await;
    let nodes = format!("127.0.0.2:{port},127.0.0.3:{port}");

    // 1,000 items of 100 KB: 100 MB, more than a 64 MiB frame if sent as one batch.
    let n = 1_000;
    let mut text = Vec::with_capacity(n * 100_001);
    let mut expected = Vec::with_capacity(n);
    for i in 0..n {
        let item = big_item(i, 100_000);
        text.extend_from_slice(&item);
        text.push(b'\n');
        expected.push(item);
    }
    let input = dir.join("in.txt");
    std::fs::write(&input, &text).unwrap();
    drop(text);
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
