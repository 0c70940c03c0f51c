"""Example Python tasks for pcluster: pipeline-cluster's README example, the W1 and W2
benchmark tasks in Python, and three tasks the tests use to show failures and deadlines.

Each function takes one item and returns its output; `None` drops the item. A generator
task (`generator = true` in the chain) returns an iterable of outputs. A class is built once
per worker with the chain's `args`, then called per item.
"""

import time

import pcluster


# pipeline-cluster's README example, with only the import name changed.

def simple_task(item):
    pcluster.log(item)
    return item


def generator_task(item):
    pcluster.log(item)
    return (item, item)


class DropItem:
    def __init__(self, drop_message):
        self.drop_message = drop_message

    def __call__(self, item):
        pcluster.log(self.drop_message)
        return None


# W1: identity, duplicate, drop the odd ones (the number after the last "-").

def w1_identity(item):
    return item


def w1_duplicate(item):
    return (item, item)


def w1_drop_odd(item):
    n = int(item.rsplit("-", 1)[-1])
    return item if n % 2 == 0 else None


# W2: CPU-bound mixing of a 64-bit seed (the same function as the Rust `w2_cpu`).

MASK = (1 << 64) - 1


def w2_mix(seed, iterations):
    x = seed
    for _ in range(iterations):
        x = (x * 6364136223846793005 + 1442695040888963407) & MASK
        x ^= x >> 33
    return x


class W2Cpu:
    def __init__(self, iterations=100000):
        self.iterations = int(iterations)

    def __call__(self, item):
        return str(w2_mix(int(item), self.iterations))


# For the tests: a task that raises on some items, and one that never returns.

def fail_on(item, word):
    if word in item:
        raise ValueError(f"refusing {item!r}")
    return item.upper()


def spin(item):
    if item == "forever":
        while True:
            pass
    return item


def doze(item):
    if item == "nap":
        time.sleep(1e6)
    return item
