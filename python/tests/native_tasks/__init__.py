"""Tasks of the native-runtime tests: numpy from the chain's requirements, and tasks that
break each limit (deadline, memory, a process that exits) on one chosen item only."""

import os
import time

import pcluster.multiprocess_logging as mpl


def norm(item):
    """The Euclidean norm of a comma-separated vector, with numpy."""
    import numpy as np

    v = np.array([float(x) for x in item.split(",")])
    return f"{item}={float(np.linalg.norm(v))}"


def sleepy(item):
    if item == "sleep":
        time.sleep(60)
    return item + "!"


def hog(item):
    if item == "hog":
        block = bytearray(1 << 30)
        return str(len(block))
    return item + "!"


def die(item):
    if item == "die":
        os._exit(1)
    return item + "!"


def slow(item):
    """A little work per item, and a log line through pipeline-cluster's logging module."""
    time.sleep(0.005)
    if item.endswith("7"):
        mpl.log(f"slow saw {item}")
    return item + "!"


def pid(item):
    return f"{item}:{os.getpid()}"
