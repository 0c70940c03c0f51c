//! `pcluster run --nodes-file` with real processes: a run starts on the three nodes a file
//! lists; mid-run a fourth address is added to the file and one is removed. The added node
//! takes items before the run ends, the removed one is let go (free again, its counters
//! frozen) while the run goes on, and every output comes exactly once.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use crate::common::*;

const LONG: Duration = Duration::from_secs(180);
/// Items of `w2_cpu` with this many iterations take about 30 ms each: a run of `N` of them
/// on three one-worker nodes lasts seconds, long enough to change the file during it.
const ITERATIONS: u64 = 10_000_000;
const N: u64 = 400;

fn write_nodes(path: &std::path::Path, nodes: &[SocketAddr]) {
    let mut text = String::from("# nodes of the test run\n\n");
    for n in nodes {
        text += &format!("{}  # one worker\n", n.ip());
    }
    // Whole or not at all: written aside, then renamed over the file (as tools do).
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_added_to_and_removed_from_the_file_join_and_leave_a_running_run() {
    let dir = temp_dir("nodes-file");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let (a, port) = node_process("127.0.0.2", 0, log_port, 1, &[]).await;
    let mut nodes = vec![a];
    for ip in ["127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        nodes.push(node_process(ip, port, log_port, 1, &[]).await.0);
    }
    let addr = |ip: &str| SocketAddr::new(ip.parse().unwrap(), port);
    let [first, second, third, fourth] =
        ["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"].map(addr);

    std::fs::write(dir.join("tasks.wasm"), tasks_module()).unwrap();
    let chain = dir.join("slow.toml");
    let tasks = [("w2_cpu", false, &*ITERATIONS.to_string())];
    std::fs::write(
        &chain,
        kit::chain_file_text("slow", &dir.join("tasks.wasm"), &tasks),
    )
    .unwrap();
    let input = dir.join("seeds.txt");
    std::fs::write(
        &input,
        (1..=N).map(|i| format!("{i}\n")).collect::<String>(),
    )
    .unwrap();
    let (out, list) = (dir.join("out.txt"), dir.join("nodes.txt"));
    write_nodes(&list, &[first, second, third]);
    let mut run = spawn(
        pcluster_cmd()
            .arg("run")
            .arg(&chain)
            .args(["-q", "--port", &port.to_string(), "--rescan", "0"])
            .arg("--nodes-file")
            .arg(&list)
            .arg("-i")
            .arg(&input)
            .arg("-o")
            .arg(&out)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr.txt")).unwrap()),
    );
    let stderr = || std::fs::read_to_string(dir.join("stderr.txt")).unwrap_or_default();
    let outputs = || {
        std::fs::read_to_string(&out)
            .unwrap_or_default()
            .lines()
            .count()
    };
    wait_until(LONG, "30 outputs", || outputs() >= 30).await;

    // The fourth node joins, the second leaves, in one change of the file.
    let changed = std::time::Instant::now();
    write_nodes(&list, &[first, third, fourth]);
    poll_until(LONG, "the fourth node to take items", || async {
        taken(fourth).await.is_some_and(|(n, _)| n > 0)
    })
    .await;
    let left_at = kit::poll_for(LONG, "the second node to be let go", || async {
        taken(second)
            .await
            .and_then(|(n, held)| (!held).then_some(n))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}: {}", stderr()));
    eprintln!(
        "the fourth node took items and the second was let go {:.1} s after the change, \
         with {} of {N} outputs written",
        changed.elapsed().as_secs_f64(),
        outputs()
    );
    assert!(
        run.try_wait().unwrap().is_none() && outputs() < N as usize,
        "the run ended before the nodes changed; make it longer: {}",
        stderr()
    );
    let status = run.wait_exit(LONG).await.unwrap();
    assert!(status.success(), "{}", stderr());

    let mut want: Vec<String> = (1..=N)
        .map(|s| kit::native_w2(s, ITERATIONS).to_string())
        .collect();
    want.sort();
    assert_same(&sorted_lines(&out), &want);
    let (second_took, _) = taken(second).await.unwrap();
    assert_eq!(
        second_took, left_at,
        "the removed node took nothing after it left"
    );
    let (fourth_took, _) = taken(fourth).await.unwrap();
    assert!(fourth_took > 0);
    let err = stderr();
    assert!(err.contains(&format!("node {fourth} joined")), "{err}");
    assert!(err.contains(&format!("node {second} left")), "{err}");
    drop(nodes);
}
