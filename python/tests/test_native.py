"""Native Python tasks (``runtime="python"``) on real nodes started with ``--allow-native``:
pipeline-cluster's README example, numpy installed on the nodes from the chain's
requirements, each limit broken by one item (deadline, memory, a process that exits), a node
killed mid-run, and the refusals (a node that does not allow native tasks; one that would
without a token).
"""

import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

import pcluster
from conftest import (
    EXAMPLES,
    NATIVE_TOKEN,
    PACKAGE,
    REPO,
    Cluster,
    NativeCluster,
    native_cluster_processes,
    pcluster_bin,
    stop,
    wait_until,
)

TASKS = REPO / "python/tests/native_tasks"


def native_chain(tmp_path: Path, function: str, limits: str = "", requirements: str = "[]") -> Path:
    path = tmp_path / f"{function}.toml"
    path.write_text(
        f'name = "native-{function}"\nversion = "1"\nmodule = "{TASKS}"\nruntime = "python"\n'
        f"requirements = {requirements}\n\n[[task]]\nfunction = \"{function}\"\n"
        + (f"\n[limits]\n{limits}\n" if limits else "")
    )
    return path


def setup_and_run(root: pcluster.Root, chain: Path, items: List[str]):
    outputs: List[str] = []
    failures: List[pcluster.ItemFailure] = []
    root.setup(chain.stem, "1", chain, output_handler=outputs.append, failure_handler=failures.append)
    root.feed(items)
    root.wait_empty()
    return outputs, failures


@pytest.fixture
def root(native_cluster: NativeCluster):
    r = pcluster.Root(native_cluster.nodes, token=NATIVE_TOKEN)
    yield r
    r.close()


def test_readme_example_runs_natively(native_cluster: NativeCluster) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        from task_package import DropItem, generator_task, simple_task
    finally:
        sys.path.pop(0)

    taskchain = [
        {"function": simple_task, "is_generator": False},
        {"function": generator_task, "is_generator": True},
        {"function": DropItem, "is_generator": False, "args": ("item dropped",)},
    ]
    outputs: list = []
    r = pcluster.Root(native_cluster.nodes, token=NATIVE_TOKEN)
    try:
        r.setup("example-pipeline", 1.0, taskchain, local_packages=[str(PACKAGE)],
                output_handler=outputs.append, runtime="python")
        r.feed("hello world!", "its me an input item!")
        r.wait_empty()
        r.reset()
    finally:
        r.close()
    assert outputs == []

    def lines(needle: str, task: str) -> List[str]:
        return [
            line for line in native_cluster.log_text().splitlines()
            if needle in line and f"task={task}" in line
        ]

    for item in ["hello world!", "its me an input item!"]:
        wait_until(f"the native tasks' lines for {item!r}",
                   lambda: lines(item, "simple_task") and lines(item, "generator_task"))
    wait_until("four drop lines", lambda: len(lines("item dropped", "DropItem")) >= 4)


def test_numpy_from_requirements_and_a_second_setup_reuses_the_environment(
    root: pcluster.Root, tmp_path: Path
) -> None:
    chain = native_chain(tmp_path, "norm", requirements='["numpy"]')
    vectors = [f"{i},{i + 1},{2 * i}" for i in range(200)] + ["3,4"]
    outputs, failures = setup_and_run(root, chain, vectors)
    assert failures == []
    import math

    expected = sorted(f"{v}={math.sqrt(sum(float(x) ** 2 for x in v.split(',')))}" for v in vectors)
    assert sorted(outputs) == expected
    assert "3,4=5.0" in outputs
    # The nodes say they run native tasks.
    for status in root.status():
        assert "native" in status["labels"], status
    root.reset()
    started = time.monotonic()
    root.setup("norm-again", "1", chain, output_handler=outputs.append)
    assert time.monotonic() - started <= 1.0, "the second setup rebuilt the environment"


