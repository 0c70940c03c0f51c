//! The arguments of `pcluster run`.

use std::path::PathBuf;
use std::str::FromStr;

use anyhow::{Context as _, bail};

use super::framing::Framing;
use crate::setup::TokenArg;

#[derive(clap::Args, Debug, Clone)]
pub struct RunArgs {
    /// The chain file (TOML).
    pub chain: PathBuf,
    /// Print the chain as a Graphviz DOT graph on stdout and exit, contacting no node (the
    /// file and its graph are checked; no module is built).
    #[arg(long)]
    pub dot: bool,
    /// Use only prebuilt modules: a task crate's `.wasm` or a Python package's component must
    /// exist and be newer than its sources, else the run stops naming it. Without this flag
    /// `pcluster run` builds them, running the crate's build.rs and proc-macros, its
    /// .cargo/config.toml and rust-toolchain.toml, or the package's import, on this machine
    /// outside any sandbox.
    #[arg(long)]
    pub no_build: bool,
    /// Node addresses, comma-separated (`host[:port]`, `[v6]:port`; a missing port is
    /// --port). Unreachable ones are skipped while --min-nodes work; lost ones are retried.
    #[arg(short = 'n', long, value_delimiter = ',')]
    pub nodes: Vec<String>,
    /// Node addresses in a file, one `host[:port]` a line (`#` comments; a missing port is
    /// --port), read again when it changes: nodes added join the run, nodes removed get no
    /// new items and leave once theirs are done.
    #[arg(long, value_name = "FILE")]
    pub nodes_file: Option<PathBuf>,
    /// Node addresses from DNS: every A/AAAA record of NAME (`NAME[:PORT]`; a missing port
    /// is --port), resolved again every --rescan seconds: addresses that appear join the
    /// run, ones that disappear leave it (e.g. a Kubernetes headless service).
    #[arg(long, value_name = "NAME")]
    pub nodes_dns: Option<String>,
    /// Scan this network for nodes, e.g. 127.0.0.0/24 (again every --rescan seconds).
    #[arg(long)]
    pub scan: Option<ipnetwork::IpNetwork>,
    /// Port of the scan, and of --nodes, --nodes-file and --nodes-dns entries that name none.
    #[arg(short, long, default_value_t = protocol::DEFAULT_NODE_PORT)]
    pub port: u16,
    /// Input items, one per line (default: stdin). A `\r` before a line's `\n` is dropped.
    #[arg(short, long)]
    pub input: Option<PathBuf>,
    /// Output items, one per line (default: stdout).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Write each failed input here, raw, in the input's framing (to feed it again); what
    /// failed is said on stderr, by line number.
    #[arg(long)]
    pub failed: Option<PathBuf>,
    /// Items end with NUL instead of a newline, in input, output and --failed (as
    /// `find -print0`): items may hold newlines.
    #[arg(short = '0', long)]
    pub null: bool,
    /// Each item is a u32 little-endian length then its bytes, in input, output and --failed:
    /// any bytes round-trip, NUL included. With --tag the record holds `LINE<TAB>output`.
    #[arg(long, conflicts_with = "null")]
    pub binary: bool,
    /// Prefix each output with its input's line number and a tab.
    #[arg(long)]
    pub tag: bool,
    /// Write outputs in input order (a bounded reorder buffer holds early ones back).
    #[arg(short = 'k', long)]
    pub keep_order: bool,
    /// Write one line per completed input to FILE (see --resume).
    #[arg(long)]
    pub joblog: Option<PathBuf>,
    /// Skip the inputs --joblog names as done and append the rest to --output (same chain,
    /// same --input, same --output as the first run).
    #[arg(long)]
    pub resume: bool,
    /// Try an item that failed in a task up to N more times, from that task on (on another
    /// node where there is one); its input's other outputs are not repeated.
    #[arg(long, default_value_t = 0)]
    pub retries: u32,
    /// Stop when N items have failed: `now,fail=N` at once, `soon,fail=N` after the inputs
    /// in flight.
    #[arg(long)]
    pub halt: Option<Halt>,
    /// Fewest nodes to start with; unreachable --nodes entries beyond that are skipped, and
    /// so are nodes lost or failing during setup (each named in a warning).
    #[arg(long, default_value_t = 1)]
    pub min_nodes: usize,
    /// Seconds a node may send nothing (not even a heartbeat, sent every second) before it
    /// counts as lost: its items go elsewhere, and during setup it is skipped. A node's
    /// handshake waits as long, at most 5 s.
    #[arg(long, default_value_t = 10.0)]
    pub node_timeout: f64,
    /// Seconds between scans for new or restarted nodes during a run with --scan, and
    /// between resolutions of --nodes-dns (0: off).
    #[arg(long, default_value_t = 10)]
    pub rescan: u64,
    /// Seconds to wait for a node to join or come back when none is left; then the run
    /// ends (non-zero, with the count of inputs not done).
    #[arg(long, default_value_t = 10.0)]
    pub no_node_timeout: f64,
    /// After the first SIGINT/SIGTERM: seconds the inputs in flight have to finish.
    #[arg(long, default_value_t = 10.0)]
    pub drain_timeout: f64,
    /// Log server host (default with an embedded cluster: an embedded log server).
    #[arg(long)]
    pub log_host: Option<String>,
    #[arg(long, default_value_t = protocol::DEFAULT_LOG_PORT)]
    pub log_port: u16,
    /// Workers of the embedded node (default: the number of cores).
    #[arg(short = 'j', long)]
    pub workers: Option<u32>,
    /// Log file of the embedded log server.
    #[arg(long, default_value = "pcluster.log")]
    pub log_file: PathBuf,
    /// No progress bar, no notes on stderr beyond errors and failures.
    #[arg(short, long)]
    pub quiet: bool,
    /// Serve a live dashboard of the run at ADDR (`IP:PORT`, or a port on 127.0.0.1):
    /// progress, nodes, tasks, the last failures and warnings. Read-only, no token.
    #[arg(long, value_name = "ADDR", value_parser = crate::commands::dashboard::parse_addr)]
    pub dashboard: Option<std::net::SocketAddr>,
    /// Allow --dashboard on a non-loopback address: anyone who reaches it sees the run,
    /// including the start of failed items.
    #[arg(long, requires = "dashboard")]
    pub dashboard_public: bool,
    #[command(flatten)]
    pub token: TokenArg,
    #[command(flatten)]
    pub memo: super::memo::MemoArgs,
    #[command(flatten)]
    pub bounds: super::bounds::Bounds,
}

