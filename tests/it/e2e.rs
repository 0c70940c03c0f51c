//! End to end with real processes: `pcluster log`, `pcluster node` on 127.0.0.2 and
//! 127.0.0.3, and `pcluster run` over a scan, as a user would run them.

use std::process::Stdio;
use std::time::Duration;

use root::RootOptions;

use crate::common::*;

const LONG: Duration = Duration::from_secs(120);

/// The lines a `pcluster run` that must have succeeded wrote to stdout, sorted.
#[track_caller]
fn sorted_stdout(run: &std::process::Output) -> Vec<String> {
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let mut lines: Vec<String> = String::from_utf8_lossy(&run.stdout)
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w1_over_a_scan_with_two_node_processes() {
    let dir = temp_dir("e2e-w1");
    let log_file = dir.join("cluster.log");
    let (_log, log_port) = log_process(&log_file, &[]).await;
    let (mut a, port) = node_process("127.0.0.2", 0, log_port, 1, &[]).await;
    let (mut b, _) = node_process("127.0.0.3", port, log_port, 1, &[]).await;

    let n = 20_000u64;
    let input = dir.join("in.txt");
    kit::write_w1_input(&input, n).unwrap();
    let output = dir.join("out.txt");
    let run = pcluster_cmd()
        .arg("run")
        .arg(repo().join("examples/w1.toml"))
        .args(["--scan", "127.0.0.0/24", "--port", &port.to_string()])
        .args([
            "--log-host",
            "127.0.0.1",
            "--log-port",
            &log_port.to_string(),
        ])
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "pcluster run failed: {stderr}");
    eprintln!("{stderr}");
    assert_same(&sorted_lines(&output), &w1_expected(n));

    // Both nodes took part: their counters say so.
    for addr in [format!("127.0.0.2:{port}"), format!("127.0.0.3:{port}")] {
        let status = root::node_status(addr.parse().unwrap(), &RootOptions::default())
            .await
            .unwrap();
        let first = status.tasks.first().expect("counters of the last chain");
        assert!(first.items_in > 0, "{addr} processed nothing: {status:?}");
    }

    // The log file has lines from both nodes and from tasks, tagged.
    let mut seen = (false, false, false);
    wait_until(LONG, "log lines from both nodes and a task", || {
        let text = std::fs::read_to_string(&log_file).unwrap_or_default();
        seen = (
            text.contains(&format!("node 127.0.0.2:{port}")),
            text.contains(&format!("node 127.0.0.3:{port}")),
            text.contains("task=w1_drop_odd") || text.contains("w1_drop_odd: first item"),
        );
        seen.0 && seen.1 && seen.2
    })
    .await;

    a.terminate().unwrap();
    b.terminate().unwrap();
    assert!(a.wait_exit(LONG).await.unwrap().success());
    assert!(b.wait_exit(LONG).await.unwrap().success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_chain_logs_reach_the_log_server_tagged() {
    let dir = temp_dir("e2e-hello");
    let log_file = dir.join("cluster.log");
    let (_log, log_port) = log_process(&log_file, &[]).await;
    let (_node, port) = node_process("127.0.0.1", 0, log_port, 1, &[]).await;
    let root = root_with(&[format!("127.0.0.1:{port}").parse().unwrap()]).await;
    let c = setup_collect(&root, hello()).await.unwrap();
    root.feed(["hello-item"]).await.unwrap();
    root.wait_empty().await.unwrap();
    assert!(c.texts().is_empty());
    wait_until(LONG, "the tasks' log lines", || {
        let text = std::fs::read_to_string(&log_file).unwrap_or_default();
        let tagged = |needle: &str| {
            text.lines().any(|l| {
                l.contains(needle)
                    && l.contains(&format!("node 127.0.0.1:{port}"))
                    && l.contains("worker=0")
            })
        };
        tagged("simple_task: hello-item")
            && tagged("generator_task: hello-item")
            && text
                .lines()
                .filter(|l| l.contains("item dropped") && l.contains("task=drop_item"))
                .count()
                == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_cluster_runs_a_chain_with_no_setup() {
    let dir = temp_dir("e2e-embedded");
    let run = pcluster_cmd()
        .current_dir(&dir)
        .arg("run")
        .arg(repo().join("examples/w1.toml"))
        .arg("--input")
        .arg(repo().join("examples/w1-input.txt"))
        .output()
        .unwrap();
    assert_same(&sorted_stdout(&run), &w1_expected(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_reports_failed_items_and_exits_non_zero() {
    let dir = temp_dir("e2e-failed");
    let chain_file = chain_file(&dir, "panics", "panic_task", "");
    let input = dir.join("in.txt");
    std::fs::write(&input, "a\nplease panic\nb\n").unwrap();
    let failed = dir.join("failed.txt");
    let run = pcluster_cmd()
        .current_dir(&dir)
        .arg("run")
        .arg(&chain_file)
        .arg("--input")
        .arg(&input)
        .arg("--failed")
        .arg(&failed)
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(2), "failed items: exit 2");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("line 2:") && stderr.contains("panic_task"),
        "stderr names the line and the task: {stderr}"
    );
    let mut lines: Vec<String> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.sort();
    assert_eq!(lines, ["a", "b"]);
    // --failed holds the failed input, raw, ready to be fed again.
    let failed = std::fs::read_to_string(&failed).unwrap();
    assert_eq!(failed, "please panic\n");
}

/// A newcomer's first task: `pcluster new demo` writes a crate that builds as it is, and
/// `pcluster run demo/chain.toml -i demo/input.txt` runs it on an embedded cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_task_crate_runs_as_written() {
    let dir = temp_dir("new-demo");
    let new = pcluster_cmd()
        .current_dir(&dir)
        .args(["new", "demo"])
        .output()
        .unwrap();
    assert!(
        new.status.success(),
        "{}",
        String::from_utf8_lossy(&new.stderr)
    );
    let run = pcluster_cmd()
        .current_dir(&dir)
        .args(["run", "demo/chain.toml", "-i", "demo/input.txt", "-q"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(0), "{stderr}");
    let mut words: Vec<String> = String::from_utf8(run.stdout)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    words.sort();
    let mut want: Vec<String> = "HELLO WORLD THE QUICK BROWN FOX PCLUSTER RUNS TASKCHAINS"
        .split(' ')
        .map(String::from)
        .collect();
    want.sort();
    assert_eq!(words, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_keyed_by_a_key_file_runs_w1_and_an_open_key_file_is_refused() {
    let dir = temp_dir("e2e-key-file");
    let key = new_key(&dir);
    let key_arg = key.to_str().unwrap();
    let keyed = ["--token-file", key_arg];
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &keyed).await;
    let (_node, port) = node_process("127.0.0.2", 0, log_port, 1, &keyed).await;
    let run = pcluster_cmd()
        .env_remove("PCLUSTER_TOKEN")
        .arg("run")
        .arg(repo().join("examples/w1.toml"))
        .args(["--nodes", &format!("127.0.0.2:{port}")])
        .args(keyed)
        .arg("--input")
        .arg(repo().join("examples/w1-input.txt"))
        .output()
        .unwrap();
    assert_same(&sorted_stdout(&run), &w1_expected(10));
    // Without the key the node refuses the root.
    let stranger = pcluster_cmd()
        .env_remove("PCLUSTER_TOKEN")
        .args(["status", &format!("127.0.0.2:{port}")])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&stranger.stdout).contains("idle"));
    // A key file others may read is refused, saying how to fix it.
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let open = pcluster_cmd()
        .args(["status", &format!("127.0.0.2:{port}")])
        .args(keyed)
        .output()
        .unwrap();
    assert!(!open.status.success());
    assert!(String::from_utf8_lossy(&open.stderr).contains("chmod 600"));
}
