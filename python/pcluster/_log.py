"""``pcluster.log``: one line to the log server, as pipeline-cluster's ``log``.

The address is ``addr`` when given, else the one set by :func:`set_default_log_address`,
else ``PCLUSTER_LOG_ADDR`` (``host:port``), else ``127.0.0.1:5555``. The token (when the
log server has one) comes from ``PCLUSTER_TOKEN``.
"""

import os
from typing import Optional, Tuple, Union

from . import _native

Address = Union[Tuple[str, int], str]

_default: Optional[str] = None


def address_text(addr: Address) -> str:
    """``(host, port)`` or ``"host:port"`` as ``host:port``."""
    if isinstance(addr, str):
        return addr
    if isinstance(addr, (tuple, list)) and len(addr) == 2:
        host, port = addr
        return f"[{host}]:{int(port)}" if ":" in str(host) else f"{host}:{int(port)}"
    raise ValueError(f"address {addr!r} is neither (host, port) nor \"host:port\"")


def set_default_log_address(addr: Address) -> None:
    """The address ``log`` uses when it is given none."""
    global _default
    _default = address_text(addr)


def log(msg: object, addr: Optional[Address] = None) -> None:
    """Sends ``msg`` as one line to the log server (newlines become spaces)."""
    if addr is not None:
        target = address_text(addr)
    else:
        target = _default or os.environ.get("PCLUSTER_LOG_ADDR") or "127.0.0.1:5555"
    _native.log(str(msg), target)
