//! Shell habits, with the real executable: the bash completion script loads in a real
//! `bash` and completes a subcommand; `--help` shows examples; `status --json`, `scan
//! --json` and `top --once --json` print one JSON document of the dashboard's fields, whose
//! per-task counters are the table's.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};

use crate::common::*;

/// Runs `pcluster ARGS`; its output, which must be a success.
#[track_caller]
fn ok(args: &[&str]) -> Output {
    let out = pcluster_cmd()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "pcluster {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bash_completes_a_subcommand_from_the_generated_script() {
    let dir = temp_dir("completions");
    let script = dir.join("pcluster.bash");
    std::fs::write(&script, ok(&["completions", "bash"]).stdout).unwrap();
    // What bash does on `pcluster ru<TAB>`: the words so far, the cursor in the second,
    // then the function the script registered with `complete -F`.
    let probe = r#"source "$1" || exit 3
f=$(complete -p pcluster | sed -E 's/.*-F ([^ ]+).*/\1/')
COMP_WORDS=(pcluster ru); COMP_CWORD=1; COMP_LINE="pcluster ru"; COMP_POINT=${#COMP_LINE}
"$f" pcluster ru pcluster
printf '%s\n' "${COMPREPLY[@]}""#;
    let out = Command::new("bash")
        .args(["--norc", "--noprofile", "-c", probe, "probe"])
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let replies: Vec<String> = text(&out).lines().map(String::from).collect();
    assert_eq!(replies, ["run"], "COMPREPLY");
    for shell in ["zsh", "fish"] {
        let script = text(&ok(&["completions", shell]));
        assert!(script.contains("pcluster"), "{shell}: {script}");
    }
}

#[test]
fn help_shows_examples_for_run_node_and_log() {
    for (command, example) in [
        (
            "run",
            "pcluster run examples/w1.toml --input examples/w1-input.txt",
        ),
        (
            "node",
            "pcluster node --host 0.0.0.0 --token-file cluster.key",
        ),
        ("log", "pcluster log --host 0.0.0.0 --port 5555"),
    ] {
        let help = text(&ok(&[command, "--help"]));
        assert!(
            help.contains("Examples:") && help.contains(example),
            "{command}: {help}"
        );
    }
}

/// Per node, per task: in, out, dropped, failed.
type Counts = BTreeMap<(String, String), [u64; 4]>;

/// The task table of `pcluster status` (after the node table and a blank line).
fn table_counts(table: &str) -> Counts {
    let mut counts = Counts::new();
    let mut in_tasks = false;
    for line in table.lines() {
        let cells: Vec<&str> = line.split_whitespace().collect();
        if cells.first() == Some(&"NODE") {
            in_tasks = cells.get(1) == Some(&"TASK");
            continue;
        }
        if !in_tasks || cells.len() < 6 {
            continue;
        }
        let n = |i: usize| cells[i].parse::<u64>().unwrap();
        counts.insert(
            (cells[0].to_string(), cells[1].to_string()),
            [n(2), n(3), n(4), n(5)],
        );
    }
    counts
}

fn json_counts(v: &serde_json::Value) -> Counts {
    let mut counts = Counts::new();
    for node in v["nodes"].as_array().expect("nodes") {
        for t in node["tasks"].as_array().expect("tasks") {
            let n = |k: &str| t[k].as_u64().unwrap();
            counts.insert(
                (
                    node["addr"].as_str().unwrap().to_string(),
                    t["name"].as_str().unwrap().to_string(),
                ),
                [n("items_in"), n("items_out"), n("dropped"), n("failed")],
            );
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_has_the_tables_counters_after_a_w1_run() {
    let c = Cluster::start("status-json").await;
    let n = 2_000;
    let input = c.dir.join("in.txt");
    kit::write_w1_input(&input, n).unwrap();
    let out = c.dir.join("out.txt");
    let nodes = c.addrs().join(",");
    let w1 = repo().join("examples/w1.toml");
    let (w1, input_s, out_s) = (
        w1.to_str().unwrap(),
        input.to_str().unwrap(),
        out.to_str().unwrap(),
    );
    ok(&[
        "run", w1, "-q", "-n", &nodes, "-i", input_s, "-o", out_s, "--rescan", "0",
    ]);
    assert_same(&sorted_lines(&out), &w1_expected(n));

    let addrs = c.addrs();
    let mut args: Vec<&str> = vec!["status"];
    args.extend(addrs.iter().map(String::as_str));
    let table = text(&ok(&args));
    args.push("--json");
    let json = text(&ok(&args));
    let v: serde_json::Value = serde_json::from_str(&json).expect("one JSON document");
    let from_table = table_counts(&table);
    assert_eq!(from_table.len(), 6, "3 tasks on 2 nodes: {table}");
    assert_eq!(json_counts(&v), from_table, "{json}\n{table}");
    // The totals are the dashboard's: summed over the nodes, and the last task's outputs
    // are the run's.
    let tasks = v["tasks"].as_array().expect("tasks");
    assert_eq!(tasks.len(), 3);
    let last = &tasks[2];
    assert_eq!(
        (last["name"].as_str(), last["items_out"].as_u64()),
        (Some("w1_drop_odd"), Some(n))
    );
    for key in ["at_ms", "run", "failures", "logs"] {
        assert!(v.get(key).is_some(), "{key} in {json}");
    }
    assert_eq!(v["nodes"][0]["state"], "free", "the run freed them");
    jq_agrees(&json, n);

    // `scan --json` and `top --once --json` print the same document of the same nodes.
    let port = c.port.to_string();
    let scan = text(&ok(&["scan", "127.0.0.0/24", "--port", &port, "--json"]));
    let scan: serde_json::Value = serde_json::from_str(&scan).expect("scan: JSON");
    // Only our nodes: another test's node may listen on the same port of another address.
    let ours: Counts = json_counts(&scan)
        .into_iter()
        .filter(|((addr, _), _)| addrs.contains(addr))
        .collect();
    assert_eq!(ours, from_table, "scan");
    let top = text(&ok(&["top", "-n", &nodes, "--once", "--json"]));
    let top: serde_json::Value = serde_json::from_str(&top).expect("top: JSON");
    assert_eq!(json_counts(&top), from_table, "top");
    let frame = text(&ok(&["top", "-n", &nodes, "--once"]));
    assert!(
        frame.starts_with("pcluster top") && frame.contains("w1_drop_odd"),
        "{frame}"
    );
}

/// `jq` (when installed) reads the document and finds the run's outputs in it.
fn jq_agrees(json: &str, outputs: u64) {
    if Command::new("jq").arg("--version").output().is_err() {
        eprintln!("jq is not installed: the JSON was checked with serde_json only");
        return;
    }
    let mut jq = Command::new("jq")
        .args([
            "-e",
            r#"[.tasks[] | select(.name == "w1_drop_odd") | .items_out] | add"#,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    jq.stdin.take().unwrap().write_all(json.as_bytes()).unwrap();
    let out = jq.wait_with_output().unwrap();
    assert!(out.status.success(), "jq refused the document");
    assert_eq!(text(&out).trim(), outputs.to_string());
}
