//! Prometheus metrics of pcluster's servers (`pcluster node --metrics`, the root's dashboard).
//!
//! Metrics are built at scrape time from counters the servers keep anyway, so serving them
//! costs nothing per item. They are written in Prometheus' text format (0.0.4), which every
//! Prometheus scrapes and `promtool check metrics` lints.
//!
//! - [`exposition`]: families of samples, written in the text format;
//! - [`bounded`]: a listener that takes a permit before each accept (connections at once);
//! - [`host`]: the loopback `Host` check of servers bound to loopback (DNS rebinding);
//! - [`server`]: a small HTTP server of `/metrics`.

pub mod bounded;
pub mod exposition;
pub mod host;
pub mod server;

pub use bounded::Bounded;
pub use exposition::{Families, Family};
pub use host::host_ok;
pub use server::{CONTENT_TYPE, serve};
