"""``pcluster.root.Root``: pipeline-cluster's ``Root`` on a pcluster cluster.

The native root (``pcluster._native.Root``) does the work; this class gives it
pipeline-cluster's names and turns Python values into items and back (``_items``). A
taskchain list becomes a chain file (``_chainfile``) written to a temporary directory and read
at setup. Every waiting call releases the GIL and answers Ctrl-C with ``KeyboardInterrupt``;
handlers run on the root's thread with the GIL held, and the first exception a handler raises
is raised again by the next waiting call.
"""

import atexit
import json
import os
import sys
import tempfile
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Union

from . import _chainfile, _items, _native
from ._log import Address, address_text

TaskChain = Union[str, "os.PathLike[str]", Sequence[Dict[str, Any]]]


@dataclass(frozen=True)
class ItemFailure:
    """An item that failed, as the failure handler gets it."""

    input: int
    """The id of the input it descends from (ids count fed items from 0)."""
    node: str
    """The node it failed on."""
    task: str
    """The failing task's function ("" when the item failed outside a task, e.g. a poison item)."""
    item_start: bytes
    """The start of the failing item, as it travelled (tagged with Python tasks)."""
    input_item: Any
    """The input as fed (decoded back to its value)."""
    message: str
    """What happened (a Python task's exception message)."""


_live: "weakref.WeakSet[Root]" = weakref.WeakSet()

# Python tasks are built with componentize-py from this Python's environment: its virtual
# environment's packages and the componentize-py installed beside it (pcluster reads
# PCLUSTER_PYTHON; one set by the user wins). Set at import, before a native root starts
# threads that could read the environment while it changes.
if sys.executable:
    os.environ.setdefault("PCLUSTER_PYTHON", sys.executable)


@atexit.register
def _close_all() -> None:
    # Closing at exit, while the interpreter still runs the handlers of the last outputs.
    for root in list(_live):
        try:
            root.close()
        except Exception:
            pass


