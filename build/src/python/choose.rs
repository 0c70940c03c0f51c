//! Which componentize-py builds a Python task, and which virtual environment it takes the
//! task's packages from ([`choose_componentizer`], a pure function of the environment): the
//! Python running pcluster's Python package, or the active virtual environment, wins over
//! the `PATH`, so a package installed where the user works is found.

use std::fmt;
use std::path::{Path, PathBuf};

use super::{COMPONENTIZE_PY_ENV, PROGRAM, PYTHON_ENV, SCRIPTS, VIRTUAL_ENV};

/// The environment variables that choose a build's componentize-py ([`choose_componentizer`]);
/// empty ones count as unset.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BuildEnv {
    /// `$COMPONENTIZE_PY`: the program, named by the user.
    pub componentize_py: Option<PathBuf>,
    /// `$PCLUSTER_PYTHON`: the Python interpreter running pcluster's Python package.
    pub python: Option<PathBuf>,
    /// `$VIRTUAL_ENV`: the active virtual environment.
    pub virtual_env: Option<PathBuf>,
}

impl BuildEnv {
    /// This process's.
    pub fn from_env() -> BuildEnv {
        let var = |name: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        BuildEnv {
            componentize_py: var(COMPONENTIZE_PY_ENV),
            python: var(PYTHON_ENV),
            virtual_env: var(VIRTUAL_ENV),
        }
    }
}

/// Where a build's componentize-py comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// `$COMPONENTIZE_PY`.
    Variable,
    /// Beside the Python interpreter running pcluster (`$PCLUSTER_PYTHON`).
    Python,
    /// The active virtual environment (`$VIRTUAL_ENV`).
    VirtualEnv,
    /// The `PATH`: the fallback, which may belong to another Python.
    Path,
}

/// Where componentize-py takes the packages a task imports from (they are bundled into the
/// component). It reads `VIRTUAL_ENV` itself; without it, it asks the `python3` on `PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Packages {
    /// The site-packages of this virtual environment (given to componentize-py as
    /// `VIRTUAL_ENV`).
    VirtualEnv(PathBuf),
    /// Those of the `python3` on `PATH`.
    Python3OnPath,
}

impl fmt::Display for Packages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Packages::VirtualEnv(v) => write!(f, "the virtual environment {}", v.display()),
            Packages::Python3OnPath => f.write_str("the python3 on PATH"),
        }
    }
}

/// The componentize-py a build runs, and where it takes packages from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Componentizer {
    /// The program (a bare name when it is looked up on `PATH`).
    pub program: PathBuf,
    /// Where it comes from.
    pub origin: Origin,
    /// Where the task's packages come from.
    pub packages: Packages,
    /// The first place a componentize-py was expected but missing, before falling back to
    /// `PATH`.
    pub missed: Option<PathBuf>,
}

impl Componentizer {
    /// The program named `componentize-py`, chosen so (for tests of what is said of it).
    #[cfg(test)]
    pub(crate) fn plain(origin: Origin, packages: Packages) -> Componentizer {
        Componentizer {
            program: PathBuf::from(PROGRAM),
            origin,
            packages,
            missed: None,
        }
    }

    /// The program, for messages.
    pub fn describe(&self) -> String {
        match (self.origin, &self.missed) {
            (Origin::Path, None) => "the componentize-py on PATH".into(),
            (Origin::Path, Some(m)) => format!(
                "the componentize-py on PATH (there is none at {})",
                m.display()
            ),
            _ => self.program.display().to_string(),
        }
    }

    /// Where the program was looked for, when it cannot be run.
    pub(super) fn not_found(&self) -> String {
        match (self.origin, &self.missed) {
            (Origin::Variable, _) => format!(
                "{COMPONENTIZE_PY_ENV} names {}, which is not there",
                self.program.display()
            ),
            (Origin::Path, Some(m)) => {
                format!("there is none at {} nor on PATH", m.display())
            }
            (Origin::Path, None) => "there is none on PATH".into(),
            _ => format!("{} is not there", self.program.display()),
        }
    }
}

