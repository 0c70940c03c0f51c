//! `pcluster memo stats|gc|clear DIR`: the result store of `pcluster run --memo DIR`, seen
//! and trimmed from outside a run (the library does the work; this parses and prints).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::bail;
use memo::{Memo, MemoOptions};

#[derive(clap::Args, Debug)]
pub struct MemoArgs {
    #[command(subcommand)]
    pub command: MemoCommand,
}

#[derive(clap::Subcommand, Debug)]
pub enum MemoCommand {
    /// Entries, bytes, and segments found torn (parts missing: 0 unless the files were
    /// damaged).
    Stats {
        dir: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Evict the least recently used entries until at most --max-mb stay.
    Gc {
        dir: PathBuf,
        #[arg(long, value_name = "MIB", default_value_t = memo::DEFAULT_LIMIT_BYTES >> 20)]
        max_mb: u64,
    },
    /// Remove every entry.
    Clear { dir: PathBuf },
}

/// Opens an existing store (a typo must not make a new one).
fn open(dir: &Path) -> anyhow::Result<Memo> {
    if !dir.join(memo::FILE).is_file() {
        bail!("{} holds no memo store ({})", dir.display(), memo::FILE);
    }
    Ok(Memo::open(dir, &MemoOptions::default())?)
}

pub fn run(args: MemoArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        MemoCommand::Stats { dir, json } => {
            let s = open(&dir)?.stats()?;
            if json {
                println!(
                    "{{\"entries\":{},\"segments\":{},\"bytes\":{},\"file_bytes\":{},\"torn\":{}}}",
                    s.entries, s.segments, s.bytes, s.file_bytes, s.torn
                );
            } else {
                println!(
                    "{}: {} entries in {} segments, {:.1} MiB ({:.1} MiB file), {} torn",
                    dir.display(),
                    s.entries,
                    s.segments,
                    s.bytes as f64 / f64::from(1 << 20),
                    s.file_bytes as f64 / f64::from(1 << 20),
                    s.torn
                );
            }
            Ok(if s.torn == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        MemoCommand::Gc { dir, max_mb } => {
            let memo = open(&dir)?;
            let gone = memo.gc(max_mb << 20)?;
            let s = memo.stats()?;
            eprintln!(
                "pcluster memo: {gone} segments evicted; {} entries, {:.1} MiB left",
                s.entries,
                s.bytes as f64 / f64::from(1 << 20)
            );
            Ok(ExitCode::SUCCESS)
        }
        MemoCommand::Clear { dir } => {
            open(&dir)?.clear()?;
            eprintln!("pcluster memo: {} cleared", dir.display());
            Ok(ExitCode::SUCCESS)
        }
    }
}
