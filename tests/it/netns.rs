//! Hosts of their own (issue #24): nodes in Linux network namespaces on a bridge, each with
//! its own interface and address in 198.18.0.0/15, reached by `pcluster` from the default
//! namespace through real routes. A scan of their network finds them all, a run over them is
//! exact, a link cut without a reset is detected and the node comes back into the run when
//! the link returns, and a node behind a 1 Mbit/s link completes its work.
//!
//! These need root (CI runs as root): elsewhere they say `skipped: …` and pass; with `CI=true`
//! a missing capability fails them.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kit::Hosts;

use crate::common::*;

const LONG: Duration = Duration::from_secs(300);

/// The harness of `n` hosts, or `None` (said on stderr) where namespaces cannot be made
/// outside CI; in CI, the reason fails the test.
fn hosts(n: usize) -> Option<Hosts> {
    match Hosts::new(n) {
        Ok(h) => Some(h),
        Err(kit::Error::NoNamespaces(why)) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI must run the namespace tests: {why}"
            );
            eprintln!("skipped: network namespaces are not available: {why}");
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// A log server on the bridge and a node (with `workers` workers) in each namespace, all
/// with one cluster key: a server on a non-loopback address wants a token.
// The processes are held for their guards, which kill them when the test ends.
#[allow(dead_code)]
pub struct Net {
    /// Per host; `None` while a test has it stopped for good.
    pub nodes: Vec<Option<Child>>,
    pub log: Child,
    pub log_port: u16,
    pub key: PathBuf,
    /// After the processes, so that they are gone before their namespaces are.
    pub hosts: Hosts,
    /// Last, so that the processes are gone before their directory is.
    pub dir: kit::TempDir,
}

impl Net {
    /// `n` hosts with a node each, or `None` when namespaces cannot be used (see [`hosts`]).
    pub async fn start(name: &str, n: usize, workers: u32) -> Option<Net> {
        let hosts = hosts(n)?;
        let dir = temp_dir(name);
        let key = new_key(&dir);
        let key_arg = key.to_str().unwrap();
        let (log, log_port) = hosts
            .start_log(
                &pcluster(),
                &dir.join("cluster.log"),
                &["--token-file", key_arg],
            )
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut nodes = Vec::new();
        for i in 0..n {
            let node = hosts
                .start_node(
                    i,
                    &pcluster(),
                    log_port,
                    workers,
                    &["--token-file", key_arg],
                )
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            nodes.push(Some(node));
        }
        Some(Net {
            nodes,
            log,
            log_port,
            key,
            hosts,
            dir,
        })
    }

    /// The nodes' addresses.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        (0..self.hosts.len())
            .map(|i| self.hosts.node_addr(i))
            .collect()
    }

    /// `pcluster SUB` with the cluster key.
    pub fn pcluster(&self, sub: &str) -> Command {
        let mut cmd = pcluster_cmd();
        cmd.arg(sub)
            .arg("--token-file")
            .arg(&self.key)
            .stdin(Stdio::null());
        cmd
    }

    /// `pcluster run CHAIN` with the key, logging to the cluster's log server.
    pub fn run(&self, chain: &Path) -> Command {
        let mut cmd = self.pcluster("run");
        cmd.arg(chain)
            .args(["--log-host", &self.hosts.gateway().to_string()])
            .args(["--log-port", &self.log_port.to_string()]);
        cmd
    }

    /// `pcluster status ADDR --json`: the node's document (`nodes[0]` of it), if it answers.
    pub fn status(&self, addr: SocketAddr) -> Option<serde_json::Value> {
        let out = self
            .pcluster("status")
            .arg(addr.to_string())
            .arg("--json")
            .output()
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        Some(v["nodes"][0].clone())
    }
}

/// Items the node's first task was called with, as its status says.
fn items_in(node: &serde_json::Value) -> u64 {
    node["tasks"][0]["items_in"].as_u64().unwrap_or(0)
}

