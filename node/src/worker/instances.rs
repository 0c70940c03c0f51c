//! A worker's task instances, built when the worker starts: one per task it runs, and the
//! reason for each it does not. Native tasks' processes start side by side.

use std::sync::Arc;

use protocol::TaskIndex;

use super::pool::PoolShared;
use crate::engine::{LogCtx, TaskInstance};
use crate::error::{SetupError, TaskProblem};

/// The worker's instance of every task (an error for those it does not run). Native tasks'
/// processes start side by side, since each takes an interpreter's start-up and imports.
pub(super) fn instances(
    shared: &PoolShared,
    index: u32,
    node: &Arc<str>,
) -> Result<Vec<Result<TaskInstance, Arc<TaskProblem>>>, SetupError> {
    let build = |i: usize| -> Result<Result<TaskInstance, Arc<TaskProblem>>, SetupError> {
        let task = &shared.chain.tasks[i];
        if !shared.runnable[i] {
            // Never called here: its items go back to the root.
            return Ok(Err(Arc::new(TaskProblem::NotPlaced {
                labels: task.labels.join(","),
            })));
        }
        let ctx = LogCtx {
            node: node.clone(),
            worker: index,
            task: task.name.clone(),
        };
        let inst = TaskInstance::new(task, &shared.chain.limits, ctx).map_err(|problem| {
            SetupError::Task {
                index: TaskIndex(i as u32),
                task: task.name.clone(),
                problem,
            }
        })?;
        Ok(Ok(inst))
    };
    let n = shared.chain.tasks.len();
    let natives = shared.chain.tasks.iter().filter(|t| t.is_native()).count();
    if natives < 2 {
        return (0..n).map(build).collect();
    }
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n).map(|i| s.spawn(move || build(i))).collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(Err(SetupError::WorkerDied)))
            .collect()
    })
}
