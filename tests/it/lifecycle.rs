//! Runs that survive their users, with real processes: `pcluster run` interrupted by
//! signals, given a typo, losing every node, meeting an over-long line, killed and resumed,
//! keeping order and tagging, and using a node restarted mid-run.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use std::time::{Duration, Instant};

use root::RootOptions;

use crate::common::*;

const LONG: Duration = Duration::from_secs(120);

/// Sends `signal` (e.g. `-KILL`) to a child.
fn signal(child: &Child, signal: &str) {
    child.signal(signal).unwrap_or_else(|e| panic!("{e}"));
}

impl Cluster {
    /// `pcluster run CHAIN --nodes both` plus `extra`, stdout and stderr to files.
    fn run(&self, chain: &Path, extra: &[&str]) -> Command {
        let mut cmd = pcluster_cmd();
        cmd.arg("run")
            .arg(chain)
            .args(["-n", "127.0.0.2,127.0.0.3", "-p", &self.port.to_string()])
            .args([
                "--log-host",
                "127.0.0.1",
                "--log-port",
                &self.log_port.to_string(),
            ])
            .args(["--rescan", "0"])
            .args(extra)
            .stdin(Stdio::null());
        cmd
    }

    /// A chain file over the example tasks' module.
    fn chain(&self, name: &str, tasks: &[(&str, bool, &str)]) -> PathBuf {
        let wasm = self.dir.join("tasks.wasm");
        if !wasm.exists() {
            std::fs::write(&wasm, tasks_module()).unwrap();
        }
        let mut text = format!("name = \"{name}\"\nversion = \"1\"\nmodule = \"tasks.wasm\"\n");
        for (f, generator, args) in tasks {
            text += &format!(
                "[[task]]\nfunction = \"{f}\"\ngenerator = {generator}\nargs = \"{args}\"\n"
            );
        }
        let path = self.dir.join(format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn w1(&self) -> PathBuf {
        self.chain(
            "w1",
            &[
                ("w1_identity", false, ""),
                ("w1_duplicate", true, ""),
                ("w1_drop_odd", false, ""),
            ],
        )
    }
}

/// Waits for a child with a deadline; returns its exit code and stderr.
async fn finish(mut child: Child, deadline: Duration) -> (Option<i32>, String) {
    let status = child
        .wait_exit(deadline)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut err);
    }
    (status.code(), err)
}

fn lines_of(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends in a torn line",
        path.display()
    );
    text.lines().map(str::to_string).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort_unstable();
    v
}

