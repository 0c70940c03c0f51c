//! [`ItemFailure`]: an item that failed, as the failure handler gets it, and how it reads.

use protocol::{ItemId, TaskIndex};

/// An item that failed, as handed to the failure handler.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ItemFailure {
    /// The input item it descends from.
    pub input: ItemId,
    /// The node it failed on.
    pub node: String,
    /// The failing task's function name (empty for a poison item).
    pub task: String,
    /// The failing task's index (`None` for a poison item or outputs too large to send).
    pub task_index: Option<TaskIndex>,
    /// The start of the failing item.
    pub item_start: Vec<u8>,
    /// The whole input item it descends from, as fed (to feed it again).
    pub input_item: Vec<u8>,
    /// What happened.
    pub message: String,
}

impl ItemFailure {
    /// Where and why it failed, without naming the input: for callers that name inputs
    /// their own way (`pcluster run` by line number).
    pub fn cause(&self) -> FailureCause<'_> {
        FailureCause(self)
    }
}

/// [`ItemFailure::cause`]: `failed in task `t` on node n: message (item: "…")`.
#[derive(Debug)]
pub struct FailureCause<'a>(&'a ItemFailure);

impl std::fmt::Display for FailureCause<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let x = self.0;
        if x.task.is_empty() {
            return write!(f, "failed on node {}: {}", x.node, x.message);
        }
        write!(
            f,
            "failed in task `{}` on node {}: {} (item: {:?})",
            x.task,
            x.node,
            x.message,
            String::from_utf8_lossy(&x.item_start)
        )
    }
}

impl std::fmt::Display for ItemFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "input {} {}", self.input.0, self.cause())
    }
}
