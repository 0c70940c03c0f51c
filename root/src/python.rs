//! Python tasks in chain files: which `module` entries are Python (a package directory with
//! `__init__.py`, or a `.py` file), the chain's codec, and a Python task's args. A Python
//! task's args reach the component as the chain's codec byte (`j` JSON, `p` pickle)
//! followed by a tagged item holding the list of args (docs/ABI.md). Building the component
//! is `pcluster-build`'s.

use std::path::Path;

/// What is wrong with a chain's Python settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PythonError {
    /// A codec the chain cannot use.
    #[error("unknown codec `{0}` (use \"json\" or \"pickle\")")]
    Codec(String),
    /// Args a Python task cannot take.
    #[error("args of a Python task must be a string, number, boolean, array or table: {0}")]
    Args(String),
}

/// How a chain's Python objects other than `str` and `bytes` travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Codec {
    /// JSON (the default).
    #[default]
    Json,
    /// Python's pickle: any picklable object, but unpickling runs code, so only between
    /// parties that trust each other.
    Pickle,
}

impl Codec {
    /// The codec named in a chain file.
    ///
    /// # Errors
    /// When the name is neither `json` nor `pickle`.
    pub fn parse(name: &str) -> Result<Codec, PythonError> {
        match name {
            "json" => Ok(Codec::Json),
            "pickle" => Ok(Codec::Pickle),
            other => Err(PythonError::Codec(other.into())),
        }
    }

    /// Its byte in a Python task's args.
    pub fn byte(self) -> u8 {
        match self {
            Codec::Json => b'j',
            Codec::Pickle => b'p',
        }
    }
}

/// Whether `path` names Python code: a `.py` file or a directory with `__init__.py`.
pub fn is_python(path: &Path) -> bool {
    (path.is_file() && path.extension().is_some_and(|e| e == "py"))
        || (path.is_dir() && path.join("__init__.py").is_file())
}

/// A Python task's args bytes: the codec byte, then `j` and the JSON of the args list
/// (the component decodes JSON args whatever the codec; values are those of TOML).
///
/// # Errors
/// When a value has no JSON form (a TOML date).
pub fn task_args(codec: Codec, args: &[toml::Value]) -> Result<Vec<u8>, PythonError> {
    let mut out = vec![codec.byte(), b'j', b'['];
    for (i, v) in args.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_value(v, &mut out)?;
    }
    out.push(b']');
    Ok(out)
}

fn json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            c if (c as u32) < 0x20 => {
                out.extend_from_slice(format!("\\u{:04x}", c as u32).as_bytes())
            }
            c => {
                let mut buf = [0; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

fn json_value(v: &toml::Value, out: &mut Vec<u8>) -> Result<(), PythonError> {
    match v {
        toml::Value::String(s) => json_string(s, out),
        toml::Value::Integer(i) => out.extend_from_slice(i.to_string().as_bytes()),
        toml::Value::Float(f) if f.is_finite() => {
            out.extend_from_slice(format!("{f:?}").as_bytes())
        }
        toml::Value::Boolean(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        toml::Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_value(x, out)?;
            }
            out.push(b']');
        }
        toml::Value::Table(t) => {
            out.push(b'{');
            for (i, (k, x)) in t.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_string(k, out);
                out.push(b':');
                json_value(x, out)?;
            }
            out.push(b'}');
        }
        other => return Err(PythonError::Args(other.to_string())),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_the_codec_then_a_json_list() {
        let args = [
            toml::Value::String("item \"dropped\"\n".into()),
            toml::Value::Integer(3),
            toml::Value::Array(vec![toml::Value::Boolean(true), toml::Value::Float(0.5)]),
        ];
        let bytes = task_args(Codec::Json, &args).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            "jj[\"item \\\"dropped\\\"\\u000a\",3,[true,0.5]]"
        );
        assert_eq!(task_args(Codec::Pickle, &[]).unwrap(), b"pj[]");
        assert!(Codec::parse("yaml").is_err());
    }

    #[test]
    fn python_modules_are_packages_or_py_files() {
        let dir = std::env::temp_dir().join(format!("pcluster-py-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("pkg")).unwrap();
        std::fs::write(dir.join("pkg/__init__.py"), "").unwrap();
        std::fs::write(dir.join("one.py"), "").unwrap();
        std::fs::create_dir_all(dir.join("crate")).unwrap();
        assert!(is_python(&dir.join("pkg")));
        assert!(is_python(&dir.join("one.py")));
        assert!(!is_python(&dir.join("crate")));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
