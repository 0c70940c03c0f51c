//! All integration tests, as one binary: they drive the real `pcluster` executable over
//! loopback TCP. Shared helpers live in `common`; one module per concept.

mod common;
mod logserver;
