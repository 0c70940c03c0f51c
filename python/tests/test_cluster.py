"""The Python API against a real cluster (see conftest.py): pipeline-cluster's README example,
a long ``wait_input`` + ``feed`` loop with exact outputs, failures, pause and status.

Most chains here are Rust tasks from ``tasks-example`` named by chain files;
``test_readme_example_with_python_tasks`` runs the same example with the tasks in Python, from
the example package ``examples/python/task_package``, as the W1 loop does.
"""

import sys
from pathlib import Path
from typing import List

import pytest

import pcluster
from conftest import EXAMPLES, PACKAGE, REPO, Cluster, wait_until

TASKS = REPO / "tasks-example"


def chain_file(tmp_path: Path, name: str, tasks: List[str], limits: str = "") -> Path:
    """A chain of tasks-example's tasks; `tasks` holds each `[[task]]` body."""
    text = f'name = "{name}"\nversion = "1.0"\nmodule = "{TASKS}"\n'
    for t in tasks:
        text += f"\n[[task]]\n{t}\n"
    if limits:
        text += f"\n[limits]\n{limits}\n"
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    return path


def hello_chain(tmp_path: Path) -> Path:
    return chain_file(
        tmp_path,
        "hello",
        [
            'function = "simple_task"',
            'function = "generator_task"\ngenerator = true',
            'function = "drop_item"\nargs = "item dropped"',
        ],
    )


@pytest.fixture
def root(cluster: Cluster):
    r = pcluster.Root(cluster.nodes)
    yield r
    r.close()


def tagged_lines(cluster: Cluster, needle: str, task: str) -> List[str]:
    return [
        line
        for line in cluster.log_text().splitlines()
        if needle in line and f"task={task}" in line and any(f"node {n}" in line for n in cluster.nodes)
    ]


