"""pipeline-cluster's ``multiprocess_logging``: ``serve`` a log server, ``configure`` the
address ``log`` writes to, ``log`` one line.

``serve`` runs ``pcluster log`` (the executable of :mod:`pcluster._exe`); the host ``""``
means this machine's loopback, since a log server open to the network needs a token
(``PCLUSTER_TOKEN``). Inside a task, ``log`` goes to the node's log server, tagged with node,
worker and task, whatever was configured.
"""

import atexit
import os
import subprocess
import tempfile
import time
from typing import Any, Optional

from ._exe import pcluster_exe
from ._log import Address, address_text, log as _log, set_default_log_address

__all__ = ["configure", "log", "serve"]

_served = []
LISTEN_DEADLINE_S = 30.0


def _host_port(addr: Address) -> "tuple[str, int]":
    if isinstance(addr, str):
        host, _, port = addr.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)
    host, port = addr
    return (str(host) or "127.0.0.1"), int(port)


def serve(addr: Address, filename: str, conn_buffer_size: int = 2, detach: bool = False) -> Optional[Any]:
    """Runs a log server on ``addr`` writing to ``filename``: in the background with
    ``detach=True`` (stopped when this process exits; returns once it listens, with the
    process, whose ``address`` is where it listens: port 0 picks a free one), else until it is
    stopped. ``conn_buffer_size`` is accepted for pipeline-cluster's signature."""
    host, port = _host_port(addr)
    cmd = [pcluster_exe(), "log", "--host", host, "--port", str(port), "--outfile", str(filename)]
    if not detach:
        return subprocess.run(cmd, check=True)
    with tempfile.TemporaryDirectory(prefix="pcluster-log-") as tmp:
        port_file = os.path.join(tmp, "port")
        proc = subprocess.Popen(cmd + ["--port-file", port_file], stdin=subprocess.DEVNULL)
        _served.append(proc)
        end = time.monotonic() + LISTEN_DEADLINE_S
        while not os.path.exists(port_file):
            if proc.poll() is not None:
                raise RuntimeError(f"pcluster log exited with status {proc.returncode}")
            if time.monotonic() > end:
                raise TimeoutError(f"pcluster log did not listen within {LISTEN_DEADLINE_S} s")
            time.sleep(0.01)
        with open(port_file, encoding="utf-8") as f:
            proc.address = (host, int(f.read().strip().rsplit(":", 1)[1]))
    set_default_log_address(address_text(proc.address))
    return proc


@atexit.register
def _stop_served() -> None:
    for proc in _served:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


def configure(addr: Address) -> None:
    """The log server ``log`` writes to when it is given no address."""
    host, port = _host_port(addr)
    set_default_log_address(address_text((host, port)))


def log(msg: object, addr: Optional[Address] = None) -> None:
    """One line to the log server."""
    _log(msg, addr)
