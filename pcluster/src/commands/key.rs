//! `pcluster key new PATH`: a random 256-bit cluster key in a file only its owner can read,
//! and reading such a file for `--token-file`.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;

#[derive(clap::Args, Debug)]
pub struct KeyArgs {
    #[command(subcommand)]
    pub command: KeyCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum KeyCommand {
    /// Write a new random key (64 hex digits) to PATH, mode 0600; an existing file is kept.
    /// Copy it to every machine of the cluster and pass --token-file PATH.
    New {
        /// Where to write it.
        path: PathBuf,
    },
}

pub fn run(args: KeyArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        KeyCommand::New { path } => {
            new_key(&path)?;
            eprintln!("pcluster key: wrote a new key to {}", path.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Writes a fresh key to `path`, refusing to replace a file.
fn new_key(path: &Path) -> anyhow::Result<()> {
    let bytes = protocol::auth::nonce().context("no random bytes from the system")?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {} (an existing key is kept)", path.display()))?;
    file.write_all(format!("{hex}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The token in the key file at `path` (its first line, trimmed).
///
/// # Errors
/// When it cannot be read, is empty, or its group or others may read it.
pub fn read(path: &Path) -> anyhow::Result<String> {
    let meta = std::fs::metadata(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        anyhow::bail!(
            "the token file {} may be read by other users: run `chmod 600 {}`",
            path.display(),
            path.display()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the token file {}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim();
    if token.is_empty() {
        anyhow::bail!("the token file {} is empty", path.display());
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_key_is_private_random_and_never_overwritten() {
        let dir = std::env::temp_dir().join(format!("pcluster-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a.key"), dir.join("b.key"));
        new_key(&a).unwrap();
        new_key(&b).unwrap();
        let text = std::fs::read_to_string(&a).unwrap();
        assert_eq!(text.trim().len(), 64);
        assert_ne!(text, std::fs::read_to_string(&b).unwrap());
        assert_eq!(
            std::fs::metadata(&a).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(new_key(&a).is_err(), "an existing key is kept");
        assert!(read(&a).is_ok());
        std::fs::set_permissions(&a, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read(&a).unwrap_err().to_string();
        assert!(err.contains("chmod 600"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
