//! `pcluster run`'s memory bounds (`--queue-mb`, `--node-mb`, `--outputs-mb`, `--partial-mb`,
//! `--reorder-mb`): the root's byte bounds in MiB, defaults from [`root::RootOptions`],
//! checked against the machine's memory.

use anyhow::bail;

const MIB: u64 = 1 << 20;

fn default_mib(bytes: fn(&root::RootOptions) -> u64) -> u64 {
    bytes(&root::RootOptions::default()) / MIB
}

/// The root's byte bounds, in MiB.
#[derive(clap::Args, Debug, Clone)]
#[command(next_help_heading = "Memory bounds (MiB; the root's memory grows with their sum)")]
pub struct Bounds {
    /// Input read ahead and queued before reading waits.
    #[arg(long, value_name = "MIB", default_value_t = default_mib(|o| o.queue_bytes))]
    pub queue_mb: u64,
    /// Items in flight on each node (sent, not yet answered: the root keeps them to send
    /// again if the node is lost). The node also grants at most 32 MiB.
    #[arg(long, value_name = "MIB", default_value_t = default_mib(|o| o.node_bytes))]
    pub node_mb: u64,
    /// Outputs received from the nodes and not yet written, over all nodes: past it the
    /// root stops reading from the nodes until the output catches up.
    #[arg(long, value_name = "MIB", default_value_t = default_mib(|o| o.outputs_bytes))]
    pub outputs_mb: u64,
    /// Outputs held for inputs whose outputs come in several messages (past one 64 MiB
    /// frame) until the input completes, over all nodes; an input past it fails.
    #[arg(long, value_name = "MIB", default_value_t = default_mib(|o| o.partial_bytes))]
    pub partial_mb: u64,
    /// With --keep-order: early outputs held back before no new input is sent.
    #[arg(long, value_name = "MIB", default_value_t = default_mib(|o| o.reorder_bytes))]
    pub reorder_mb: u64,
}

impl Bounds {
    fn named(&self) -> [(&'static str, u64); 5] {
        [
            ("--queue-mb", self.queue_mb),
            ("--node-mb", self.node_mb),
            ("--outputs-mb", self.outputs_mb),
            ("--partial-mb", self.partial_mb),
            ("--reorder-mb", self.reorder_mb),
        ]
    }

    /// Checks each bound against `machine_mb`, the memory of this machine.
    ///
    /// # Errors
    /// A bound of 0 or past the machine's memory, named.
    pub fn check(&self, machine_mb: u64) -> anyhow::Result<()> {
        for (flag, mb) in self.named() {
            if mb == 0 {
                bail!("{flag} must be at least 1 (MiB)");
            }
            if mb > machine_mb {
                bail!("{flag} {mb} is more than this machine's memory ({machine_mb} MiB)");
            }
        }
        Ok(())
    }

    /// Root options with these bounds (and the defaults for everything else).
    pub fn options(&self) -> root::RootOptions {
        root::RootOptions {
            queue_bytes: self.queue_mb.saturating_mul(MIB),
            node_bytes: self.node_mb.saturating_mul(MIB),
            outputs_bytes: self.outputs_mb.saturating_mul(MIB),
            partial_bytes: self.partial_mb.saturating_mul(MIB),
            reorder_bytes: self.reorder_mb.saturating_mul(MIB),
            ..root::RootOptions::default()
        }
    }
}

/// This machine's memory in MiB (`MemTotal`), or 1 TiB where it cannot be read.
pub fn machine_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            let line = t.lines().find(|l| l.starts_with("MemTotal:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .map_or(1 << 20, |kib| kib / 1024)
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    fn parse(args: &[&str]) -> Result<crate::run::RunArgs, clap::Error> {
        let cli = crate::cli::Cli::try_parse_from(
            ["pcluster", "run", "c.toml"].iter().chain(args).copied(),
        )?;
        let crate::cli::Command::Run(a) = cli.command else {
            panic!("not run")
        };
        Ok(*a)
    }

    /// The byte bounds of `o`: queue, per node, outputs, partial outputs, reorder buffer.
    fn byte_bounds(o: &root::RootOptions) -> (u64, u64, u64, u64, u64) {
        (
            o.queue_bytes,
            o.node_bytes,
            o.outputs_bytes,
            o.partial_bytes,
            o.reorder_bytes,
        )
    }

    #[test]
    fn defaults_are_the_libraries_and_flags_set_bytes() {
        let a = parse(&[]).unwrap();
        assert_eq!(
            byte_bounds(&a.bounds.options()),
            byte_bounds(&root::RootOptions::default())
        );
        a.bounds.check(24_000).unwrap();
        let a = parse(&[
            "--queue-mb",
            "1",
            "--node-mb",
            "2",
            "--outputs-mb",
            "3",
            "--partial-mb",
            "4",
            "--reorder-mb",
            "5",
        ])
        .unwrap();
        assert_eq!(
            byte_bounds(&a.bounds.options()),
            (1 << 20, 2 << 20, 3 << 20, 4 << 20, 5 << 20)
        );
    }

    #[test]
    fn zero_and_absurd_bounds_are_refused_by_name() {
        let err = |args: &[&str]| {
            parse(args)
                .unwrap()
                .bounds
                .check(24_000)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            err(&["--node-mb", "0"]),
            "--node-mb must be at least 1 (MiB)"
        );
        assert_eq!(
            err(&["--queue-mb", "50000"]),
            "--queue-mb 50000 is more than this machine's memory (24000 MiB)"
        );
        assert!(
            parse(&["--outputs-mb", "-1"]).is_err(),
            "not a number of MiB"
        );
        assert!(
            parse(&["--partial-mb", "1e9"]).is_err(),
            "not a number of MiB"
        );
        assert!(
            parse(&["--reorder-mb", "99999999999999999999"]).is_err(),
            "past u64"
        );
    }
}
