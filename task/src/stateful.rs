//! [`Stateful`]: a task with state built once per instance from its args, like
//! pipeline-cluster's callable classes.

use crate::Emitter;

/// A task that keeps state between items; make it a task with
/// [`stateful_task!`](crate::stateful_task).
///
/// A node runs each task of a chain in an instance of its own, so the state belongs to one
/// task on one worker: items of the same chain on other workers see other states.
pub trait Stateful: Sized + 'static {
    /// Whether [`process`](Stateful::process) may emit several items for one input. The SDK
    /// cannot tell from the signature (every `process` gets an [`Emitter`]), so a stateful task
    /// that is a generator says so here, which lists it in the module's `pcluster.generators`
    /// section; a host then knows it before the first item.
    const GENERATOR: bool = false;

    /// Builds the state from the task's args (empty when the chain gives none).
    ///
    /// # Errors
    ///
    /// Why the args are unusable; the task's setup then fails with this message.
    fn init(args: &[u8]) -> Result<Self, String>;

    /// Handles one item, emitting its outputs through `out`; emitting none drops the item.
    ///
    /// # Errors
    ///
    /// The message that fails this item; the state stays for the next item.
    fn process(&mut self, item: &[u8], out: &mut Emitter) -> Result<(), String>;
}
