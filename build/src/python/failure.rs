//! Reading a failed componentize-py build ([`import_failure`], a pure function of its
//! output): the module that failed to import, the exception and where, and whether the
//! package has C extensions (which the component runtime cannot bundle), is missing, or
//! raised; [`ImportFailure::explain`] says so to the task's author.

use super::choose::{Componentizer, Origin};
use super::{COMPONENTIZE_PY_ENV, GLUE_FILE, OUTPUT_HEAD, OUTPUT_LINES};

/// The header line of a Python traceback.
const TRACEBACK: &str = "Traceback (most recent call last):";

/// One Python traceback in componentize-py's output.
#[derive(Debug, Default)]
struct Traceback<'a> {
    /// Its frames' files and line numbers, outermost first.
    frames: Vec<(&'a str, &'a str)>,
    /// The exception's line: `Type: message` (the first line of the message).
    exception: Option<&'a str>,
}

/// The tracebacks in `output`, in order.
fn tracebacks(output: &str) -> Vec<Traceback<'_>> {
    let mut found: Vec<Traceback<'_>> = Vec::new();
    let mut in_frames = false;
    for line in output.lines() {
        // componentize-py's own exception reads `AssertionError: Traceback …`: the guest's
        // traceback starts on that line.
        if line.trim_end().ends_with(TRACEBACK) {
            found.push(Traceback::default());
            in_frames = true;
            continue;
        }
        let Some(tb) = found.last_mut() else {
            continue;
        };
        if !in_frames {
            continue;
        }
        if let Some(frame) = line.strip_prefix("  File \"") {
            if let Some((file, rest)) = frame.split_once('"') {
                let number = rest
                    .strip_prefix(", line ")
                    .and_then(|r| r.split(',').next())
                    .unwrap_or("")
                    .trim();
                tb.frames.push((file, number));
            }
        } else if !line.is_empty() && !line.starts_with(' ') {
            tb.exception = Some(line.trim_end());
            in_frames = false;
        }
    }
    found
}

/// A file as the component sees it: componentize-py mounts each search-path directory (ours,
/// then the site-packages) at `/0`, `/1`, …; this is the path inside that directory.
fn mounted(file: &str) -> Option<&str> {
    let (n, path) = file.strip_prefix('/')?.split_once('/')?;
    n.parse::<usize>().ok().map(|_| path)
}

/// Whether a traceback's file is one inside the component (not componentize-py's own).
fn in_component(file: &str) -> bool {
    mounted(file).is_some() || file.starts_with('<') || file.starts_with("/python/")
}

/// The top-level module of a path inside a search-path directory (`numpy/_core/x.py` →
/// `numpy`, `six.py` → `six`).
fn top_level(path: &str) -> &str {
    let first = path.split('/').next().unwrap_or(path);
    first.strip_suffix(".py").unwrap_or(first)
}

/// The top-level package of a dotted module name (`numpy._core` → `numpy`).
fn root_package(name: &str) -> &str {
    name.split('.').next().unwrap_or(name)
}

/// The type (last dotted part) and message of an exception line.
fn split_exception(line: &str) -> (&str, &str) {
    let (kind, message) = line.split_once(':').unwrap_or((line, ""));
    (kind.rsplit('.').next().unwrap_or(kind), message.trim())
}

/// Why importing the task's module failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A package with C extensions built for this machine: it cannot be bundled.
    Native,
    /// A module that is not installed where componentize-py looks for packages.
    Missing,
    /// Code that raised while it was imported (a syntax error, an exception).
    Raised,
}

/// An import of the task's module that failed while componentize-py built the component.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportFailure {
    /// The module at fault: the package with C extensions, the missing module, or the module
    /// whose code raised.
    pub module: String,
    /// Why.
    pub cause: Cause,
    /// The exception's line (its cause's, when it has no one-line message).
    pub exception: String,
    /// Where it was raised: a file (relative to its search-path directory) and a line.
    pub location: Option<String>,
}

