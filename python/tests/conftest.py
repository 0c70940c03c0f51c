"""A real cluster for the tests: ``pcluster log`` on 127.0.0.1 and two ``pcluster node``
processes on 127.0.0.2 and 127.0.0.3 (one worker each), on ports the OS chooses (read back
from ``--port-file``), started once per test session; and the same with nodes that allow
native Python tasks. The executable is ``target/release/pcluster`` of this checkout, or
``PCLUSTER_BIN``.
"""

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

REPO = Path(__file__).resolve().parents[2]
# The example Python tasks (pipeline-cluster's README example, W1, W2): the tests use them.
EXAMPLES = REPO / "examples/python"
PACKAGE = EXAMPLES / "task_package"
DEADLINE_S = 120.0


def wait_until(what: str, condition: Callable[[], bool], deadline_s: float = DEADLINE_S) -> None:
    """Polls `condition` until it holds; fails naming `what` after the deadline."""
    end = time.monotonic() + deadline_s
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out after {deadline_s} s waiting for {what}")
        time.sleep(0.02)


def pcluster_bin() -> Path:
    path = Path(os.environ.get("PCLUSTER_BIN") or REPO / "target/release/pcluster")
    if not path.is_file():
        pytest.fail(
            f"no pcluster executable at {path}: run `cargo build --release -p pcluster` "
            "or set PCLUSTER_BIN"
        )
    return path


@dataclass
class Cluster:
    log_file: Path
    log_port: int
    node_port: int
    node_hosts: List[str]
    bin: Path

    @property
    def nodes(self) -> List[str]:
        return [f"{h}:{self.node_port}" for h in self.node_hosts]

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator["ClusterProcs"]:
    env = dict(os.environ)
    env.pop("PCLUSTER_TOKEN", None)
    c = cluster_processes(tmp_path_factory.mktemp("cluster"), env, [])
    try:
        yield c
    finally:
        for p in reversed(c.procs):
            stop(p)

NATIVE_TOKEN = "native-tests-token"


def start_server(cmd: List[str], port_file: Path, env: dict, what: str) -> "tuple[subprocess.Popen, int]":
    """Starts a `pcluster log` or `pcluster node` command with `--port-file`; returns it and
    the port it bound once it listens (at once with an error if it exits first)."""
    quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
    proc = subprocess.Popen(cmd + ["--port-file", str(port_file)], env=env, **quiet)
    wait_until(f"{what} to listen", lambda: port_file.exists() or proc.poll() is not None)
    if proc.poll() is not None:
        pytest.fail(f"{what} exited with status {proc.returncode} before listening")
    return proc, int(port_file.read_text().strip().rsplit(":", 1)[1])


@dataclass
class ClusterProcs(Cluster):
    procs: List[subprocess.Popen]


# The native tests' name for it.
NativeCluster = ClusterProcs


def cluster_processes(tmp: Path, env: dict, node_args: List[str]) -> "ClusterProcs":
    """A log server on 127.0.0.1 and nodes on 127.0.0.2 and 127.0.0.3 (one worker each, with
    `node_args`), the first node on a port the OS chooses and the second on the same one (the
    tests' scans are of one port)."""
    exe = pcluster_bin()
    log_file = tmp / "cluster.log"
    procs: List[subprocess.Popen] = []
    try:
        log, log_port = start_server(
            [str(exe), "log", "--host", "127.0.0.1", "--port", "0", "--outfile", str(log_file)],
            tmp / "log.port",
            env,
            "the log server",
        )
        procs.append(log)
        node = [str(exe), "node", "--log-host", "127.0.0.1", "--log-port", str(log_port),
                "--workers", "1", *node_args]
        hosts = ["127.0.0.2", "127.0.0.3"]
        port = 0
        for h in hosts:
            proc, port = start_server(node + ["--host", h, "--port", str(port)], tmp / f"{h}.port", env,
                                      f"the node on {h}")
            procs.append(proc)
    except BaseException:
        for p in reversed(procs):
            stop(p)
        raise
    return ClusterProcs(log_file, log_port, port, hosts, exe, procs)


def native_cluster_processes(tmp: Path) -> "ClusterProcs":
    """The same with nodes that allow native Python tasks (with a token), their environments
    in `tmp`; pip installs from PCLUSTER_WHEELHOUSE when it is set."""
    env = dict(os.environ)
    env["PCLUSTER_TOKEN"] = NATIVE_TOKEN
    node_args = ["--allow-native", "--cache-dir", str(tmp / "cache")]
    wheels = os.environ.get("PCLUSTER_WHEELHOUSE")
    if wheels:
        node_args += ["--pip-args", f"--no-index --find-links {wheels}"]
    return cluster_processes(tmp, env, node_args)


@pytest.fixture(scope="session")
def native_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NativeCluster]:
    c = native_cluster_processes(tmp_path_factory.mktemp("native"))
    try:
        yield c
    finally:
        for p in reversed(c.procs):
            stop(p)
