//! `pcluster completions SHELL`: the shell's completion script for every subcommand and
//! option, generated from the command line's own definition (clap_complete), on stdout.

use std::io::Write as _;
use std::process::ExitCode;

use clap::CommandFactory as _;

#[derive(clap::Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    pub shell: clap_complete::Shell,
}

pub fn run(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let mut cmd = crate::cli::Cli::command();
    // Into memory first: clap_complete panics on a write error, and a closed pipe
    // (`| head`) must end the command quietly, as everywhere else.
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "pcluster", &mut script);
    let mut out = std::io::stdout().lock();
    out.write_all(&script)?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
