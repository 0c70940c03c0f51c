"""pcluster from Python, with pipeline-cluster's API: ``pcluster.Root`` drives a cluster,
``pcluster.log`` writes to the log server.

Inside a Python task (compiled to WebAssembly, where ``sys.platform == "wasi"``) only the
pure-Python parts load: ``log`` there is :func:`pcluster.task.log`, tagged by the node with
node, worker and task, and :class:`DropItem` drops the item being processed.
"""

import sys


class DropItem(Exception):
    """Raise inside a task to drop the current item (as returning None does)."""


if sys.platform == "wasi":
    from .task import log

    __all__ = ["DropItem", "log"]
else:
    from ._native import PclusterError
    from ._log import log, set_default_log_address
    from .root import ItemFailure, Root
    from . import multiprocess_logging, node

    __all__ = [
        "DropItem",
        "ItemFailure",
        "PclusterError",
        "Root",
        "log",
        "multiprocess_logging",
        "node",
        "set_default_log_address",
    ]