/// Runs `cmd` to its end off the test's runtime; its output.
async fn output_of(mut cmd: Command) -> std::process::Output {
    let run = tokio::task::spawn_blocking(move || cmd.output().expect("pcluster starts"));
    tokio::time::timeout(LONG, run)
        .await
        .expect("pcluster ends")
        .unwrap()
}

/// The lines a child writes to a pipe, each with when it was read: how a test times what
/// `pcluster run` says (a node lost, a node back) against what it did to the network.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<(Instant, String)>>>);

impl Lines {
    /// Reads `pipe` on a thread of its own until it closes.
    pub fn collect(pipe: impl std::io::Read + Send + 'static) -> Lines {
        let lines = Lines::default();
        let sink = lines.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push((Instant::now(), line));
            }
        });
        lines
    }

    /// When the first line after `since` holding every one of `words` was read.
    pub fn find(&self, since: Instant, words: &[&str]) -> Option<Instant> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|(t, l)| *t >= since && words.iter().all(|w| l.contains(w)))
            .map(|(t, _)| *t)
    }

    /// Everything read so far.
    pub fn text(&self) -> String {
        let lines = self.0.lock().unwrap();
        lines
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// `pcluster scan` of the hosts' /24 lists exactly their three nodes, and `pcluster run
/// --scan` over that network sets all three up and gives W1's outputs exactly, each node
/// having run items of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_of_the_hosts_network_finds_every_node_and_w1_over_them_is_exact() {
    let Some(net) = Net::start("netns-scan", 3, 1).await else {
        return;
    };
    let network = net.hosts.network();
    let port = kit::NODE_PORT.to_string();
    let scan = net
        .pcluster("scan")
        .args([network.as_str(), "--port", &port, "--json"])
        .output()
        .unwrap();
    assert!(scan.status.success(), "{scan:?}");
    let doc: serde_json::Value = serde_json::from_slice(&scan.stdout).expect("scan: JSON");
    let mut found: Vec<String> = doc["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| n["addr"].as_str().unwrap().to_string())
        .collect();
    found.sort();
    let mut expected: Vec<String> = net.addrs().iter().map(ToString::to_string).collect();
    expected.sort();
    assert_eq!(found, expected, "scan of {network}");

    let n = 1_000_000;
    let input = net.dir.join("in.txt");
    kit::write_w1_input(&input, n).unwrap();
    let mut cmd = net.run(&repo().join("examples/w1.toml"));
    cmd.args(["--scan", &network, "--port", &port, "-q"])
        .arg("--input")
        .arg(&input);
    let started = Instant::now();
    let run = output_of(cmd).await;
    let errors = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{}: {errors}", run.status);
    assert!(errors.contains(": 3 nodes added"), "{errors}");
    assert_w1(&run.stdout, n);
    // Each node kept its counters of the run (a free node shows its last chain's).
    for addr in net.addrs() {
        let status = net.status(addr).expect("the node answers its status");
        assert!(
            items_in(&status) > 0,
            "{addr} ran none of the items: {status}"
        );
    }
    eprintln!(
        "scan of {network} and W1 over {n} items on 3 namespaced nodes: {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// A node behind a link capped at 1 Mbit/s each way, with its root on the other side,
/// completes a small W1 run exactly; the run takes at least as long as the link needs for the
/// input alone, which shows the cap was in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_behind_a_1_mbit_link_completes_a_run_exactly() {
    let Some(net) = Net::start("netns-shaped", 1, 1).await else {
        return;
    };
    net.hosts.shape(0, 1000).unwrap();
    let n = 20_000;
    let input = net.dir.join("in.txt");
    kit::write_w1_input(&input, n).unwrap();
    let input_bits = std::fs::metadata(&input).unwrap().len() * 8;
    let mut cmd = net.run(&repo().join("examples/w1.toml"));
    cmd.arg("--nodes")
        .arg(net.addrs()[0].to_string())
        .arg("-q")
        .arg("--input")
        .arg(&input);
    let started = Instant::now();
    let run = output_of(cmd).await;
    let took = started.elapsed();
    let errors = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{}: {errors}", run.status);
    assert_w1(&run.stdout, n);
    assert!(!errors.contains("node lost"), "{errors}");
    let floor = Duration::from_secs_f64(input_bits as f64 / 1e6);
    assert!(
        took >= floor,
        "{took:?}: faster than 1 Mbit/s carries the input ({floor:?}): the cap did not hold"
    );
    eprintln!(
        "W1 over {n} items through 1 Mbit/s: {:.1} s",
        took.as_secs_f64()
    );
}

/// Iterations of `w2_cpu` for items of about `ms` milliseconds here, measured natively (the
/// wasm of the same loop runs at about the same speed).
fn w2_iterations_for(ms: u64) -> u64 {
    const PROBE: u64 = 20_000_000;
    let started = Instant::now();
    std::hint::black_box(kit::native_w2(std::hint::black_box(1), PROBE));
    let ns_per = started.elapsed().as_nanos().max(1) as f64 / PROBE as f64;
    ((ms as f64 * 1e6) / ns_per) as u64
}

/// A chain file of one `w2_cpu` task with `iterations`, over the example module.
fn w2_chain(dir: &Path, iterations: u64) -> PathBuf {
    let module = dir.join("tasks.wasm");
    std::fs::write(&module, tasks_module()).unwrap();
    let path = dir.join("w2.toml");
    let text = format!(
        "name = \"w2\"\nversion = \"1\"\nmodule = \"tasks.wasm\"\n\
         [[task]]\nfunction = \"w2_cpu\"\nargs = \"{iterations}\"\n"
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// Seed of input line `line` (1-based): few distinct seeds, so the expected outputs cost a
/// few native calls, while `--tag` still names every input.
fn seed(line: u64) -> u64 {
    line % 16
}

/// Checks `--tag`ged W2 outputs: every input line 1..=n exactly once, with its seed's value.
#[track_caller]
fn assert_w2_tagged(text: &str, n: u64, iterations: u64) {
    let values: Vec<String> = (0..16)
        .map(|s| kit::native_w2(s, iterations).to_string())
        .collect();
    let mut seen = vec![0u8; usize::try_from(n).unwrap() + 1];
    let mut wrong = Vec::new();
    for l in text.lines() {
        let (line, value) = l.split_once('\t').expect("a tagged output");
        let line: u64 = line.parse().expect("a line number");
        let slot = seen.get_mut(usize::try_from(line).unwrap());
        match slot {
            Some(c) if line > 0 && value == values[usize::try_from(seed(line)).unwrap()] => {
                *c += 1;
            }
            _ => wrong.push(l.to_string()),
        }
    }
    let missing: Vec<usize> = (1..seen.len()).filter(|&i| seen[i] == 0).collect();
    let doubled: Vec<usize> = (1..seen.len()).filter(|&i| seen[i] > 1).collect();
    assert!(
        missing.is_empty() && doubled.is_empty() && wrong.is_empty(),
        "outputs of {n} inputs: {} missing (first {:?}), {} doubled (first {:?}), {} wrong \
         (first {:?})",
        missing.len(),
        missing.first(),
        doubled.len(),
        doubled.first(),
        wrong.len(),
        wrong.first()
    );
}

/// Panics with the run's stderr if it has exited.
fn still_running(run: &mut Child, errors: &Lines, waiting_for: &str) {
    if let Ok(Some(status)) = run.try_wait() {
        panic!(
            "the run ended ({status}) before {waiting_for}:\n{}",
            errors.text()
        );
    }
}

/// Waits until the run has written `k` lines to `out`.
async fn wait_outputs(run: &mut Child, out: &Path, k: u64, errors: &Lines) {
    let what = format!("{k} outputs in {}", out.display());
    wait_until(LONG, &what, || {
        still_running(run, errors, &what);
        let text = std::fs::read_to_string(out).unwrap_or_default();
        text.lines().count() as u64 >= k
    })
    .await;
}

/// Waits up to `deadline` for a line of the run's stderr after `since` holding `words`;
/// when it was read.
async fn wait_line(
    run: &mut Child,
    errors: &Lines,
    since: Instant,
    words: &[&str],
    deadline: Duration,
) -> Instant {
    let what = format!("a line with {words:?} on the run's stderr");
    let mut found = None;
    let waited = kit::poll(deadline, &what, || {
        still_running(run, errors, &what);
        found = errors.find(since, words);
        std::future::ready(found.is_some())
    })
    .await;
    if let Err(e) = waited {
        panic!("{e}:\n{}", errors.text());
    }
    found.expect("found once the wait is over")
}

/// Waits until node `addr` runs items of the run again, as `pcluster status` shows it: busy,
/// and its first task's count of items growing, while the run still goes on.
async fn takes_items_again(net: &Net, run: &mut Child, errors: &Lines, addr: SocketAddr) {
    let what = format!("{addr} busy with items");
    let mut first = 0;
    wait_until(LONG, &what, || {
        still_running(run, errors, &what);
        let s = net.status(addr);
        first = s.as_ref().map_or(0, items_in);
        s.is_some_and(|s| s["state"] == "busy") && first > 0
    })
    .await;
    let what = format!("{addr}'s items to grow past {first}");
    wait_until(LONG, &what, || {
        still_running(run, errors, &what);
        net.status(addr).is_some_and(|s| items_in(&s) > first)
    })
    .await;
}

/// The silent partition of issue #24: two nodes, a run of at least 40 s of W2 items, one
/// node's link cut without a reset at 30 % of the run. The root declares the node lost
/// within 12 s and re-dispatches its items; the link returns 20 s after the cut, the root
/// takes the node back, it runs items again before the run ends, and every input's output
/// is there exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silently_cut_node_is_lost_within_12_s_and_rejoins_when_its_link_returns() {
    const PARTITION: Duration = Duration::from_secs(20);
    let Some(net) = Net::start("netns-partition", 2, 1).await else {
        return;
    };
    // Items of about 50 ms, so 1800 of them keep two one-worker nodes busy for about 45 s
    // (more on a loaded machine).
    let iterations = w2_iterations_for(50);
    let n: u64 = 1800;
    let chain = w2_chain(&net.dir, iterations);
    let input = net.dir.join("in.txt");
    let text: String = (1..=n).map(|l| format!("{}\n", seed(l))).collect();
    std::fs::write(&input, text).unwrap();
    let out = net.dir.join("out.txt");
    let addrs = net.addrs();
    let nodes = format!("{},{}", addrs[0], addrs[1]);
    let mut cmd = net.run(&chain);
    cmd.args(["--nodes", &nodes, "--tag", "-q"])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let started = Instant::now();
    let mut run = spawn(&mut cmd);
    let errors = Lines::collect(run.stderr.take().unwrap());

    wait_outputs(&mut run, &out, n * 3 / 10, &errors).await;
    let cut = Instant::now();
    net.hosts.cut(1).unwrap();
    let node = addrs[1].to_string();
    let lost = wait_line(&mut run, &errors, cut, &["lost", &node], LONG).await;
    // The length of the partition is the scenario, not a wait for a condition.
    tokio::time::sleep_until((cut + PARTITION).into()).await;
    net.hosts.restore(1).unwrap();
    let back = wait_line(&mut run, &errors, cut, &[&node, "is back"], LONG).await;
    takes_items_again(&net, &mut run, &errors, addrs[1]).await;
    let again = Instant::now();

    let status = run.wait_exit(LONG).await.unwrap();
    let took = started.elapsed();
    assert!(status.success(), "{status}: {}", errors.text());
    assert_w2_tagged(&std::fs::read_to_string(&out).unwrap(), n, iterations);
    eprintln!(
        "partition: cut at {:.1} s, lost after {:.1} s, back {:.1} s after the restore, \
         running items {:.1} s after that; run {:.1} s",
        (cut - started).as_secs_f64(),
        (lost - cut).as_secs_f64(),
        (back - cut - PARTITION).as_secs_f64(),
        (again - back).as_secs_f64(),
        took.as_secs_f64()
    );
    assert!(
        lost - cut <= Duration::from_secs(12),
        "the cut node was declared lost {:?} after the cut:\n{}",
        lost - cut,
        errors.text()
    );
    assert!(took >= Duration::from_secs(40), "the run took {took:?}");
}

/// `ip netns list`, one name a line.
fn namespaces(h: &Hosts) -> Vec<String> {
    let out = h.ip_command().args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

/// A harness removes its namespaces when dropped, and a new harness removes what a process
/// that died left behind (named after its pid), not what a live one holds.
#[test]
fn a_harness_removes_its_namespaces_and_those_of_dead_processes() {
    let Some(live) = hosts(1) else {
        return;
    };
    let mut exited = Command::new("true").spawn().unwrap();
    exited.wait().unwrap();
    // Named as a harness of that process would name it.
    let stale = format!("pcn{:x}x0h0", exited.id());
    let made = live.ip_command().args(["netns", "add", &stale]).status();
    assert!(made.unwrap().success());
    let mine = live.namespace(0).to_string();
    let bridge = live.bridge().to_string();
    assert!(namespaces(&live).contains(&stale));

    let next = hosts(1).expect("namespaces worked a moment ago");
    let now = namespaces(&next);
    assert!(
        !now.contains(&stale),
        "the dead process's namespace is left: {now:?}"
    );
    assert!(
        now.contains(&mine),
        "a live harness's namespace was removed: {now:?}"
    );
    assert_ne!(
        live.network(),
        next.network(),
        "two harnesses share a subnet"
    );
    drop(live);
    let now = namespaces(&next);
    assert!(
        !now.contains(&mine),
        "a dropped harness's namespace is left: {now:?}"
    );
    // Its bridge, and every veth whose master it was, are gone too.
    let links = next.ip_command().args(["-o", "link", "show"]).output();
    let links = String::from_utf8_lossy(&links.unwrap().stdout).into_owned();
    assert!(!links.contains(&bridge), "left behind: {links}");
}

/// The chaos soak of issue #24 for three minutes: four nodes in namespaces, W1 runs with
/// `--joblog` back to back, and a fault every few seconds (SIGKILL and restart, SIGSTOP for
/// 15 s, SIGTERM and restart, link down or capped at 1 Mbit/s for 5–20 s), overlapping. At
/// least 20 faults of every kind; every run, resumed where it gave up, is exact.
/// `PCLUSTER_CHAOS_SEED` replays a soak's choices.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_minutes_of_overlapping_faults_leave_every_run_exact() {
    let Some(hosts) = hosts(4) else {
        return;
    };
    let dir = temp_dir("netns-chaos");
    let seed = std::env::var("PCLUSTER_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok());
    let opts = kit::ChaosOptions {
        workers: 1,
        duration: Duration::from_secs(180),
        items: 2_000_000,
        every: Duration::from_secs(4),
        seed,
    };
    let report = kit::soak(&pcluster(), hosts, &dir, &opts)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("{report}");
    assert!(report.total_faults() >= 20, "{report}");
    for kind in kit::Fault::ALL {
        let n = report
            .faults
            .get(&format!("{kind:?}"))
            .copied()
            .unwrap_or(0);
        assert!(n > 0, "no {kind:?} fault: {report}");
    }
    assert!(report.runs > 0, "{report}");
}
