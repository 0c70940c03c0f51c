"""The `pcluster` module inside a Python task component: logging and `DropItem`.

`pcluster.log(msg)` (and `pcluster.task.log(msg)`) send one line to the node's log, which
tags it with node, worker and task; `print` and `logging` output land there too.
"""

import sys

import wit_world

__all__ = ["log", "task", "DropItem", "multiprocess_logging", "set_default_log_address"]


# True while componentize-py pre-initialises the component (the glue imports the task's
# module then): host imports are stubs that trap, so log lines go to the build's stderr.
_building = True


def _log(level, msg):
    if _building:
        print(msg, file=sys.stderr)
    else:
        wit_world.log(level, msg)


class DropItem(Exception):
    """Raise it in a task to drop the current item without failing it."""


def log(msg, addr=None, level=2):
    """One log line (`addr` is accepted for pipeline-cluster's signature and ignored: the
    node decides where its log goes)."""
    _log(level, str(msg))


def set_default_log_address(addr):
    """Accepted for pipeline-cluster's API; the node decides where its log goes."""


class _Task:
    _name = None

    @staticmethod
    def log(msg, level=2):
        _log(level, str(msg))


task = _Task()


# pipeline-cluster's `multiprocess_logging`, as its tasks use it: `log(msg)` goes to the
# node's log; the log server's address is the node's to decide.
multiprocess_logging = type(sys)("pcluster.multiprocess_logging")
multiprocess_logging.log = log
multiprocess_logging.configure = set_default_log_address
sys.modules["pcluster.multiprocess_logging"] = multiprocess_logging


class _LogStream:
    """A text stream whose lines become log lines."""

    def __init__(self, level):
        self._level = level
        self._buf = ""

    def write(self, text):
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            wit_world.log(self._level, line)
        return len(text)

    def flush(self):
        if self._buf:
            wit_world.log(self._level, self._buf)
            self._buf = ""

    def isatty(self):
        return False
