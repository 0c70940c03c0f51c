//! `pcluster new NAME`: writes a task crate that builds as it is, with a chain file and an
//! input, so `pcluster run NAME/chain.toml -i NAME/input.txt` works right away.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context as _, bail};

#[derive(clap::Args, Debug)]
pub struct NewArgs {
    /// Directory to create; its last component names the crate.
    pub name: PathBuf,
    /// The task SDK (`pcluster-task`, not published): the `task/` directory of a pcluster
    /// checkout. Default: the checkout this binary was built from.
    #[arg(long)]
    pub sdk: Option<PathBuf>,
}

/// The SDK of the checkout this binary was built from.
fn default_sdk() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../task")
}

/// A crate name from a directory name: lowercase letters, digits and `_`.
fn crate_name(dir: &Path) -> anyhow::Result<String> {
    let raw = dir
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no usable last component", dir.display()))?;
    let name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        bail!("`{raw}` cannot name a crate: start it with a letter");
    }
    Ok(name)
}

fn cargo_toml(name: &str, sdk: &Path) -> String {
    // A TOML basic string: escape what would end or break it.
    let sdk = sdk
        .display()
        .to_string()
        .replace('\\', "\\\\")
        .replace('"', "\\\"");
    format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
# A wasm module for the nodes; "rlib" lets the tasks be unit-tested natively.
crate-type = ["cdylib", "rlib"]

[dependencies]
# The task SDK is not published: it comes from a pcluster checkout.
pcluster-task = {{ path = "{sdk}" }}

# A crate of its own, even when created inside another workspace.
[workspace]

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
# A panic fails only its item: the node reports its message and rebuilds the instance.
panic = "abort"
"#
    )
}

const LIB_RS: &str = r#"//! Tasks of this chain. Each takes one item and returns one (a plain task), several (a
//! generator: `generator = true` in chain.toml) or none (`None` drops the item).

use pcluster_task::{info, task};

task! {
    /// Upper-cases a line.
    pub fn shout(item: &str) -> String {
        info!("shout: {item}");
        item.to_uppercase()
    }
}

task! {
    /// Splits a line into its words: one output per word.
    pub fn words(item: &str) -> Vec<String> {
        item.split_whitespace().map(str::to_string).collect()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tasks_run_natively() {
        // The functions stay callable as they are.
        assert_eq!(super::shout("hi there"), "HI THERE");
        assert_eq!(super::words("a b"), ["a", "b"]);
    }
}
"#;

fn chain_toml(name: &str) -> String {
    format!(
        r#"name = "{name}"
version = "0.1"
module = "."          # this crate; pcluster run builds it for wasm32 when out of date

[[task]]
function = "shout"

[[task]]
function = "words"
generator = true      # may emit several items per input

[limits]
deadline_ms = 10000   # per item and task call
memory_mb = 64        # per task instance
"#
    )
}

const INPUT: &str = "hello world\nthe quick brown fox\npcluster runs taskchains\n";

pub fn run(args: NewArgs) -> anyhow::Result<ExitCode> {
    let dir = &args.name;
    let name = crate_name(dir)?;
    if dir.exists() {
        bail!("{} already exists", dir.display());
    }
    let sdk = args.sdk.clone().unwrap_or_else(default_sdk);
    let sdk = sdk.canonicalize().with_context(|| {
        format!(
            "the task SDK is not at {}: pass --sdk PATH/TO/pcluster/task",
            sdk.display()
        )
    })?;
    if !sdk.join("Cargo.toml").is_file() {
        bail!("{} is not the task SDK (no Cargo.toml)", sdk.display());
    }
    let write = |rel: &str, text: &str| -> anyhow::Result<()> {
        let p = dir.join(rel);
        std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))
    };
    std::fs::create_dir_all(dir.join("src"))
        .with_context(|| format!("cannot create {}", dir.display()))?;
    write("Cargo.toml", &cargo_toml(&name, &sdk))?;
    write("src/lib.rs", LIB_RS)?;
    write("chain.toml", &chain_toml(&name))?;
    write("input.txt", INPUT)?;
    write(".gitignore", "/target\n")?;
    let d = dir.display();
    eprintln!("created task crate `{name}` in {d}: Cargo.toml, src/lib.rs, chain.toml, input.txt");
    eprintln!("run it:   pcluster run {d}/chain.toml -i {d}/input.txt");
    eprintln!("test it:  cargo test --manifest-path {d}/Cargo.toml");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crate_names_come_from_the_last_component() {
        assert_eq!(crate_name(Path::new("a/b/My-Demo")).unwrap(), "my_demo");
        assert!(crate_name(Path::new("9lives")).is_err());
    }

    #[test]
    fn the_manifest_is_valid_toml_with_the_sdk_path() {
        let text = cargo_toml("demo", Path::new("/x/y \"z\"/task"));
        let v: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            v["dependencies"]["pcluster-task"]["path"].as_str(),
            Some("/x/y \"z\"/task")
        );
        assert!(v.get("workspace").is_some());
        assert_eq!(v["profile"]["release"]["panic"].as_str(), Some("abort"));
        let chain: toml::Value = toml::from_str(&chain_toml("demo")).unwrap();
        assert_eq!(chain["task"].as_array().unwrap().len(), 2);
    }
}
