//! A chain's task graph: tasks named (`name`, default: the function) with their successors
//! (`next`). Without any `next` the chain is linear, as listed; once a task has one, the graph
//! is exactly what the `next` lists say (tasks without are sinks) and items enter at the first
//! task listed. Checked at load: unique names, known successors, no cycle, every task
//! reachable from the first; and drawn as Graphviz DOT for `pcluster run --dot`.

/// What is wrong with a chain's graph, naming the task.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Two tasks have the same name.
    #[error("two tasks are named `{task}` (set `name` on one of them)")]
    DuplicateName {
        /// The name.
        task: String,
    },
    /// A `next` entry names no task.
    #[error("task `{task}`: `next` names `{next}`, which is no task of the chain")]
    UnknownNext {
        /// The task whose `next` it is.
        task: String,
        /// The unknown name.
        next: String,
    },
    /// The graph has a cycle through this task.
    #[error("task `{task}` is on a cycle of `next` (a chain must not loop)")]
    Cycle {
        /// A task on the cycle.
        task: String,
    },
    /// No path leads from the first task to this one.
    #[error("task `{task}` is unreachable from the first task `{first}`")]
    Unreachable {
        /// The unreachable task.
        task: String,
        /// The first task, where items enter.
        first: String,
    },
}

/// Successors of each task, by index: `None` when no task names any (a linear chain), else
/// `Some` list for every task (empty for sinks).
pub type Successors = Option<Vec<Vec<u32>>>;

/// Checks the graph of tasks `names` with `next` lists (`None`: the task has no `next`).
///
/// # Errors
/// The first problem found, naming the task.
pub fn successors(
    names: &[String],
    next: &[Option<Vec<String>>],
) -> Result<Successors, GraphError> {
    for (i, n) in names.iter().enumerate() {
        if names[..i].contains(n) {
            return Err(GraphError::DuplicateName { task: n.clone() });
        }
    }
    if next.iter().all(Option::is_none) {
        return Ok(None);
    }
    let mut succ = Vec::with_capacity(names.len());
    for (i, list) in next.iter().enumerate() {
        let mut s = Vec::new();
        for target in list.iter().flatten() {
            let Some(j) = names.iter().position(|n| n == target) else {
                return Err(GraphError::UnknownNext {
                    task: names[i].clone(),
                    next: target.clone(),
                });
            };
            if !s.contains(&(j as u32)) {
                s.push(j as u32);
            }
        }
        succ.push(s);
    }
    // Cycles: depth-first search with colours (0 new, 1 on the path, 2 done).
    let mut colour = vec![0u8; names.len()];
    for start in 0..names.len() {
        if colour[start] != 0 {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        colour[start] = 1;
        while let Some(&mut (node, ref mut at)) = stack.last_mut() {
            if let Some(&next) = succ[node].get(*at) {
                *at += 1;
                let next = next as usize;
                match colour[next] {
                    0 => {
                        colour[next] = 1;
                        stack.push((next, 0));
                    }
                    1 => {
                        return Err(GraphError::Cycle {
                            task: names[next].clone(),
                        });
                    }
                    _ => {}
                }
            } else {
                colour[node] = 2;
                stack.pop();
            }
        }
    }
    let mut reached = vec![false; names.len()];
    let mut todo = vec![0usize];
    while let Some(t) = todo.pop() {
        if std::mem::replace(&mut reached[t], true) {
            continue;
        }
        todo.extend(succ[t].iter().map(|&s| s as usize));
    }
    if let Some(t) = reached.iter().position(|r| !r) {
        return Err(GraphError::Unreachable {
            task: names[t].clone(),
            first: names[0].clone(),
        });
    }
    Ok(Some(succ))
}

/// The chain `chain` as a Graphviz DOT graph: one node per task (labelled with its name and,
/// where it differs, its function), one edge per successor; a linear chain in order.
#[must_use]
pub fn dot(chain: &str, names: &[String], functions: &[String], succ: &Successors) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    let mut out = format!("digraph {} {{\n    rankdir=LR;\n", quote(chain));
    for (name, function) in names.iter().zip(functions) {
        let label = if name == function {
            name.clone()
        } else {
            format!("{name}\\n({function})")
        };
        out += &format!(
            "    {} [label={}];\n",
            quote(name),
            quote(&label).replace("\\\\n", "\\n")
        );
    }
    for (i, name) in names.iter().enumerate() {
        let next: Vec<usize> = match succ {
            Some(s) => s[i].iter().map(|&j| j as usize).collect(),
            None => (i + 1 < names.len()).then_some(i + 1).into_iter().collect(),
        };
        for j in next {
            out += &format!("    {} -> {};\n", quote(name), quote(&names[j]));
        }
    }
    out += "}\n";
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| (*s).to_string()).collect()
    }

    fn next(v: &[Option<&[&str]>]) -> Vec<Option<Vec<String>>> {
        v.iter().map(|n| n.map(names)).collect()
    }

    #[test]
    fn no_next_anywhere_is_the_linear_chain() {
        assert_eq!(
            successors(&names(&["a", "b"]), &next(&[None, None])),
            Ok(None)
        );
    }

    #[test]
    fn a_diamond_is_exactly_what_next_says() {
        let n = names(&["id", "dup", "copy", "drop"]);
        let s = successors(
            &n,
            &next(&[
                Some(&["dup", "copy"]),
                Some(&["drop"]),
                Some(&["drop"]),
                None,
            ]),
        )
        .unwrap();
        assert_eq!(s, Some(vec![vec![1, 2], vec![3], vec![3], vec![]]));
        let d = dot(
            "diamond",
            &n,
            &names(&["w1_identity", "w1_duplicate", "w1_identity", "w1_drop_odd"]),
            &s,
        );
        assert!(d.starts_with("digraph \"diamond\" {"), "{d}");
        for edge in [
            "\"id\" -> \"dup\";",
            "\"id\" -> \"copy\";",
            "\"dup\" -> \"drop\";",
            "\"copy\" -> \"drop\";",
        ] {
            assert!(d.contains(edge), "{edge} in {d}");
        }
        assert!(d.contains("copy\\n(w1_identity)"), "{d}");
    }

    #[test]
    fn errors_name_the_task() {
        let n = names(&["a", "b", "c"]);
        assert_eq!(
            successors(&n, &next(&[Some(&["x"]), None, None])),
            Err(GraphError::UnknownNext {
                task: "a".into(),
                next: "x".into()
            })
        );
        assert_eq!(
            successors(&n, &next(&[Some(&["b"]), Some(&["c"]), Some(&["b"])])),
            Err(GraphError::Cycle { task: "b".into() })
        );
        assert_eq!(
            successors(&n, &next(&[Some(&["b"]), None, None])),
            Err(GraphError::Unreachable {
                task: "c".into(),
                first: "a".into()
            })
        );
        assert_eq!(
            successors(&names(&["a", "a"]), &next(&[None, None])),
            Err(GraphError::DuplicateName { task: "a".into() })
        );
        let e = GraphError::Unreachable {
            task: "c".into(),
            first: "a".into(),
        };
        assert_eq!(
            e.to_string(),
            "task `c` is unreachable from the first task `a`"
        );
    }

    #[test]
    fn a_linear_chain_draws_in_order() {
        let n = names(&["a", "b", "c"]);
        let d = dot("l", &n, &n, &None);
        assert!(d.contains("\"a\" -> \"b\";\n    \"b\" -> \"c\";"), "{d}");
    }
}
