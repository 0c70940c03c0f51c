//! All integration tests, as one binary: real TCP on loopback, real wasm built from
//! `tasks-example`, and the real `pcluster` executable for end-to-end runs. Shared helpers
//! live in `common`; one module per concept.

mod cluster;
mod common;
mod dashboard;
mod e2e;
mod lifecycle;
mod logserver;
mod reliability;
