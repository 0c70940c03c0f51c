"""The ``pcluster`` command of the wheel: runs the executable the wheel carries
(``pcluster/bin/pcluster``), so ``pip install`` gives ``pcluster node``, ``log`` and ``run``
without a Rust toolchain."""

import os
import sys

from ._exe import pcluster_exe


def main() -> None:
    try:
        exe = pcluster_exe(search_path=False)
    except FileNotFoundError as e:
        sys.exit(f"pcluster: {e}")
    os.execv(exe, [exe, *sys.argv[1:]])
