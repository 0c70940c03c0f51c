//! `pcluster._native`: the Rust half of the Python package `pcluster`, built by maturin with
//! pyo3 (abi3, CPython ≥ 3.9).
//!
//! It holds what needs Rust: the root ([`root::Root`], the `pcluster-root` library on a tokio
//! runtime of its own), the log client, and reading a chain file to tell whether it names
//! Python tasks ([`chain_has_python`]). Everything about Python values (the item tags and
//! codecs, taskchain lists turned into chain files, the public `Root` class) is Python, in
//! `pcluster/`.

mod root;

use std::path::{Path, PathBuf};

use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(
    _native,
    PclusterError,
    PyException,
    "An error of the cluster: no node, a node that refused the chain, a chain file that \
     cannot be read, the root shut down, …; the message says which node and what happened."
);

/// Sends one line to the log server at `addr` (`host:port`) and waits briefly for it to be
/// written; the token comes from `PCLUSTER_TOKEN` when that is set.
#[pyfunction]
fn log(py: Python<'_>, message: &str, addr: &str) {
    py.detach(|| logserver::log(message, addr));
}

/// The module entries of a chain file (chain-level and per task), resolved against its
/// directory.
fn chain_modules(path: &Path) -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value: toml::Table =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut modules = Vec::new();
    let mut push = |v: Option<&toml::Value>| {
        if let Some(m) = v.and_then(toml::Value::as_str) {
            modules.push(base.join(m));
        }
    };
    push(value.get("module"));
    for task in value
        .get("task")
        .and_then(toml::Value::as_array)
        .into_iter()
        .flatten()
    {
        push(task.get("module"));
    }
    Ok(modules)
}

/// Whether a module entry names Python code: a `.py` file, or a directory that is not a Rust
/// task crate (a Python package).
fn is_python_module(m: &Path) -> bool {
    if m.is_dir() {
        !m.join("Cargo.toml").is_file()
    } else {
        m.extension().is_some_and(|e| e == "py")
    }
}

/// Whether the chain file at `path` names a Python task (then items between Python code are
/// tagged by type).
#[pyfunction]
fn chain_has_python(path: &str) -> PyResult<bool> {
    let modules = chain_modules(Path::new(path)).map_err(PclusterError::new_err)?;
    Ok(modules.iter().any(|m| is_python_module(m)))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("PclusterError", m.py().get_type::<PclusterError>())?;
    m.add_class::<root::Root>()?;
    m.add_function(wrap_pyfunction!(log, m)?)?;
    m.add_function(wrap_pyfunction!(chain_has_python, m)?)?;
    Ok(())
}
