//! Rotation of the log file: past a size cap, `pcluster.log` becomes `pcluster.log.1`, the
//! `.1` before it `.2`, and so on up to the number kept; the oldest is dropped. So the log
//! takes at most (kept + 1) × the cap on disk, whoever writes to it.

use std::io;
use std::path::{Path, PathBuf};

/// Where the log is, how big it may grow, and how many rotated files are kept.
#[derive(Debug, Clone)]
pub(crate) struct Rotation {
    /// The current file.
    pub(crate) path: PathBuf,
    /// Its largest size; `None`: no cap, never rotated.
    pub(crate) max_bytes: Option<u64>,
    /// Rotated files kept, `<path>.1` (the newest) to `<path>.<keep>`.
    pub(crate) keep: usize,
}

impl Rotation {
    /// Whether a file of `size` bytes must be rotated before `len` more are written. A file
    /// with nothing in it is never rotated, so a record larger than the cap still gets written.
    pub(crate) fn due(&self, size: u64, len: u64) -> bool {
        self.max_bytes
            .is_some_and(|max| size > 0 && size.saturating_add(len) > max)
    }

    /// Shifts the files: `<path>.<keep-1>` → `<path>.<keep>` (replacing it) … `<path>` →
    /// `<path>.1`; with `keep` 0 the current file is removed. The current file is then gone,
    /// for the caller to create anew. Files already missing are skipped.
    ///
    /// # Errors
    /// When a rename or removal fails for another reason than a missing file.
    pub(crate) fn shift(&self) -> io::Result<()> {
        if self.keep == 0 {
            return missing_is_fine(std::fs::remove_file(&self.path));
        }
        for n in (1..self.keep).rev() {
            missing_is_fine(std::fs::rename(
                numbered(&self.path, n),
                numbered(&self.path, n + 1),
            ))?;
        }
        missing_is_fine(std::fs::rename(&self.path, numbered(&self.path, 1)))
    }
}

/// `<path>.<n>`.
pub(crate) fn numbered(path: &Path, n: usize) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

fn missing_is_fine(result: io::Result<()>) -> io::Result<()> {
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("pcluster-rotation-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    fn read(path: &Path) -> Option<String> {
        std::fs::read_to_string(path).ok()
    }

    #[test]
    fn rotation_is_due_past_the_cap_and_never_for_an_empty_file() {
        let r = Rotation {
            path: "x.log".into(),
            max_bytes: Some(100),
            keep: 1,
        };
        assert!(
            !r.due(0, 1000),
            "a record larger than the cap still goes somewhere"
        );
        assert!(!r.due(60, 40));
        assert!(r.due(60, 41));
        assert!(r.due(u64::MAX, 1));
        let uncapped = Rotation {
            max_bytes: None,
            ..r
        };
        assert!(!uncapped.due(u64::MAX, u64::MAX));
    }

    #[test]
    fn files_shift_up_and_the_oldest_is_dropped() {
        let dir = dir("shift");
        let path = dir.join("pcluster.log");
        let r = Rotation {
            path: path.clone(),
            max_bytes: Some(10),
            keep: 2,
        };
        for generation in ["first", "second", "third"] {
            std::fs::write(&path, generation).expect("write");
            r.shift().expect("shift");
            assert!(!path.exists());
        }
        assert_eq!(read(&numbered(&path, 1)).as_deref(), Some("third"));
        assert_eq!(read(&numbered(&path, 2)).as_deref(), Some("second"));
        assert!(!numbered(&path, 3).exists());
        // Nothing to shift is no error.
        std::fs::remove_dir_all(&dir).expect("clean");
        std::fs::create_dir_all(&dir).expect("again");
        r.shift().expect("shift with no files");
        std::fs::remove_dir_all(&dir).expect("clean");
    }

    #[test]
    fn keeping_none_removes_the_file() {
        let dir = dir("none");
        let path = dir.join("pcluster.log");
        std::fs::write(&path, "old").expect("write");
        let r = Rotation {
            path: path.clone(),
            max_bytes: Some(1),
            keep: 0,
        };
        r.shift().expect("shift");
        assert!(!path.exists() && !numbered(&path, 1).exists());
        std::fs::remove_dir_all(&dir).expect("clean");
    }
}