/// The import failure that componentize-py's `output` reports for the task module `task`:
/// the last traceback through our glue, read with the tracebacks it chains to; `None` when
/// the build failed otherwise.
pub fn import_failure(output: &str, task: &str) -> Option<ImportFailure> {
    let tbs = tracebacks(output);
    let glue = tbs
        .iter()
        .rposition(|tb| tb.frames.iter().any(|(f, _)| mounted(f) == Some(GLUE_FILE)))?;
    // The tracebacks right before it that ran in the component are its causes.
    let first = (0..glue)
        .rev()
        .take_while(|&i| {
            let frames = &tbs[i].frames;
            !frames.is_empty() && frames.iter().all(|(f, _)| in_component(f))
        })
        .last()
        .unwrap_or(glue);
    let chain = &tbs[first..=glue];
    let last = tbs[glue].exception?;
    // A message on lines of its own (numpy's) says less in one line than its cause does.
    let exception = if split_exception(last).1.is_empty() {
        chain.iter().find_map(|tb| tb.exception).unwrap_or(last)
    } else {
        last
    };
    // The last traceback's frames in files of the search path (not the standard library).
    let frames: Vec<(&str, &str)> = tbs[glue]
        .frames
        .iter()
        .filter_map(|&(f, n)| Some((mounted(f)?, n)))
        .collect();
    let location = frames.last().map(|(path, n)| format!("{path}, line {n}"));
    let (module, cause) = classify(chain, &frames, task, output);
    Some(ImportFailure {
        module,
        cause,
        exception: exception.to_string(),
        location,
    })
}

/// The module at fault and why, for a failed import of the module `task`: `chain` holds its
/// tracebacks (causes first), `frames` the search-path frames of the last one.
fn classify(
    chain: &[Traceback<'_>],
    frames: &[(&str, &str)],
    task: &str,
    output: &str,
) -> (String, Cause) {
    let loaded = |module: &str| {
        chain
            .iter()
            .flat_map(|tb| &tb.frames)
            .any(|(f, _)| mounted(f).is_some_and(|p| top_level(p) == module))
    };
    // The module a ModuleNotFoundError names, in any traceback of the chain.
    let not_found = chain.iter().rev().find_map(|tb| {
        let (kind, message) = split_exception(tb.exception?);
        (kind == "ModuleNotFoundError")
            .then(|| {
                message
                    .strip_prefix("No module named '")?
                    .strip_suffix('\'')
            })
            .flatten()
    });
    // The innermost module whose code raised, other than the task's own and our glue.
    let glue = top_level(GLUE_FILE);
    let raised_in = frames
        .iter()
        .rev()
        .map(|(p, _)| top_level(p))
        .find(|m| *m != task && *m != glue)
        .unwrap_or(task);
    let import_error = chain.iter().any(|tb| {
        tb.exception.is_some_and(|e| {
            let kind = split_exception(e).0;
            kind.ends_with("ImportError") || kind == "ModuleNotFoundError"
        })
    });
    match not_found {
        Some(name) if root_package(name) == task => (name.to_string(), Cause::Raised),
        // The package was found but a submodule of it was not: its compiled part, which
        // componentize-py leaves out (it bundles only extensions built for WebAssembly).
        Some(name) if loaded(root_package(name)) => (root_package(name).to_string(), Cause::Native),
        _ if import_error && mentions_c_extensions(output) => {
            (raised_in.to_string(), Cause::Native)
        }
        Some(name) => (name.to_string(), Cause::Missing),
        None => (raised_in.to_string(), Cause::Raised),
    }
}

/// Whether `text` speaks of compiled extension modules: their files (`.so`, `.pyd`) or
/// "C extensions" (numpy says "C-extensions").
fn mentions_c_extensions(text: &str) -> bool {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_ascii_alphanumeric())
                .to_ascii_lowercase()
        })
        .collect();
    words.iter().enumerate().any(|(i, w)| {
        w.starts_with("c-extension")
            || (w == "c" && words.get(i + 1).is_some_and(|n| n.starts_with("extension")))
            || w.ends_with(".so")
            || w.ends_with(".pyd")
    })
}

