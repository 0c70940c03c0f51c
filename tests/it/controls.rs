//! Run controls that keep their word, with real `pcluster run` processes: `--halt now` and
//! `--halt soon` end (and a signal during their drain ends them at once), an input over the
//! chain's own item limit fails alone in every framing, outputs leave as their inputs
//! complete (a file fills while the run goes on, `| head -1` ends the run), a closed stdout
//! ends every command cleanly, and retries show in the joblog.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

const LONG: Duration = Duration::from_secs(120);
/// Items of `w2_cpu` with this many iterations take about 30 ms each.
const ITEM_30MS: &str = "10000000";
/// And with this many, seconds: long enough to be still running when a test acts.
const ITEM_SECONDS: &str = "1500000000";

/// A directory with the example tasks' module and chain files over it.
struct Dir {
    dir: kit::TempDir,
}

impl Dir {
    fn new(name: &str) -> Dir {
        let dir = temp_dir(name);
        std::fs::write(dir.join("tasks.wasm"), tasks_module()).unwrap();
        Dir { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A chain file of `tasks` (function, args), with `limits` (TOML lines) if any.
    fn chain(&self, name: &str, tasks: &[(&str, &str)], limits: &str) -> PathBuf {
        let mut text = format!("name = \"{name}\"\nversion = \"1\"\nmodule = \"tasks.wasm\"\n");
        for (f, args) in tasks {
            text += &format!("[[task]]\nfunction = \"{f}\"\nargs = \"{args}\"\n");
        }
        if !limits.is_empty() {
            text += &format!("[limits]\n{limits}\n");
        }
        let path = self.path(&format!("{name}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// `pcluster run CHAIN` (on an embedded cluster of `workers` workers unless `extra`
    /// names nodes), stderr to a file.
    fn run(&self, chain: &Path, workers: Option<u32>, extra: &[&str]) -> Command {
        let mut cmd = pcluster_cmd();
        cmd.arg("run").arg(chain).arg("-q");
        if let Some(w) = workers {
            cmd.args(["-j", &w.to_string()]);
        }
        cmd.args(extra)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(self.path("stderr.txt")).unwrap());
        cmd
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.path("stderr.txt")).unwrap_or_default()
    }

    fn lines(&self, name: &str) -> Vec<String> {
        sorted_lines(&self.path(name))
    }
}

/// Waits for `child` to exit within `deadline`; its exit code.
async fn exit_code(child: &mut Child, deadline: Duration) -> Option<i32> {
    child
        .wait_exit(deadline)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .code()
}

fn arg(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_soon_lets_the_inputs_in_flight_finish_and_exits_2() {
    let d = Dir::new("halt-soon");
    let chain = d.chain("w2", &[("w2_cpu", "1000")], "");
    let input = d.write("in.txt", b"1\nnot-a-number\n2\n");
    let out = d.path("out.txt");
    let mut run = spawn(&mut d.run(
        &chain,
        Some(2),
        &["-i", arg(&input), "-o", arg(&out), "--halt", "soon,fail=1"],
    ));
    assert_eq!(
        exit_code(&mut run, Duration::from_secs(5)).await,
        Some(2),
        "{}",
        d.stderr()
    );
    assert_eq!(
        d.lines("out.txt").len(),
        2,
        "the good inputs' outputs: {}",
        d.stderr()
    );
    assert!(
        d.stderr().contains("halted after 1 failed items"),
        "{}",
        d.stderr()
    );
}

/// `--halt MODE,fail=1` over a failing item and two items of seconds: once the run drains,
/// SIGINT ends it at once with 130.
async fn a_signal_during_the_drain_stops_at_once(mode: &str, drain_says: &str) {
    let d = Dir::new(&format!("halt-{mode}-signal"));
    let chain = d.chain("slow", &[("w2_cpu", ITEM_SECONDS)], "");
    let input = d.write("in.txt", b"not-a-number\n1\n2\n");
    let halt = format!("{mode},fail=1");
    let mut cmd = d.run(&chain, Some(2), &["-i", arg(&input), "--halt", &halt]);
    let mut run = spawn(cmd.stdout(Stdio::null()));
    if mode == "now" {
        // Nothing drains after a halt now: the run ends at once, the slow items unfinished.
        assert_eq!(
            exit_code(&mut run, Duration::from_secs(10)).await,
            Some(2),
            "{}",
            d.stderr()
        );
        return;
    }
    wait_until(LONG, "the drain to begin", || {
        d.stderr().contains(drain_says)
    })
    .await;
    run.signal("-INT").unwrap();
    assert_eq!(
        exit_code(&mut run, Duration::from_secs(2)).await,
        Some(130),
        "{}",
        d.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_soon_ends_at_once_on_a_signal_during_its_drain() {
    a_signal_during_the_drain_stops_at_once("soon", "halting after 1 failed items").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn halt_now_does_not_wait_for_the_inputs_in_flight() {
    a_signal_during_the_drain_stops_at_once("now", "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_signal_drains_and_says_so_and_a_second_stops_at_once() {
    let (c, d) = (
        Cluster::start("signal-twice").await,
        Dir::new("signal-twice-chain"),
    );
    let mut cmd = slow_run_on(&c, &d, ITEM_SECONDS, 100);
    let mut run = spawn(cmd.stdout(Stdio::null()));
    // Both workers hold an item of seconds: the run is feeding and has inputs in flight.
    let options = root::RootOptions::default();
    poll_until(LONG, "both workers busy", || async {
        let mut idle = 0;
        for a in c.addrs() {
            match root::node_status(a.parse().unwrap(), &options).await {
                Ok(s) if s.chain.is_some() => idle += s.idle_workers,
                _ => idle += 1,
            }
        }
        idle == 0
    })
    .await;
    run.signal("-INT").unwrap();
    wait_until(LONG, "the drain's notice", || {
        d.stderr().contains("Ctrl-C again to stop now")
    })
    .await;
    let notice = d.stderr();
    assert!(
        notice.contains("stopping: ") && notice.contains(" inputs in flight, up to 10 s"),
        "{notice}"
    );
    run.signal("-INT").unwrap();
    assert_eq!(
        exit_code(&mut run, Duration::from_secs(2)).await,
        Some(130),
        "{}",
        d.stderr()
    );
}

/// A chain whose own limit is 100 bytes, 10,000 inputs of which 3 are 300 bytes, written in
/// `framing` (`None`: lines): the 3 fail alone, raw in `--failed`, the rest run.
async fn small_item_limit(name: &str, flag: Option<&str>) {
    let d = Dir::new(name);
    let chain = d.chain("limited", &[("w1_identity", "")], "max_item_bytes = 100");
    let (mut input, mut want_failed, mut want_out) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..10_000u32 {
        let item = if [17, 5_000, 9_999].contains(&i) {
            vec![b'a' + (i % 26) as u8; 300]
        } else {
            format!("item-{i}").into_bytes()
        };
        let rec = record(flag, &item);
        input.extend_from_slice(&rec);
        if item.len() > 100 {
            want_failed.extend_from_slice(&rec);
        } else {
            want_out.push(rec);
        }
    }
    let input = d.write("in", &input);
    let (out, failed) = (d.path("out"), d.path("failed"));
    let mut args = vec!["-i", arg(&input), "-o", arg(&out), "--failed", arg(&failed)];
    args.extend(flag);
    let mut run = spawn(&mut d.run(&chain, Some(2), &args));
    assert_eq!(exit_code(&mut run, LONG).await, Some(2), "{}", d.stderr());
    assert_eq!(
        std::fs::read(&failed).unwrap(),
        want_failed,
        "the 3 raw items"
    );
    let mut got = records(flag, &std::fs::read(&out).unwrap());
    got.sort();
    want_out.sort();
    assert_eq!(got.len(), 9_997, "{}", d.stderr());
    assert!(got == want_out, "every other input's output once");
    let err = d.stderr();
    for line in [18, 5_001, 10_000] {
        assert!(
            err.contains(&format!(
                "line {line}: item of 300 bytes exceeds the limit of 100 bytes"
            )),
            "{err}"
        );
    }
}

/// `item` as one record of the framing.
fn record(flag: Option<&str>, item: &[u8]) -> Vec<u8> {
    match flag {
        None => [item, b"\n"].concat(),
        Some("-0") => [item, b"\0"].concat(),
        Some(_) => [&(item.len() as u32).to_le_bytes()[..], item].concat(),
    }
}

/// The records of a file in the framing, each whole (with its framing).
fn records(flag: Option<&str>, mut bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let len = match flag {
            None | Some("-0") => {
                let sep = if flag.is_none() { b'\n' } else { 0 };
                bytes
                    .iter()
                    .position(|&b| b == sep)
                    .expect("a whole record")
                    + 1
            }
            Some(_) => 4 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize,
        };
        out.push(bytes[..len].to_vec());
        bytes = &bytes[len..];
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_over_the_chains_item_limit_fails_alone_in_lines() {
    small_item_limit("limit-lines", None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_over_the_chains_item_limit_fails_alone_with_nul_ends() {
    small_item_limit("limit-nul", Some("-0")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_input_over_the_chains_item_limit_fails_alone_in_binary() {
    small_item_limit("limit-binary", Some("--binary")).await;
}

/// `pcluster run` on the cluster's two nodes over `n` seeds of `w2_cpu` with `iterations`.
fn slow_run_on(c: &Cluster, d: &Dir, iterations: &str, n: u32) -> Command {
    let chain = d.chain("slow", &[("w2_cpu", iterations)], "");
    let input = seeds(d, n);
    let nodes = c.addrs().join(",");
    d.run(
        &chain,
        None,
        &["-i", arg(&input), "-n", &nodes, "--rescan", "0"],
    )
}

fn seeds(d: &Dir, n: u32) -> PathBuf {
    let seeds: String = (1..=n).map(|i| format!("{i}\n")).collect();
    d.write("seeds.txt", seeds.as_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outputs_reach_the_file_while_the_run_goes_on() {
    let d = Dir::new("streaming");
    let chain = d.chain("slow", &[("w2_cpu", ITEM_30MS)], "");
    let input = seeds(&d, 200);
    let out = d.path("out.txt");
    let mut run = spawn(&mut d.run(&chain, Some(1), &["-i", arg(&input), "-o", arg(&out)]));
    let count = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_until(LONG, "50 outputs in the file", || count() >= 50).await;
    // 150 items of ~30 ms on one worker are still to run: the run has not ended.
    assert!(
        run.try_wait().unwrap().is_none(),
        "the outputs came only at the end: {}",
        d.stderr()
    );
    assert_eq!(exit_code(&mut run, LONG).await, Some(0), "{}", d.stderr());
    assert_eq!(count(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn head_1_ends_the_run_after_its_first_output_and_frees_the_nodes() {
    let (c, d) = (Cluster::start("head-1").await, Dir::new("head-1-chain"));
    let mut cmd = slow_run_on(&c, &d, ITEM_30MS, 200);
    let mut run = spawn(cmd.stdout(Stdio::piped()));
    let mut stdout = BufReader::new(run.stdout.take().unwrap());
    let mut first = String::new();
    // A blocking read, off the runtime's threads.
    let (first, stdout) = tokio::task::spawn_blocking(move || {
        stdout.read_line(&mut first).unwrap();
        (first, stdout)
    })
    .await
    .unwrap();
    assert!(!first.is_empty(), "an output: {}", d.stderr());
    drop(stdout); // `head -1` exits
    assert_eq!(
        exit_code(&mut run, Duration::from_secs(5)).await,
        Some(0),
        "{}",
        d.stderr()
    );
    let options = root::RootOptions::default();
    let mut ran = 0;
    for a in c.addrs() {
        let s = root::node_status(a.parse().unwrap(), &options)
            .await
            .unwrap();
        assert_eq!(
            s.state,
            protocol::NodeState::Free,
            "{a} right after the exit"
        );
        ran += s.tasks.iter().map(|t| t.items_in).sum::<u64>();
    }
    assert!(ran < 200, "the run stopped early: {ran} items ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_end_cleanly_when_stdout_is_closed() {
    let c = Cluster::start("closed-stdout").await;
    let d = Dir::new("closed-stdout-chain");
    let chain = d.chain("w1", &[("w1_identity", "")], "");
    let addrs = c.addrs();
    let port = c.port.to_string();
    let commands: [Vec<&str>; 4] = [
        ["status"]
            .into_iter()
            .chain(addrs.iter().map(String::as_str))
            .collect(),
        vec!["scan", "127.0.0.2/31", "-p", &port],
        ["release"]
            .into_iter()
            .chain(addrs.iter().map(String::as_str))
            .collect(),
        vec!["run", arg(&chain), "--dot"],
    ];
    for args in commands {
        // Closed before the command writes: its first write meets a broken pipe.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = pcluster_cmd()
            .args(&args)
            .stdin(Stdio::null())
            .stdout(writer)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "pcluster {args:?}: {err}");
        assert!(!err.contains("panicked"), "pcluster {args:?}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_item_shows_its_tries_in_the_joblog_and_the_summary() {
    let c = Cluster::start("retry-attempts").await;
    let d = Dir::new("retry-attempts-chain");
    // `fail_first` fails an item the first time each instance sees it: the first try fails
    // on one node, the second on the other, the third passes on the first.
    let chain = d.chain("flaky", &[("fail_first", "")], "");
    let input = d.write("in.txt", b"a\nretry:b\n");
    let (out, joblog) = (d.path("out.txt"), d.path("job.log"));
    let nodes = c.addrs().join(",");
    let args = [
        "-i",
        arg(&input),
        "-o",
        arg(&out),
        "--joblog",
        arg(&joblog),
        "--retries",
        "3",
        "-n",
        &nodes,
        "--rescan",
        "0",
    ];
    let mut run = spawn(&mut d.run(&chain, None, &args));
    assert_eq!(exit_code(&mut run, LONG).await, Some(0), "{}", d.stderr());
    assert_eq!(d.lines("out.txt"), ["a", "retry:b"]);
    let log = std::fs::read_to_string(&joblog).unwrap();
    let attempts: Vec<(String, String)> = log
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[3].to_string())
        })
        .collect();
    assert!(attempts.contains(&("2".into(), "3".into())), "{log}");
    assert!(attempts.contains(&("1".into(), "1".into())), "{log}");
    assert!(d.stderr().contains(", 2 retried,"), "{}", d.stderr());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_shows_a_runs_progress_from_its_dashboard() {
    let d = Dir::new("top-run");
    let chain = d.chain("slow", &[("w2_cpu", ITEM_30MS)], "");
    let input = seeds(&d, 200);
    let mut cmd = d.run(&chain, Some(1), &["-i", arg(&input), "--dashboard", "0"]);
    let _run = spawn(cmd.stdout(Stdio::null()));
    const SAYS: &str = "dashboard on http://";
    wait_until(LONG, "the dashboard's address", || {
        d.stderr().contains(SAYS)
    })
    .await;
    let err = d.stderr();
    let at = err.find(SAYS).unwrap() + SAYS.len();
    let addr = err[at..].split('/').next().unwrap().to_string();
    let mut top = spawn(
        pcluster_cmd()
            .args(["top", "--run", &addr])
            .stdin(Stdio::null())
            .stdout(Stdio::piped()),
    );
    let stdout = BufReader::new(top.stdout.take().unwrap());
    // Frames come once a second; the first with the run's line is enough.
    let read = tokio::task::spawn_blocking(move || {
        stdout
            .lines()
            .map_while(Result::ok)
            .find(|l| l.starts_with("run: done") && l.contains(" / 200"))
    });
    let line = tokio::time::timeout(LONG, read)
        .await
        .expect("a frame within the deadline")
        .unwrap()
        .expect("a line with the run's progress, the input's count as its total");
    assert!(line.contains("inputs/s"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stderr_names_the_first_20_failures_and_sums_the_rest() {
    let d = Dir::new("failure-lines");
    let chain = d.chain("w1", &[("w1_drop_odd", "")], "");
    let lines: String = (1..=60).map(|i| format!("x{i}\n")).collect();
    let input = d.write("in.txt", lines.as_bytes());
    let failed = d.path("failed.txt");
    let args = ["-i", arg(&input), "--failed", arg(&failed)];
    let mut run = spawn(d.run(&chain, Some(2), &args).stdout(Stdio::null()));
    assert_eq!(exit_code(&mut run, LONG).await, Some(2), "{}", d.stderr());
    let err = d.stderr();
    let named = err
        .lines()
        .filter(|l| l.starts_with("pcluster run: line "))
        .count();
    assert_eq!(named, 20, "{err}");
    let summed: u64 = err
        .lines()
        .filter_map(|l| l.strip_prefix("pcluster run: "))
        .filter_map(|l| l.split_once(" more failures"))
        .map(|(n, _)| n.parse::<u64>().unwrap())
        .sum();
    assert_eq!(summed, 40, "{err}");
    assert_eq!(d.lines("failed.txt").len(), 60, "--failed has every one");
    // Lines are numbered from 1, as in the input: `xN` is on line N.
    for l in err
        .lines()
        .filter_map(|l| l.strip_prefix("pcluster run: line "))
    {
        let (line, rest) = l.split_once(':').unwrap();
        assert!(rest.contains(&format!("(item: \"x{line}\")")), "{l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_node_ever_found_the_error_names_what_was_tried() {
    let root = root::Root::new(root::RootOptions::default());
    let e = root.setup(w1(), |_, _| {}).await.unwrap_err().to_string();
    assert!(e.contains("no node to run on: none was added"), "{e}");
    // Nothing listens there.
    let (_held, addr) = refusing_addr("127.0.0.1");
    let port = addr.port();
    assert!(root.add_node(addr).await.is_err());
    let found = root
        .search_nodes("127.0.0.4/31".parse().unwrap(), port)
        .await;
    assert!(found.unwrap().free.is_empty());
    let e = root.setup(w1(), |_, _| {}).await.unwrap_err().to_string();
    assert!(
        e.contains(&format!("tried {addr}: ")) && e.contains("a scan of 127.0.0.4/31 port"),
        "{e}"
    );
}
