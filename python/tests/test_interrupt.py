"""Ctrl-C: SIGINT to a process waiting in ``wait_empty`` raises KeyboardInterrupt there, and
the nodes are free again for the next root.

Every step has a deadline: the script's output is read by a thread and each line waited for
at most `LINE_DEADLINE_S`; a script stuck past that dumps its Python stacks (faulthandler) to
stderr, which the failure shows; the script is killed in any case."""

import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Optional

import pcluster
from conftest import Cluster
from test_cluster import chain_file, hello_chain

LINE_DEADLINE_S = 60.0

SCRIPT = textwrap.dedent(
    """
    import faulthandler, sys, traceback, pcluster
    # Stuck anywhere: the stacks go to stderr before the test gives up on this process.
    faulthandler.dump_traceback_later(float(sys.argv[1]), exit=True)
    root = pcluster.Root(sys.argv[3:])
    root.setup("hello", "1", sys.argv[2])
    root.sleep()  # the nodes take nothing: wait_empty waits until interrupted
    root.feed("stuck")
    while True:
        try:
            print("waiting", flush=True)
            root.wait_empty()
            print("returned", flush=True)
            sys.exit(1)
        except KeyboardInterrupt as e:
            # Where it was raised: the signal may land before the wait began; then wait again.
            if traceback.extract_tb(e.__traceback__)[-1].name == "wait_empty":
                print("KeyboardInterrupt in wait_empty", flush=True)
                sys.exit(3)
    """
)


def _lines(stream, out: "queue.Queue[Optional[str]]") -> None:
    for line in stream:
        out.put(line.strip())
    out.put(None)


def test_ctrl_c_interrupts_a_wait(cluster: Cluster, tmp_path: Path) -> None:
    stderr_path = tmp_path / "script.stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT, str(LINE_DEADLINE_S - 10), str(hello_chain(tmp_path)),
             *cluster.nodes],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
    lines: "queue.Queue[Optional[str]]" = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()

    def next_line() -> Optional[str]:
        try:
            return lines.get(timeout=LINE_DEADLINE_S)
        except queue.Empty:
            return "(no line within the deadline)"

    try:
        # A SIGINT for every "waiting": one lands inside wait_empty (the script says where).
        for _ in range(50):
            line = next_line()
            if line != "waiting":
                break
            proc.send_signal(signal.SIGINT)
        rest = []
        if line is not None and not line.startswith("(no line"):
            while (more := next_line()) is not None and not more.startswith("(no line"):
                rest.append(more)
            proc.wait(timeout=LINE_DEADLINE_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    why = f"script printed {[line, *rest]}, exit {proc.returncode}, stderr:\n{stderr_path.read_text()}"
    assert line == "KeyboardInterrupt in wait_empty" and rest == [], why
    assert proc.returncode == 3, why
    # The interrupted root freed its nodes when it exited: a new root takes them at once.
    root = pcluster.Root(cluster.nodes)
    try:
        outputs = []
        root.setup("identity", "1", str(chain_file(tmp_path, "identity", ['function = "w1_identity"'])),
                   output_handler=outputs.append)
        root.feed("after")
        root.wait_empty()
        assert outputs == [b"after"]
    finally:
        root.close()
