//! Placement by labels: a task that needs labels runs only on nodes carrying all of them.
//! Fresh inputs go only to nodes that can run the first task, descendants only to nodes that
//! can run the task they enter at; a node that meets a task it cannot run hands the items
//! back (continuations). A setup with a task no node can run fails, naming the task and a
//! label.

/// Whether a node with `node` labels can run a task that needs `task` labels.
pub(crate) fn can_run(node: &[String], task: &[String]) -> bool {
    task.iter().all(|l| node.contains(l))
}

/// The first task of `tasks` (`(name, labels)`) that no node of `nodes` (their labels) can
/// run, with the label to name: one that no node carries, else all of the task's labels
/// (each is somewhere, but no node has them all).
pub(crate) fn unplaceable<'a>(
    tasks: impl IntoIterator<Item = (&'a str, &'a [String])>,
    nodes: &[&[String]],
) -> Option<(String, String)> {
    for (name, labels) in tasks {
        if nodes.iter().any(|n| can_run(n, labels)) {
            continue;
        }
        let label = labels
            .iter()
            .find(|l| !nodes.iter().any(|n| n.contains(l)))
            .cloned()
            .unwrap_or_else(|| labels.join(","));
        return Some((name.to_string(), label));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|x| (*x).to_string()).collect()
    }

    #[test]
    fn a_task_runs_where_every_label_it_needs_is() {
        assert!(can_run(&v(&["cpu", "io"]), &v(&["io"])));
        assert!(can_run(&v(&[]), &v(&[])));
        assert!(!can_run(&v(&["cpu"]), &v(&["cpu", "io"])));
    }

    #[test]
    fn the_first_task_no_node_can_run_is_named_with_a_missing_label() {
        let (a, b) = (v(&["a"]), v(&["b"]));
        let (t1, t2) = (v(&["a"]), v(&["b"]));
        let tasks = || [("task1", t1.as_slice()), ("task2", t2.as_slice())];
        assert_eq!(unplaceable(tasks(), &[&a, &b]), None);
        assert_eq!(
            unplaceable(tasks(), &[&a]),
            Some(("task2".into(), "b".into()))
        );
        let both = v(&["a", "b"]);
        assert_eq!(
            unplaceable([("t", both.as_slice())], &[&a, &b]),
            Some(("t".into(), "a,b".into())),
            "each label exists, no node has both"
        );
    }
}
