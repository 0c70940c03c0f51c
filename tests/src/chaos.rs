//! A chaos soak: nodes in network namespaces ([`Hosts`]), W1 runs of `pcluster run
//! --joblog` back to back, and meanwhile, every few seconds, one fault at random on a node —
//! SIGKILL and a restart, SIGSTOP for 15 s, SIGTERM and a restart, its link down for
//! 5–20 s, its bandwidth cut to 1 Mbit/s for 5–20 s — overlapping one another. A run that
//! gives up (no node left for `--no-node-timeout`) is resumed with `--resume` until it
//! completes; every run's outputs must then be W1's, exactly. [`soak`] returns what it did.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::{Child, Error, Hosts, Pcluster, W1_TASKS, W1Check, chain_file_text};

/// How long a SIGSTOPped node stays stopped.
const STOP_FOR: Duration = Duration::from_secs(15);
/// Shortest and longest link fault.
const LINK_MIN_S: u64 = 5;
const LINK_MAX_S: u64 = 20;
/// A node's link while its bandwidth is cut.
const SLOW_KBIT: u32 = 1000;
/// How long a node may take to exit after SIGTERM (it drains first) or SIGKILL.
const EXIT_DEADLINE: Duration = Duration::from_secs(60);
/// How long one attempt of a run may take: a run never hangs, so this is a failure.
const RUN_DEADLINE: Duration = Duration::from_secs(600);
/// Attempts of one run (the first and its resumes) before the soak fails.
const ATTEMPTS: u32 = 30;
/// Times a run's poison inputs are fed again before the soak fails.
const REFEEDS: u32 = 10;

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL, then the node is started again.
    Kill,
    /// SIGSTOP for 15 s, then SIGCONT.
    Stop,
    /// SIGTERM (the node drains and exits), then the node is started again.
    Term,
    /// The link goes down silently for 5–20 s.
    LinkDown,
    /// The link is capped at 1 Mbit/s each way for 5–20 s.
    Slow,
}

impl Fault {
    /// Every kind.
    pub const ALL: [Fault; 5] = [
        Fault::Kill,
        Fault::Stop,
        Fault::Term,
        Fault::LinkDown,
        Fault::Slow,
    ];

    /// Whether it acts on the node's process (else on its link).
    fn on_process(self) -> bool {
        matches!(self, Fault::Kill | Fault::Stop | Fault::Term)
    }
}

/// What a soak does.
#[derive(Clone, Debug)]
pub struct ChaosOptions {
    /// Workers per node.
    pub workers: u32,
    /// How long faults are injected and runs started; the last run, and the faults in
    /// progress, end afterwards.
    pub duration: Duration,
    /// W1 inputs per run.
    pub items: u64,
    /// The mean pause between two faults (each pause is drawn between half and 1.5 times it).
    pub every: Duration,
    /// The seed of the random choices (`None`: from the clock); the report gives it.
    pub seed: Option<u64>,
}

/// What a soak did.
#[derive(Clone, Debug, Default)]
pub struct ChaosReport {
    /// The seed of its random choices.
    pub seed: u64,
    /// Faults injected, by kind.
    pub faults: BTreeMap<String, u32>,
    /// Runs completed (each exact).
    pub runs: u32,
    /// Inputs of all runs.
    pub inputs: u64,
    /// Times a run gave up and was resumed.
    pub resumed: u32,
    /// Inputs that failed as poison (their node lost three times while holding them) and
    /// were fed again.
    pub poisoned: u64,
    /// Inputs sent again after their node was lost, summed over the runs' summaries.
    pub redispatched: u64,
    /// Wall time.
    pub wall: Duration,
}

impl ChaosReport {
    /// Faults injected in all.
    #[must_use]
    pub fn total_faults(&self) -> u32 {
        self.faults.values().sum()
    }
}

impl std::fmt::Display for ChaosReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "chaos soak (seed {}): {} faults {:?}; {} W1 runs of {} inputs in all, exact; {} \
             resumed; {} inputs failed as poison and fed again; {} inputs re-dispatched; \
             {:.1} s",
            self.seed,
            self.total_faults(),
            self.faults,
            self.runs,
            self.inputs,
            self.resumed,
            self.poisoned,
            self.redispatched,
            self.wall.as_secs_f64()
        )
    }
}

