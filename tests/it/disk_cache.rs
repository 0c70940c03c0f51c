//! A node's disk cache of compiled code stays within `--cache-mb`: given more distinct chains
//! than fit, it removes the least recently used entries (a use from memory counts), and
//! every chain still runs exactly.

use std::collections::HashSet;
use std::path::Path;

use crate::common::*;

/// Bytes of the files directly in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|es| {
            es.flatten()
                .filter_map(|e| e.metadata().ok())
                .filter(std::fs::Metadata::is_file)
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

/// The names of the files directly in `dir`.
fn names(dir: &Path) -> HashSet<String> {
    std::fs::read_dir(dir)
        .map(|es| {
            es.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The example tasks with a custom section named after `variant`: another module to the
/// cache (it is keyed by the module's hash), the same tasks to run.
fn variant(wasm: &[u8], variant: usize) -> Vec<u8> {
    let name = format!("pcluster-test-variant-{variant}");
    let mut section = vec![name.len() as u8];
    section.extend_from_slice(name.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // A custom section: id 0, then its size and the name.
    out.push(section.len() as u8);
    out.extend_from_slice(&section);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_keeps_its_disk_cache_under_cache_mb_least_recently_used_out() {
    const BOUND: u64 = 1 << 20;
    let dir = temp_dir("disk-cache");
    let cache = dir.join("cache");
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let extra = ["--cache-dir", cache.to_str().unwrap(), "--cache-mb", "1"];
    let (_node, port) = node_process("127.0.0.1", 0, log_port, 1, &extra).await;
    let input = dir.join("in.txt");
    kit::write_w1_input(&input, 200).unwrap();
    let wasm = tasks_module();
    let run = |i: usize| {
        let module = dir.join(format!("v{i}.wasm"));
        std::fs::write(&module, variant(&wasm, i)).unwrap();
        let text = kit::chain_file_text(&format!("v{i}"), &module, &kit::W1_TASKS);
        let chain = dir.join(format!("v{i}.toml"));
        std::fs::write(&chain, text).unwrap();
        let out = pcluster_cmd()
            .arg("run")
            .arg(&chain)
            .arg("--input")
            .arg(&input)
            .args(["--nodes", &format!("127.0.0.1:{port}"), "-q"])
            .args([
                "--log-host",
                "127.0.0.1",
                "--log-port",
                &log_port.to_string(),
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "v{i}: {stderr}");
        let mut lines: Vec<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect();
        lines.sort();
        assert_same(&lines, &w1_expected(200));
        let bytes = dir_bytes(&cache);
        assert!(bytes <= BOUND, "after v{i}: {bytes} bytes in the cache");
    };
    // Each variant's entry is the file its first run added.
    let mut entry = Vec::new();
    let mut seen = HashSet::new();
    let first = |i: usize, seen: &mut HashSet<String>| {
        run(i);
        let now = names(&cache);
        let new: Vec<String> = now.difference(seen).cloned().collect();
        assert_eq!(new.len(), 1, "v{i} added one entry: {new:?}");
        *seen = now;
        new[0].clone()
    };
    entry.push(first(0, &mut seen));
    let size = std::fs::metadata(cache.join(&entry[0])).unwrap().len();
    let fit = usize::try_from(BOUND / size).unwrap();
    assert!(
        fit >= 2,
        "entries of {size} bytes: fewer than two fit in 1 MiB"
    );
    // Fill the cache.
    for i in 1..fit {
        entry.push(first(i, &mut seen));
    }
    assert_eq!(names(&cache).len(), fit);
    // v0 used again (from the node's memory): the most recent now; v1 is the least.
    run(0);
    entry.push(first(fit, &mut seen));
    let now = names(&cache);
    assert!(
        now.contains(&entry[0]),
        "v0, used last but one, was evicted"
    );
    assert!(
        !now.contains(&entry[1]),
        "v1, the least recently used, was kept"
    );
    assert_eq!(now.len(), fit, "{now:?}");
}
