"""One native Python task in a process of its own, driven by a pcluster node over pipes.

The node writes frames to standard input and reads frames from the descriptor that was
standard output (this file points fd 1 at stderr, so stray C-level prints cannot corrupt the
stream). A frame is a u32 little-endian length, then a kind byte, then the payload:

node to runner
  I  init: u32 name length, name, u8 generator, u32 deadline ms, u32 memory MiB,
     u32 largest item bytes, then the task's args (codec byte, tagged list of args)
  B  batch: u32 count, then per item a u32 length and the item (tagged bytes)
runner to node
  R  ready (init done)          E  init failed: the message
  O  an item's outputs: u32 count, then per output a u32 length and the output
  F  an item failed: the message
  L  a log line: u8 level (0 error .. 4 trace), then the text

Every item of a batch gets exactly one O or F frame, in order. Frames are written in bulk,
at least every TICK seconds while items run, so the node sees progress. A SIGALRM timer
fails an item that runs past its deadline; the node kills the process when it stops
answering altogether (a C extension that never returns to Python).
"""

import importlib
import json
import os
import pickle
import resource
import signal
import struct
import sys
import time
import traceback
import types

TICK = 0.05
_u32 = struct.Struct("<I")
_one_str = struct.Struct("<IcIIc")
_head = struct.Struct("<Ic")
_SEQUENCES = (tuple, list)

_IN = 0
_OUT = os.dup(1)
os.dup2(2, 1)

_pending = bytearray()
_last_flush = time.monotonic()


def _flush():
    global _last_flush
    done, total = 0, len(_pending)
    with memoryview(_pending) as view:
        while done < total:
            done += os.write(_OUT, view[done:])
    del _pending[:]
    _last_flush = time.monotonic()


def _frame(kind, payload=b""):
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
    _frame(b"L", bytes((level,)) + text)


class _LogStream:
    """A text stream whose lines become log lines on the node."""

    def __init__(self, level):
        self._level = level
        self._buf = ""

    def write(self, text):
        self._buf += text
        while "\n" in self._buf:
            line, self._buf = self._buf.split("\n", 1)
            _log(self._level, line)
        return len(text)

    def flush(self):
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
            try:
                importlib.import_module(f"{obj.__name__}.{part}")
            except ModuleNotFoundError:
                pass
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


_started = None
_deadline = 30.0


def _alarm(signum, frame):
    s = _started
    if s is not None and time.monotonic() - s > _deadline:
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
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    except (OSError, ValueError):
        pass


def _outputs(result, generator, max_item):
    """The frame payload of one item's result: count, then each output."""
    if result is None:
        return [], 0
    values = result if generator else (result,)
    outs = []
    for v in values:
        if v is None:
            continue
        data = encode(v)
        if len(data) > max_item:
            raise _too_big(len(data), max_item)
        outs.append(data)
    return outs, len(outs)


def _too_big(n, max_item):
    return ValueError(f"output of {n} bytes exceeds the item limit of {max_item} bytes")


def _run_batch(payload, call, generator, max_item, memory_mb):
    """Runs every item of a batch frame, appending one O or F frame each to `_pending`."""
    global _started
    (count,) = _u32.unpack_from(payload, 0)
    at = 4
    pending = _pending
    unpack = _u32.unpack_from
    pack_one = _one_str.pack
    monotonic = time.monotonic
    for _ in range(count):
        (n,) = unpack(payload, at)
        tag = payload[at + 4] if n else 0
        body = payload[at + 5 : at + 4 + n]
        at += 4 + n
        now = monotonic()
        if pending and now - _last_flush > TICK:
            _flush()
        try:
            _started = now
            if tag == 115 or tag == 114:  # "s", "r": text (raw bytes that are not UTF-8 stay bytes)
                try:
                    value = str(body, "utf-8")
                except UnicodeDecodeError:
                    value = bytes(body)
            else:
                value = decode(bytes(payload[at - n : at]))
            result = call(value)
            if not generator and type(result) is str:
                data = result.encode()
                if len(data) >= max_item:
                    raise _too_big(len(data) + 1, max_item)
                pending += pack_one(len(data) + 10, b"O", 1, len(data) + 1, b"s")
                pending += data
            elif generator and type(result) in _SEQUENCES and all(type(v) is str for v in result):
                frame = bytearray(_u32.pack(len(result)))
                for v in result:
                    data = v.encode()
                    if len(data) >= max_item:
                        raise _too_big(len(data) + 1, max_item)
                    frame += _u32.pack(len(data) + 1)
                    frame += b"s"
                    frame += data
                _frame(b"O", frame)
            else:
                outs, k = _outputs(result, generator, max_item)
                frame = bytearray(_u32.pack(k))
                for data in outs:
                    frame += _u32.pack(len(data))
                    frame += data
                _frame(b"O", frame)
            _started = None
        except DropItem:
            _started = None
            _frame(b"O", _u32.pack(0))
        except _Deadline:
            _started = None
            _frame(b"F", f"deadline of {int(_deadline * 1000)} ms exceeded".encode())
        except MemoryError:
            _started = None
            _frame(b"F", f"memory limit of {memory_mb} MiB exceeded (MemoryError)".encode())
        except Exception as e:
            _started = None
            _frame(b"F", _message(e).encode("utf-8", "replace"))
        if len(pending) > (1 << 20):
            _flush()
    _flush()


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