/// A small xorshift generator: the soak's choices, reproducible from the seed.
#[derive(Debug)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    /// A number in `lo..=hi`.
    fn between(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

/// The cluster under fault: its hosts, its node processes, and which nodes a fault holds.
struct Cluster {
    pcluster: Pcluster,
    log_port: u16,
    key: PathBuf,
    workers: u32,
    /// Per node: its process, `None` while a process fault holds it.
    nodes: Mutex<Vec<Option<Child>>>,
    /// Per node: whether a link fault holds its link.
    links: Mutex<Vec<bool>>,
    /// The first error of a fault (a node that would not restart), ending the soak.
    failed: Mutex<Option<Error>>,
    /// Last, so that the node processes are gone before their namespaces are.
    hosts: Hosts,
}

impl Cluster {
    /// Starts node `i` (again), with the cluster key.
    async fn start_node(&self, i: usize) -> Result<Child, Error> {
        let key = self.key.to_string_lossy().into_owned();
        let args = ["--token-file", key.as_str()];
        self.hosts
            .start_node(i, &self.pcluster, self.log_port, self.workers, &args)
            .await
    }

    /// Takes node `i`'s process for a process fault, unless another holds it.
    fn take(&self, i: usize) -> Option<Child> {
        self.nodes.lock().expect("not poisoned")[i].take()
    }

    /// Takes node `i`'s link for a link fault, unless another holds it.
    fn take_link(&self, i: usize) -> bool {
        let mut links = self.links.lock().expect("not poisoned");
        !std::mem::replace(&mut links[i], true)
    }

    /// `pcluster run CHAIN` on every node, with the key and the log server, over `input`
    /// into `out` with `joblog`; stdin and stdout closed.
    fn run_command(&self, chain: &Path, input: &Path, out: &Path, joblog: &Path) -> Command {
        let nodes: Vec<String> = (0..self.hosts.len())
            .map(|i| self.hosts.node_addr(i).to_string())
            .collect();
        let mut cmd = self.pcluster.command();
        cmd.arg("run")
            .arg(chain)
            .args(["--nodes", &nodes.join(","), "-q"])
            .arg("--token-file")
            .arg(&self.key)
            .args(["--log-host", &self.hosts.gateway().to_string()])
            .args(["--log-port", &self.log_port.to_string()])
            .arg("--input")
            .arg(input)
            .arg("--output")
            .arg(out)
            .arg("--joblog")
            .arg(joblog)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        cmd
    }

    fn fail(&self, e: Error) {
        self.failed.lock().expect("not poisoned").get_or_insert(e);
    }
}

/// Runs the soak on `hosts` (one node per host): starts a log server and the nodes, runs W1
/// with `--joblog` over and over while faults are injected for `opts.duration`, lets the
/// last run finish with every node healthy again, and checks every run exactly. `dir` holds
/// the key, inputs, outputs, joblogs and logs.
///
/// # Errors
/// A run that fails otherwise than by giving up, outputs that are not exact, a node that
/// cannot be restarted, or a server that cannot be started.
pub async fn soak(
    pcluster: &Pcluster,
    hosts: Hosts,
    dir: &Path,
    opts: &ChaosOptions,
) -> Result<ChaosReport, Error> {
    let started = Instant::now();
    let seed = opts.seed.unwrap_or_else(|| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
        t.map_or(1, |d| d.as_nanos() as u64)
    }) | 1;
    let key = dir.join("cluster.key");
    new_key(pcluster, &key)?;
    let key_arg = key.to_string_lossy().into_owned();
    let (log, log_port) = hosts
        .start_log(
            pcluster,
            &dir.join("cluster.log"),
            &["--token-file", &key_arg],
        )
        .await?;
    let n = hosts.len();
    let cluster = Arc::new(Cluster {
        pcluster: pcluster.clone(),
        log_port,
        key,
        workers: opts.workers,
        nodes: Mutex::new(Vec::new()),
        links: Mutex::new(vec![false; n]),
        failed: Mutex::new(None),
        hosts,
    });
    for i in 0..n {
        let node = cluster.start_node(i).await?;
        cluster.nodes.lock().expect("not poisoned").push(Some(node));
    }
    let stop = Arc::new(tokio::sync::Notify::new());
    let injector = tokio::spawn(inject(cluster.clone(), opts.clone(), seed, stop.clone()));
    let mut report = ChaosReport {
        seed,
        ..ChaosReport::default()
    };
    let runs = run_until(&cluster, dir, opts, &mut report).await;
    // Faults end with the runs, also when a run failed.
    stop.notify_one();
    let faults = injector.await.map_err(|e| Error::Chaos(e.to_string()))?;
    runs?;
    if let Some(e) = cluster.failed.lock().expect("not poisoned").take() {
        return Err(e);
    }
    report.faults = faults;
    report.wall = started.elapsed();
    drop(log);
    Ok(report)
}

