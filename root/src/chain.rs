//! Chain files (TOML) and building a task crate to wasm when a chain names one.
//!
//! `module` is either a `.wasm` file or a directory holding a Rust task crate; a crate is
//! built with `cargo build --release --target wasm32-unknown-unknown` when its `.wasm` is
//! missing or older than any of its sources, so a fresh clone runs the examples directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use protocol::{ChainSpec, Limits, TaskSpec};
use serde::Deserialize;

use crate::error::RootError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChainFile {
    name: String,
    #[serde(default = "default_version")]
    version: String,
    module: Option<String>,
    #[serde(rename = "task", default)]
    tasks: Vec<TaskFile>,
    #[serde(default)]
    limits: LimitsFile,
}

fn default_version() -> String {
    "0".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TaskFile {
    function: String,
    #[serde(default)]
    generator: bool,
    #[serde(default)]
    args: String,
    module: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    deadline_ms: Option<u64>,
    memory_mb: Option<u64>,
    max_item_bytes: Option<u64>,
}

/// Reads a chain file, building and reading its modules.
///
/// # Errors
/// When the file is unreadable or invalid, or a module cannot be built or read.
pub fn load(path: &Path) -> Result<ChainSpec, RootError> {
    let err = |message: String| RootError::Chain {
        path: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let file: ChainFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    if file.tasks.is_empty() {
        return Err(err("the chain has no [[task]]".into()));
    }
    let mut module_paths: Vec<String> = Vec::new();
    let mut modules = Vec::new();
    let mut tasks = Vec::new();
    for t in file.tasks {
        let m = t.module.or_else(|| file.module.clone()).ok_or_else(|| {
            err(format!(
                "task `{}` has no module (set `module`)",
                t.function
            ))
        })?;
        let index = match module_paths.iter().position(|p| *p == m) {
            Some(i) => i,
            None => {
                let wasm = resolve_module(&base.join(&m)).map_err(&err)?;
                let bytes = std::fs::read(&wasm)
                    .map_err(|e| err(format!("cannot read module {}: {e}", wasm.display())))?;
                modules.push(serde_bytes::ByteBuf::from(bytes));
                module_paths.push(m);
                module_paths.len() - 1
            }
        };
        tasks.push(TaskSpec {
            function: t.function,
            module: index as u32,
            generator: t.generator,
            args: t.args.into_bytes(),
        });
    }
    let d = Limits::default();
    Ok(ChainSpec {
        name: file.name,
        version: file.version,
        modules,
        tasks,
        limits: Limits {
            deadline_ms: file.limits.deadline_ms.unwrap_or(d.deadline_ms),
            memory_mb: file.limits.memory_mb.unwrap_or(d.memory_mb),
            max_item_bytes: file.limits.max_item_bytes.unwrap_or(d.max_item_bytes),
        },
    })
}

/// The `.wasm` for a module entry: the file itself, or a task crate's build output (built
/// if out of date).
///
/// # Errors
/// When the path is neither, or the build fails.
pub fn resolve_module(path: &Path) -> Result<PathBuf, String> {
    if path.is_dir() {
        build_task_crate(path)
    } else if path.is_file() {
        Ok(path.to_path_buf())
    } else {
        Err(format!("module {} does not exist", path.display()))
    }
}

fn newest_source(dir: &Path) -> SystemTime {
    let mut newest = SystemTime::UNIX_EPOCH;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            let name = e.file_name();
            if name == "target" || name.to_string_lossy().starts_with('.') {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(m) = e.metadata().and_then(|m| m.modified()) {
                newest = newest.max(m);
            }
        }
    }
    newest
}

/// Builds a Rust task crate for `wasm32-unknown-unknown` (release) if its `.wasm` is missing
/// or older than its sources (or the task SDK's, when it sits beside the crate), and returns
/// the `.wasm` path.
///
/// # Errors
/// When the directory is not a crate, cargo is missing, or the build fails.
pub fn build_task_crate(dir: &Path) -> Result<PathBuf, String> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| format!("{} is not a task crate: {e}", dir.display()))?;
    let value: toml::Value =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", manifest.display()))?;
    let name = value
        .get("lib")
        .and_then(|l| l.get("name"))
        .or_else(|| value.get("package").and_then(|p| p.get("name")))
        .and_then(|n| n.as_str())
        .ok_or_else(|| format!("{}: no package name", manifest.display()))?
        .replace('-', "_");
    let wasm = dir
        .join("target/wasm32-unknown-unknown/release")
        .join(format!("{name}.wasm"));
    let built = std::fs::metadata(&wasm).and_then(|m| m.modified()).ok();
    let mut newest = newest_source(dir);
    let sdk = dir.join("../task");
    if sdk.join("Cargo.toml").is_file() {
        newest = newest.max(newest_source(&sdk));
    }
    if built.is_some_and(|b| b >= newest) {
        return Ok(wasm);
    }
    ensure_wasm_target(dir)?;
    tracing::info!(krate = %dir.display(), "building task crate for wasm32-unknown-unknown");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "--manifest-path",
        ])
        .arg(&manifest)
        // An outer cargo's settings must not leak into the guest build.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|e| format!("cannot run cargo to build {}: {e}", dir.display()))?;
    if !status.success() {
        return Err(format!(
            "building task crate {} failed ({status})",
            dir.display()
        ));
    }
    if !wasm.is_file() {
        return Err(format!(
            "build of {} produced no {}",
            dir.display(),
            wasm.display()
        ));
    }
    // cargo leaves the file untouched when nothing changed; touch it so the check above
    // does not rebuild every time.
    let _ = std::fs::File::options()
        .append(true)
        .open(&wasm)
        .and_then(|f| f.set_modified(SystemTime::now()));
    Ok(wasm)
}

/// The compilation target of task crates.
const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Makes sure the toolchain that builds the crate in `dir` has the wasm target: rustup does
/// not add the targets of `rust-toolchain.toml` to a toolchain that is already installed.
/// With rustup it adds the target; without, the error names the command that fixes it.
fn ensure_wasm_target(dir: &Path) -> Result<(), String> {
    let sysroot = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));
    let Some(sysroot) = sysroot else {
        // No rustc on PATH: let cargo's own error speak.
        return Ok(());
    };
    if sysroot.join("lib/rustlib").join(WASM_TARGET).is_dir() {
        return Ok(());
    }
    let fix = format!("rustup target add {WASM_TARGET}");
    tracing::warn!("the Rust toolchain lacks the {WASM_TARGET} target; running `{fix}`");
    eprintln!("pcluster: adding the {WASM_TARGET} target to the Rust toolchain (`{fix}`)");
    match Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!(
            "the Rust toolchain lacks the {WASM_TARGET} target and `{fix}` failed ({s}); run it by hand"
        )),
        Err(_) => Err(format!(
            "the Rust toolchain at {} lacks the {WASM_TARGET} target and rustup is not installed: \
             install the target for this toolchain (with rustup: `{fix}`)",
            sysroot.display()
        )),
    }
}
