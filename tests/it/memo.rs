//! `pcluster run --memo DIR` with real processes: a rerun computes only what changed (node
//! counters), its outputs equal a run without the store, a root killed (`kill -9`) while it
//! writes the store leaves it whole, and `pcluster memo stats|gc|clear` see and trim it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::common::*;

const LONG: Duration = Duration::from_secs(120);

/// W1's chain over the example module, in `dir`.
fn w1_chain(dir: &Path) -> PathBuf {
    std::fs::write(dir.join("tasks.wasm"), tasks_module()).unwrap();
    let mut text = String::from("name = \"w1\"\nversion = \"1\"\nmodule = \"tasks.wasm\"\n");
    for (f, generator) in [
        ("w1_identity", false),
        ("w1_duplicate", true),
        ("w1_drop_odd", false),
    ] {
        text += &format!("[[task]]\nfunction = \"{f}\"\ngenerator = {generator}\n");
    }
    let path = dir.join("w1.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn lines_of(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    assert!(text.is_empty() || text.ends_with('\n'), "a torn line");
    text.lines().map(str::to_string).collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort_unstable();
    v
}

/// `pcluster run CHAIN` on the cluster's nodes with `extra`.
fn run_cmd(c: &Cluster, chain: &Path, extra: &[&str]) -> Command {
    let mut cmd = pcluster_cmd();
    cmd.arg("run")
        .arg(chain)
        .args(["-n", &c.addrs().join(","), "--rescan", "0", "-q"])
        .args(["--log-host", "127.0.0.1"])
        .args(["--log-port", &c.log_port.to_string()])
        .args(extra)
        .stdin(Stdio::null());
    cmd
}

/// Runs to the end; panics with its stderr unless it exits 0.
fn run_ok(c: &Cluster, chain: &Path, extra: &[&str]) -> String {
    let out = run_cmd(c, chain, extra).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "pcluster run {extra:?}: {err}");
    err
}

