//! Nodes found by DNS (`--nodes-dns`) and followed by `top` (`--nodes-file`), with real
//! processes. The name resolves through `/etc/hosts` in a mount namespace of the test's own
//! (`unshare --mount` and a bind mount over `/etc/hosts`, which needs root): glibc's
//! getaddrinfo gives every line of the name, as a resolver gives every A record of a
//! Kubernetes headless service.
//!
//! - a name with three addresses gives a run three nodes, each of which takes inputs, and
//!   `status --nodes-dns --json` shows each node's counters;
//! - a name that gains an address and loses one mid-run (the hosts file rewritten, resolved
//!   again every second): the new node takes items, the old one is let go, outputs exact;
//! - `top --nodes-file` shows the nodes a file lists now, not those it listed at the start.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

const LONG: Duration = Duration::from_secs(180);
/// Items of `w2_cpu` with this many iterations take about 30 ms each: a few hundred on three
/// one-worker nodes last seconds, long enough for every node to take some, and to change the
/// name's addresses mid-run.
const ITERATIONS: u64 = 10_000_000;
const NAME: &str = "nodes.pcluster.test";

/// Whether this process may make mount namespaces; when it may not, the test is skipped
/// (said on stderr), except in CI, which runs as root and must run it.
fn can_unshare() -> bool {
    let ok = Command::new("unshare")
        .args(["--mount", "true"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "`unshare --mount` fails: CI must run the DNS tests as root"
        );
        eprintln!("SKIPPED: `unshare --mount` needs root (run as root to test --nodes-dns)");
    }
    ok
}

/// `cmd` run in a mount namespace of its own where `hosts` is `/etc/hosts`. `unshare` and
/// `sh` exec the command, so the child's pid is the command's.
fn with_hosts(hosts: &Path, cmd: &Command) -> Command {
    let mut out = Command::new("unshare");
    out.args([
        "--mount",
        "sh",
        "-c",
        "mount --bind \"$0\" /etc/hosts && exec \"$@\"",
    ])
    .arg(hosts)
    .arg(cmd.get_program())
    .args(cmd.get_args());
    out
}

/// A hosts file giving `NAME` each of `ips`, written in place: the bind mount shows the file's
/// inode, so a rename over it would not be seen.
fn write_hosts(path: &Path, ips: &[&str]) {
    let mut text = String::from("127.0.0.1 localhost\n");
    for ip in ips {
        text += &format!("{ip} {NAME}\n");
    }
    std::fs::write(path, text).unwrap();
}

/// A slow one-task chain and `n` seeds in `dir`: the chain file and the input file.
fn slow_chain(dir: &Path, n: u64) -> (PathBuf, PathBuf) {
    std::fs::write(dir.join("tasks.wasm"), tasks_module()).unwrap();
    let chain = dir.join("slow.toml");
    let tasks = [("w2_cpu", false, &*ITERATIONS.to_string())];
    let text = kit::chain_file_text("slow", &dir.join("tasks.wasm"), &tasks);
    std::fs::write(&chain, text).unwrap();
    let input = dir.join("seeds.txt");
    let seeds: String = (1..=n).map(|i| format!("{i}\n")).collect();
    std::fs::write(&input, seeds).unwrap();
    (chain, input)
}

fn expected(n: u64) -> Vec<String> {
    let mut want: Vec<String> = (1..=n)
        .map(|s| kit::native_w2(s, ITERATIONS).to_string())
        .collect();
    want.sort();
    want
}

