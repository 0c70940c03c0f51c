"""One native Python task in a process of its own, driven by a pcluster node over pipes.

The node writes frames to standard input and reads frames from the descriptor that was
standard output (this file points fd 1 at stderr, so stray C-level prints cannot corrupt the
stream). A frame is a u32 little-endian length, then a kind byte, then the payload:

node to runner
  I  init: u32 name length, name, u8 generator, u32 deadline ms, u32 memory MiB,
     u32 largest item bytes, then the task's args (codec byte, tagged list of args)
  B  batch: u32 count n, n u32 item lengths, then the items (tagged bytes) back to back
runner to node
  R  ready (init done)          E  init failed: the message
  P  results of the next k items of the batch: u32 k, k u32 output counts (FAILED: the
     item failed, and its one "output" is the message), a u32 length per output, then the
     outputs back to back
  L  a log line: u8 level (0 error .. 4 trace), then the text

The P frames of a batch cover its items in order, each once. They are written when a batch
ends and at least every TICK seconds while its items run, so the node sees progress. A
SIGALRM timer (every TICK) fails an item that runs past its deadline; the node kills the
process when it stops answering altogether (a C extension that never returns to Python).
"""

import array
import importlib
import json
import os
import pickle
import resource
import signal
import struct
import sys
import threading
import time
import traceback
import types

TICK = 0.05
FAILED = 0xFFFFFFFF
_u32 = struct.Struct("<I")
_head = struct.Struct("<Ic")
_NATIVE_LE = sys.byteorder == "little" and array.array("I").itemsize == 4

_IN = 0
_OUT = os.dup(1)
os.dup2(2, 1)

# Frames not yet written. A task's own threads may log too, so every change to it, and its
# writing out, holds the lock: a frame is never cut by another.
_pending = bytearray()
_lock = threading.RLock()
# Longest log line passed on (the rest is cut, saying so).
LOG_LINE_BYTES = 64 << 10


def _flush():
    with _lock:
        done, total = 0, len(_pending)
        with memoryview(_pending) as view:
            while done < total:
                done += os.write(_OUT, view[done:])
        del _pending[:]


def _frame(kind, payload=b""):
    with _lock:
        _pending.extend(_head.pack(len(payload) + 1, kind))
        _pending.extend(payload)


def _read_exact(n):
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(_IN, [view[got:]])
        if k == 0:
            sys.exit(0)
        got += k
    return buf


class DropItem(Exception):
    """Raise it in a task to drop the current item without failing it."""


class _Deadline(BaseException):
    """Raised into a task that ran past its deadline (a BaseException, so that a task's
    `except Exception` does not swallow it)."""


def _log(level, msg):
    text = str(msg).encode("utf-8", "replace")
    if len(text) > LOG_LINE_BYTES:
        text = text[:LOG_LINE_BYTES] + b" [line cut at 64 KiB]"
    _frame(b"L", bytes((level,)) + text)


class _LogStream:
    """A text stream whose lines become log lines on the node."""

    def __init__(self, level):
        self._level = level
        self._buf = ""

    def write(self, text):
        with _lock:
            self._buf += text
            while "\n" in self._buf:
                line, self._buf = self._buf.split("\n", 1)
                _log(self._level, line)
        return len(text)

    def flush(self):
        with _lock:
            if self._buf:
                _log(self._level, self._buf)
                self._buf = ""

    def isatty(self):
        return False


def _shim():
    """The `pcluster` module a native task imports: `log`, `DropItem`, and pipeline-cluster's
    `multiprocess_logging` (whose address the node decides)."""
    pcl = types.ModuleType("pcluster")
    pcl.DropItem = DropItem
    pcl.log = lambda msg, addr=None, level=2: _log(level, msg)
    pcl.set_default_log_address = lambda addr: None
    pcl.task = types.SimpleNamespace(log=lambda msg, level=2: _log(level, msg))
    mpl = types.ModuleType("pcluster.multiprocess_logging")
    mpl.log = pcl.log
    mpl.configure = lambda addr: None
    pcl.multiprocess_logging = mpl
    sys.modules["pcluster"] = pcl
    sys.modules["pcluster.task"] = pcl.task
    sys.modules["pcluster.multiprocess_logging"] = mpl


def _raw(payload):
    try:
        return payload.decode()
    except UnicodeDecodeError:
        return payload


_DECODE = {
    ord("s"): bytes.decode,
    ord("b"): bytes,
    ord("r"): _raw,
    ord("j"): json.loads,
}


