"""pipeline-cluster's ``multiprocess_logging``: ``serve`` a log server, ``configure`` the
address ``log`` writes to, ``log`` one line.

``serve`` runs ``pcluster log`` (the executable of :mod:`pcluster._exe`); the host ``""``
means this machine's loopback, since a log server open to the network needs a token
(``PCLUSTER_TOKEN``). Inside a task, ``log`` goes to the node's log server, tagged with node,
worker and task, whatever was configured.
"""

import atexit
import subprocess
from typing import Any, Optional

from ._exe import pcluster_exe
from ._log import Address, address_text, log as _log, set_default_log_address

__all__ = ["configure", "log", "serve"]

_served = []


def _host_port(addr: Address) -> "tuple[str, int]":
    if isinstance(addr, str):
        host, _, port = addr.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)
    host, port = addr
    return (str(host) or "127.0.0.1"), int(port)


def serve(addr: Address, filename: str, conn_buffer_size: int = 2, detach: bool = False) -> Optional[Any]:
    """Runs a log server on ``addr`` writing to ``filename``: in the background with
    ``detach=True`` (stopped when this process exits), else until it is stopped.
    ``conn_buffer_size`` is accepted for pipeline-cluster's signature."""
    host, port = _host_port(addr)
    cmd = [pcluster_exe(), "log", "--host", host, "--port", str(port), "--outfile", str(filename)]
    if not detach:
        return subprocess.run(cmd, check=True)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    _served.append(proc)
    set_default_log_address(address_text((host, port)))
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
