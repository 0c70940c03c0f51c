//! Virtual environments of native tasks' requirements: one per (requirements, interpreter
//! version and platform, pip arguments), under the node's directory by the hash of those,
//! made with `venv` and `pip install` once and reused by every later setup. A file lock
//! makes concurrent setups (threads or node processes sharing the directory) wait for one
//! build; a build that failed or was cut short leaves no ready mark and is redone.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::{NativeConfig, NativeError};

/// Longest a venv creation or pip install may take.
const INSTALL_DEADLINE: Duration = Duration::from_secs(30 * 60);
/// Lines of pip's output quoted in an install error.
const TAIL_LINES: usize = 12;

/// The interpreter's version and platform, e.g. `3.11.7 linux x86_64`.
pub(super) fn version(python: &Path) -> Result<String, String> {
    let script =
        "import sys, platform; print(sys.version.split()[0], sys.platform, platform.machine())";
    let out = Command::new(python)
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The key of an environment: what decides which packages pip picks.
fn key(config: &NativeConfig, version: &str, requirements: &[String]) -> String {
    let mut reqs = requirements.to_vec();
    reqs.sort();
    let mut h = Sha256::new();
    for part in [
        version.to_owned(),
        config.pip_args.join("\0"),
        reqs.join("\0"),
    ] {
        h.update(part.as_bytes());
        h.update([0xff]);
    }
    super::hex(&h.finalize()[..16])
}

/// The interpreter of the environment holding `requirements`, made first if needed.
pub(super) fn ensure(
    root: &Path,
    config: &NativeConfig,
    version: &str,
    requirements: &[String],
    progress: &dyn Fn(&str),
) -> Result<PathBuf, NativeError> {
    let key = key(config, version, requirements);
    let dir = root.join(&key);
    let python = dir.join("bin").join("python");
    let ready = dir.join(".ready");
    if ready.exists() {
        return Ok(python);
    }
    let write = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NativeError::Write { path, source }
    };
    std::fs::create_dir_all(root).map_err(write(root))?;
    let lock_path = root.join(format!("{key}.lock"));
    let lock = std::fs::File::create(&lock_path).map_err(write(&lock_path))?;
    if lock.try_lock().is_err() {
        progress(&format!(
            "waiting for another setup's install of {}",
            requirements.join(" ")
        ));
        lock.lock().map_err(write(&lock_path))?;
    }
    if ready.exists() {
        return Ok(python);
    }
    let all = requirements.join(" ");
    let failed = |reason: String| NativeError::Install {
        requirements: all.clone(),
        reason,
    };
    let _ = std::fs::remove_dir_all(&dir);
    tracing::info!(requirements = %all, dir = %dir.display(), "building a Python environment");
    progress(&format!("installing {all} (venv and pip; once per node)"));
    let mut venv = Command::new(&config.python);
    venv.args(["-m", "venv"]).arg(&dir);
    run(&mut venv).map_err(|e| failed(format!("python -m venv: {e}")))?;
    let mut pip = Command::new(&python);
    pip.args([
        "-m",
        "pip",
        "install",
        "--disable-pip-version-check",
        "--no-input",
    ])
    .args(&config.pip_args)
    .args(requirements);
    run(&mut pip).map_err(failed)?;
    std::fs::write(&ready, all.as_bytes()).map_err(write(&ready))?;
    Ok(python)
}

/// Runs `cmd` to its end within [`INSTALL_DEADLINE`]; its output's last lines on failure.
fn run(cmd: &mut Command) -> Result<(), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("cannot start: {e}"))?;
    let (tx, rx) = std::sync::mpsc::sync_channel(2);
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let mut stream = stream;
            let _ = stream.read_to_end(&mut text);
            let _ = tx.send(text);
        });
    }
    drop(tx);
    let deadline = std::time::Instant::now() + INSTALL_DEADLINE;
    let mut output = Vec::new();
    // Both streams end when the process does (or when it is killed).
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(text) => output.extend_from_slice(&text),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no end after {} s", INSTALL_DEADLINE.as_secs()));
            }
        }
    }
    let status = child.wait().map_err(|e| e.to_string())?;
    if status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&output);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let tail = lines[lines.len().saturating_sub(TAIL_LINES)..].join("\n");
    Err(format!("{status}:\n{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_ignores_requirement_order_but_not_versions_or_pip_args() {
        let c = NativeConfig::default();
        let a = key(&c, "3.11.7 linux x86_64", &["b".into(), "a".into()]);
        assert_eq!(a, key(&c, "3.11.7 linux x86_64", &["a".into(), "b".into()]));
        assert_ne!(a, key(&c, "3.12.1 linux x86_64", &["a".into(), "b".into()]));
        let c2 = NativeConfig {
            pip_args: vec!["--no-index".into()],
            ..NativeConfig::default()
        };
        assert_ne!(
            a,
            key(&c2, "3.11.7 linux x86_64", &["a".into(), "b".into()])
        );
    }

    #[test]
    fn a_failing_command_reports_its_last_lines() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo one; echo two >&2; exit 3"]);
        let err = run(&mut cmd).unwrap_err();
        assert!(err.contains("exit status: 3"), "{err}");
        assert!(err.contains("one") && err.contains("two"), "{err}");
        assert!(run(Command::new("true").arg("x")).is_ok());
    }
}
