//! Chains over the example tasks: where the repository is, the example module built for wasm32
//! (when out of date), chain specs from `(function, generator, args)` triples, and chain files
//! (TOML) for `pcluster run`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use protocol::{ChainSpec, Limits, TaskSpec};
use serde::Serialize;

use crate::Error;

/// One task of a chain: `(function, generator, args)`.
pub type TaskDef<'a> = (&'a str, bool, &'a str);

/// W1: `w1_identity → w1_duplicate (generator) → w1_drop_odd`.
pub const W1_TASKS: [TaskDef<'static>; 3] = [
    ("w1_identity", false, ""),
    ("w1_duplicate", true, ""),
    ("w1_drop_odd", false, ""),
];

/// The repository's root directory.
#[must_use]
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The example task crate.
#[must_use]
pub fn tasks_example_dir() -> PathBuf {
    repo().join("tasks-example")
}

/// The bytes of `tasks_example.wasm`, built for wasm32 first when out of date; read once per
/// process.
///
/// # Errors
/// When the build fails or the module cannot be read.
pub fn tasks_example_wasm() -> Result<Vec<u8>, Error> {
    static WASM: OnceLock<Vec<u8>> = OnceLock::new();
    if let Some(wasm) = WASM.get() {
        return Ok(wasm.clone());
    }
    let path = pcluster_build::rust::build_task_crate(&tasks_example_dir(), &|_| {})
        .map_err(|e| Error::BuildTasks(e.to_string()))?;
    let wasm = std::fs::read(&path).map_err(Error::io("cannot read", &path))?;
    Ok(WASM.get_or_init(|| wasm).clone())
}

/// A chain named `name` (version `1`) of `tasks`, all from `module`.
#[must_use]
pub fn chain_spec(name: &str, module: &[u8], tasks: &[TaskDef<'_>], limits: Limits) -> ChainSpec {
    ChainSpec {
        name: name.into(),
        version: "1".into(),
        modules: vec![module.to_vec().into()],
        tasks: tasks
            .iter()
            .map(|&(function, generator, args)| TaskSpec {
                function: function.into(),
                module: 0,
                generator,
                args: args.as_bytes().to_vec(),
                next: None,
                labels: Vec::new(),
            })
            .collect(),
        limits,
    }
}

/// The W1 chain over `module` (the example tasks), default limits.
#[must_use]
pub fn w1_chain(module: &[u8]) -> ChainSpec {
    chain_spec("w1", module, &W1_TASKS, Limits::default())
}

#[derive(Serialize)]
struct ChainFile<'a> {
    name: &'a str,
    version: &'a str,
    module: String,
    #[serde(rename = "task")]
    tasks: Vec<TaskEntry<'a>>,
}

#[derive(Serialize)]
struct TaskEntry<'a> {
    function: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    generator: bool,
    #[serde(skip_serializing_if = "str::is_empty")]
    args: &'a str,
}

/// The text of a chain file named `name` running `tasks` from `module` (a task crate's
/// directory or a `.wasm` file).
#[must_use]
pub fn chain_file_text(name: &str, module: &Path, tasks: &[TaskDef<'_>]) -> String {
    let file = ChainFile {
        name,
        version: "1",
        module: module.display().to_string(),
        tasks: tasks
            .iter()
            .map(|&(function, generator, args)| TaskEntry {
                function,
                generator,
                args,
            })
            .collect(),
    };
    // Strings and booleans always serialize.
    toml::to_string(&file).unwrap_or_default()
}

/// Writes `<dir>/<name>.toml`, a chain file running `tasks` from the example task crate.
///
/// # Errors
/// When the file cannot be written.
pub fn write_chain_file(dir: &Path, name: &str, tasks: &[TaskDef<'_>]) -> Result<PathBuf, Error> {
    let path = dir.join(format!("{name}.toml"));
    let text = chain_file_text(name, &tasks_example_dir(), tasks);
    std::fs::write(&path, text).map_err(Error::io("cannot write", &path))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chain_file_reads_back_as_the_same_chain() {
        let dir = crate::temp_dir("kit-chain-file").unwrap();
        // Any bytes do: loading a chain reads its module but does not compile it.
        let module = dir.join("tasks \"quoted\".wasm");
        std::fs::write(&module, b"\0asm not really").unwrap();
        let tasks = [
            ("first", false, ""),
            ("second", true, "args with \"quotes\" and\nlines"),
        ];
        let path = dir.join("c.toml");
        std::fs::write(&path, chain_file_text("c", &module, &tasks)).unwrap();
        let loaded = root::chain::load(&path, &root::chain::WasmFiles).unwrap();
        let expected = chain_spec("c", b"\0asm not really", &tasks, Limits::default());
        assert_eq!(loaded, expected);
    }

    #[test]
    fn w1_is_three_example_tasks() {
        let spec = w1_chain(b"module");
        let names: Vec<_> = spec.tasks.iter().map(|t| t.function.as_str()).collect();
        assert_eq!(names, ["w1_identity", "w1_duplicate", "w1_drop_odd"]);
        assert_eq!(spec.modules.len(), 1);
        assert!(spec.tasks[1].generator);
    }
}