/// Runs W1 back to back, starting runs until `opts.duration` has passed.
async fn run_until(
    cluster: &Cluster,
    dir: &Path,
    opts: &ChaosOptions,
    report: &mut ChaosReport,
) -> Result<(), Error> {
    let module = dir.join("tasks.wasm");
    let wasm = crate::tasks_example_wasm()?;
    std::fs::write(&module, wasm).map_err(Error::io("cannot write", &module))?;
    let chain = dir.join("w1.toml");
    let text = chain_file_text("w1", &module, &W1_TASKS);
    std::fs::write(&chain, text).map_err(Error::io("cannot write", &chain))?;
    let input = dir.join("in.txt");
    crate::write_w1_input(&input, opts.items)?;
    let end = Instant::now() + opts.duration;
    while Instant::now() < end {
        one_run(cluster, dir, &chain, &input, opts.items, report).await?;
        if cluster.failed.lock().expect("not poisoned").is_some() {
            return Ok(());
        }
    }
    Ok(())
}

/// One W1 run over `input` to its end, resumed while it gives up. Inputs that failed as
/// poison (their batch was on three nodes that were lost) are fed again, as a user would
/// feed `--failed`, until none fails; then all outputs together must be W1's, exactly.
async fn one_run(
    cluster: &Cluster,
    dir: &Path,
    chain: &Path,
    input: &Path,
    items: u64,
    report: &mut ChaosReport,
) -> Result<(), Error> {
    let mut outs = Vec::new();
    let mut input = input.to_path_buf();
    for round in 0..REFEEDS {
        let out = dir.join(format!("out-{round}.txt"));
        let failed = run_resumed(cluster, dir, chain, &input, &out, report).await?;
        outs.push(out);
        let refeed = dir.join(format!("refeed-{round}.txt"));
        let poisoned = concat(&failed, &refeed)?;
        if poisoned == 0 {
            check_w1(&outs, items)?;
            report.runs += 1;
            report.inputs += items;
            return Ok(());
        }
        report.poisoned += poisoned;
        input = refeed;
    }
    Err(Error::Chaos(format!(
        "inputs failed as poison {REFEEDS} times over; see {}",
        dir.display()
    )))
}

