//! What `pcluster run` builds, and `--no-build`: a chain's task crate is built with cargo
//! (its build scripts run on the root's machine) unless `--no-build`, which takes only a
//! `.wasm` newer than every source and otherwise stops, naming the crate. A Python package's
//! component holds that package alone: nothing that sits beside it, not even a name.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, SystemTime};

use crate::common::*;

/// `pcluster run demo/chain.toml` in `dir` (an embedded cluster, its cache under `dir`).
fn run_demo(dir: &Path, extra: &[&str]) -> Output {
    pcluster_cmd()
        .current_dir(dir)
        .args(["run", "demo/chain.toml", "-i", "demo/input.txt", "-q"])
        .args(extra)
        .env("PCLUSTER_CACHE_DIR", dir.join("cache"))
        .output()
        .unwrap()
}

/// The demo crate's words, upper-cased, sorted: what its chain outputs.
fn demo_words(out: &Output) -> Vec<String> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let mut words: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(String::from)
        .collect();
    words.sort();
    let mut want: Vec<String> = "HELLO WORLD THE QUICK BROWN FOX PCLUSTER RUNS TASKCHAINS"
        .split(' ')
        .map(String::from)
        .collect();
    want.sort();
    assert_eq!(words, want);
    words
}

fn modified(path: &Path) -> SystemTime {
    std::fs::metadata(path).unwrap().modified().unwrap()
}

fn set_modified(path: &Path, t: SystemTime) {
    std::fs::File::options()
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .unwrap();
}

/// Asserts `out` failed, its stderr holding every one of `needles`.
#[track_caller]
fn assert_refused(out: &Output, needles: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must be refused: {stderr}");
    for n in needles {
        assert!(stderr.contains(n), "stderr lacks {n:?}: {stderr}");
    }
    assert!(out.stdout.is_empty(), "no output");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_build_refuses_a_crate_newer_than_its_wasm_and_without_it_the_crate_is_built() {
    let dir = temp_dir("no-build");
    let new = pcluster_cmd()
        .current_dir(&dir)
        .args(["new", "demo"])
        .output()
        .unwrap();
    assert!(new.status.success(), "{new:?}");
    let wasm = dir.join("demo/target/wasm32-unknown-unknown/release/demo.wasm");

    // Never built: refused, and nothing ran cargo.
    let out = run_demo(&dir, &["--no-build"]);
    assert_refused(
        &out,
        &[
            "task crate `demo`",
            "has no prebuilt",
            "demo.wasm",
            "--no-build",
        ],
    );
    assert!(!dir.join("demo/target").exists(), "cargo ran");

    // Without the flag it is built, as before, and runs.
    demo_words(&run_demo(&dir, &[]));
    // Built and unchanged since: --no-build takes it.
    demo_words(&run_demo(&dir, &["--no-build"]));

    // An edit after the build: the crate is newer than its .wasm.
    let lib = dir.join("demo/src/lib.rs");
    let mut text = std::fs::read_to_string(&lib).unwrap();
    text.push_str("\n// An edit.\n");
    std::fs::write(&lib, text).unwrap();
    let built = modified(&lib) - Duration::from_secs(10);
    set_modified(&wasm, built);
    let out = run_demo(&dir, &["--no-build"]);
    assert_refused(
        &out,
        &[
            "task crate `demo`",
            "demo/target/wasm32-unknown-unknown/release/demo.wasm",
            "(demo/src/lib.rs changed since)",
        ],
    );
    assert_eq!(modified(&wasm), built, "nothing rebuilt it");

    // Without the flag it is rebuilt and runs.
    demo_words(&run_demo(&dir, &[]));
    assert!(modified(&wasm) > built, "rebuilt");
}

/// Whether `haystack` holds `needle`.
fn holds(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// componentize-py snapshots the interpreter after importing the task, and the snapshot
/// keeps what the import saw: with the package's parent directory on its search path, that
/// was the names of every file beside the package (their contents were not read). The
/// build's search path is a copy of the package alone, so the component holds none of them;
/// `--no-build` refuses the package until it is built, then takes the component as it is.
#[test]
fn a_python_component_holds_its_package_alone() {
    if !componentize_py() {
        return;
    }
    let dir = temp_dir("py-stray");
    let pkg = dir.join("task_package");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::copy(
        repo().join("examples/python/task_package/__init__.py"),
        pkg.join("__init__.py"),
    )
    .unwrap();
    let strays: [(PathBuf, &str); 3] = [
        (dir.join("stray_secret_5be1.txt"), "STRAY-CONTENT-5be1"),
        (
            dir.join("stray_module_5be1.py"),
            "X = 'STRAY-MODULE-5be1'\n",
        ),
        (dir.join(".stray_hidden_5be1"), "STRAY-HIDDEN-5be1"),
    ];
    for (path, text) in &strays {
        std::fs::write(path, text).unwrap();
    }
    let chain = dir.join("chain.toml");
    std::fs::write(
        &chain,
        "name = \"py-stray\"\nmodule = \"task_package\"\n[[task]]\nfunction = \"w1_identity\"\n",
    )
    .unwrap();
    let input = dir.join("in.txt");
    std::fs::write(&input, "item-0\n").unwrap();
    // Refused before anything is built or any node contacted (the address refuses).
    let out = pcluster_cmd()
        .arg("run")
        .arg(&chain)
        .arg("--input")
        .arg(&input)
        .args(["--nodes", "127.0.0.1:1", "--no-build"])
        .output()
        .unwrap();
    assert_refused(&out, &["Python package `task_package`", "has no prebuilt"]);
    assert!(!dir.join(".pcluster-build").exists(), "nothing built");

    let wasm = pcluster_build::Builder::new().build(&pkg).unwrap();
    let bytes = std::fs::read(&wasm).unwrap();
    assert!(holds(&bytes, "task_package"), "the package is in it");
    for (path, text) in &strays {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(!holds(&bytes, name), "{name} is in the component");
        assert!(
            !holds(&bytes, text.trim()),
            "{name}'s text is in the component"
        );
    }
    // The build leaves no copy of the package behind.
    let left: Vec<_> = std::fs::read_dir(wasm.parent().unwrap())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    let prebuilt = pcluster_build::Builder::new().prebuilt_only(true);
    assert_eq!(prebuilt.build(&pkg).unwrap(), wasm);
}