def decode(item):
    if not item:
        raise ValueError("empty item: no tag")
    fn = _DECODE.get(item[0])
    if fn is None:
        raise ValueError(f"unknown item tag {bytes(item[:1])!r}")
    return fn(item[1:])


def _json_dump(value):
    return b"j" + json.dumps(value).encode()


def _pickle_dump(value):
    return b"p" + pickle.dumps(value)


_obj = _json_dump


def encode(value):
    t = type(value)
    if t is str:
        return b"s" + value.encode()
    if t is bytes:
        return b"b" + value
    if t is bytearray or t is memoryview:
        return b"b" + bytes(value)
    return _obj(value)


def _message(exc):
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


def _target(module, name):
    """The task named `name` in `module`: an attribute, or `sub.mod.f` in a submodule."""
    obj = module
    parts = name.split(".")
    for i, part in enumerate(parts):
        if not hasattr(obj, part) and isinstance(obj, types.ModuleType):
            sub = f"{obj.__name__}.{part}"
            try:
                importlib.import_module(sub)
            except ModuleNotFoundError as e:
                if e.name != sub:
                    raise  # the submodule exists but an import of its own failed
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise LookupError(
                f"module `{module.__name__}` has no function or class `{'.'.join(parts[: i + 1])}`"
            ) from None
    return obj


def _init(payload, module_name):
    """Builds the task from an init frame; returns (call, generator, deadline s, max item)."""
    global _obj
    (n,) = _u32.unpack_from(payload, 0)
    name = bytes(payload[4 : 4 + n]).decode()
    at = 4 + n
    generator = payload[at] != 0
    deadline_ms, memory_mb, max_item = struct.unpack_from("<III", payload, at + 1)
    args = bytes(payload[at + 13 :])
    values = ()
    if args:
        if args[0] == ord("p"):
            _obj = _pickle_dump
            _DECODE[ord("p")] = pickle.loads
        elif args[0] != ord("j"):
            raise ValueError(f"task `{name}`: unknown codec {args[:1]!r}")
        if len(args) > 1:
            values = decode(args[1:])
        if values is None:
            values = ()
        elif not isinstance(values, (list, tuple)):
            values = (values,)
    module = importlib.import_module(module_name)
    target = _target(module, name)
    if isinstance(target, type):
        call = target(*values)
    elif values:
        def call(item, _f=target, _a=tuple(values)):
            return _f(item, *_a)
    else:
        call = target
    if not callable(call):
        raise TypeError(f"task `{name}` is not callable")
    return call, generator, deadline_ms / 1000.0, memory_mb, max_item


_deadline = 30.0
# The item running (a number that grows with every item; -1 between items), and when the
# timer first saw it: the timer fails an item it sees running for longer than the deadline.
_current = -1
_next_item = 0
_seen = (-1, 0.0)
# Set by the timer: write what the batch has so far, so the node sees progress.
_flush_due = False


def _alarm(signum, frame):
    global _seen, _flush_due
    _flush_due = True
    c = _current
    if c < 0:
        return
    now = time.monotonic()
    if _seen[0] != c:
        _seen = (c, now)
    elif now - _seen[1] > _deadline:
        _seen = (-1, 0.0)
        raise _Deadline()


def _limit_memory(memory_mb):
    """Caps the address space at what the process uses now (interpreter, imports, task)
    plus the chain's memory_mb: past it allocations fail with MemoryError."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmSize:"):
                    now = int(line.split()[1]) * 1024
                    break
            else:
                return
        limit = now + memory_mb * (1 << 20)
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        if hard != resource.RLIM_INFINITY:
            limit = min(limit, hard)
        # The hard limit too, so that the task cannot lift it.
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (OSError, ValueError):
        pass


def _outputs(result, generator):
    """One item's outputs, encoded (a generator's iterable is consumed here, so its code
    runs within the item's deadline)."""
    if result is None:
        return ()
    if not generator:
        return (encode(result),)
    return [b"s" + v.encode() if type(v) is str else encode(v) for v in result if v is not None]


def _too_big(n, max_item):
    return ValueError(f"output of {n} bytes exceeds the item limit of {max_item} bytes")


def _u32s(values):
    if _NATIVE_LE:
        return array.array("I", values).tobytes()
    return struct.pack(f"<{len(values)}I", *values)