def test_an_item_past_its_deadline_fails_alone_and_the_next_succeeds(
    native_cluster: NativeCluster, tmp_path: Path
) -> None:
    chain = native_chain(tmp_path, "sleepy", limits="deadline_ms = 500")
    # One node of one worker: the item after the late one runs on the same worker.
    r = pcluster.Root(native_cluster.nodes[:1], token=NATIVE_TOKEN)
    try:
        outputs, failures = setup_and_run(r, chain, ["a", "sleep", "b"])
        assert sorted(outputs) == ["a!", "b!"]
        assert [f.input_item for f in failures] == ["sleep"]
        assert "deadline of 500 ms" in failures[0].message
        outputs.clear()
        failures.clear()
        started = time.monotonic()
        r.feed(["sleep", "c"])
        r.wait_empty()
        # The late item alone, timed from its feed: within the deadline and one second.
        assert time.monotonic() - started <= 1.5
        assert [f.input_item for f in failures] == ["sleep"]
        assert outputs == ["c!"]
    finally:
        r.close()


def test_an_item_past_the_memory_limit_fails_alone(root: pcluster.Root, tmp_path: Path) -> None:
    chain = native_chain(tmp_path, "hog", limits="memory_mb = 64")
    outputs, failures = setup_and_run(root, chain, ["a", "hog", "b"])
    assert sorted(outputs) == ["a!", "b!"]
    assert [f.input_item for f in failures] == ["hog"]
    assert "memory limit of 64 MiB" in failures[0].message


def test_a_process_that_exits_fails_its_item_alone(root: pcluster.Root, tmp_path: Path) -> None:
    chain = native_chain(tmp_path, "die")
    items = [f"i{n}" for n in range(50)] + ["die"] + [f"j{n}" for n in range(50)]
    outputs, failures = setup_and_run(root, chain, items)
    assert sorted(outputs) == sorted(i + "!" for i in items if i != "die")
    assert [f.input_item for f in failures] == ["die"]
    assert "exited" in failures[0].message


def test_a_node_killed_mid_run_loses_and_doubles_nothing(tmp_path: Path) -> None:
    c = native_cluster_processes(tmp_path)
    try:
        r = pcluster.Root(c.nodes, token=NATIVE_TOKEN)
        outputs: List[str] = []
        r.setup("slow", "1", native_chain(tmp_path, "slow"), output_handler=outputs.append)
        items = [f"item-{n}" for n in range(1500)]
        r.feed(items)
        wait_until("a tenth of the outputs", lambda: len(outputs) >= 150)
        c.procs[2].kill()
        r.wait_empty()
        r.close()
        assert len(outputs) == len(items)
        assert sorted(outputs) == sorted(i + "!" for i in items)
        wait_until("the task's log lines", lambda: "slow saw item-7" in c.log_text())
    finally:
        for p in reversed(c.procs):
            stop(p)


def test_a_node_without_allow_native_refuses_a_native_chain(cluster: Cluster, tmp_path: Path) -> None:
    r = pcluster.Root(cluster.nodes)
    try:
        with pytest.raises(pcluster.PclusterError, match="--allow-native"):
            r.setup("die", "1", native_chain(tmp_path, "die"))
    finally:
        r.close()


def test_allow_native_without_a_token_refuses_to_start() -> None:
    env = {"PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [str(pcluster_bin()), "node", "--allow-native", "--host", "127.0.0.1", "--port", "0"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode != 0
    assert "--allow-native needs a cluster token" in done.stderr


def test_a_failed_install_fails_setup_naming_node_package_and_pips_words(
    root: pcluster.Root, native_cluster: NativeCluster, tmp_path: Path
) -> None:
    chain = native_chain(tmp_path, "pid", requirements='["pcluster-no-such-package==1.0"]')
    with pytest.raises(pcluster.PclusterError) as failed:
        root.setup("missing", "1", chain)
    message = str(failed.value)
    assert "pcluster-no-such-package==1.0" in message
    assert "No matching distribution" in message or "Could not find a version" in message, message
    assert any(n in message for n in native_cluster.nodes), message