/// Calls of the chain's first task on both nodes in the last run set up on them.
async fn first_task_calls(c: &Cluster) -> u64 {
    let options = root::RootOptions::default();
    let mut calls = 0;
    for a in c.addrs() {
        let s = root::node_status(a.parse().unwrap(), &options)
            .await
            .unwrap();
        calls += s.tasks.first().map_or(0, |t| t.items_in);
    }
    calls
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `pcluster memo stats DIR --json`: (entries, torn).
fn stats(store: &Path) -> (u64, u64) {
    let out = pcluster_cmd()
        .args(["memo", "stats", p(store), "--json"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("{e}: {text} {}", String::from_utf8_lossy(&out.stderr)));
    (v["entries"].as_u64().unwrap(), v["torn"].as_u64().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_with_the_store_computes_nothing_and_writes_the_same() {
    let c = Cluster::start("memo-rerun").await;
    let n = 100_000u64;
    let (chain, input, store) = (w1_chain(&c.dir), c.dir.join("in.txt"), c.dir.join("store"));
    write_lines(&input, &w1_inputs(n));
    let out = |k: &str| c.dir.join(format!("out-{k}.txt"));
    run_ok(
        &c,
        &chain,
        &["-i", p(&input), "-o", p(&out("1")), "--memo", p(&store)],
    );
    assert_eq!(
        first_task_calls(&c).await,
        n,
        "the first run computes every input"
    );
    assert_eq!(stats(&store), (n, 0));
    let err = run_ok(
        &c,
        &chain,
        &["-i", p(&input), "-o", p(&out("2")), "--memo", p(&store)],
    );
    assert_eq!(
        first_task_calls(&c).await,
        0,
        "the rerun computes nothing: {err}"
    );
    assert!(err.contains(&format!("{n} inputs found there")), "{err}");
    let expected = sorted(w1_expected(n));
    assert_same(&sorted(lines_of(&out("1"))), &expected);
    assert_same(&sorted(lines_of(&out("2"))), &expected);
    // In order and tagged, found outputs are written as computed ones are.
    let ordered = ["-k", "--tag", "-i", p(&input)];
    run_ok(
        &c,
        &chain,
        &[
            &ordered[..],
            &["-o", p(&out("k-memo")), "--memo", p(&store)],
        ]
        .concat(),
    );
    run_ok(
        &c,
        &chain,
        &[&ordered[..], &["-o", p(&out("k-plain"))]].concat(),
    );
    assert_same(&lines_of(&out("k-memo")), &lines_of(&out("k-plain")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_after_one_percent_changed_computes_only_those_lines() {
    let c = Cluster::start("memo-changed").await;
    let n = 100_000u64;
    let (chain, store) = (w1_chain(&c.dir), c.dir.join("store"));
    let (first, changed) = (c.dir.join("in.txt"), c.dir.join("changed.txt"));
    let mut lines = w1_inputs(n);
    write_lines(&first, &lines);
    run_ok(
        &c,
        &chain,
        &[
            "-i",
            p(&first),
            "-o",
            p(&c.dir.join("o1")),
            "--memo",
            p(&store),
        ],
    );
    // Every 100th line becomes an input never seen (even and odd ones alike).
    for (i, l) in lines.iter_mut().enumerate().filter(|(i, _)| i % 100 == 7) {
        *l = format!("item-{}", n + i as u64);
    }
    write_lines(&changed, &lines);
    let (with, without) = (c.dir.join("with.txt"), c.dir.join("without.txt"));
    run_ok(
        &c,
        &chain,
        &["-k", "-i", p(&changed), "-o", p(&with), "--memo", p(&store)],
    );
    assert_eq!(
        first_task_calls(&c).await,
        n / 100,
        "only the changed lines run"
    );
    run_ok(&c, &chain, &["-k", "-i", p(&changed), "-o", p(&without)]);
    assert_eq!(first_task_calls(&c).await, n);
    assert_same(&lines_of(&with), &lines_of(&without));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_killed_while_it_writes_the_store_leaves_it_whole() {
    let c = Cluster::start("memo-kill").await;
    let n = 2_000_000u64;
    let (chain, input) = (w1_chain(&c.dir), c.dir.join("in.txt"));
    write_lines(&input, &w1_inputs(n));
    let expected = sorted(w1_expected(n));
    // Rounds whose store held part of the entries when it was killed.
    let mut mid_write = 0;
    for (round, fraction) in [0.15, 0.45, 0.8].into_iter().enumerate() {
        // A store per round, so that each kill meets one being written.
        let store = c.dir.join(format!("store-{round}"));
        let out = c.dir.join(format!("killed-{round}.txt"));
        let args = ["-i", p(&input), "-o", p(&out), "--memo", p(&store)];
        let mut run = spawn(run_cmd(&c, &chain, &args).stderr(Stdio::null()));
        // Outputs are written as their inputs complete and stored alongside: kill it once
        // this share of them is in the output file.
        let want = (expected.len() as f64 * fraction) as u64 * 12;
        wait_until(LONG, &format!("{want} output bytes"), || {
            std::fs::metadata(&out).is_ok_and(|m| m.len() >= want)
        })
        .await;
        run.signal("-KILL").unwrap();
        let status = run.wait_exit(LONG).await.unwrap();
        assert!(!status.success(), "killed: {status}");
        let (entries, torn) = stats(&store);
        assert_eq!(torn, 0, "round {round}: no torn entry after kill -9");
        assert!(entries < n, "round {round}: killed before the end");
        mid_write += u32::from(entries > 0);
        let again = c.dir.join(format!("again-{round}.txt"));
        let err = run_ok(
            &c,
            &chain,
            &["-i", p(&input), "-o", p(&again), "--memo", p(&store)],
        );
        assert_same(&sorted(lines_of(&again)), &expected);
        let calls = first_task_calls(&c).await;
        assert_eq!(
            calls,
            n - entries,
            "round {round}: {entries} found, {calls} run: {err}"
        );
        assert_eq!(stats(&store), (n, 0));
    }
    assert!(mid_write > 0, "no kill met a store being written");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memo_gc_trims_the_store_and_clear_empties_it() {
    let c = Cluster::start("memo-gc").await;
    let n = 200_000u64;
    let (chain, input, store) = (w1_chain(&c.dir), c.dir.join("in.txt"), c.dir.join("store"));
    write_lines(&input, &w1_inputs(n));
    let out = c.dir.join("out.txt");
    let args = ["-i", p(&input), "-o", p(&out), "--memo", p(&store)];
    run_ok(&c, &chain, &args);
    assert_eq!(stats(&store), (n, 0));
    let memo = |args: &[&str]| {
        let o = pcluster_cmd().arg("memo").args(args).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    };
    // About 8 MB hold them all: a bound of 2 MiB keeps a part.
    memo(&["gc", p(&store), "--max-mb", "2"]);
    let (kept, torn) = stats(&store);
    assert!(kept > 0 && kept < n && torn == 0, "{kept} kept");
    run_ok(&c, &chain, &args);
    assert_eq!(
        first_task_calls(&c).await,
        n - kept,
        "what gc evicted runs again"
    );
    assert_same(&sorted(lines_of(&out)), &sorted(w1_expected(n)));
    memo(&["clear", p(&store)]);
    assert_eq!(stats(&store), (0, 0));
    run_ok(&c, &chain, &args);
    assert_eq!(
        first_task_calls(&c).await,
        n,
        "a cleared store finds nothing"
    );
    let missing = pcluster_cmd()
        .args(["memo", "stats", p(&c.dir.join("nothing"))])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(1), "no store there");
}
