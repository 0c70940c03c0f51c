"""What a Python task can call while it runs on a node.

A task's standard output and error become log lines on the node, which tags them with node,
worker and task and sends them to the log server; ``log`` writes one such line. Outside a
node (a task's own tests) it prints to standard error.
"""

import sys


def log(msg: object) -> None:
    """One log line from the running task."""
    print(str(msg), file=sys.stderr, flush=True)