class Root:
    """The root of a cluster: finds nodes, sets a taskchain up, feeds items.

    ``node_addrs``: nodes to add at once, as ``(host, port)`` or ``"host:port"``.
    ``token``: the cluster token (default: ``PCLUSTER_TOKEN``; None when that is unset too).
    """

    def __init__(self, node_addrs: Optional[Iterable[Address]] = None, token: Optional[str] = None):
        if token is None:
            token = os.environ.get("PCLUSTER_TOKEN") or None
        self._native = _native.Root(token)
        self._encode: Callable[[Any], bytes] = _items.encode_raw
        self._decode: Callable[[bytes], Any] = lambda data: data
        self._tagged = False
        _live.add(self)
        self.add_nodes(node_addrs or [])

    def __enter__(self) -> "Root":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add_node(self, addr: Address) -> None:
        """Connects to one node and adds it."""
        self._native.add_node(address_text(addr))

    def add_nodes(self, node_addrs: Iterable[Address]) -> None:
        for addr in node_addrs:
            self.add_node(addr)

    def search_nodes(self, network: str = "127.0.0.0/24", port: int = 6000, verbose: bool = False) -> int:
        """Scans every host of ``network`` on ``port``; adds the free nodes; returns how many
        (so it is truthy when it found any). ``verbose`` prints the nodes found."""
        found = self._native.search_nodes(str(network), int(port))
        if verbose:
            print(f"found {found} node(s): {', '.join(self.nodes()) or 'none'}", file=sys.stderr)
        return found

    def search_dns(self, name: str, port: int = 6000) -> int:
        """Adds a node at every address ``name`` resolves to (all its A/AAAA records, e.g. a
        Kubernetes headless service) on ``port``; returns how many were added. Resolved once:
        call it again to add addresses that appeared since."""
        return self._native.search_dns(str(name), int(port))

    def nodes(self) -> List[str]:
        """The nodes attached, as ``host:port``."""
        return self._native.nodes()

    def setup(
        self,
        name: str,
        version: Any,
        taskchain: TaskChain,
        local_packages: Iterable[str] = (),
        output_handler: Optional[Callable[[Any], Any]] = None,
        failure_handler: Optional[Callable[[ItemFailure], Any]] = None,
        codec: str = "json",
        runtime: str = "sandbox",
        requirements: Iterable[str] = (),
    ) -> None:
        """Sets the taskchain up on every node.

        ``taskchain`` is a list of ``{"function": f, "is_generator": bool, "args": (...)}``
        whose functions and classes live in ``local_packages`` (package directories or
        ``.py`` files), or the path of a chain file. ``output_handler(item)`` gets every
        output, ``failure_handler(failure)`` every failed item (without one, failures are
        printed to stderr). ``codec`` ("json" or "pickle") carries values other than str and
        bytes between Python code. ``runtime="python"`` runs the tasks natively in CPython
        on nodes started with ``--allow-native``, which install ``requirements`` (pip
        specifiers such as ``"numpy>=1.26"``) first; the default ``"sandbox"`` compiles them
        to WebAssembly.
        """
        _items.check_codec(codec)
        with tempfile.TemporaryDirectory(prefix="pcluster-chain-") as tmp:
            if isinstance(taskchain, (str, os.PathLike)):
                path = os.fspath(taskchain)
                tagged = _native.chain_has_python(path)
            else:
                text = _chainfile.chain_toml(
                    name, str(version), taskchain, local_packages, codec, runtime, list(requirements)
                )
                path = os.path.join(tmp, "chain.toml")
                with open(path, "w", encoding="utf-8") as f:
                    f.write(text)
                tagged = True
            encode = _items.encoder(tagged, codec)
            decode = _items.decoder(tagged, codec)
            on_output = None
            if output_handler is not None:
                handler = output_handler
                on_output = lambda data: handler(decode(data))  # noqa: E731
            on_failure = None
            if failure_handler is not None:
                fhandler = failure_handler

                def on_failure(input_id, node, task, item_start, input_item, message):  # type: ignore[no-untyped-def]
                    try:
                        fed = decode(input_item)
                    except ValueError:
                        fed = input_item
                    fhandler(ItemFailure(input_id, node, task, item_start, fed, message))

            self._native.setup(path, str(name), str(version), on_output, on_failure, tagged)
        self._encode, self._decode, self._tagged = encode, decode, tagged

    def feed(self, *items: Any) -> None:
        """Queues items (``feed(a, b, …)`` or ``feed([a, b, …])``); waits while the queue is full."""
        if len(items) == 1 and isinstance(items[0], (list, tuple)):
            items = tuple(items[0])
        encode = self._encode
        self._native.feed([encode(i) for i in items])

    def wait_input(self) -> bool:
        """Returns (True) when the root's queue has room for more input."""
        self._native.wait_input()
        return True

    def wait_empty(self) -> bool:
        """Returns (True) when every fed item is processed and every output handed over."""
        self._native.wait_empty()
        return True

    def reset(self) -> None:
        """Stops the workers everywhere and drops the chain and the queued items."""
        self._native.reset()

    def sleep(self) -> None:
        """Pauses: nodes take no new items (items in flight finish) until ``wakeup``."""
        self._native.pause()

    def wakeup(self) -> None:
        """Resumes after ``sleep``."""
        self._native.resume()

    pause = sleep
    resume = wakeup

    def status(self) -> List[Dict[str, Any]]:
        """One dict per node: its status (``"addr"``, ``"state"``, ``"workers"``, ``"tasks"``,
        …) or ``{"addr": …, "error": …}`` when it did not answer."""
        out = []
        for entry in json.loads(self._native.status_json()):
            if "status" in entry:
                status = dict(entry["status"])
                status["addr"] = entry["addr"]
                out.append(status)
            else:
                out.append(entry)
        return out

    def close(self) -> None:
        """Frees the nodes at once; the root cannot be used afterwards."""
        self._native.close()
        _live.discard(self)
