//! The recipes of `deploy/`, checked as far as this machine can without systemd, Slurm or
//! Kubernetes:
//!
//! - the systemd unit's `ExecStart` line, its paths, host and ports replaced, starts a real
//!   node on loopback that answers `pcluster status` with the key and refuses it without; the
//!   unit keeps its hardening and never allows native tasks;
//! - the Slurm batch script passes `bash -n` (and shellcheck where installed), and runs to
//!   its end with stand-ins for `srun`, `scontrol` and `pcluster`: every pcluster command
//!   line it makes parses with the real binary, and its nodes file lists the allocation;
//! - every pcluster command line of the Kubernetes manifests parses with the real binary, the
//!   root finds the nodes under the headless Service's name, and the manifests parse as YAML
//!   (where python3 has PyYAML).
//!
//! A command line "parses" when it exits 0 with `--help` appended: clap rejects an unknown
//! flag or a bad value before it reaches the `--help`, so nothing runs.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::*;

fn deploy(path: &str) -> PathBuf {
    repo().join("deploy").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("deploy/{path}: {e}"))
}

/// Exits 0 when `pcluster ARGS --help` does: every flag of ARGS exists, every value parses.
fn parses(args: &[String]) -> Result<(), String> {
    let out = pcluster_cmd().args(args).arg("--help").output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "pcluster {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The words of the unit's `ExecStart=` line.
fn exec_start(unit: &str) -> Vec<String> {
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart= line");
    line.split_whitespace().map(String::from).collect()
}

#[tokio::test]
async fn the_systemd_units_command_starts_a_node_that_answers_with_the_key_only() {
    let unit = read("systemd/pcluster-node.service");
    for want in [
        "DynamicUser=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CacheDirectory=pcluster",
        "LoadCredential=cluster.key:",
        "Restart=on-failure",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(want)),
            "the unit lacks {want}"
        );
    }
    let words = exec_start(&unit);
    assert!(!words.contains(&"--allow-native".into()), "no native tasks");
    assert_eq!(words[..2], ["/usr/local/bin/pcluster", "node"]);
    parses(&words[1..]).unwrap();

    let dir = temp_dir("deploy-systemd");
    let key = new_key(&dir);
    let (_log, log_port) = log_process(&dir.join("cluster.log"), &[]).await;
    let key_s = key.to_str().unwrap();
    let cache = dir.join("cache");
    let log_port = log_port.to_string();
    let metrics = kit::free_addr("127.0.0.1".parse().unwrap()).unwrap();
    // The unit's paths and addresses, as systemd would give them, here on loopback.
    let mut replaced = Vec::new();
    for (i, w) in words[1..].iter().enumerate() {
        let before = words[i].as_str();
        replaced.push(match (before, w.as_str()) {
            ("--host", "0.0.0.0") => "127.0.0.1".into(),
            ("--port", _) => "0".into(),
            ("--log-host", _) => "127.0.0.1".into(),
            ("--log-port", _) => log_port.clone(),
            ("--metrics", _) => metrics.to_string(),
            (_, "%d/cluster.key") => key_s.into(),
            (_, "%C/pcluster") => cache.to_str().unwrap().into(),
            _ => w.clone(),
        });
    }
    let left: Vec<&String> = replaced.iter().filter(|w| w.contains('%')).collect();
    assert!(left.is_empty(), "specifiers not replaced: {left:?}");
    let (_node, addr) = kit::spawn_server(
        pcluster_cmd()
            .args(&replaced)
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let status = |with_key: bool| {
        let mut cmd = pcluster_cmd();
        cmd.args(["status", &addr.to_string()]);
        if with_key {
            cmd.arg("--token-file").arg(&key);
        }
        cmd.env_remove("PCLUSTER_TOKEN")
            .env_remove("PCLUSTER_TOKEN_FILE")
            .output()
            .unwrap()
    };
    let ok = status(true);
    let text = String::from_utf8_lossy(&ok.stdout);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(
        text.contains(&addr.to_string()) && text.contains("free"),
        "{text}"
    );
    assert!(!status(false).status.success(), "a status without the key");
    // Its metrics, for Prometheus: read-only, no key needed.
    let (code, body) = kit::http_get(metrics, "/metrics").await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("pcluster_node_workers{"), "{body}");
}

