//! The pcluster node: accepts a taskchain from a root, compiles its WebAssembly modules once,
//! and runs the chain on a pool of worker threads, streaming outputs back.
//!
//! The public API is [`run`] with its [`NodeConfig`], and the typed errors of [`error`].
//!
//! - `server`: the TCP server, who holds the node, and message handling.
//! - `worker`: the worker pool and the per-unit chain execution.
//! - `engine`: wasmtime: engine, module cache, task instances and host functions.
//! - [`error`]: typed errors (setup, item, request) and their mapping to the wire.

mod engine;
pub mod error;
mod server;
mod worker;

pub use error::{CallError, RequestError, SetupError, TaskProblem};
pub use server::{NodeConfig, NodeError, cores, run};
#[cfg(feature = "local-chain")]
pub use worker::LocalChain;
