//! Integration tests of the node server: a real node on loopback, driven by hand over the
//! protocol, running WAT and real (tasks-example) wasm.

mod common;
mod counters;
mod generators;
mod ownership;
