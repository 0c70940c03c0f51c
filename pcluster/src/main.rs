//! `pcluster`: the command line. It only parses arguments, sets up logging, binds, and calls
//! the libraries: `log` → logserver, `node` → node, `run`/`scan`/`status`/`release` and
//! `dashboard`/`top` → root, `new` writes a task crate, `bench` runs the benchmark.

#[cfg(feature = "bench")]
mod bench;
mod cli;
mod commands;
mod discovery;
mod embedded;
mod json;
mod run;
mod setup;
mod table;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::dispatch(args) {
        Ok(code) => code,
        Err(e) => {
            if is_broken_pipe(&e) {
                return ExitCode::SUCCESS;
            }
            eprintln!("pcluster: error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error and its causes, each once: many errors already quote their source in their
/// own message, and printing the chain as is would repeat it.
fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_are_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let e = anyhow::Error::new(io)
            .context("node 127.0.0.2:6000: Connection refused")
            .context("cannot add node");
        assert_eq!(
            error_chain(&e),
            "cannot add node: node 127.0.0.2:6000: Connection refused"
        );
    }
}
