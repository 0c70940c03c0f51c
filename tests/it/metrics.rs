//! Prometheus metrics with a real Prometheus (Debian's `prometheus`): it scrapes two node
//! processes (`pcluster node --metrics`) and a root's dashboard (`pcluster run --dashboard`,
//! `/metrics`) every second during a W1 run; its HTTP API then gives the run's outputs as the
//! nodes counted them, and `promtool check metrics` passes on every endpoint.

use std::io::Write as _;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use kit::{Job, Prometheus, free_addr, http_get};

use crate::common::*;

const LONG: Duration = Duration::from_secs(120);

/// Whether this test can run: with Prometheus installed, or in CI (where it must be).
fn prometheus_here() -> bool {
    if Prometheus::exe().is_some() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI installs Debian's prometheus (.ci/run): it is missing"
    );
    eprintln!("skipped: no `prometheus` on PATH (apt-get install prometheus)");
    false
}

/// `promtool check metrics` over the text `addr` serves at `/metrics`; returns the text.
async fn promtool_passes(addr: SocketAddr) -> String {
    let (code, body) = http_get(addr, "/metrics").await.expect("GET /metrics");
    assert_eq!(code, 200, "{body}");
    let mut lint = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool starts (Debian's prometheus package has it)");
    lint.stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let out = lint.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics on {addr}: {}{}\n{body}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for family in body.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let name = family.split(' ').next().unwrap();
        assert!(
            body.contains(&format!("# HELP {name} ")),
            "{name} has no HELP"
        );
    }
    body
}

/// Every metric the Grafana dashboard in `docs/` queries is one that is served.
fn grafana_queries_served_metrics(served: &str) {
    let path = repo().join("docs/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("docs/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("it is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    for expr in panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
    {
        let names = expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("pcluster_"));
        for name in names {
            assert!(
                served.contains(&format!("\n{name}{{")) || served.contains(&format!("\n{name} ")),
                "the dashboard queries {name}, which nothing serves"
            );
        }
    }
}

/// Waits until Prometheus answers `expr` with `want`.
async fn until_prometheus_says(p: &Prometheus, expr: &str, want: f64) {
    let what = format!("Prometheus to answer {expr} = {want}");
    let got = kit::poll_for(LONG, &what, || async {
        let now = p.query(expr).await.expect("Prometheus answers");
        (now == Some(want)).then_some(now)
    })
    .await;
    if let Err(e) = got {
        let last = p.query(expr).await;
        panic!("{e} (its last answer: {last:?})");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_nodes_and_the_root_during_a_run() {
    if !prometheus_here() {
        return;
    }
    let dir = temp_dir("metrics");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let metrics: Vec<SocketAddr> = ["127.0.0.91", "127.0.0.92"]
        .iter()
        .map(|ip| free_addr(ip.parse().unwrap()).unwrap())
        .collect();
    let mut nodes = Vec::new();
    let mut addrs = Vec::new();
    for (ip, m) in ["127.0.0.91", "127.0.0.92"].iter().zip(&metrics) {
        let (child, port) = node_process(ip, 0, log_port, 1, &["--metrics", &m.to_string()]).await;
        nodes.push(child);
        addrs.push(format!("{ip}:{port}"));
    }
    let dashboard = free_addr("127.0.0.93".parse().unwrap()).unwrap();
    let p = Prometheus::start(
        "127.0.0.94".parse().unwrap(),
        &[
            Job {
                name: "nodes",
                targets: metrics.clone(),
            },
            Job {
                name: "root",
                targets: vec![dashboard],
            },
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // The inputs come through a pipe in two halves: the run is still going while Prometheus
    // scrapes the root, whatever the speed of the machine.
    let half = 200_000;
    let mut run = pcluster_cmd()
        .arg("run")
        .arg(repo().join("examples/w1.toml"))
        .args([
            "--nodes",
            &addrs.join(","),
            "--dashboard",
            &dashboard.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pcluster run starts");
    let mut stdin = run.stdin.take().unwrap();
    let inputs = kit::w1_inputs(2 * half);
    stdin
        .write_all((inputs[..half as usize].join("\n") + "\n").as_bytes())
        .unwrap();
    let stdout = run.stdout.take().unwrap();
    let counted = std::thread::spawn(move || {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut { stdout }, &mut text).map(|_| text)
    });
    until_prometheus_says(&p, "pcluster_root_inputs_done_total", half as f64).await;
    let mut served = promtool_passes(dashboard).await;
    stdin
        .write_all((inputs[half as usize..].join("\n") + "\n").as_bytes())
        .unwrap();
    drop(stdin);
    let status = tokio::task::spawn_blocking(move || run.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "pcluster run: {status}");
    let stdout = counted.join().unwrap().unwrap();
    let outputs = stdout
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    assert_eq!(outputs as u64, 2 * half, "W1 gives one output per input");

    until_prometheus_says(
        &p,
        "sum(pcluster_task_items_out_total{task=\"w1_drop_odd\"})",
        outputs as f64,
    )
    .await;
    // Each node counted its own part; both had some.
    for m in &metrics {
        let expr =
            format!("pcluster_task_items_in_total{{task=\"w1_duplicate\",instance=\"{m}\"}}");
        let got = p.query(&expr).await.unwrap().unwrap_or(0.0);
        assert!(got > 0.0, "{expr} = {got}");
        served.push_str(&promtool_passes(*m).await);
    }
    grafana_queries_served_metrics(&served);
    until_prometheus_says(&p, "count(up{job=\"nodes\"} == 1)", 2.0).await;
}
