//! Placement by labels: a task that needs labels runs only on nodes carrying all of them.
//! Fresh inputs go only to nodes that can run the first task, descendants only to nodes that
//! can run the task they enter at; a node that meets a task it cannot run hands the items
//! back (continuations). A setup with a task no node can run fails, naming the task and a
//! label. Each node receives only the modules of tasks it can run ([`for_node`]).

use protocol::{ChainSpec, Withheld};

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

/// The chain as `node` (its labels) receives it, and the modules withheld from it: a module
/// that no task the node can run uses is sent empty, with only whether it is a component
/// (`None`: every module is needed there, send the chain as it is).
pub(crate) fn for_node(chain: &ChainSpec, node: &[String]) -> Option<(ChainSpec, Vec<Withheld>)> {
    let mut needed = vec![false; chain.modules.len()];
    for t in &chain.tasks {
        if can_run(node, &t.labels)
            && let Some(n) = needed.get_mut(t.module as usize)
        {
            *n = true;
        }
    }
    if needed.iter().all(|&n| n) {
        return None;
    }
    let mut shipped = ChainSpec {
        name: chain.name.clone(),
        version: chain.version.clone(),
        modules: Vec::with_capacity(chain.modules.len()),
        tasks: chain.tasks.clone(),
        limits: chain.limits.clone(),
    };
    let mut withheld = Vec::new();
    for (i, (bytes, needed)) in chain.modules.iter().zip(needed).enumerate() {
        if needed {
            shipped.modules.push(bytes.clone());
        } else {
            shipped.modules.push(serde_bytes::ByteBuf::new());
            withheld.push(Withheld {
                module: i as u32,
                component: is_component(bytes),
            });
        }
    }
    Some((shipped, withheld))
}

/// Whether a module's tasks take tagged items as a component's do: a component (the wasm
/// header's version and layer fields `0d 00 01 00`; `01 00 00 00` is a core module), or
/// native Python's sources.
fn is_component(bytes: &[u8]) -> bool {
    (bytes.len() >= 8 && bytes[..4] == *b"\0asm" && bytes[4..8] == [0x0d, 0x00, 0x01, 0x00])
        || protocol::native::is_bundle(bytes)
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

    #[test]
    fn a_node_receives_only_the_modules_of_tasks_it_can_run() {
        let task = |module, labels: &[&str]| protocol::TaskSpec {
            function: format!("f{module}"),
            module,
            generator: false,
            args: Vec::new(),
            next: None,
            labels: v(labels),
        };
        let core = b"\0asm\x01\0\0\0core".to_vec();
        let component = b"\0asm\x0d\0\x01\0py".to_vec();
        let chain = ChainSpec {
            name: "c".into(),
            version: "1".into(),
            modules: vec![core.clone().into(), component.clone().into()],
            tasks: vec![task(0, &["a"]), task(1, &["b"]), task(0, &[])],
            limits: protocol::Limits::default(),
        };
        let (for_a, withheld) = for_node(&chain, &v(&["a"])).expect("module 1 withheld");
        assert_eq!(for_a.modules[0].as_slice(), core.as_slice());
        assert!(for_a.modules[1].is_empty());
        assert_eq!(
            withheld,
            [Withheld {
                module: 1,
                component: true
            }]
        );
        assert_eq!(for_a.tasks, chain.tasks, "every task is named everywhere");
        // Node `b` runs task 1 (module 1) and task 2 (module 0, no labels): it needs both.
        assert!(for_node(&chain, &v(&["b"])).is_none());
        assert!(for_node(&chain, &v(&["a", "b"])).is_none(), "all of it");
        let none = v(&[]);
        let (plain, withheld) = for_node(&chain, &none).expect("module 1 withheld");
        assert!(plain.modules[1].is_empty() && withheld.len() == 1);
    }
}