/// Stand-ins on PATH: `scontrol` lists two hosts, `srun` runs its command once, and
/// `pcluster` (the script's `$PCLUSTER`) logs its exit code and arguments after running the
/// real binary with `--help`.
fn stand_ins(dir: &Path) -> (PathBuf, PathBuf) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let calls = dir.join("calls.txt");
    let real = kit::pcluster_exe().unwrap();
    let scripts = [
        (
            "scontrol",
            "#!/bin/sh\nprintf 'host-a\\nhost-b\\n'\n".to_string(),
        ),
        (
            "srun",
            "#!/bin/sh\nwhile [ \"${1#--}\" != \"$1\" ]; do shift; done\nexec \"$@\"\n".into(),
        ),
        (
            "pcluster",
            format!(
                "#!/bin/sh\n'{}' \"$@\" --help >/dev/null 2>&1\necho \"$? $*\" >>'{}'\n",
                real.display(),
                calls.display()
            ),
        ),
    ];
    for (name, text) in scripts {
        let path = bin.join(name);
        std::fs::write(&path, text).unwrap();
        let chmod = Command::new("chmod").arg("755").arg(&path).status();
        assert!(chmod.unwrap().success());
    }
    (bin, calls)
}

#[test]
fn the_slurm_script_makes_command_lines_that_parse() {
    let script = deploy("slurm/pcluster.sbatch");
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(
        syntax.status.success(),
        "{}",
        String::from_utf8_lossy(&syntax.stderr)
    );
    match Command::new("shellcheck").arg(&script).output() {
        Ok(out) => assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        ),
        Err(_) => eprintln!("shellcheck is not installed: only `bash -n` checked the script"),
    }

    let dir = temp_dir("deploy-slurm");
    let (bin, calls) = stand_ins(&dir);
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let job = dir.join("job");
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(&dir)
        .env("PATH", path)
        .env("PCLUSTER", bin.join("pcluster"))
        .env("PCLUSTER_JOB_DIR", &job)
        .env("PCLUSTER_TOKEN_FILE", dir.join("cluster.key"))
        .envs([
            ("SLURM_JOB_ID", "7"),
            ("SLURM_JOB_NODELIST", "host-[a-b]"),
            ("SLURM_JOB_NUM_NODES", "2"),
            ("CHAIN", "chain.toml"),
            ("INPUT", "items.txt"),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let calls = std::fs::read_to_string(&calls).unwrap_or_default();
    assert!(
        out.status.success(),
        "{}\ncalls:\n{calls}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nodes = std::fs::read_to_string(job.join("nodes.txt")).unwrap();
    assert_eq!(nodes, "host-a:6000\nhost-b:6000\n");
    for sub in ["log ", "node ", "status ", "run "] {
        assert!(
            calls.lines().any(|l| l.starts_with(&format!("0 {sub}"))),
            "no `pcluster {sub}` that parses among:\n{calls}"
        );
    }
    assert!(calls.lines().all(|l| l.starts_with("0 ")), "{calls}");
    assert!(calls.contains("--nodes-file"), "{calls}");
}

/// The `command: [...]` lists of a manifest (flow style: JSON), each without the program.
fn commands(yaml: &str) -> Vec<Vec<String>> {
    yaml.lines()
        .filter_map(|l| l.trim().strip_prefix("command: "))
        .map(|list| {
            let words: Vec<String> = serde_json::from_str(list).unwrap();
            assert_eq!(words[0], "/usr/local/bin/pcluster");
            words[1..].to_vec()
        })
        .collect()
}

#[test]
fn the_kubernetes_manifests_name_flags_that_exist() {
    let nodes = read("kubernetes/nodes.yaml");
    let job = read("kubernetes/run-job.yaml");
    let [node] = &commands(&nodes)[..] else {
        panic!("one command in nodes.yaml")
    };
    let [run] = &commands(&job)[..] else {
        panic!("one command in run-job.yaml")
    };
    parses(node).unwrap();
    parses(run).unwrap();
    assert_eq!(node[0], "node");
    assert!(!node.contains(&"--allow-native".into()));
    assert!(nodes.contains("clusterIP: None"), "a headless Service");
    assert!(nodes.contains("kind: DaemonSet") && job.contains("kind: Job"));
    let name = &run[run.iter().position(|w| w == "--nodes-dns").unwrap() + 1];
    assert_eq!(name, "pcluster-node.default.svc.cluster.local");
    assert!(
        nodes.contains("  name: pcluster-node\n"),
        "the Service's name"
    );
    for yaml in [&nodes, &job] {
        assert!(
            yaml.contains("name: pcluster-key"),
            "the token from the Secret"
        );
    }
    assert!(read("kubernetes/secret.yaml").contains("name: pcluster-key"));

    let check = "import sys, yaml\nfor f in sys.argv[1:]: list(yaml.safe_load_all(open(f)))";
    let has_yaml = Command::new("python3")
        .args(["-c", "import yaml"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !has_yaml {
        eprintln!("python3 has no PyYAML: the manifests' YAML was not parsed");
        return;
    }
    let files = ["nodes.yaml", "run-job.yaml", "secret.yaml"].map(|f| deploy("kubernetes").join(f));
    let out = Command::new("python3")
        .args(["-c", check])
        .args(files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
