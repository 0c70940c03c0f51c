//! The command line (clap derive): one variant per subcommand, each with the arguments
//! struct of the module that runs it.

use clap::{Parser, Subcommand};

#[cfg(feature = "bench")]
use crate::bench::BenchArgs;
use crate::commands::{
    completions::CompletionsArgs, dashboard::DashboardArgs, key::KeyArgs, log::LogArgs,
    memo::MemoArgs, new::NewArgs, node::NodeArgs, release::ReleaseArgs, scan::ScanArgs,
    status::StatusArgs, top::TopArgs,
};
use crate::run::RunArgs;

/// `pcluster run --help`, after the options.
const RUN_EXAMPLES: &str = "\
Examples:
  pcluster run examples/w1.toml --input examples/w1-input.txt   # on an embedded local cluster
  pcluster run chain.toml -n 10.0.0.7,10.0.0.8 -i items.txt -o out.txt
  pcluster run chain.toml --scan 10.0.0.0/24 --port 6000 -i items.txt --log-host LOGHOST
  pcluster run chain.toml --nodes-file nodes.txt -i items.txt --dashboard 8080
  pcluster run chain.toml --nodes-dns pcluster-node.default.svc.cluster.local -i items.txt
  seq 1000 | pcluster run chain.toml -n 10.0.0.7 --keep-order > out.txt
  pcluster run chain.toml -i items.txt -o out.txt --joblog jobs.log --resume   # after a stop
  pcluster run chain.toml -i items.txt -o out.txt --memo memo.d   # a rerun runs only what changed";

/// `pcluster node --help`, after the options.
const NODE_EXAMPLES: &str = "\
Examples:
  pcluster node                                   # on localhost:6000, every core
  pcluster key new cluster.key                    # once; copy the key to every machine
  pcluster node --host 0.0.0.0 --token-file cluster.key --log-host LOGHOST -j 8
  pcluster node --host 0.0.0.0 --token-file cluster.key --labels cpu,io --memory-mb 16000";

/// `pcluster log --help`, after the options.
const LOG_EXAMPLES: &str = "\
Examples:
  pcluster log                                    # on localhost:5555, to pcluster.log
  pcluster log --host 0.0.0.0 --port 5555 --outfile cluster.log --token-file cluster.key
  pcluster log --outfile cluster.log --json --max-mb 100 --keep 3";

/// pcluster: run WebAssembly taskchains over many machines.
#[derive(Parser, Debug)]
#[command(name = "pcluster", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the log server: collects log lines over TCP and writes them, stamped, to a file
    /// and stdout.
    #[command(after_help = LOG_EXAMPLES)]
    Log(LogArgs),
    /// Run a node server: accepts a chain from a root and runs it on a pool of workers.
    #[command(after_help = NODE_EXAMPLES)]
    Node(NodeArgs),
    /// Run a chain: items from --input (or stdin), one per line; outputs to --output (or
    /// stdout), one per line. Without --nodes, --nodes-file, --nodes-dns or --scan, runs on
    /// an embedded local cluster.
    #[command(after_help = RUN_EXAMPLES)]
    Run(Box<RunArgs>),
    /// Scan a network for nodes and print a table.
    Scan(ScanArgs),
    /// Print the status of nodes.
    Status(StatusArgs),
    /// Serve a live web page of nodes (status probes only: it claims no node).
    Dashboard(DashboardArgs),
    /// Show nodes and tasks in the terminal, refreshed every second until Ctrl-C.
    Top(TopArgs),
    /// Free nodes held by another root (a live but stuck one); each node logs who did it.
    Release(ReleaseArgs),
    /// Write a new task crate with a chain file and an input, ready to run.
    New(NewArgs),
    /// Make a cluster key (`pcluster key new PATH`) for --token-file.
    Key(KeyArgs),
    /// The result store of `pcluster run --memo DIR`: `stats`, `gc`, `clear`.
    Memo(MemoArgs),
    /// Print a shell's completion script: `source <(pcluster completions bash)`.
    Completions(CompletionsArgs),
    /// Benchmark W1/W2 on a local cluster and print a table (built with the `bench` feature).
    #[cfg(feature = "bench")]
    Bench(BenchArgs),
}

/// Runs the subcommand.
pub fn dispatch(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    use crate::commands::{dashboard, key, log, new, node, release, scan, status, top};
    match cli.command {
        Command::Log(a) => log::run(a),
        Command::Node(a) => node::run(a),
        Command::Run(a) => crate::run::run(*a),
        Command::Scan(a) => scan::run(a),
        Command::Status(a) => status::run(a),
        Command::Dashboard(a) => dashboard::run(a),
        Command::Top(a) => top::run(a),
        Command::Release(a) => release::run(a),
        Command::New(a) => new::run(a),
        Command::Key(a) => key::run(a),
        Command::Memo(a) => crate::commands::memo::run(a),
        Command::Completions(a) => crate::commands::completions::run(a),
        #[cfg(feature = "bench")]
        Command::Bench(a) => crate::bench::run(a),
    }
}