/// Chooses the componentize-py of a build from `env` (`is_file` tells which files exist):
/// `$COMPONENTIZE_PY`; else the one beside the Python running pcluster's Python package;
/// else the active virtual environment's; else the one on `PATH`. Packages come from the
/// virtual environment of the Python running the Python package, else from the active one,
/// else from the `python3` on `PATH` (componentize-py's own fallback).
pub fn choose_componentizer(env: &BuildEnv, is_file: impl Fn(&Path) -> bool) -> Componentizer {
    let exe = format!("{PROGRAM}{}", std::env::consts::EXE_SUFFIX);
    // A virtual environment's `pyvenv.cfg` sits one level above its interpreter's directory.
    let python_venv = env
        .python
        .as_deref()
        .and_then(|p| p.parent()?.parent())
        .filter(|root| is_file(&root.join("pyvenv.cfg")));
    let packages = match (python_venv, &env.virtual_env) {
        (Some(v), _) => Packages::VirtualEnv(v.to_path_buf()),
        (None, Some(v)) => Packages::VirtualEnv(v.clone()),
        (None, None) => Packages::Python3OnPath,
    };
    let chosen = |program: PathBuf, origin, missed| Componentizer {
        program,
        origin,
        packages: packages.clone(),
        missed,
    };
    if let Some(program) = &env.componentize_py {
        return chosen(program.clone(), Origin::Variable, None);
    }
    let candidates = [
        (
            env.python
                .as_deref()
                .and_then(Path::parent)
                .map(|d| d.join(&exe)),
            Origin::Python,
        ),
        (
            env.virtual_env
                .as_deref()
                .map(|v| v.join(SCRIPTS).join(&exe)),
            Origin::VirtualEnv,
        ),
    ];
    let mut missed = None;
    for (candidate, origin) in candidates {
        let Some(candidate) = candidate else {
            continue;
        };
        if is_file(&candidate) {
            return chosen(candidate, origin, None);
        }
        missed.get_or_insert(candidate);
    }
    chosen(PathBuf::from(PROGRAM), Origin::Path, missed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Paths of a file system holding `files`.
    fn files(files: &[PathBuf]) -> impl Fn(&Path) -> bool + '_ {
        move |p: &Path| files.iter().any(|f| f == p)
    }

    fn program_in(dir: &str) -> PathBuf {
        Path::new(dir).join(format!("{PROGRAM}{}", std::env::consts::EXE_SUFFIX))
    }

    #[test]
    fn componentize_py_is_the_variable_then_the_pythons_then_the_venvs_then_paths() {
        let venv_bin = format!("/venv/{SCRIPTS}");
        let other_bin = format!("/other/{SCRIPTS}");
        let python = PathBuf::from(&venv_bin).join("python");
        let cfg = PathBuf::from("/venv/pyvenv.cfg");
        let env = BuildEnv {
            componentize_py: Some("/opt/cpy".into()),
            python: Some(python),
            virtual_env: Some("/other".into()),
        };
        let everything = [cfg.clone(), program_in(&venv_bin), program_in(&other_bin)];
        // COMPONENTIZE_PY names the program; packages still come from the Python's venv.
        let chosen = choose_componentizer(&env, files(&everything));
        assert_eq!(
            (chosen.program, chosen.origin, chosen.packages),
            (
                PathBuf::from("/opt/cpy"),
                Origin::Variable,
                Packages::VirtualEnv("/venv".into())
            )
        );
        // Then the one beside the Python running the Python package.
        let env = BuildEnv {
            componentize_py: None,
            ..env
        };
        let chosen = choose_componentizer(&env, files(&everything));
        assert_eq!(
            (&chosen.program, chosen.origin),
            (&program_in(&venv_bin), Origin::Python)
        );
        // Then the active virtual environment's, with the packages of the Python's.
        let chosen = choose_componentizer(&env, files(&[cfg.clone(), program_in(&other_bin)]));
        assert_eq!(
            chosen,
            Componentizer {
                program: program_in(&other_bin),
                origin: Origin::VirtualEnv,
                packages: Packages::VirtualEnv("/venv".into()),
                missed: None,
            }
        );
        // Then PATH, saying where none was found.
        let chosen = choose_componentizer(&env, files(&[cfg]));
        assert_eq!(chosen.origin, Origin::Path);
        assert_eq!(chosen.program, PathBuf::from(PROGRAM));
        assert_eq!(chosen.missed, Some(program_in(&venv_bin)));
        assert!(
            chosen.describe().contains("there is none at"),
            "{}",
            chosen.describe()
        );
    }

    #[test]
    fn packages_come_from_the_pythons_venv_else_the_active_one_else_python3_on_path() {
        let python = PathBuf::from(format!("/usr/{SCRIPTS}/python3"));
        // A Python outside any virtual environment (no pyvenv.cfg above it).
        let env = BuildEnv {
            python: Some(python.clone()),
            virtual_env: Some("/active".into()),
            ..BuildEnv::default()
        };
        let chosen = choose_componentizer(&env, files(&[]));
        assert_eq!(chosen.packages, Packages::VirtualEnv("/active".into()));
        let env = BuildEnv {
            python: Some(python),
            ..BuildEnv::default()
        };
        let chosen = choose_componentizer(&env, files(&[]));
        assert_eq!(chosen.packages, Packages::Python3OnPath);
        assert_eq!(
            chosen.describe(),
            format!(
                "the componentize-py on PATH (there is none at {})",
                program_in(&format!("/usr/{SCRIPTS}")).display()
            )
        );
        let nothing = choose_componentizer(&BuildEnv::default(), files(&[]));
        assert_eq!(
            nothing,
            Componentizer::plain(Origin::Path, Packages::Python3OnPath)
        );
        assert_eq!(nothing.describe(), "the componentize-py on PATH");
    }
}