impl ImportFailure {
    /// What went wrong and what to do, for someone who wrote the task; `tool` is the
    /// componentize-py that ran (where it took packages from).
    pub fn explain(&self, tool: &Componentizer) -> String {
        let m = &self.module;
        let at = match &self.location {
            Some(l) => format!("{}, at {l}", self.exception),
            None => self.exception.clone(),
        };
        match self.cause {
            Cause::Native => format!(
                "the task imports `{m}`, which has C extensions: C extensions cannot be \
                 bundled into the sandboxed component runtime; they need a native Python \
                 runtime, which pcluster does not offer yet ({at})"
            ),
            Cause::Missing => {
                let mut text = format!(
                    "module `{m}` is not among the packages of {}, where componentize-py \
                     takes them from ({at}): install it there, or run pcluster from the \
                     virtual environment that has it",
                    tool.packages
                );
                if tool.origin == Origin::Path {
                    text.push_str(&format!(
                        "; {} may belong to another Python than the one that has `{m}`: \
                         install componentize-py into that environment, or set \
                         {COMPONENTIZE_PY_ENV}",
                        tool.describe()
                    ));
                }
                text
            }
            Cause::Raised => format!("importing `{m}` failed: {at}"),
        }
    }
}

/// componentize-py's output for an error: without the Rust backtrace of componentize-py
/// itself, and at most [`OUTPUT_LINES`] lines (the first few and the last ones).
pub(super) fn shorten(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .take_while(|l| l.trim() != "Stack backtrace:")
        .collect();
    let text = if lines.len() <= OUTPUT_LINES {
        lines.join("\n")
    } else {
        let tail = OUTPUT_LINES - OUTPUT_HEAD;
        format!(
            "{}\n[… {} lines left out …]\n{}",
            lines[..OUTPUT_HEAD].join("\n"),
            lines.len() - OUTPUT_LINES,
            lines[lines.len() - tail..].join("\n")
        )
    };
    text.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::{Packages, PythonError};
    use std::process::ExitStatus;

    // componentize-py's output (0.25.1) for task packages built as `build_component` builds
    // them, captured and trimmed (frames of importlib's bootstrap and most of numpy's long
    // message left out).
    /// `import numpy` with numpy installed in the virtual environment: its C extensions are
    /// x86-64 files componentize-py leaves out.
    const NUMPY_INSTALLED: &str = r#"Traceback (most recent call last):
  File "/tmp/pyerr/venv-np/bin/componentize-py", line 8, in <module>
    sys.exit(script())
             ^^^^^^^^
AssertionError: Traceback (most recent call last):
  File "/2/numpy/_core/__init__.py", line 24, in <module>
    from . import multiarray
  File "/2/numpy/_core/multiarray.py", line 11, in <module>
    from . import _multiarray_umath, overrides
  File "/2/numpy/_core/overrides.py", line 6, in <module>
    from numpy._core._multiarray_umath import (
    ...<3 lines>...
    )
ModuleNotFoundError: No module named 'numpy._core._multiarray_umath'

The above exception was the direct cause of the following exception:

Traceback (most recent call last):
  File "/0/pcluster_glue.py", line 28, in <module>
    _USER = importlib.import_module(_pcluster_config.MODULE)
  File "/python/importlib/__init__.py", line 88, in import_module
    return _bootstrap._gcd_import(name[level:], package, level)
           ~~~~~~~~~~~~~~~~~~~~~~^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/1/np_task/__init__.py", line 1, in <module>
    import numpy as np
  File "/2/numpy/__init__.py", line 112, in <module>
    from numpy.__config__ import show_config
  File "/2/numpy/__config__.py", line 4, in <module>
    from numpy._core._multiarray_umath import (
    ...<3 lines>...
    )
  File "/2/numpy/_core/__init__.py", line 85, in <module>
    raise ImportError(msg) from exc
ImportError: 

IMPORTANT: PLEASE READ THIS FOR ADVICE ON HOW TO SOLVE THIS ISSUE!

Importing the numpy C-extensions failed. This error can happen for
many reasons, often due to issues with your setup or how NumPy was
installed.
The following compiled module files exist, but seem incompatible
with with either python 'cpython-314' or the platform 'wasi':

  * _multiarray_umath.cpython-311-x86_64-linux-gnu.so

Original error was: No module named 'numpy._core._multiarray_umath'



Caused by:
    ImportError: 
    
    IMPORTANT: PLEASE READ THIS FOR ADVICE ON HOW TO SOLVE THIS ISSUE!
    
    Original error was: No module named 'numpy._core._multiarray_umath'
"#;

    /// `import numpy` where componentize-py looked has no numpy.
    const NUMPY_MISSING: &str = r#"Traceback (most recent call last):
  File "/tmp/pyerr/venv-plain/bin/componentize-py", line 8, in <module>
    sys.exit(script())
             ^^^^^^^^
AssertionError: Traceback (most recent call last):
  File "/0/pcluster_glue.py", line 28, in <module>
    _USER = importlib.import_module(_pcluster_config.MODULE)
  File "/python/importlib/__init__.py", line 88, in import_module
    return _bootstrap._gcd_import(name[level:], package, level)
           ~~~~~~~~~~~~~~~~~~~~~~^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/1/np_task/__init__.py", line 1, in <module>
    import numpy as np
ModuleNotFoundError: No module named 'numpy'


Caused by:
    ModuleNotFoundError: No module named 'numpy'
"#;

    /// A syntax error in the task's module.
    const SYNTAX_ERROR: &str = r#"Traceback (most recent call last):
  File "/tmp/pyerr/venv-np/bin/componentize-py", line 8, in <module>
    sys.exit(script())
             ^^^^^^^^
AssertionError: Traceback (most recent call last):
  File "/0/pcluster_glue.py", line 28, in <module>
    _USER = importlib.import_module(_pcluster_config.MODULE)
  File "/python/importlib/__init__.py", line 88, in import_module
    return _bootstrap._gcd_import(name[level:], package, level)
           ~~~~~~~~~~~~~~~~~~~~~~^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/1/syn_task/__init__.py", line 1
    def task(item)
                  ^
SyntaxError: expected ':'


Caused by:
    SyntaxError: expected ':' (__init__.py, line 1)
"#;

    /// A module of the task's package that raises when imported.
    const RAISES: &str = r#"Traceback (most recent call last):
  File "/tmp/pyerr/venv-np/bin/componentize-py", line 8, in <module>
    sys.exit(script())
             ^^^^^^^^
AssertionError: Traceback (most recent call last):
  File "/0/pcluster_glue.py", line 28, in <module>
    _USER = importlib.import_module(_pcluster_config.MODULE)
  File "/python/importlib/__init__.py", line 88, in import_module
    return _bootstrap._gcd_import(name[level:], package, level)
           ~~~~~~~~~~~~~~~~~~~~~~^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
  File "/1/exc_task/__init__.py", line 1, in <module>
    from . import helper
  File "/1/exc_task/helper.py", line 1, in <module>
    raise ValueError("bad config")
ValueError: bad config


Caused by:
    ValueError: bad config
"#;

    /// What the glue made of every failed import before it kept stderr for the build: a
    /// trap in the `log` stub, naming neither module nor exception.
    const TRAPPED: &str = r#"Traceback (most recent call last):
  File "/tmp/pyerr/venv-np/bin/componentize-py", line 8, in <module>
    sys.exit(script())
             ^^^^^^^^
AssertionError: 

Caused by:
    0: error while executing at wasm backtrace:
           0: 0xa0619d - <unknown>!<wasm function 87>
           1: 0x9fa11b - <unknown>!adapter log
           4: 0x1f3786 - libpython3.14.so!cfunction_vectorcall_FASTCALL_KEYWORDS
          19: 0x3a21f2 - libpython3.14.so!_PyErr_Display
    1: called trapping stub: log
"#;

    #[test]
    fn a_package_with_c_extensions_is_named_and_needs_a_native_runtime() {
        let failure = import_failure(NUMPY_INSTALLED, "np_task").unwrap();
        assert_eq!(
            failure,
            ImportFailure {
                module: "numpy".into(),
                cause: Cause::Native,
                exception: "ModuleNotFoundError: No module named 'numpy._core._multiarray_umath'"
                    .into(),
                location: Some("numpy/_core/__init__.py, line 85".into()),
            }
        );
        let text = failure.explain(&Componentizer::plain(
            Origin::VirtualEnv,
            Packages::VirtualEnv("/venv".into()),
        ));
        assert!(text.contains("`numpy`, which has C extensions"), "{text}");
        assert!(
            text.contains("cannot be bundled into the sandboxed component runtime"),
            "{text}"
        );
        assert!(text.contains("need a native Python runtime"), "{text}");
    }

    #[test]
    fn a_module_not_installed_is_missing_and_the_message_says_where_the_build_looked() {
        let failure = import_failure(NUMPY_MISSING, "np_task").unwrap();
        assert_eq!(failure.module, "numpy");
        assert_eq!(failure.cause, Cause::Missing);
        assert_eq!(
            failure.exception,
            "ModuleNotFoundError: No module named 'numpy'"
        );
        assert_eq!(
            failure.location.as_deref(),
            Some("np_task/__init__.py, line 1")
        );
        let in_venv = failure.explain(&Componentizer::plain(
            Origin::Python,
            Packages::VirtualEnv("/v".into()),
        ));
        assert!(
            in_venv.starts_with(
                "module `numpy` is not among the packages of the virtual environment /v"
            ),
            "{in_venv}"
        );
        assert!(!in_venv.contains(COMPONENTIZE_PY_ENV), "{in_venv}");
        // The fallback on PATH: it may belong to another Python.
        let on_path = failure.explain(&Componentizer::plain(Origin::Path, Packages::Python3OnPath));
        assert!(on_path.contains("the python3 on PATH"), "{on_path}");
        assert!(
            on_path.contains("the componentize-py on PATH may belong to another Python"),
            "{on_path}"
        );
        assert!(on_path.contains("set COMPONENTIZE_PY"), "{on_path}");
    }

    #[test]
    fn code_that_raises_on_import_is_named_with_its_exception_and_line() {
        let syntax = import_failure(SYNTAX_ERROR, "syn_task").unwrap();
        assert_eq!(syntax.cause, Cause::Raised);
        assert_eq!(
            syntax.explain(&Componentizer::plain(Origin::Path, Packages::Python3OnPath)),
            "importing `syn_task` failed: SyntaxError: expected ':', at syn_task/__init__.py, line 1"
        );
        let raised = import_failure(RAISES, "exc_task").unwrap();
        assert_eq!(
            raised,
            ImportFailure {
                module: "exc_task".into(),
                cause: Cause::Raised,
                exception: "ValueError: bad config".into(),
                location: Some("exc_task/helper.py, line 1".into()),
            }
        );
    }

    #[test]
    fn other_failures_are_not_import_failures() {
        assert_eq!(import_failure(TRAPPED, "np_task"), None);
        assert_eq!(import_failure("error: no world named `task`", "t"), None);
        assert_eq!(import_failure("", "t"), None);
    }

    #[test]
    fn the_output_in_an_error_loses_the_rust_backtrace_and_its_middle() {
        let text = format!("{SYNTAX_ERROR}\nStack backtrace:\n   0: <anyhow::Error>::msg\n");
        let short = shorten(&text);
        assert!(
            short.ends_with("SyntaxError: expected ':' (__init__.py, line 1)"),
            "{short}"
        );
        let long: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let short = shorten(&long);
        assert_eq!(short.lines().count(), OUTPUT_LINES + 1);
        assert!(short.starts_with("line 0\n"));
        assert!(short.contains("[… 40 lines left out …]"));
        assert!(short.ends_with("line 99"));
    }

    #[cfg(unix)]
    #[test]
    fn a_failed_build_says_why_before_the_output() {
        use std::os::unix::process::ExitStatusExt;
        let tool = Componentizer::plain(Origin::Path, Packages::Python3OnPath);
        let e = PythonError::BuildFailed {
            module: "tasks/np_task".into(),
            program: tool.describe(),
            status: ExitStatus::from_raw(1 << 8),
            explanation: import_failure(NUMPY_INSTALLED, "np_task")
                .unwrap()
                .explain(&tool),
            output: shorten(NUMPY_INSTALLED),
        };
        let text = e.to_string();
        assert!(
            text.starts_with(
                "building tasks/np_task with the componentize-py on PATH failed (exit status: 1): \
                 the task imports `numpy`, which has C extensions"
            ),
            "{text}"
        );
        let output = text.find("componentize-py's output:\nTraceback").unwrap();
        assert!(text[..output].contains("native Python runtime"), "{text}");
    }
}
