//! What a real network and real machines do to `pcluster run` that loopback rarely shows
//! (issue #24): a reader of its stdout that does not read for a while, a node stopped before
//! or during setup, a full disk, and the exit of a root that logs to a log server. Real
//! processes on loopback.

use std::io::{BufRead as _, Read as _};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

const LONG: Duration = Duration::from_secs(180);

/// `pcluster run examples/w1.toml --nodes …` over `input`.
fn w1_run(nodes: &[String], input: &Path) -> Command {
    let mut cmd = pcluster_cmd();
    cmd.arg("run")
        .arg(repo().join("examples/w1.toml"))
        .arg("--nodes")
        .arg(nodes.join(","))
        .arg("--input")
        .arg(input);
    cmd
}

/// Runs `cmd` to its end off the test's runtime; its output.
async fn output_of(mut cmd: Command) -> std::process::Output {
    let run = tokio::task::spawn_blocking(move || cmd.output().expect("pcluster run starts"));
    tokio::time::timeout(LONG, run)
        .await
        .expect("pcluster run ends")
        .unwrap()
}

/// The scenario of issue #24: `pcluster run … | (sleep 45; wc -l)` with nodes that drop a
/// root silent for 30 s. Here the nodes' root timeout is 3 s and the reader sleeps three
/// times that: the root must go on heartbeating while its output waits, take no more
/// outputs meanwhile (so it stays bounded), and neither side may drop the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_waits_three_root_timeouts_never_looks_like_a_dead_root() {
    const ROOT_TIMEOUT_S: u64 = 3;
    let c = Cluster::start_with("stall-reader", &["--root-timeout-s", "3"]).await;
    // About 12 MB of outputs: far more than the pipe, the output thread's bound and the
    // root's buffers hold, so the run waits on its reader long before the sleep ends.
    let n = 1_000_000;
    let input = c.dir.join("in.txt");
    kit::write_w1_input(&input, n).unwrap();
    let mut cmd = w1_run(&c.addrs(), &input);
    cmd.arg("-q").stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut run = spawn(&mut cmd);
    let mut stdout = run.stdout.take().unwrap();
    let mut stderr = run.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    // The slow reader itself (the scenario, not a wait for a condition).
    tokio::time::sleep(Duration::from_secs(3 * ROOT_TIMEOUT_S)).await;
    assert!(
        run.try_wait().unwrap().is_none(),
        "the run should still wait on its reader"
    );
    let read = tokio::task::spawn_blocking(move || {
        let mut out = Vec::new();
        stdout.read_to_end(&mut out).map(|_| out)
    });
    let out = tokio::time::timeout(LONG, read).await.unwrap().unwrap();
    let out = out.expect("stdout read to its end");
    let status = run.wait_exit(LONG).await.unwrap();
    let errors = errors.join().unwrap();
    assert!(status.success(), "{status}: {errors}");
    assert_w1(&out, n);
    assert!(!errors.contains("node lost"), "{errors}");
    assert!(errors.contains(" 0 re-dispatched"), "{errors}");
    // The nodes log to the log server: none of them may have dropped the root.
    let log = std::fs::read_to_string(c.dir.join("cluster.log")).unwrap_or_default();
    assert!(
        !log.contains("not even a heartbeat"),
        "a node dropped the root: {}",
        log.lines()
            .filter(|l| l.contains("heartbeat"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// A node stopped (SIGSTOP) before the run never finishes its handshake: it is skipped
/// after `--node-timeout`, the run completes exactly on the other node, and its end does not
/// wait for the retries of the stopped one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_before_the_run_is_skipped() {
    let c = Cluster::start("stall-stopped").await;
    c.nodes[1].signal("-STOP").unwrap();
    let n = 20_000;
    let input = c.dir.join("in.txt");
    kit::write_w1_input(&input, n).unwrap();
    let mut cmd = w1_run(&c.addrs(), &input);
    cmd.args(["-q", "--node-timeout", "2"]);
    let run = output_of(cmd).await;
    let _ = c.nodes[1].signal("-CONT");
    let errors = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{}: {errors}", run.status);
    assert!(
        errors.contains(&format!("skipping node {}", c.addrs()[1])),
        "{errors}"
    );
    assert_w1(&run.stdout, n);
}

/// A node stopped while its setup is on the way to it never answers: it is lost after
/// `--node-timeout` and dropped from the run with a warning naming it, and the run completes
/// exactly on the other node. A proxy that hands every byte on 400 ms late in front of the
/// stopped node leaves the time to stop it once the root has added it, before the setup
/// reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_stopped_during_setup_is_dropped_and_the_run_goes_on() {
    let dir = temp_dir("stall-setup");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (_a, port) = node_process("127.0.24.2", 0, log_port, 1, &[]).await;
    let (b, _) = node_process("127.0.24.3", port, log_port, 1, &[]).await;
    let b_addr = SocketAddr::from(([127, 0, 24, 3], port));
    let proxy = kit::DelayProxy::start(
        IpAddr::from([127, 0, 24, 4]),
        b_addr,
        Duration::from_millis(400),
    )
    .await
    .unwrap();
    let n = 20_000;
    let input = dir.join("in.txt");
    kit::write_w1_input(&input, n).unwrap();
    let nodes = [format!("127.0.24.2:{port}"), proxy.addr().to_string()];
    let mut cmd = w1_run(&nodes, &input);
    cmd.args(["-q", "--node-timeout", "3"])
        .env("PCLUSTER_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut run = spawn(&mut cmd);
    let mut stdout = run.stdout.take().unwrap();
    let read = std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = stdout.read_to_end(&mut out);
        out
    });
    let (added_tx, added_rx) = tokio::sync::oneshot::channel();
    let stderr = std::io::BufReader::new(run.stderr.take().unwrap());
    let added = format!("node added node={}", proxy.addr());
    let errors = std::thread::spawn(move || {
        let (mut tx, mut all) = (Some(added_tx), String::new());
        for line in stderr.lines().map_while(Result::ok) {
            if line.contains(&added)
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    tokio::time::timeout(LONG, added_rx)
        .await
        .expect("the root adds the node behind the proxy")
        .unwrap();
    b.signal("-STOP").unwrap();
    let status = run.wait_exit(LONG).await.unwrap();
    let _ = b.signal("-CONT");
    let errors = errors.join().unwrap();
    assert!(status.success(), "{status}: {errors}");
    assert!(
        errors.contains("node lost during setup") && errors.contains("going on without that node"),
        "{errors}"
    );
    assert_w1(&read.join().unwrap(), n);
}

/// A tmpfs of `kib` KiB mounted on a fresh directory, unmounted when dropped; `None` (the
/// test then skips, saying why) when this process may not mount (CI runs as root).
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, kib: u32) -> Option<Tmpfs> {
        let at = dir.join("tmpfs");
        std::fs::create_dir_all(&at).unwrap();
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(&at)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !mounted {
            eprintln!("skipped: cannot mount a tmpfs here (needs root, as in CI)");
            return None;
        }
        Some(Tmpfs(at))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Fills the file system of `dir` (a small tmpfs) to its last byte.
fn fill(dir: &Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = [0u8; 4096];
    while f.write_all(&block).is_ok() {}
    // The last pages may take less than a block.
    while f.write_all(&block[..1]).is_ok() {}
}

/// The joblog on a disk that fills during the run: the run fails (exit 1) naming the
/// joblog, not "the outputs". The input comes in two parts, and the disk is filled between
/// them (after the joblog's header), as when another writer fills it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_joblog_is_named() {
    let c = Cluster::start("stall-joblog").await;
    let Some(small) = Tmpfs::mount(&c.dir, 256) else {
        return;
    };
    let joblog = small.0.join("joblog");
    let mut cmd = pcluster_cmd();
    cmd.arg("run")
        .arg(repo().join("examples/w1.toml"))
        .arg("--nodes")
        .arg(c.addrs().join(","))
        .arg("-q")
        .arg("--joblog")
        .arg(&joblog)
        .arg("--output")
        .arg(c.dir.join("output"))
        .stdin(Stdio::piped())
        .stderr(Stdio::piped());
    let mut run = spawn(&mut cmd);
    let mut stdin = run.stdin.take().unwrap();
    // Read all along: a full stderr pipe must not stop the run from reading its input.
    let mut stderr = run.stderr.take().unwrap();
    let errors = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let feed = |stdin: &mut std::process::ChildStdin, end: &str, n: u64| {
        use std::io::Write as _;
        let text: String = (0..n).map(|i| format!("item-{i}{end}\n")).collect();
        // A run that stopped on the full disk may close its input first.
        let _ = stdin.write_all(text.as_bytes());
    };
    feed(&mut stdin, "", 10_000);
    wait_until(LONG, "the joblog's header", || {
        std::fs::metadata(&joblog).is_ok_and(|m| m.len() > 0)
    })
    .await;
    fill(&small.0);
    // Items that fail (no number after the `-`): a joblog line each, far more than the room
    // left in the joblog's last page, which the compact lines of inputs that went well
    // might not fill.
    feed(&mut stdin, "x", 5_000);
    drop(stdin);
    let status = run.wait_exit(LONG).await.unwrap();
    let errors = errors.join().unwrap();
    assert_eq!(status.code(), Some(1), "{errors}");
    let named = format!("writing --joblog {}", joblog.display());
    assert!(
        errors.contains(&named) && errors.contains("No space left"),
        "{errors}"
    );
}

/// The output on a full disk (the joblog on a roomy one): the run fails (exit 1) naming
/// the output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_under_the_output_is_named() {
    let c = Cluster::start("stall-output").await;
    let Some(small) = Tmpfs::mount(&c.dir, 64) else {
        return;
    };
    // About 2.4 MB of outputs on 64 KiB.
    let n = 200_000;
    let input = c.dir.join("in.txt");
    kit::write_w1_input(&input, n).unwrap();
    let output = small.0.join("output");
    let mut cmd = w1_run(&c.addrs(), &input);
    cmd.arg("-q")
        .arg("--joblog")
        .arg(c.dir.join("joblog"))
        .arg("--output")
        .arg(&output);
    let run = output_of(cmd).await;
    let errors = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{errors}");
    let named = format!("writing --output {}", output.display());
    assert!(
        errors.contains(&named) && errors.contains("No space left"),
        "{errors}"
    );
}

/// A one-item run that logs to a log server ends at once (the figures are in the note of
/// issue #24), and its log lines still reach the server's file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_run_still_delivers_its_log_lines() {
    let c = Cluster::start("stall-log").await;
    let input = c.dir.join("in.txt");
    kit::write_w1_input(&input, 1).unwrap();
    let mut cmd = w1_run(&c.addrs(), &input);
    cmd.args(["-q", "--log-host", "127.0.0.1", "--log-port"])
        .arg(c.log_port.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut run = spawn(&mut cmd);
    let tag = format!("root pid {}", run.id());
    let status = run.wait_exit(LONG).await.unwrap();
    assert!(status.success(), "{status}");
    let log = c.dir.join("cluster.log");
    wait_until(LONG, "the root's log lines in the log file", || {
        std::fs::read_to_string(&log).is_ok_and(|l| {
            l.lines()
                .filter(|l| l.contains(&tag) && l.contains("chain set up"))
                .count()
                == 2
        })
    })
    .await;
}

/// Issue #24's full disk: output and joblog on a 20 MiB tmpfs that W1's outputs overflow. The
/// run ends with exit 1 naming the file; both files moved to a bigger disk, `--resume`
/// completes the run, and the output holds W1's outputs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_stopped_by_a_full_disk_resumes_exactly_on_a_bigger_one() {
    let c = Cluster::start("stall-resume").await;
    let Some(small) = Tmpfs::mount(&c.dir, 20 << 10) else {
        return;
    };
    // About 30 MB of outputs on 20 MiB.
    let n = 2_500_000;
    let input = c.dir.join("in.txt");
    kit::write_w1_input(&input, n).unwrap();
    let run_on = |dir: &Path, resume: bool| {
        let mut cmd = w1_run(&c.addrs(), &input);
        cmd.arg("-q")
            .arg("--joblog")
            .arg(dir.join("joblog"))
            .arg("--output")
            .arg(dir.join("output"));
        if resume {
            cmd.arg("--resume");
        }
        cmd
    };
    let first = output_of(run_on(&small.0, false)).await;
    let errors = String::from_utf8_lossy(&first.stderr);
    assert_eq!(first.status.code(), Some(1), "{errors}");
    assert!(errors.contains("No space left"), "{errors}");
    let big = c.dir.join("bigger");
    std::fs::create_dir_all(&big).unwrap();
    for f in ["joblog", "output"] {
        std::fs::copy(small.0.join(f), big.join(f)).unwrap();
    }
    drop(small);
    let resumed = output_of(run_on(&big, true)).await;
    let errors = String::from_utf8_lossy(&resumed.stderr);
    assert!(resumed.status.success(), "{errors}");
    assert_w1(&std::fs::read(big.join("output")).unwrap(), n);
}
