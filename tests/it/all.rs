//! All integration tests of the workspace, as one binary: real TCP on loopback, real wasm
//! built from `tasks-example`, and the real `pcluster` executable (built by cargo for the
//! run, [`kit::pcluster_exe`]) for end-to-end runs. Shared helpers live in `common.rs`; one
//! module per concept.

mod bytes;
mod cluster;
mod common;
mod controls;
mod dashboard;
mod deploy;
mod discovery;
mod disk_cache;
mod e2e;
mod hostile;
mod lifecycle;
mod logserver;
mod memo;
mod metrics;
mod musl;
mod native;
mod netns;
mod nodes_file;
mod partial;
mod prebuilt;
mod python;
mod reliability;
mod scheduling;
mod shell;
mod stalls;
mod strangers;
mod wire;
