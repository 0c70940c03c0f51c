//! All integration tests, as one binary: real TCP on loopback, real wasm built from
//! `tasks-example`, and the real `pcluster` executable (`CARGO_BIN_EXE_pcluster`) for end-to-end
//! runs. Shared helpers live in `it/common.rs`; one module per concept.

#[path = "it/bytes.rs"]
mod bytes;
#[path = "it/cluster.rs"]
mod cluster;
#[path = "it/common.rs"]
mod common;
#[path = "it/controls.rs"]
mod controls;
#[path = "it/dashboard.rs"]
mod dashboard;
#[path = "it/e2e.rs"]
mod e2e;
#[path = "it/lifecycle.rs"]
mod lifecycle;
#[path = "it/logserver.rs"]
mod logserver;
#[path = "it/partial.rs"]
mod partial;
#[path = "it/python.rs"]
mod python;
#[path = "it/reliability.rs"]
mod reliability;
#[path = "it/scheduling.rs"]
mod scheduling;
#[path = "it/strangers.rs"]
mod strangers;
#[path = "it/wire.rs"]
mod wire;