/// `pcluster run` over `input` into `out` with a fresh joblog, resumed (with `--resume`)
/// while it gives up; the `--failed` files of its attempts. Any failure but a poison item
/// fails the soak.
async fn run_resumed(
    cluster: &Cluster,
    dir: &Path,
    chain: &Path,
    input: &Path,
    out: &Path,
    report: &mut ChaosReport,
) -> Result<Vec<PathBuf>, Error> {
    let joblog = dir.join("joblog.txt");
    let _ = std::fs::remove_file(out);
    let _ = std::fs::remove_file(&joblog);
    let mut failed = Vec::new();
    for attempt in 0..ATTEMPTS {
        let stem = out.file_stem().map(|s| s.to_string_lossy().into_owned());
        let name = format!("run-{}-{}-{attempt}", report.runs, stem.unwrap_or_default());
        let err_file = dir.join(format!("{name}.err"));
        failed.push(dir.join(format!("{name}.failed")));
        let stderr =
            std::fs::File::create(&err_file).map_err(Error::io("cannot create", &err_file))?;
        let mut cmd = cluster.run_command(chain, input, out, &joblog);
        cmd.arg("--failed")
            .arg(failed.last().expect("pushed above"))
            .stderr(stderr);
        // A run that gave up before it wrote its joblog's header starts afresh.
        if joblog.exists() {
            cmd.arg("--resume");
        }
        let mut run = Child::spawn(&mut cmd)?;
        let status = run.wait_exit(RUN_DEADLINE).await?;
        let said = std::fs::read_to_string(&err_file).unwrap_or_default();
        report.redispatched += redispatched(&said);
        let named = said.lines().filter(|l| l.contains(": failed on node "));
        if let Some(other) = named.clone().find(|l| !l.contains("poison item")) {
            return Err(Error::Chaos(format!("an input failed: {other}")));
        }
        match status.code() {
            // Done; with exit 2, some inputs failed (as poison, checked above).
            Some(0 | 2) => return Ok(failed),
            // No node left for --no-node-timeout: the run gave up; resume it.
            Some(1) => report.resumed += 1,
            _ => return Err(Error::Chaos(format!("run exited {status}: {said}"))),
        }
    }
    Err(Error::Chaos(format!(
        "a run gave up {ATTEMPTS} times; stderr in {}",
        dir.display()
    )))
}

/// Concatenates the files of `parts` (missing ones are empty) into `to`; the lines written.
fn concat(parts: &[PathBuf], to: &Path) -> Result<u64, Error> {
    let mut all = Vec::new();
    for p in parts {
        all.extend(std::fs::read(p).unwrap_or_default());
    }
    std::fs::write(to, &all).map_err(Error::io("cannot write", to))?;
    Ok(all.iter().filter(|&&b| b == b'\n').count() as u64)
}

/// The re-dispatched inputs of a run's summary line (`…, N re-dispatched, …`).
fn redispatched(stderr: &str) -> u64 {
    stderr
        .lines()
        .filter_map(|l| {
            l.split(" re-dispatched")
                .next()?
                .rsplit(' ')
                .next()?
                .parse::<u64>()
                .ok()
        })
        .sum()
}

/// Checks W1's outputs in the files `outs` together for `items` inputs exactly.
fn check_w1(outs: &[PathBuf], items: u64) -> Result<(), Error> {
    let mut check = W1Check::new(items);
    for out in outs {
        let text = std::fs::read(out).map_err(Error::io("cannot read", out))?;
        for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            check.add(line);
        }
    }
    check
        .verify()
        .map_err(|e| Error::Chaos(format!("outputs not exact: {e}")))
}

