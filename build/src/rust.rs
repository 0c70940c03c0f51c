//! Building a Rust task crate to wasm: `cargo build --release --target
//! wasm32-unknown-unknown` when its `.wasm` is missing or older than any of its sources (or
//! the task SDK's, when it sits beside the crate), adding the target to the toolchain first
//! where rustup can, so a fresh clone runs the examples directly.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

use crate::{BuildError, NotPrebuilt, Stale, fresh, staleness};

/// A task crate as its build sees it: its manifest, its package name and where its `.wasm`
/// lands.
struct TaskCrate {
    manifest: PathBuf,
    package: String,
    wasm: PathBuf,
}

impl TaskCrate {
    /// Reads the crate's manifest (reading runs nothing of the crate).
    fn read(dir: &Path) -> Result<TaskCrate, BuildError> {
        let manifest = dir.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).map_err(|source| BuildError::Read {
            path: manifest.clone(),
            source,
        })?;
        let value: toml::Value = toml::from_str(&text).map_err(|e| BuildError::Toml {
            path: manifest.clone(),
            message: e.to_string(),
        })?;
        let name = |table: &str| {
            value
                .get(table)
                .and_then(|t| t.get("name"))
                .and_then(|n| n.as_str())
        };
        let package = name("package").or_else(|| name("lib"));
        let lib = name("lib").or(package);
        let (Some(package), Some(lib)) = (package, lib) else {
            return Err(BuildError::NoPackageName(manifest));
        };
        let wasm = dir
            .join("target/wasm32-unknown-unknown/release")
            .join(format!("{}.wasm", lib.replace('-', "_")));
        Ok(TaskCrate {
            manifest,
            package: package.to_owned(),
            wasm,
        })
    }

    /// Why its `.wasm` does not stand for its sources (or the task SDK's, when it sits
    /// beside the crate), if it does not.
    fn stale(&self, dir: &Path) -> Option<Stale> {
        let built = std::fs::metadata(&self.wasm)
            .and_then(|m| m.modified())
            .ok();
        let mut newest = fresh::newest_file(dir, &["target"]);
        let sdk = dir.join("../task");
        if sdk.join("Cargo.toml").is_file() {
            newest = newest
                .into_iter()
                .chain(fresh::newest_file(&sdk, &["target"]))
                .max();
        }
        staleness(&self.wasm, built, newest)
    }
}

/// The `.wasm` of a task crate built before, when it is newer than the crate's sources (and
/// the task SDK's beside it); runs nothing.
///
/// # Errors
/// [`BuildError::NotPrebuilt`] naming the crate and its `.wasm` when that is missing or out of
/// date; when the directory is not a crate.
pub fn prebuilt_task_crate(dir: &Path) -> Result<PathBuf, BuildError> {
    // `demo/.` (a chain's `module = "."`) reads as `demo` in what the error names.
    let dir: PathBuf = dir.components().collect();
    let dir = dir.as_path();
    let krate = TaskCrate::read(dir)?;
    match krate.stale(dir) {
        None => Ok(krate.wasm),
        Some(stale) => Err(NotPrebuilt {
            kind: "task crate",
            fix: format!(
                "build it where its build scripts may run (`cargo build --release --target \
                 {WASM_TARGET} --manifest-path {}`), or run without --no-build",
                krate.manifest.display()
            ),
            name: krate.package,
            module: dir.to_path_buf(),
            stale,
        }
        .into()),
    }
}

/// Builds a Rust task crate for `wasm32-unknown-unknown` (release) if its `.wasm` is missing
/// or older than its sources (or the task SDK's, when it sits beside the crate), and returns
/// the `.wasm` path.
///
/// # Errors
/// When the directory is not a crate, cargo is missing, or the build fails.
pub fn build_task_crate(dir: &Path, progress: &dyn Fn(&str)) -> Result<PathBuf, BuildError> {
    let krate = TaskCrate::read(dir)?;
    if krate.stale(dir).is_none() {
        return Ok(krate.wasm);
    }
    let TaskCrate { manifest, wasm, .. } = krate;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fresh::set_mtime;

    #[test]
    fn a_prebuilt_wasm_is_taken_only_when_newer_than_every_source() {
        let dir = std::env::temp_dir().join(format!("pcluster-prebuilt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let krate = dir.join("my-tasks");
        std::fs::create_dir_all(krate.join("src")).unwrap();
        std::fs::write(krate.join("Cargo.toml"), "[package]\nname = \"my-tasks\"\n").unwrap();
        std::fs::write(krate.join("src/lib.rs"), "").unwrap();
        set_mtime(&krate.join("Cargo.toml"), 1_000);
        set_mtime(&krate.join("src/lib.rs"), 1_000);
        let err = prebuilt_task_crate(&krate).unwrap_err().to_string();
        assert!(
            err.starts_with("task crate `my-tasks` (")
                && err.contains("has no prebuilt")
                && err.contains("my_tasks.wasm")
                && err.contains("--manifest-path"),
            "{err}"
        );
        let wasm = krate.join("target/wasm32-unknown-unknown/release/my_tasks.wasm");
        std::fs::create_dir_all(wasm.parent().unwrap()).unwrap();
        std::fs::write(&wasm, b"\0asm").unwrap();
        set_mtime(&wasm, 2_000);
        assert_eq!(prebuilt_task_crate(&krate).unwrap(), wasm);
        // A source edited after the build: refused, naming the crate, the file and the wasm.
        set_mtime(&krate.join("src/lib.rs"), 3_000);
        let err = prebuilt_task_crate(&krate).unwrap_err();
        assert!(
            matches!(&err, BuildError::NotPrebuilt(e) if e.name == "my-tasks"
                && matches!(&e.stale, Stale::Older { newer, .. } if newer.ends_with("src/lib.rs"))),
            "{err}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
