//! The dashboard, with real processes: a run of at least ten seconds on two node processes
//! with `pcluster run --dashboard`, its page rendered twice by headless Chromium (and a
//! screenshot kept as `target/dashboard.png`), its event stream, its `/api/status` against
//! `pcluster status`; then `pcluster dashboard` and `pcluster top` watching the same nodes
//! after the run, without claiming them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use kit::http_get;

use crate::common::*;

const LONG: Duration = Duration::from_secs(180);
/// Seeds through `w2_cpu` at this many iterations (about 12 ms each here): two one-worker
/// nodes take some 20 s, long enough to load the page twice while the run goes.
const SEEDS: u64 = 3000;
const ITERATIONS: &str = "4000000";
/// Every this-many-th seed is not a number and fails, so the page lists failures.
const BAD_EVERY: u64 = 700;
const TASKS: [&str; 3] = ["w1_identity", "w2_cpu", "w1_drop_odd"];

impl Cluster {
    fn pcluster(&self, sub: &str) -> Command {
        let mut cmd = pcluster_cmd();
        cmd.arg(sub).stdin(Stdio::null());
        cmd
    }
}

/// The address a dashboard started on port 0 announced on stderr (written to `err_file`) in
/// a line `…{prefix}ADDR/`; panics at once if `child` exits first. The `/` after the address
/// shows the line is whole: stderr is unbuffered and may be read halfway through.
async fn announced(child: &mut Child, err_file: &Path, prefix: &str) -> SocketAddr {
    let mut found = None;
    wait_until(LONG, &format!("`{prefix}ADDR/` on stderr"), || {
        let text = std::fs::read_to_string(err_file).unwrap_or_default();
        found = text
            .lines()
            .find_map(|l| l.split_once(prefix)?.1.split_once('/')?.0.parse().ok());
        if found.is_none()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("exited ({status}) before announcing its dashboard:\n{text}");
        }
        found.is_some()
    })
    .await;
    found.expect("found once the wait is over")
}

/// `/api/status` as JSON, once it answers.
async fn api_status(addr: SocketAddr) -> Option<Value> {
    match http_get(addr, "/api/status").await {
        Ok((200, body)) => serde_json::from_str(&body).ok(),
        _ => None,
    }
}

/// `/api/status` once `ok` holds for it (polled, with a deadline).
async fn wait_status(addr: SocketAddr, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let got = std::sync::Mutex::new(None);
    let (got_ref, ok) = (&got, &ok);
    poll_until(LONG, what, move || async move {
        let s = api_status(addr).await.filter(|s| ok(s));
        let held = s.is_some();
        *got_ref.lock().unwrap() = s;
        held
    })
    .await;
    got.into_inner().unwrap().expect("held when the poll ended")
}