class _Results:
    """Results of the items of a batch not yet written: a count per item, a length per
    output, the outputs, and their bytes."""

    def __init__(self):
        self.counts = []
        self.lens = []
        self.datas = []
        self.bytes = 0

    def fail(self, message):
        data = message.encode("utf-8", "replace")
        self.counts.append(FAILED)
        self.lens.append(len(data))
        self.datas.append(data)
        self.bytes += len(data)

    def write(self):
        """One P frame with the results so far, after the log lines written meanwhile."""
        global _flush_due
        _flush_due = False
        with _lock:
            if self.counts:
                body = _u32.pack(len(self.counts)) + _u32s(self.counts) + _u32s(self.lens)
                _pending.extend(_head.pack(len(body) + 1 + sum(self.lens), b"P"))
                _pending.extend(body)
                for d in self.datas:
                    _pending.extend(d)
                self.counts.clear()
                self.lens.clear()
                self.datas.clear()
                self.bytes = 0
            _flush()


# Bytes of results gathered before they are written even though no tick passed.
WRITE_AT = 4 << 20


def _failure(e, memory_mb):
    if isinstance(e, _Deadline):
        return f"deadline of {int(_deadline * 1000)} ms exceeded"
    if isinstance(e, MemoryError):
        return f"memory limit of {memory_mb} MiB exceeded (MemoryError)"
    return _message(e)


def _run_batch(payload, call, generator, max_item, memory_mb):
    """Runs every item of a batch frame, writing their results in P frames. An item's
    results are recorded only after it is marked done, so the timer can never fail an item
    whose results are half recorded."""
    global _current, _next_item
    (count,) = _u32.unpack_from(payload, 0)
    at = 4 + 4 * count
    sizes = payload[4:at].cast("I") if _NATIVE_LE else struct.unpack_from(f"<{count}I", payload, 4)
    res = _Results()
    counts_append, lens_append, datas_append = res.counts.append, res.lens.append, res.datas.append
    seq = _next_item
    most = max(2 * max_item, 64 << 20) - (1 << 20)
    for n in sizes:
        item = payload[at : at + n]
        at += n
        if _flush_due or res.bytes > WRITE_AT:
            res.write()
        seq += 1
        single = None
        try:
            try:
                _current = seq
                tag = item[0] if n else 0
                if tag == 115 or tag == 114:  # "s", "r": text (raw bytes not UTF-8 stay bytes)
                    try:
                        value = str(item[1:], "utf-8")
                    except UnicodeDecodeError:
                        if tag == 115:
                            raise
                        value = bytes(item[1:])
                else:
                    value = decode(bytes(item))
                result = call(value)
                if not generator and type(result) is str:
                    single = b"s" + result.encode()
                else:
                    outs = _outputs(result, generator)
                _current = -1
            except DropItem:
                _current = -1
                single, outs = None, ()
            except BaseException as e:
                _current = -1
                if isinstance(e, (KeyboardInterrupt, SystemExit)):
                    raise
                res.fail(_failure(e, memory_mb))
                continue
        except _Deadline as e:  # the timer, in the instant before `_current = -1` above
            _current = -1
            res.fail(_failure(e, memory_mb))
            continue
        if single is not None:
            if len(single) > max_item:
                res.fail(str(_too_big(len(single), max_item)))
                continue
            counts_append(1)
            lens_append(len(single))
            datas_append(single)
            res.bytes += len(single)
            continue
        size = 0
        for data in outs:
            if len(data) > max_item:
                size = -1
                break
            size += len(data)
        if size < 0 or size > most:
            big = max(len(d) for d in outs)
            res.fail(str(_too_big(big, max_item)) if size < 0 else
                     f"outputs of {size} bytes for one item exceed {most} bytes")
            continue
        counts_append(len(outs))
        for data in outs:
            lens_append(len(data))
            datas_append(data)
        res.bytes += size
    _next_item = seq
    res.write()


def main():
    global _deadline
    module_name = sys.argv[1]
    _shim()
    sys.stdout = _LogStream(2)
    sys.stderr = _LogStream(1)
    (n,) = _u32.unpack(_read_exact(4))
    frame = _read_exact(n)
    try:
        call, generator, _deadline, memory_mb, max_item = _init(frame[1:], module_name)
    except BaseException as e:
        detail = traceback.format_exc(limit=-3).strip().splitlines()
        _frame(b"E", (_message(e) + "\n" + "\n".join(detail[-6:])).encode("utf-8", "replace"))
        _flush()
        return
    _limit_memory(memory_mb)
    tick = min(TICK, max(_deadline / 10, 0.005))
    signal.signal(signal.SIGALRM, _alarm)
    signal.setitimer(signal.ITIMER_REAL, tick, tick)
    _frame(b"R")
    _flush()
    while True:
        (n,) = _u32.unpack(_read_exact(4))
        frame = _read_exact(n)
        if frame[:1] == b"B":
            _run_batch(memoryview(frame)[1:], call, generator, max_item, memory_mb)


if __name__ == "__main__":
    main()