def test_readme_example(cluster: Cluster, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    taskchain = str(hello_chain(tmp_path))
    # pipeline-cluster's README, with `pipeline_cluster` replaced by `pcluster` (and the
    # taskchain, Rust tasks here, given as a chain file).
    cluster_ = pcluster.Root()
    assert cluster_.search_nodes(network="127.0.0.0/24", port=cluster.node_port) == 2
    cluster_.setup(
        "example-pipeline",
        1.0,
        taskchain,
        local_packages=["task_package"],
        output_handler=lambda output_item: print(output_item),
    )
    cluster_.feed("hello world!", "its me an input item!")
    cluster_.wait_empty()
    cluster_.reset()
    cluster_.close()
    # DropItem drops everything: nothing was printed.
    assert capsys.readouterr().out == ""
    for item in ["hello world!", "its me an input item!"]:
        wait_until(
            f"simple_task's and generator_task's lines for {item!r}",
            lambda: tagged_lines(cluster, f"simple_task: {item}", "simple_task")
            and tagged_lines(cluster, f"generator_task: {item}", "generator_task"),
        )
    # Each of the two inputs became two items, each dropped with a message.
    wait_until("four drop lines", lambda: len(tagged_lines(cluster, "item dropped", "drop_item")) >= 4)


sys.path.insert(0, str(EXAMPLES))
import task_package  # noqa: E402

sys.path.pop(0)


def test_readme_example_with_python_tasks(cluster: Cluster) -> None:
    from task_package import DropItem, generator_task, simple_task

    taskchain = [
        {"function": simple_task, "is_generator": False},
        {"function": generator_task, "is_generator": True},
        {"function": DropItem, "is_generator": False, "args": ("item dropped",)},
    ]
    outputs = []
    cluster_ = pcluster.Root()
    cluster_.search_nodes(network="127.0.0.0/24", port=cluster.node_port)
    try:
        cluster_.setup(
            "example-pipeline",
            1.0,
            taskchain,
            local_packages=[str(PACKAGE)],
            output_handler=outputs.append,
        )
        cluster_.feed("hello world!", "its me an input item!")
        cluster_.wait_empty()
        cluster_.reset()
    finally:
        cluster_.close()
    assert outputs == []
    for item in ["hello world!", "its me an input item!"]:
        wait_until(
            f"the Python tasks' lines for {item!r}",
            lambda: tagged_lines(cluster, item, "simple_task") and tagged_lines(cluster, item, "generator_task"),
        )
    wait_until("four drop lines", lambda: len(tagged_lines(cluster, "item dropped", "DropItem")) >= 4)


def feed_waiting_for_input(root: pcluster.Root, items: List[str], step: int = 10_000) -> None:
    """pipeline-cluster's loop: wait until the root takes input, then feed the next step."""
    for start in range(0, len(items), step):
        root.wait_input()
        root.feed(items[start : start + step])


def test_a_loop_of_wait_input_and_feed_over_100_000_items(root: pcluster.Root, tmp_path: Path) -> None:
    chain = chain_file(
        tmp_path,
        "w1",
        ['function = "w1_identity"', 'function = "w1_duplicate"\ngenerator = true', 'function = "w1_drop_odd"'],
    )
    outputs: List[bytes] = []
    root.setup("w1", "1.0", str(chain), output_handler=outputs.append)
    n = 100_000
    feed_waiting_for_input(root, [f"item-{i}" for i in range(n)])
    root.wait_empty()
    expected = sorted(f"item-{i}".encode() for i in range(0, n, 2) for _ in range(2))
    assert len(outputs) == n
    assert sorted(outputs) == expected
    root.reset()


def test_a_loop_of_100_000_items_through_python_tasks(root: pcluster.Root) -> None:
    outputs: List[str] = []
    taskchain = [
        {"function": task_package.w1_identity},
        {"function": task_package.w1_duplicate, "is_generator": True},
        {"function": task_package.w1_drop_odd},
    ]
    root.setup("w1-py", "1.0", taskchain, local_packages=[str(PACKAGE)],
                       output_handler=outputs.append)
    n = 100_000
    feed_waiting_for_input(root, [f"item-{i}" for i in range(n)])
    root.wait_empty()
    # str in, str out: the items kept their type through the Python tasks.
    assert sorted(outputs) == sorted(f"item-{i}" for i in range(0, n, 2) for _ in range(2))
    root.reset()


def test_a_failing_item_reaches_the_failure_handler(root: pcluster.Root, tmp_path: Path) -> None:
    chain = chain_file(tmp_path, "panics", ['function = "panic_task"'])
    outputs: List[bytes] = []
    failures: List[pcluster.ItemFailure] = []
    root.setup("panics", "1", str(chain), output_handler=outputs.append, failure_handler=failures.append)
    root.feed(["fine", "please panic", b"also fine"])
    root.wait_empty()
    assert sorted(outputs) == [b"also fine", b"fine"]
    assert len(failures) == 1
    f = failures[0]
    assert f.task == "panic_task"
    assert f.input == 1
    assert f.input_item == b"please panic"
    assert "asked for a panic" in f.message, f.message
    assert f.node in root.nodes()
    root.reset()


def test_a_handler_exception_is_raised_by_the_next_wait(root: pcluster.Root, tmp_path: Path) -> None:
    chain = chain_file(tmp_path, "identity", ['function = "w1_identity"'])

    def broken(item: bytes) -> None:
        raise RuntimeError(f"handler broke on {item!r}")

    root.setup("identity", "1", str(chain), output_handler=broken)
    # Raised by the next waiting call after the output: feed's own wait, or wait_empty.
    with pytest.raises(RuntimeError, match="handler broke on b'x'"):
        root.feed("x")
        root.wait_empty()
    root.reset()


def test_sleep_wakeup_and_status(root: pcluster.Root, tmp_path: Path) -> None:
    chain = chain_file(tmp_path, "identity", ['function = "w1_identity"'])
    outputs: List[bytes] = []
    root.setup("identity", "1", str(chain), output_handler=outputs.append)
    statuses = root.status()
    assert sorted(s["addr"] for s in statuses) == sorted(root.nodes())
    assert all(s["chain"] == ["identity", "1"] and s["workers"] == 1 for s in statuses), statuses
    root.sleep()
    root.feed("a", "b")
    root.wakeup()
    root.wait_empty()
    assert sorted(outputs) == [b"a", b"b"]
    root.reset()


def test_errors_are_exceptions_with_clear_messages(root: pcluster.Root, tmp_path: Path) -> None:
    with pytest.raises(pcluster.PclusterError, match="cannot read"):
        root.setup("x", "1", str(tmp_path / "missing.toml"))
    chain = chain_file(tmp_path, "nosuch", ['function = "no_such_task"'])
    with pytest.raises(pcluster.PclusterError, match="no_such_task"):
        root.setup("x", "1", str(chain))
    with pytest.raises(ValueError, match="bad network"):
        root.search_nodes(network="not a network")
    with pytest.raises(ValueError, match="unknown codec"):
        root.setup("x", "1", str(chain), codec="yaml")
    with pytest.raises(pcluster.PclusterError, match="127.0.0.1:1"):
        pcluster.Root(["127.0.0.1:1"])


def test_a_handler_cannot_call_its_root(root: pcluster.Root, tmp_path: Path) -> None:
    chain = chain_file(tmp_path, "identity", ['function = "w1_identity"'])
    root.setup("identity", "1", str(chain), output_handler=lambda item: root.wait_empty())
    with pytest.raises(pcluster.PclusterError, match="inside its output or failure handler"):
        root.feed("x")
        root.wait_empty()
    root.reset()


def test_nodes_by_name_and_tuple(cluster: Cluster) -> None:
    host, port = cluster.node_hosts[0], cluster.node_port
    with pcluster.Root([(host, port)]) as r:
        assert r.nodes() == [f"{host}:{port}"]


def test_log_reaches_the_log_server(cluster: Cluster) -> None:
    pcluster.log("hello world!", addr=("127.0.0.1", cluster.log_port))
    pcluster.set_default_log_address(("127.0.0.1", cluster.log_port))
    pcluster.log("to the default address")
    wait_until(
        "both lines in the log file",
        lambda: "hello world!" in cluster.log_text() and "to the default address" in cluster.log_text(),
    )
    with pytest.raises(ValueError, match="neither"):
        pcluster.log("x", addr=("127.0.0.1",))
