//! The SDK for writing pcluster tasks in Rust, compiled to `wasm32-unknown-unknown`.
//!
//! A task takes one item (bytes) and emits zero, one or many items. Mark a function with
//! [`task!`] and the SDK makes the wasm exports a node calls (see `docs/ABI.md`): it decodes
//! the item into the function's parameter ([`FromItem`]), calls it, and emits what it returned
//! ([`Output`]).
//!
//! ```
//! use pcluster_task::{Json, info, task};
//! use serde::{Deserialize, Serialize};
//!
//! task! {
//!     /// Logs the item and passes it on.
//!     pub fn simple_task(item: &str) -> &str {
//!         info!("simple_task: {item}");
//!         item
//!     }
//! }
//!
//! task! {
//!     /// Emits each item twice: a generator.
//!     pub fn twice(item: &[u8]) -> [&[u8]; 2] {
//!         [item, item]
//!     }
//! }
//!
//! #[derive(Deserialize, Serialize)]
//! pub struct Point { x: i64, y: i64 }
//!
//! task! {
//!     /// Mirrors a point; an item that is not a point fails.
//!     pub fn mirror(p: Json<Point>) -> Result<Json<Point>, String> {
//!         let Json(Point { x, y }) = p;
//!         Ok(Json(Point { x: y, y: x }))
//!     }
//! }
//!
//! # fn main() {
//! let outcome = pcluster_task::testing::run(&mirror::TASK, br#"{"x":1,"y":2}"#);
//! assert_eq!(outcome.texts(), [r#"{"x":2,"y":1}"#]);
//! # }
//! ```
//!
//! Tasks with state built once from their args implement [`Stateful`] and use
//! [`stateful_task!`]; plain tasks read their args with [`args`]. Log with [`error!`],
//! [`warn!`], [`info!`], [`debug!`] and [`trace!`]. A panic fails the item with the panic
//! message.
//!
//! On wasm32 the host calls are the module's `pcluster` imports. Natively they are stand-ins
//! (`emit` collects, `log` prints to stderr, `fail` keeps the message), so the same code
//! unit-tests natively through [`testing`].
//!
//! Per item, `&[u8]` and `&str` inputs are borrowed from the input buffer and borrowed outputs
//! are emitted from where they lie: the glue allocates nothing.

mod item;
mod logging;
mod macros;
mod runtime;
mod stateful;
mod sys;
#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

pub use item::{Each, Emitter, FromItem, Item, Json, Output};
pub use logging::{Level, log};
pub use runtime::{__private, ABI_VERSION, Task, args};
pub use stateful::Stateful;
