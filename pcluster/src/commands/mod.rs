//! One module per small subcommand; `run` and `bench` have modules of their own.

pub mod completions;
pub mod dashboard;
pub mod fetch;
pub mod key;
pub mod log;
pub mod memo;
pub mod new;
pub mod node;
pub mod release;
pub mod scan;
pub mod status;
pub mod top;