/// The first `n` events of `/api/events`, as JSON.
async fn sse_events(addr: SocketAddr, n: usize) -> Vec<Value> {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(b"GET /api/events HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut text = String::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut events = Vec::new();
    while events.len() < n {
        let got = s.read(&mut buf).await.expect("read the event stream");
        assert!(got > 0, "the event stream ended: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..got]));
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            if let Some(data) = event.lines().find_map(|l| l.strip_prefix("data: ")) {
                events.push(serde_json::from_str(data).expect("an event is JSON"));
            }
        }
    }
    events
}

/// Per node, per task: `[in, out, dropped, failed]`, as `pcluster status` prints them.
type Table = Vec<(String, Vec<(String, [u64; 4])>)>;

fn pcluster_status(c: &Cluster) -> Table {
    let out = c
        .pcluster("status")
        .args(c.addrs())
        .output()
        .expect("run pcluster status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "pcluster status: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Two tables: one row per node, a blank line, then one row per node and task
    // (`NODE TASK IN OUT DROPPED FAILED BUSY`).
    let (nodes, tasks) = text.split_once("\n\n").unwrap_or((&text, ""));
    let mut table: Table = nodes
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(|node| (node.to_string(), Vec::new()))
        .collect();
    for line in tasks.lines().skip(1) {
        let w: Vec<&str> = line.split_whitespace().collect();
        let n = |i: usize| {
            w[i].parse::<u64>()
                .unwrap_or_else(|_| panic!("a number in {line:?}"))
        };
        let row = (w[1].to_string(), [n(2), n(3), n(4), n(5)]);
        table
            .iter_mut()
            .find(|(node, _)| node == w[0])
            .unwrap_or_else(|| panic!("task row of an unknown node: {line:?}"))
            .1
            .push(row);
    }
    table
}

/// The same, from a snapshot's per-node counters.
fn api_table(s: &Value) -> Table {
    let nodes = s["nodes"].as_array().expect("nodes");
    nodes
        .iter()
        .map(|n| {
            let tasks = n["tasks"].as_array().expect("tasks");
            let rows = tasks
                .iter()
                .map(|t| {
                    let k = |f: &str| t[f].as_u64().expect(f);
                    let row = [k("items_in"), k("items_out"), k("dropped"), k("failed")];
                    (t["name"].as_str().unwrap().to_string(), row)
                })
                .collect();
            (n["addr"].as_str().unwrap().to_string(), rows)
        })
        .collect()
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The Chromium executable (CI installs Debian's `chromium`).
fn chromium() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "no chromium on PATH: the dashboard test renders the page in headless Chromium \
         (install it with `apt-get install -y chromium`; .ci/run does)"
    );
}

/// Loads `url` in headless Chromium with `extra` arguments; returns its stdout.
async fn chromium_run(url: &str, profile: &Path, extra: &[&str]) -> String {
    let out_file = profile.with_extension("out");
    let mut cmd = Command::new(chromium());
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(extra)
    .arg(url)
    .stdout(std::fs::File::create(&out_file).unwrap())
    .stderr(Stdio::null());
    let status = spawn(&mut cmd)
        .wait_exit(Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(status.success(), "chromium {extra:?}: {status}");
    std::fs::read_to_string(&out_file).unwrap()
}

/// `done / total` as the rendered page shows it.
fn done_of(dom: &str) -> (u64, u64) {
    let start = dom.find("id=\"done\">").expect("the page has #done") + "id=\"done\">".len();
    let text = &dom[start..start + dom[start..].find('<').unwrap()];
    let (done, total) = text
        .split_once(" / ")
        .unwrap_or_else(|| panic!("#done is `{text}`, not done / total"));
    let n = |s: &str| s.replace(',', "").parse::<u64>().expect(text);
    (n(done), n(total))
}

/// The target directory this test binary was built in (`target/<profile>/deps/all-…`).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .nth(3)
        .expect("target/<profile>/deps")
        .to_path_buf()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_run_on_the_dashboard_in_chromium_and_its_numbers() {
    let c = Cluster::start("dashboard").await;
    std::fs::write(c.dir.join("tasks.wasm"), tasks_module()).unwrap();
    let chain = c.dir.join("chain.toml");
    let mut text = "name = \"w2mix\"\nversion = \"1\"\nmodule = \"tasks.wasm\"\n".to_string();
    for t in TASKS {
        let args = if t == "w2_cpu" { ITERATIONS } else { "" };
        text += &format!("[[task]]\nfunction = \"{t}\"\nargs = \"{args}\"\n");
    }
    std::fs::write(&chain, text).unwrap();
    let input = c.dir.join("seeds.txt");
    let seeds: String = (1..=SEEDS)
        .map(|i| {
            if i % BAD_EVERY == 0 {
                format!("bad-{i}\n")
            } else {
                format!("{i}\n")
            }
        })
        .collect();
    std::fs::write(&input, seeds).unwrap();

    let err_file = c.dir.join("run.err");
    let mut cmd = c.pcluster("run");
    cmd.arg(&chain)
        .args(["-n", &c.addrs().join(","), "--rescan", "0"])
        .args([
            "--log-host",
            "127.0.0.1",
            "--log-port",
            &c.log_port.to_string(),
        ])
        .arg("-i")
        .arg(&input)
        .arg("-o")
        .arg(c.dir.join("out.txt"))
        .args(["--dashboard", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&err_file).unwrap());
    let started = Instant::now();
    let mut run = spawn(&mut cmd);
    let dash = announced(&mut run, &err_file, "dashboard on http://").await;

    // The dashboard answers once the chain is set up; the total comes from counting the file.
    wait_status(dash, "the dashboard to show the run with its total", |s| {
        s["run"]["total"] == SEEDS && s["run"]["done"].as_u64() > Some(0)
    })
    .await;

    // Events come at least once a second, each a whole snapshot.
    let t = Instant::now();
    let events = sse_events(dash, 3).await;
    assert!(
        t.elapsed() < Duration::from_secs(4),
        "3 events took {:?}",
        t.elapsed()
    );
    let at: Vec<u64> = events
        .iter()
        .map(|e| e["at_ms"].as_u64().unwrap())
        .collect();
    assert!(at[1] > at[0] && at[2] > at[1], "snapshots at {at:?}");
    assert!(
        events
            .iter()
            .all(|e| e["nodes"].as_array().unwrap().len() == 2)
    );

    // /api/status against `pcluster status`: every counter the dashboard shows lies between
    // a status taken before its probe and one taken after.
    let before = pcluster_status(&c);
    let after_before = unix_ms();
    let mid = wait_status(dash, "a snapshot probed after the first status", |s| {
        s["nodes"].as_array().is_some_and(|ns| {
            ns.len() == 2
                && ns
                    .iter()
                    .all(|n| n["probed_at_ms"].as_u64() > Some(after_before))
        })
    })
    .await;
    let after = pcluster_status(&c);
    let mid_t = api_table(&mid);
    assert_eq!(mid_t.len(), 2);
    for ((node, tasks), ((b_node, b_tasks), (a_node, a_tasks))) in
        mid_t.iter().zip(before.iter().zip(&after))
    {
        assert_eq!((node, node), (b_node, a_node));
        let names =
            |t: &Vec<(String, [u64; 4])>| t.iter().map(|(n, _)| n.clone()).collect::<Vec<_>>();
        assert_eq!(names(tasks), TASKS, "{node}");
        assert_eq!(
            (names(b_tasks), names(a_tasks)),
            (names(tasks), names(tasks))
        );
        for ((name, m), ((_, b), (_, a))) in tasks.iter().zip(b_tasks.iter().zip(a_tasks)) {
            for i in 0..4 {
                assert!(
                    b[i] <= m[i] && m[i] <= a[i],
                    "{node} {name}: counter {i} is {} on the dashboard, {} before and {} after",
                    m[i],
                    b[i],
                    a[i]
                );
            }
        }
    }
    // The page's task rows are these sums.
    for (i, t) in mid["tasks"].as_array().unwrap().iter().enumerate() {
        let sum: u64 = mid_t.iter().map(|(_, ts)| ts[i].1[0]).sum();
        assert_eq!(t["items_in"].as_u64(), Some(sum), "{t}");
    }

    // The page, rendered twice while the run goes: both nodes, each task, done / total growing.
    let url = format!("http://{dash}/");
    let dom1 = chromium_run(&url, &c.dir.join("chrome-1"), &["--dump-dom"]).await;
    let dom2 = chromium_run(&url, &c.dir.join("chrome-2"), &["--dump-dom"]).await;
    for (i, dom) in [&dom1, &dom2].into_iter().enumerate() {
        for addr in c.addrs() {
            assert!(
                dom.contains(&addr),
                "load {}: no node {addr} in the page:\n{dom}",
                i + 1
            );
        }
        for t in TASKS {
            assert!(
                dom.contains(&format!(">{t}<")),
                "load {}: no task {t} in the page:\n{dom}",
                i + 1
            );
        }
    }
    let ((done1, total1), (done2, total2)) = (done_of(&dom1), done_of(&dom2));
    assert_eq!((total1, total2), (SEEDS, SEEDS));
    assert!(
        done1 > 0 && done2 > done1,
        "done {done1} then {done2}: the page did not follow the run"
    );
    assert!(
        done2 < SEEDS,
        "the run ended before the second load: make it longer"
    );
    let shot = target_dir().join("dashboard.png");
    let _ = std::fs::remove_file(&shot);
    chromium_run(
        &url,
        &c.dir.join("chrome-3"),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,900",
        ],
    )
    .await;
    assert!(
        std::fs::metadata(&shot).is_ok_and(|m| m.len() > 10_000),
        "no screenshot at {}",
        shot.display()
    );

    // The run ends (some seeds fail: exit status 2) after at least ten seconds.
    let status = run.wait_exit(LONG).await.unwrap_or_else(|e| panic!("{e}"));
    let err = std::fs::read_to_string(&err_file).unwrap_or_default();
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(
        started.elapsed() >= Duration::from_secs(10),
        "the run took only {:?}",
        started.elapsed()
    );
    assert!(
        err.contains(&format!("dashboard on http://{dash}/")),
        "{err}"
    );

    // After the run, `pcluster dashboard` watches the same nodes without claiming them: its
    // counters are those of `pcluster status` exactly (the nodes keep the last run's).
    let watch_err = c.dir.join("dashboard.err");
    let mut cmd = c.pcluster("dashboard");
    cmd.args(["-n", &c.addrs().join(","), "--addr", "127.0.0.1:0"])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&watch_err).unwrap());
    let mut dashboard = spawn(&mut cmd);
    let watch = announced(&mut dashboard, &watch_err, "pcluster dashboard: http://").await;
    let last = wait_status(watch, "pcluster dashboard to probe both nodes", |s| {
        s["nodes"].as_array().is_some_and(|ns| {
            ns.len() == 2
                && ns
                    .iter()
                    .all(|n| n["state"] == "free" && n["probed_at_ms"].is_u64())
        })
    })
    .await;
    assert!(last["run"].is_null(), "no run when only watching: {last}");
    assert_eq!(api_table(&last), pcluster_status(&c));
    let total_in: u64 = api_table(&last).iter().map(|(_, t)| t[0].1[0]).sum();
    assert_eq!(
        total_in, SEEDS,
        "every seed went through the first task once"
    );
    let (code, _) = http_get(watch, "/nowhere").await.unwrap();
    assert_eq!(code, 404);

    // `pcluster top` prints the same, one frame a second, as plain lines off a terminal.
    let top_out = c.dir.join("top.out");
    let mut cmd = c.pcluster("top");
    cmd.args(["-n", &c.addrs().join(",")])
        .stdout(std::fs::File::create(&top_out).unwrap())
        .stderr(Stdio::null());
    let mut top = spawn(&mut cmd);
    wait_until(LONG, "two frames of pcluster top", || {
        std::fs::read_to_string(&top_out).is_ok_and(|t| t.matches("pcluster top").count() >= 2)
    })
    .await;
    top.terminate().unwrap_or_else(|e| panic!("{e}"));
    assert!(
        top.wait_exit(LONG)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .success()
    );
    let frames = std::fs::read_to_string(&top_out).unwrap();
    assert!(!frames.contains('\x1b'), "no escape codes off a terminal");
    let frame = frames.split("\n\n").next().unwrap();
    for addr in c.addrs() {
        assert!(
            frame
                .lines()
                .any(|l| l.starts_with(&addr) && l.contains("free")),
            "{frame}"
        );
    }
    for t in TASKS {
        assert!(frame.lines().any(|l| l.starts_with(t)), "{t} in {frame}");
    }
}
