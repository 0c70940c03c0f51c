//! A branching chain's graph on the node: each task's successors and an order of the tasks in
//! which every task comes after all that feed it, checked at setup (indices in range, no
//! cycle) so that a unit runs stage by stage in that order, each task over everything its
//! predecessors emitted.

use protocol::TaskSpec;

/// Successors of every task and a topological order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Graph {
    /// The tasks each task's outputs go to; empty for a sink (its outputs are the chain's).
    pub next: Vec<Vec<usize>>,
    /// Every task, each after all of its predecessors.
    pub order: Vec<usize>,
}

/// Why a chain's graph is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GraphError {
    /// A successor index out of range.
    #[error("task {task}: `next` names task {next} of {count}")]
    NoSuchTask {
        /// The task.
        task: usize,
        /// The index it names.
        next: u32,
        /// Tasks in the chain.
        count: usize,
    },
    /// The tasks' `next` lists loop.
    #[error("the tasks' `next` lists form a cycle")]
    Cycle,
}

/// The graph of `tasks`: `None` when no task lists successors (a linear chain: each task
/// feeds the next); tasks without a list are then sinks.
///
/// # Errors
/// A successor out of range, or a cycle.
pub fn graph(tasks: &[TaskSpec]) -> Result<Option<Graph>, GraphError> {
    if tasks.iter().all(|t| t.next.is_none()) {
        return Ok(None);
    }
    let count = tasks.len();
    let mut next = Vec::with_capacity(count);
    for (task, t) in tasks.iter().enumerate() {
        let mut s: Vec<usize> = Vec::new();
        for &j in t.next.iter().flatten() {
            if j as usize >= count {
                return Err(GraphError::NoSuchTask {
                    task,
                    next: j,
                    count,
                });
            }
            if !s.contains(&(j as usize)) {
                s.push(j as usize);
            }
        }
        next.push(s);
    }
    // Kahn's algorithm: repeatedly take a task nothing left feeds.
    let mut feeding = vec![0usize; count];
    for s in next.iter().flatten() {
        feeding[*s] += 1;
    }
    let mut ready: Vec<usize> = (0..count).rev().filter(|&t| feeding[t] == 0).collect();
    let mut order = Vec::with_capacity(count);
    while let Some(t) = ready.pop() {
        order.push(t);
        for &s in next[t].iter().rev() {
            feeding[s] -= 1;
            if feeding[s] == 0 {
                ready.push(s);
            }
        }
    }
    if order.len() != count {
        return Err(GraphError::Cycle);
    }
    Ok(Some(Graph { next, order }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(next: Option<Vec<u32>>) -> TaskSpec {
        TaskSpec {
            function: "f".into(),
            module: 0,
            generator: false,
            args: Vec::new(),
            next,
            labels: Vec::new(),
        }
    }

    #[test]
    fn linear_chains_have_no_graph() {
        assert_eq!(graph(&[task(None), task(None)]), Ok(None));
    }

    #[test]
    fn a_diamond_runs_each_task_after_its_feeders() {
        // 0 → 3 → 1, 0 → 2 → 1: listed out of order on purpose.
        let g = graph(&[
            task(Some(vec![3, 2])),
            task(Some(vec![])),
            task(Some(vec![1])),
            task(Some(vec![1])),
        ])
        .unwrap()
        .unwrap();
        let pos = |t| g.order.iter().position(|&x| x == t).unwrap();
        assert!(pos(0) < pos(3) && pos(0) < pos(2) && pos(3) < pos(1) && pos(2) < pos(1));
        assert_eq!(g.next[0], [3, 2]);
    }

    #[test]
    fn cycles_and_bad_indices_are_refused() {
        assert_eq!(
            graph(&[task(Some(vec![1])), task(Some(vec![0]))]),
            Err(GraphError::Cycle)
        );
        assert_eq!(
            graph(&[task(Some(vec![5]))]),
            Err(GraphError::NoSuchTask {
                task: 0,
                next: 5,
                count: 1
            })
        );
    }
}