impl RunArgs {
    pub fn framing(&self) -> Framing {
        if self.binary {
            Framing::Binary
        } else if self.null {
            Framing::Null
        } else {
            Framing::Lines
        }
    }

    /// Checks what clap cannot.
    ///
    /// # Errors
    /// Contradicting options.
    pub fn check(&self) -> anyhow::Result<()> {
        if !(self.no_node_timeout.is_finite() && self.no_node_timeout >= 0.0) {
            bail!("--no-node-timeout must be a number of seconds");
        }
        if !(self.node_timeout.is_finite() && self.node_timeout >= 2.0) {
            bail!(
                "--node-timeout must be at least 2 seconds (nodes send a heartbeat every second)"
            );
        }
        if !(self.drain_timeout.is_finite() && self.drain_timeout >= 0.0) {
            bail!("--drain-timeout must be a number of seconds");
        }
        if self.resume && self.joblog.is_none() {
            bail!("--resume needs --joblog FILE");
        }
        self.bounds.check(super::bounds::machine_mb())
    }
}

/// When `--halt` stops a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Halt {
    /// At once (true), or after the inputs in flight (false).
    pub now: bool,
    /// After this many failed items.
    pub fail: u64,
}

impl FromStr for Halt {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Halt> {
        let (when, rest) = s
            .split_once(',')
            .with_context(|| format!("--halt `{s}`: expected now,fail=N or soon,fail=N"))?;
        let now = match when {
            "now" => true,
            "soon" => false,
            other => bail!("--halt `{s}`: `{other}` is neither now nor soon"),
        };
        let fail = rest
            .strip_prefix("fail=")
            .with_context(|| format!("--halt `{s}`: expected fail=N after the comma"))?
            .parse::<u64>()
            .with_context(|| format!("--halt `{s}`: N is not a number"))?;
        if fail == 0 {
            bail!("--halt `{s}`: N must be at least 1");
        }
        Ok(Halt { now, fail })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn halt_forms() {
        assert_eq!(
            "now,fail=3".parse::<Halt>().unwrap(),
            Halt { now: true, fail: 3 }
        );
        assert_eq!(
            "soon,fail=1".parse::<Halt>().unwrap(),
            Halt {
                now: false,
                fail: 1
            }
        );
        for bad in [
            "later,fail=1",
            "now",
            "now,fail=x",
            "now,fail=0",
            "now,done=1",
        ] {
            assert!(bad.parse::<Halt>().is_err(), "{bad}");
        }
    }

    #[test]
    fn short_flags_parse() {
        use clap::Parser as _;
        let cli = crate::cli::Cli::try_parse_from([
            "pcluster",
            "run",
            "c.toml",
            "-i",
            "in",
            "-o",
            "out",
            "-n",
            "127.0.0.2,127.0.0.3:7",
            "-j",
            "2",
            "-q",
            "-p",
            "16000",
            "-0",
            "-k",
        ])
        .unwrap();
        let crate::cli::Command::Run(a) = cli.command else {
            panic!("not run")
        };
        assert_eq!(a.nodes, ["127.0.0.2", "127.0.0.3:7"]);
        assert_eq!(
            (a.port, a.workers, a.quiet, a.null, a.keep_order),
            (16000, Some(2), true, true, true)
        );
        assert_eq!(a.input.as_deref(), Some(std::path::Path::new("in")));
    }
}