/// Three nodes on 127.0.0.2-4 sharing a port, and a log server; returns them and the port.
async fn three_nodes(dir: &Path, ips: [&str; 3]) -> (Vec<Child>, u16) {
    let (log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (a, port) = node_process(ips[0], 0, log_port, 1, &[]).await;
    let mut children = vec![log, a];
    for ip in &ips[1..] {
        children.push(node_process(ip, port, log_port, 1, &[]).await.0);
    }
    (children, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_name_with_three_addresses_gives_the_run_three_nodes() {
    if !can_unshare() {
        return;
    }
    const N: u64 = 150;
    let dir = temp_dir("nodes-dns");
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let (_cluster, port) = three_nodes(&dir, ips).await;
    let hosts = dir.join("hosts");
    write_hosts(&hosts, &ips);
    let (chain, input) = slow_chain(&dir, N);
    let out = dir.join("out.txt");
    let mut run = pcluster_cmd();
    run.arg("run")
        .arg(&chain)
        .args(["-q", "--port", &port.to_string(), "--rescan", "0"])
        .args(["--nodes-dns", NAME, "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&out);
    let done = with_hosts(&hosts, &run).output().unwrap();
    let stderr = String::from_utf8_lossy(&done.stderr);
    assert!(done.status.success(), "{stderr}");
    assert_same(&sorted_lines(&out), &expected(N));

    let mut status = pcluster_cmd();
    status.args(["status", "--json", "--port", &port.to_string()]);
    status.args(["--nodes-dns", &format!("{NAME}:{port}")]);
    let shown = with_hosts(&hosts, &status).output().unwrap();
    assert!(
        shown.status.success(),
        "{}",
        String::from_utf8_lossy(&shown.stderr)
    );
    let doc: serde_json::Value = serde_json::from_slice(&shown.stdout).unwrap();
    let nodes = doc["nodes"].as_array().unwrap();
    let took: Vec<(&str, u64)> = nodes
        .iter()
        .map(|n| {
            let t = n["tasks"][0]["items_in"].as_u64().unwrap_or(0);
            (n["addr"].as_str().unwrap(), t)
        })
        .collect();
    eprintln!("inputs per node: {took:?}");
    let want: Vec<String> = ips.iter().map(|ip| format!("{ip}:{port}")).collect();
    let got: Vec<&str> = took.iter().map(|(a, _)| *a).collect();
    assert_eq!(got, want, "status lists every address of the name");
    assert!(
        took.iter().all(|(_, n)| *n > 0),
        "every node took inputs: {took:?}"
    );
    assert_eq!(took.iter().map(|(_, n)| n).sum::<u64>(), N, "{took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_that_come_and_go_under_the_name_join_and_leave_a_running_run() {
    if !can_unshare() {
        return;
    }
    const N: u64 = 400;
    let dir = temp_dir("nodes-dns-follow");
    let ips = ["127.0.0.2", "127.0.0.3", "127.0.0.4"];
    let (_cluster, port) = three_nodes(&dir, ips).await;
    let [first, second, third] = ips.map(|ip| SocketAddr::new(ip.parse().unwrap(), port));
    let hosts = dir.join("hosts");
    write_hosts(&hosts, &ips[..2]);
    let (chain, input) = slow_chain(&dir, N);
    let out = dir.join("out.txt");
    let mut run = pcluster_cmd();
    run.arg("run")
        .arg(&chain)
        .args(["-q", "--port", &port.to_string(), "--rescan", "1"])
        .args(["--nodes-dns", NAME, "-i"])
        .arg(&input)
        .arg("-o")
        .arg(&out);
    let err_path = dir.join("stderr.txt");
    let mut run = spawn(
        with_hosts(&hosts, &run)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(&err_path).unwrap()),
    );
    let stderr = || std::fs::read_to_string(&err_path).unwrap_or_default();
    let outputs = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_until(LONG, "30 outputs", || outputs() >= 30).await;
    assert_eq!(taken(third).await.map(|(n, _)| n), Some(0), "not named yet");

    // The third address appears under the name, the second goes, in one rewrite.
    write_hosts(&hosts, &[ips[0], ips[2]]);
    poll_until(LONG, "the third node to take items", || async {
        taken(third).await.is_some_and(|(n, _)| n > 0)
    })
    .await;
    let left_at = kit::poll_for(LONG, "the second node to be let go", || async {
        taken(second)
            .await
            .and_then(|(n, held)| (!held).then_some(n))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", stderr()));
    assert!(
        run.try_wait().unwrap().is_none() && outputs() < N as usize,
        "the run ended before the name changed; make it longer: {}",
        stderr()
    );
    let status = run.wait_exit(LONG).await.unwrap();
    assert!(status.success(), "{}", stderr());
    assert_same(&sorted_lines(&out), &expected(N));
    assert_eq!(
        taken(second).await.map(|(n, _)| n),
        Some(left_at),
        "the node gone from the name took nothing after it left"
    );
    assert!(taken(first).await.is_some_and(|(n, _)| n > 0));
    let err = stderr();
    let from = format!("node {third} joined from --nodes-dns {NAME}");
    assert!(err.contains(&from), "{err}");
    let left = format!("node {second} left --nodes-dns {NAME}");
    assert!(err.contains(&left), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_the_nodes_its_nodes_file_lists_now() {
    let dir = temp_dir("top-follows");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (_a, port) = node_process("127.0.0.2", 0, log_port, 1, &[]).await;
    let (_b, _) = node_process("127.0.0.3", port, log_port, 1, &[]).await;
    let (a, b) = (format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}"));
    let list = dir.join("nodes.txt");
    let write_list = |ip: &str| {
        // Whole or not at all: written aside, then renamed over the file.
        std::fs::write(dir.join("nodes.tmp"), format!("{ip}\n")).unwrap();
        std::fs::rename(dir.join("nodes.tmp"), &list).unwrap();
    };
    write_list("127.0.0.2");
    let frames = dir.join("top.txt");
    // Not a terminal: each second's frame is appended as plain lines.
    let _top = spawn(
        pcluster_cmd()
            .args(["top", "--port", &port.to_string(), "--nodes-file"])
            .arg(&list)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&frames).unwrap())
            .stderr(Stdio::null()),
    );
    // The frames read so far, each from its header on (the last may be partly written; its
    // node lines come in address order, so one showing the second node shows the first too
    // when it holds it).
    let read = || {
        let text = std::fs::read_to_string(&frames).unwrap_or_default();
        let frames: Vec<String> = text
            .split("pcluster top ")
            .skip(1)
            .map(String::from)
            .collect();
        frames
    };
    wait_until(LONG, "a frame showing the first node", || {
        read().iter().any(|f| f.contains(&a))
    })
    .await;
    assert!(read().iter().all(|f| !f.contains(&b)), "not listed yet");
    write_list("127.0.0.3");
    wait_until(
        LONG,
        "a frame with the second node and without the first",
        || read().iter().any(|f| f.contains(&b) && !f.contains(&a)),
    )
    .await;
}