/// `pcluster key new path`.
fn new_key(pcluster: &Pcluster, path: &Path) -> Result<(), Error> {
    let out = pcluster
        .command()
        .args(["key", "new"])
        .arg(path)
        .output()
        .map_err(|source| Error::Spawn {
            command: "pcluster key new".into(),
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Error::Chaos(format!(
            "pcluster key new: {}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// Injects faults for `opts.duration` or until `stop`: after a pause around `opts.every`, the next kind of a
/// shuffled round of all kinds on a node no fault of that sort holds, each fault in a task
/// of its own so that they overlap. Waits for the faults in progress to end (every node is
/// then up, running and linked); returns how many of each kind were injected.
async fn inject(
    cluster: Arc<Cluster>,
    opts: ChaosOptions,
    seed: u64,
    stop: Arc<tokio::sync::Notify>,
) -> BTreeMap<String, u32> {
    let end = Instant::now() + opts.duration;
    let mut rng = Rng(seed);
    let mut counts = BTreeMap::new();
    let mut faults = JoinSet::new();
    let mut round: Vec<Fault> = Vec::new();
    let every = opts.every.as_millis() as u64;
    loop {
        let pause = Duration::from_millis(rng.between(every / 2, every * 3 / 2));
        // The pace of the faults is the scenario, not a wait for a condition.
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.notified() => break,
        }
        if Instant::now() >= end {
            break;
        }
        if round.is_empty() {
            round = Fault::ALL.to_vec();
            for k in (1..round.len()).rev() {
                round.swap(k, rng.between(0, k as u64) as usize);
            }
        }
        let kind = round.pop().expect("refilled above");
        let start = rng.between(0, cluster.hosts.len() as u64 - 1) as usize;
        let held = (0..cluster.hosts.len())
            .map(|k| (start + k) % cluster.hosts.len())
            .find_map(|i| claim(&cluster, kind, i).map(|c| (i, c)));
        let Some((i, child)) = held else {
            // Every node is under a fault of this sort: the kind waits for the next round.
            continue;
        };
        *counts.entry(format!("{kind:?}")).or_insert(0) += 1;
        let hold = Duration::from_secs(rng.between(LINK_MIN_S, LINK_MAX_S));
        let c = cluster.clone();
        faults.spawn(async move {
            if let Err(e) = apply(&c, kind, i, child, hold).await {
                c.fail(e);
            }
        });
    }
    while faults.join_next().await.is_some() {}
    counts
}

/// Claims node `i` for a fault of `kind`: its process, or its link. `None` when another
/// fault holds it; `Some(None)` for a link fault.
fn claim(cluster: &Cluster, kind: Fault, i: usize) -> Option<Option<Child>> {
    if kind.on_process() {
        cluster.take(i).map(Some)
    } else {
        cluster.take_link(i).then_some(None)
    }
}

/// Applies fault `kind` to node `i` (whose process is `child` for a process fault), holds it
/// as long as it lasts, and undoes it: the node ends up running and linked.
async fn apply(
    cluster: &Cluster,
    kind: Fault,
    i: usize,
    child: Option<Child>,
    hold: Duration,
) -> Result<(), Error> {
    let hosts = &cluster.hosts;
    match (kind, child) {
        (Fault::LinkDown | Fault::Slow, _) => {
            if kind == Fault::LinkDown {
                hosts.cut(i)?;
            } else {
                hosts.shape(i, SLOW_KBIT)?;
            }
            // How long the link stays down or slow: the fault itself.
            tokio::time::sleep(hold).await;
            let undone = if kind == Fault::LinkDown {
                hosts.restore(i)
            } else {
                hosts.unshape(i)
            };
            cluster.links.lock().expect("not poisoned")[i] = false;
            undone
        }
        (_, None) => unreachable!("a process fault holds the process"),
        (Fault::Stop, Some(child)) => {
            child.signal("-STOP")?;
            // How long the node stays stopped: the fault itself.
            tokio::time::sleep(STOP_FOR).await;
            let cont = child.signal("-CONT");
            cluster.nodes.lock().expect("not poisoned")[i] = Some(child);
            cont
        }
        (Fault::Kill | Fault::Term, Some(mut child)) => {
            child.signal(if kind == Fault::Kill {
                "-KILL"
            } else {
                "-TERM"
            })?;
            if child.wait_exit(EXIT_DEADLINE).await.is_err() {
                child.signal("-KILL")?;
                child.wait_exit(EXIT_DEADLINE).await?;
            }
            let node = cluster.start_node(i).await?;
            cluster.nodes.lock().expect("not poisoned")[i] = Some(node);
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_gives_its_redispatched_inputs() {
        let line = "pcluster run: 10 inputs done of 10 read, 10 outputs, 0 failed (0 refused), \
                    0 retried, 37 re-dispatched, 0.06 s (168 inputs/s), peak RSS 21.1 MiB";
        assert_eq!(redispatched(line), 37);
        assert_eq!(redispatched("warning: nothing\n"), 0);
    }

    #[test]
    fn the_rng_stays_in_its_bounds() {
        let mut rng = Rng(12345);
        for _ in 0..1000 {
            let x = rng.between(5, 20);
            assert!((5..=20).contains(&x));
        }
    }
}
