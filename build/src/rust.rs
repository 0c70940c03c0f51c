//! Building a Rust task crate to wasm: `cargo build --release --target
//! wasm32-unknown-unknown` when its `.wasm` is missing or older than any of its sources (or
//! the task SDK's, when it sits beside the crate), adding the target to the toolchain first
//! where rustup can, so a fresh clone runs the examples directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::{BuildError, fresh};

/// Builds a Rust task crate for `wasm32-unknown-unknown` (release) if its `.wasm` is missing
/// or older than its sources (or the task SDK's, when it sits beside the crate), and returns
/// the `.wasm` path.
///
/// # Errors
/// When the directory is not a crate, cargo is missing, or the build fails.
pub fn build_task_crate(dir: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf, BuildError> {
    let manifest = dir.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).map_err(|source| BuildError::Read {
        path: manifest.clone(),
        source,
    })?;
    let value: toml::Value = toml::from_str(&text).map_err(|e| BuildError::Toml {
        path: manifest.clone(),
        message: e.to_string(),
    })?;
    let name = value
        .get("lib")
        .and_then(|l| l.get("name"))
        .or_else(|| value.get("package").and_then(|p| p.get("name")))
        .and_then(|n| n.as_str())
        .ok_or_else(|| BuildError::NoPackageName(manifest.clone()))?
        .replace('-', "_");
    let wasm = dir
        .join("target/wasm32-unknown-unknown/release")
        .join(format!("{name}.wasm"));
    let built = std::fs::metadata(&wasm).and_then(|m| m.modified()).ok();
    let mut newest = fresh::newest(dir, &["target"]);
    let sdk = dir.join("../task");
    if sdk.join("Cargo.toml").is_file() {
        newest = newest.max(fresh::newest(&sdk, &["target"]));
    }
    if built.is_some_and(|b| b >= newest) {
        return Ok(wasm);
    }
    ensure_wasm_target(dir, progress)?;
    progress(&format!(
        "building task crate {} for {WASM_TARGET}",
        dir.display()
    ));
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
        // A build reads nothing: whatever our stdin is must not reach cargo or rustc.
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .map_err(|source| BuildError::Cargo {
            dir: dir.to_path_buf(),
            source,
        })?;
    if !status.success() {
        return Err(BuildError::BuildFailed {
            dir: dir.to_path_buf(),
            status,
        });
    }
    if !wasm.is_file() {
        return Err(BuildError::NoWasm {
            dir: dir.to_path_buf(),
            wasm,
        });
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
fn ensure_wasm_target(dir: &Path, progress: &dyn Fn(&str)) -> Result<(), BuildError> {
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
    progress(&format!(
        "adding the {WASM_TARGET} target to the Rust toolchain (`{fix}`)"
    ));
    match Command::new("rustup")
        .args(["target", "add", WASM_TARGET])
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(BuildError::WasmTarget {
            sysroot,
            why: format!("`{fix}` failed ({s})"),
        }),
        Err(_) => Err(BuildError::WasmTarget {
            sysroot,
            why: "rustup is not installed to add it".into(),
        }),
    }
}