/// Inputs the joblog names so far: a line names one (`7`) or a run of them (`3-9`).
fn joblog_entries(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let col = l.split('\t').next()?;
            let (a, b) = col.split_once('-').unwrap_or((col, col));
            Some(b.parse::<usize>().ok()? + 1 - a.parse::<usize>().ok()?)
        })
        .sum()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_keeps_whole_lines_of_completed_inputs_and_frees_the_nodes() {
    let c = Cluster::start("sigint").await;
    // About 30 ms per item: 300 items keep two workers busy for ~5 s.
    let chain = c.chain("slow", &[("w2_cpu", false, "10000000")]);
    let seeds: Vec<String> = (1..=300).map(|i| i.to_string()).collect();
    let input = c.dir.join("seeds.txt");
    write_lines(&input, &seeds);
    let (out, joblog) = (c.dir.join("out.txt"), c.dir.join("job.log"));
    let mut cmd = c.run(
        &chain,
        &["-i", input.to_str().unwrap(), "-o", out.to_str().unwrap()],
    );
    cmd.args(["--joblog", joblog.to_str().unwrap(), "--drain-timeout", "1"])
        .stderr(Stdio::piped());
    let run = spawn(&mut cmd);
    wait_until(LONG, "30 % of the inputs done", || {
        joblog_entries(&joblog) >= 90
    })
    .await;
    signal(&run, "-INT");
    let (code, err) = finish(run, LONG).await;
    assert_eq!(code, Some(130), "{err}");
    let done = lines_of(&out);
    assert!(
        done.len() >= 90 && done.len() < 300,
        "{} outputs",
        done.len()
    );
    assert_eq!(
        done.len(),
        joblog_entries(&joblog),
        "one output per completed input"
    );

    // The nodes are free at once: a new run (resuming) finishes the rest.
    let options = RootOptions::default();
    for a in c.addrs() {
        let s = root::node_status(a.parse().unwrap(), &options)
            .await
            .expect("status");
        assert_eq!(
            s.state,
            protocol::NodeState::Free,
            "{a} after the run's exit"
        );
    }
    let mut cmd = c.run(
        &chain,
        &["-i", input.to_str().unwrap(), "-o", out.to_str().unwrap()],
    );
    cmd.args(["--joblog", joblog.to_str().unwrap(), "--resume", "-q"])
        .stderr(Stdio::piped());
    let (code, err) = finish(spawn(&mut cmd), LONG).await;
    assert_eq!(code, Some(0), "{err}");
    let all = lines_of(&out);
    assert_eq!(all.len(), 300);
    let mut unique = all.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), 300, "every seed's output once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typo_in_input_fails_before_any_node_is_contacted() {
    let dir = temp_dir("typo");
    let listener = tokio::net::TcpListener::bind("127.0.0.4:0").await.unwrap();
    let node = listener.local_addr().unwrap();
    let chain = dir.join("w1.toml");
    std::fs::write(dir.join("tasks.wasm"), tasks_module()).unwrap();
    std::fs::write(
        &chain,
        "name = \"w1\"\nmodule = \"tasks.wasm\"\n[[task]]\nfunction = \"w1_identity\"\n",
    )
    .unwrap();
    let out = pcluster_cmd()
        .arg("run")
        .arg(&chain)
        .args(["-n", &node.to_string(), "-i"])
        .arg(dir.join("no-such-input.txt"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open --input") && err.contains("no-such-input.txt"),
        "{err}"
    );
    let accepted = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
    assert!(accepted.is_err(), "the node was contacted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_every_node_ends_the_run_within_its_timeout() {
    let mut c = Cluster::start("all-lost").await;
    let input = c.dir.join("in.txt");
    write_lines(
        &input,
        &(0..600_000).map(|i| i.to_string()).collect::<Vec<_>>(),
    );
    let (out, joblog) = (c.dir.join("out.txt"), c.dir.join("job.log"));
    // A few microseconds per item keep the run going long enough to kill its nodes, and
    // 600,000 lines are more than the root's queue holds.
    let chain = c.chain("slowish", &[("w2_cpu", false, "2000")]);
    let mut cmd = c.run(
        &chain,
        &["-i", input.to_str().unwrap(), "-o", out.to_str().unwrap()],
    );
    cmd.args(["--joblog", joblog.to_str().unwrap()])
        .stderr(Stdio::piped());
    let run = spawn(&mut cmd);
    wait_until(LONG, "some inputs done", || joblog_entries(&joblog) > 1000).await;
    for n in &mut c.nodes {
        let _ = n.kill();
    }
    let killed = Instant::now();
    let (code, err) = finish(run, Duration::from_secs(60)).await;
    assert!(
        killed.elapsed() < Duration::from_secs(20),
        "took {:?}",
        killed.elapsed()
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("inputs not done"), "{err}");
    let done = lines_of(&out);
    assert_eq!(
        done.len(),
        joblog_entries(&joblog),
        "finished outputs are kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_line_fails_alone_with_its_line_number() {
    let c = Cluster::start("overlong").await;
    let n = 300_000u64;
    let bad_line = 250_000u64;
    let input = c.dir.join("in.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
        for (i, item) in w1_inputs(n).iter().enumerate() {
            if i as u64 + 1 == bad_line {
                f.write_all(&vec![b'x'; 17 << 20]).unwrap();
                f.write_all(b"\n").unwrap();
            } else {
                writeln!(f, "{item}").unwrap();
            }
        }
    }
    let (out, failed) = (c.dir.join("out.txt"), c.dir.join("failed.txt"));
    let mut cmd = c.run(
        &c.w1(),
        &[
            "-i",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--failed",
            failed.to_str().unwrap(),
        ],
    );
    let (code, err) = finish(spawn(cmd.stderr(Stdio::piped())), LONG).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("line {bad_line}:")), "{err}");
    let raw = std::fs::read(&failed).unwrap();
    assert_eq!(raw.len(), (17 << 20) + 1);
    assert!(raw[..17 << 20].iter().all(|&b| b == b'x') && raw.ends_with(b"\n"));
    let mut expected = w1_expected(n);
    // Line 250,000 held item-249999 (odd: dropped anyway), so W1's outputs are unchanged.
    expected.sort_unstable();
    assert_same(&sorted(lines_of(&out)), &expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_killed_at_any_moment_resumes_to_the_exact_output() {
    let c = Cluster::start("resume").await;
    let n = 3_000_000u64;
    let input = c.dir.join("in.txt");
    write_lines(&input, &w1_inputs(n));
    let (out, joblog) = (c.dir.join("out.txt"), c.dir.join("job.log"));
    let chain = c.w1();
    let args = |resume: bool| {
        let mut a = vec!["-i", input.to_str().unwrap(), "-o", out.to_str().unwrap()];
        a.extend(["--joblog", joblog.to_str().unwrap(), "-q"]);
        if resume {
            a.push("--resume");
        }
        a.into_iter().map(String::from).collect::<Vec<_>>()
    };
    for (round, fraction) in [0.1, 0.4, 0.7].into_iter().enumerate() {
        let a = args(round > 0);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let run = spawn(c.run(&chain, &a).stderr(Stdio::null()));
        let want = (n as f64 * fraction) as usize;
        wait_until(LONG, &format!("{want} inputs in the joblog"), || {
            joblog_entries(&joblog) >= want
        })
        .await;
        signal(&run, "-KILL");
        let _ = finish(run, LONG).await;
    }
    let a = args(true);
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, err) = finish(spawn(c.run(&chain, &a).stderr(Stdio::piped())), LONG).await;
    assert_eq!(code, Some(0), "{err}");
    assert_same(&sorted(lines_of(&out)), &sorted(w1_expected(n)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_order_and_tag_follow_the_input() {
    let c = Cluster::start("order").await;
    let n = 1_000_000u64;
    let input = c.dir.join("in.txt");
    let items = w1_inputs(n);
    write_lines(&input, &items);
    let chain = c.chain("identity", &[("w1_identity", false, "")]);
    let out = c.dir.join("out.txt");
    let mut cmd = c.run(
        &chain,
        &[
            "-i",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "-k",
        ],
    );
    let (code, err) = finish(spawn(cmd.stderr(Stdio::piped())), LONG).await;
    assert_eq!(code, Some(0), "{err}");
    assert!(
        lines_of(&out) == items,
        "--keep-order output is not the input order"
    );
    let rss: f64 = err
        .split("peak RSS ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no peak RSS in {err}"));
    assert!(rss <= 64.0, "root peak RSS {rss} MiB");

    let small = c.dir.join("small.txt");
    write_lines(&small, &items[..1000]);
    let mut cmd = c.run(
        &chain,
        &[
            "-i",
            small.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--tag",
        ],
    );
    let (code, err) = finish(spawn(cmd.stderr(Stdio::piped())), LONG).await;
    assert_eq!(code, Some(0), "{err}");
    let tagged = lines_of(&out);
    assert_eq!(tagged.len(), 1000);
    for l in tagged {
        let (line, item) = l.split_once('\t').expect("a tab");
        let line: usize = line.parse().unwrap();
        assert_eq!(items[line - 1], item, "tag {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_mid_run_gets_items_again() {
    let mut c = Cluster::start("restart").await;
    let chain = c.chain("slow", &[("w2_cpu", false, "10000000")]);
    let input = c.dir.join("seeds.txt");
    write_lines(
        &input,
        &(1..=400).map(|i| i.to_string()).collect::<Vec<_>>(),
    );
    let (out, joblog) = (c.dir.join("out.txt"), c.dir.join("job.log"));
    let mut cmd = c.run(
        &chain,
        &["-i", input.to_str().unwrap(), "-o", out.to_str().unwrap()],
    );
    cmd.args(["--joblog", joblog.to_str().unwrap()])
        .stderr(Stdio::piped());
    let run = spawn(&mut cmd);
    wait_until(LONG, "some inputs done", || joblog_entries(&joblog) >= 20).await;
    let b = c.nodes.pop().unwrap();
    drop(b); // killed
    let (b, _) = node_process("127.0.0.3", c.port, c.log_port, 1, &[]).await;
    let addr: SocketAddr = format!("127.0.0.3:{}", c.port).parse().unwrap();
    let options = RootOptions::default();
    poll_until(LONG, "the restarted node to take items", || async {
        root::node_status(addr, &options)
            .await
            .is_ok_and(|s| s.tasks.iter().any(|t| t.items_in > 0))
    })
    .await;
    let (code, err) = finish(run, LONG).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines_of(&out).len(), 400);
    drop(b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_rerun_a_failed_item_from_its_task_without_repeating_other_outputs() {
    let c = Cluster::start("retries").await;
    // `retry:b` is duplicated; `fail_first` fails the first copy each instance sees. The
    // first retry goes to the other node (a fresh instance: fails again), the second back to
    // the first node (seen: passes).
    let chain = c.chain(
        "flaky",
        &[("w1_duplicate", true, ""), ("fail_first", false, "")],
    );
    let input = c.dir.join("in.txt");
    write_lines(&input, &["a".into(), "retry:b".into(), "c".into()]);
    let (out, failed) = (c.dir.join("out.txt"), c.dir.join("failed.txt"));
    let args = |retries: &str| {
        [
            "-i",
            input.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
            "--failed",
            failed.to_str().unwrap(),
            "--retries",
            retries,
        ]
        .map(String::from)
    };
    let a = args("2");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, err) = finish(spawn(c.run(&chain, &a).stderr(Stdio::piped())), LONG).await;
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(
        sorted(lines_of(&out)),
        ["a", "a", "c", "c", "retry:b", "retry:b"]
    );
    assert_eq!(std::fs::read(&failed).unwrap(), b"");

    let a = args("1");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    let (code, err) = finish(spawn(c.run(&chain, &a).stderr(Stdio::piped())), LONG).await;
    assert_eq!(code, Some(2), "{err}");
    assert_eq!(
        sorted(lines_of(&out)),
        ["a", "a", "c", "c", "retry:b"],
        "the input's other output once, the failed copy not at all"
    );
    assert_eq!(
        std::fs::read(&failed).unwrap(),
        b"retry:b\n",
        "the input, raw"
    );
    assert!(
        err.contains("line 2:") && err.contains("failing the first time"),
        "{err}"
    );
}
