//! Whether a build is up to date: the newest modification time of its sources, the same
//! rule for task crates and Python packages.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

/// The newest file under `path` (a file, or a directory tree) and its modification time,
/// skipping hidden entries (`.git`, `.pcluster-build`) and directories named in `skip`
/// (build outputs and caches such as `target` or `__pycache__`); `None` for an empty tree.
/// The file is what an error names when a prebuilt artifact is older than its sources.
pub fn newest_file(path: &Path, skip: &[&str]) -> Option<(SystemTime, PathBuf)> {
    let mtime = |p: &Path| {
        std::fs::metadata(p)
            .and_then(|m| m.modified())
            .unwrap_or(SystemTime::UNIX_EPOCH)
    };
    if path.is_file() {
        return Some((mtime(path), path.to_path_buf()));
    }
    let mut newest: Option<(SystemTime, PathBuf)> = None;
    let mut stack = vec![path.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || skip.contains(&name.as_ref()) {
                continue;
            }
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let t = mtime(&p);
                if newest.as_ref().is_none_or(|(n, _)| t > *n) {
                    newest = Some((t, p));
                }
            }
        }
    }
    newest
}

/// Sets `path`'s modification time to `secs` after the epoch (tests of freshness).
#[cfg(test)]
pub(crate) fn set_mtime(path: &Path, secs: u64) {
    let t = std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    std::fs::File::options()
        .append(true)
        .open(path)
        .and_then(|f| f.set_modified(t))
        .unwrap();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn newest(path: &Path, skip: &[&str]) -> SystemTime {
        newest_file(path, skip).map_or(SystemTime::UNIX_EPOCH, |(t, _)| t)
    }

    #[test]
    fn skipped_and_hidden_entries_do_not_count() {
        let dir = std::env::temp_dir().join(format!("pcluster-fresh-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("src")).unwrap();
        std::fs::create_dir_all(dir.join("target")).unwrap();
        std::fs::write(dir.join("src/lib.rs"), "").unwrap();
        let old = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_000_000);
        std::fs::File::options()
            .append(true)
            .open(dir.join("src/lib.rs"))
            .and_then(|f| f.set_modified(old))
            .unwrap();
        std::fs::write(dir.join("target/out.wasm"), "").unwrap();
        std::fs::write(dir.join(".hidden"), "").unwrap();
        assert_eq!(newest(&dir, &["target"]), old);
        assert!(
            newest(&dir, &[]) > old,
            "the build output counts when not skipped"
        );
        assert_eq!(newest(&dir.join("src/lib.rs"), &[]), old);
        assert_eq!(
            newest_file(&dir, &[]).map(|(_, p)| p),
            Some(dir.join("target/out.wasm")),
            "the newest file is named"
        );
        assert_eq!(newest_file(&dir.join("target/none"), &[]), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
