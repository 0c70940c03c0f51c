//! The built module lists its generators in the `pcluster.generators` custom section, which
//! the SDK writes from each task's signature (a return type that can hold several items, or an
//! emitter parameter), so a host knows them at setup.
//!
//! The module is built here for wasm32 as `pcluster run` builds it (release, this crate's own
//! target dir), and its sections are read by hand: a section is an id byte and a LEB128 size;
//! a custom section (id 0) starts with its LEB128-prefixed name.

use std::path::{Path, PathBuf};
use std::process::Command;

use pcluster_task::Task;

/// Builds this crate for wasm32 and returns the module's bytes.
fn built_module() -> Vec<u8> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(["build", "--release", "--target", "wasm32-unknown-unknown"])
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        // The outer cargo's settings are for the host build, not this one.
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_MAKEFLAGS")
        .status()
        .expect("run cargo");
    assert!(
        status.success(),
        "building tasks-example for wasm32 failed: {status}"
    );
    let wasm: PathBuf = dir.join("target/wasm32-unknown-unknown/release/tasks_example.wasm");
    std::fs::read(&wasm).unwrap_or_else(|e| panic!("read {}: {e}", wasm.display()))
}

/// An unsigned LEB128 number at `*at`, moving `*at` past it.
fn leb128(bytes: &[u8], at: &mut usize) -> Option<usize> {
    let mut value = 0usize;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(*at)?;
        *at += 1;
        value |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// The custom sections of a module: `(name, contents)`, in order.
fn custom_sections(module: &[u8]) -> Vec<(String, &[u8])> {
    assert_eq!(
        module.get(..8),
        Some(&b"\0asm\x01\0\0\0"[..]),
        "not a wasm module"
    );
    let mut sections = Vec::new();
    let mut at = 8;
    while at < module.len() {
        let id = module[at];
        at += 1;
        let size = leb128(module, &mut at).expect("section size");
        let body = module
            .get(at..at + size)
            .expect("section within the module");
        at += size;
        if id == 0 {
            let mut name_at = 0;
            let len = leb128(body, &mut name_at).expect("custom section name length");
            let name = body
                .get(name_at..name_at + len)
                .expect("custom section name");
            let name = String::from_utf8(name.to_vec()).expect("UTF-8 section name");
            sections.push((name, &body[name_at + len..]));
        }
    }
    sections
}

#[test]
fn the_module_lists_exactly_its_generators() {
    let module = built_module();
    let listed: Vec<u8> = custom_sections(&module)
        .into_iter()
        .filter(|(name, _)| name == "pcluster.generators")
        .flat_map(|(_, contents)| contents.iter().copied())
        .collect();
    let listed = String::from_utf8(listed).expect("UTF-8 names");
    assert!(
        listed.ends_with('\n'),
        "each name ends in a newline: {listed:?}"
    );
    let mut names: Vec<&str> = listed.lines().collect();
    names.sort_unstable();
    assert!(names.contains(&"w1_duplicate"), "{names:?}");
    assert!(!names.contains(&"w1_identity"), "{names:?}");

    // The same as the native glue says, task by task.
    let tasks: [Task; 14] = [
        tasks_example::simple_task::TASK,
        tasks_example::generator_task::TASK,
        tasks_example::drop_item::TASK,
        tasks_example::w1_identity::TASK,
        tasks_example::w1_duplicate::TASK,
        tasks_example::w1_drop_odd::TASK,
        tasks_example::w2_cpu::TASK,
        tasks_example::panic_task::TASK,
        tasks_example::spin_task::TASK,
        tasks_example::hog_task::TASK,
        tasks_example::fan_out::TASK,
        tasks_example::fan_seeds::TASK,
        tasks_example::prefix_task::TASK,
        tasks_example::point_mirror::TASK,
    ];
    let mut generators: Vec<&str> = tasks
        .iter()
        .filter(|t| t.generator())
        .map(Task::name)
        .collect();
    generators.sort_unstable();
    assert_eq!(names, generators);
    assert_eq!(
        names,
        ["fan_out", "fan_seeds", "generator_task", "w1_duplicate"]
    );
}
