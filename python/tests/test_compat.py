"""pipeline-cluster's own cluster script, with only the import renamed: a log server from
``multiprocess_logging.serve(..., detach=True)`` and ``configure``, nodes from
``node.Server(addr, log_addr).serve()`` in ``multiprocessing`` processes, ``search_nodes(...,
verbose=True)`` used as a truth value, and tasks defined in a submodule of a local package
(``compat_tasks.tasks``) that logs through ``multiprocess_logging``; in both runtimes.
"""

import multiprocessing as mp
from pathlib import Path

import pytest

import pcluster.multiprocess_logging as mpl
from conftest import NATIVE_TOKEN, REPO, wait_until
from pcluster import node, root

PACKAGE = REPO / "python/tests/compat_tasks"


def node_routine(addr, log_addr, port_file, extra):
    node.Server(addr, log_addr, conn_buffer_size=2, workers=1,
                extra_args=["--port-file", port_file, *extra]).serve()


@pytest.mark.parametrize("runtime", ["python", "sandbox"])
def test_pipeline_clusters_script_runs_with_the_import_renamed(
    runtime: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PCLUSTER_TOKEN", NATIVE_TOKEN)
    log_file = tmp_path / "log.txt"
    log = mpl.serve(("127.0.0.1", 0), str(log_file), conn_buffer_size=4, detach=True)
    mpl.configure(log.address)
    extra = ["--allow-native", "--cache-dir", str(tmp_path / "cache")] if runtime == "python" else []
    spawn = mp.get_context("spawn")
    nodes = []
    port = 0
    try:
        for host in ["127.0.0.2", "127.0.0.3"]:
            port_file = tmp_path / f"{host}.port"
            p = spawn.Process(target=node_routine, args=((host, port), log.address, str(port_file), extra))
            p.start()
            nodes.append(p)
            wait_until(f"the node on {host}", lambda: port_file.exists() or not p.is_alive())
            port = int(port_file.read_text().strip().rsplit(":", 1)[1])

        from compat_tasks.tasks import wait, wait_more

        taskchain = [
            {"function": wait, "is_generator": True},
            {"function": wait_more, "is_generator": False},
        ]
        outputs = []
        r = root.Root()
        assert r.search_nodes(network="127.0.0.0/29", port=port, verbose=True)
        r.setup("example_pipeline", 1.1, taskchain, local_packages=[str(PACKAGE)],
                output_handler=outputs.append, runtime=runtime)
        items = ["hello world", "second hello world"]
        r.feed(items)
        r.wait_empty()
        r.reset()
        r.close()
        assert sorted(outputs) == sorted(i + " (waited more)" for i in items for _ in range(2))
        for item in items:
            wait_until(f"the log line of {item!r}", lambda: f"task=tasks.wait_more" in log_file.read_text()
                       and item in log_file.read_text())
    finally:
        for p in nodes:
            p.terminate()
        for p in nodes:
            p.join(30)
        log.terminate()
        log.wait(30)
