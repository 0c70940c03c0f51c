"""pipeline-cluster's ``node``: ``Server(addr, log_addr).serve()`` runs a node server.

It runs ``pcluster node`` (the executable of :mod:`pcluster._exe`) in the foreground until
the process gets SIGTERM or SIGINT, which it passes on. The host ``""`` means this machine's
loopback (a node open to the network needs a token, ``PCLUSTER_TOKEN``).
"""

import signal
import subprocess
import threading
from typing import Any, List, Optional

from ._exe import pcluster_exe
from ._log import Address
from .multiprocess_logging import _host_port

__all__ = ["Server"]


class Server:
    """A node on ``addr`` logging to ``log_addr``. ``conn_buffer_size`` and
    ``benchmark_folder`` are accepted for pipeline-cluster's signature; ``workers`` (default:
    the cores) and ``extra_args`` (e.g. ``["--allow-native"]``) go to ``pcluster node``."""

    def __init__(self, addr: Address, log_addr: Address, conn_buffer_size: int = 2,
                 benchmark_folder: Optional[str] = None, workers: Optional[int] = None,
                 extra_args: Optional[List[str]] = None) -> None:
        self.addr = _host_port(addr)
        self.log_addr = _host_port(log_addr)
        self.workers = workers
        self.extra_args = list(extra_args or [])

    def command(self) -> List[str]:
        host, port = self.addr
        log_host, log_port = self.log_addr
        cmd = [pcluster_exe(), "node", "--host", host, "--port", str(port),
               "--log-host", log_host, "--log-port", str(log_port)]
        if self.workers is not None:
            cmd += ["--workers", str(self.workers)]
        return cmd + self.extra_args

    def serve(self) -> int:
        """Runs the node until it stops; its exit status."""
        procs: List[subprocess.Popen] = []

        def forward(signum: int, frame: Any) -> None:
            for p in procs:
                p.send_signal(signum)

        # Signals are forwarded from the main thread only (where Python can catch them).
        main = threading.current_thread() is threading.main_thread()
        old = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)} if main else {}
        try:
            procs.append(subprocess.Popen(self.command(), stdin=subprocess.DEVNULL))
            return procs[0].wait()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
