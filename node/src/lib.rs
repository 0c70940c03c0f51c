//! The pcluster node: accepts a taskchain from a root, compiles its WebAssembly modules once,
//! and runs the chain on a pool of worker threads, streaming outputs back.
//!
//! - [`server`]: the TCP server, sessions, and message handling.
//! - [`worker`]: the worker pool and the per-unit chain execution.
//! - [`engine`]: wasmtime: engine, module cache, task instances and host functions.

pub mod engine;
pub mod server;
pub mod worker;

pub use server::{NodeConfig, NodeError, cores, run};
