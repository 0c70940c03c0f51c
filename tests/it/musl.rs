//! The static binary (`cargo build --release --target x86_64-unknown-linux-musl -p
//! pcluster`, which `.ci/run` builds before the tests): `file` and `ldd` find it statically
//! linked, and it runs the README's first command with the outputs of the ordinary binary.
//! Skipped, saying so, when it has not been built.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use crate::common::*;

const TARGET: &str = "x86_64-unknown-linux-musl";

/// Where cargo puts the musl build of `pcluster`.
fn musl_exe() -> PathBuf {
    let target_dir =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from);
    target_dir.join(TARGET).join("release").join("pcluster")
}

/// The README's first command, run by `exe` in `dir` (where its log file goes); its output.
fn readme_run(exe: &std::path::Path, dir: &std::path::Path) -> Output {
    let out = Command::new(exe)
        .arg("run")
        .arg(repo().join("examples/w1.toml"))
        .arg("--input")
        .arg(repo().join("examples/w1-input.txt"))
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{} run: {}",
        exe.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn sorted(out: &Output) -> Vec<String> {
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    v.sort();
    v
}

fn tool(name: &str, exe: &std::path::Path) -> String {
    let out = Command::new(name).arg(exe).output().unwrap();
    // `ldd` exits non-zero for a binary that is not dynamic: its words are what counts.
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

#[test]
fn the_musl_binary_is_static_and_runs_the_readme_command() {
    let exe = musl_exe();
    if !exe.exists() {
        eprintln!(
            "SKIPPED: no static binary at {} (build it with `cargo build --release --target \
             {TARGET} -p pcluster`; .ci/run does)",
            exe.display()
        );
        return;
    }
    let file = tool("file", &exe);
    assert!(
        file.contains("statically linked") || file.contains("static-pie linked"),
        "file: {file}"
    );
    let ldd = tool("ldd", &exe);
    assert!(
        ldd.contains("not a dynamic executable") || ldd.contains("statically linked"),
        "ldd: {ldd}"
    );
    // The task crate's module is built (and fresh) before either run, so neither builds it.
    tasks_module();
    let (a, b) = (temp_dir("musl-run"), temp_dir("glibc-run"));
    let musl = readme_run(&exe, &a);
    let glibc = readme_run(pcluster().bin(), &b);
    assert!(!musl.stdout.is_empty());
    assert_eq!(sorted(&musl), sorted(&glibc), "the same outputs");
}
