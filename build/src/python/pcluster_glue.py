"""The entry module of a pcluster Python component (written by pcluster next to the build).

It implements the `pcluster:task` WIT world (wit/task.wit): imports the user's module once,
when componentize-py pre-initialises the component, so a new instance starts with the
module loaded; `init` picks the task (a function, or a class instantiated with the args);
`process` and `process_batch` decode tagged items, call the task and encode its outputs.

Items are tagged bytes (docs/ABI.md): `s` str, `b` bytes, `j` JSON, `p` pickle, `r` raw
from outside Python (str when valid UTF-8, else bytes).
"""

import importlib
import json
import pkgutil
import pickle
import sys

import componentize_py_types
import wit_world

import pcluster
import _pcluster_config

# The user's module is imported while componentize-py pre-initialises the component, when
# every host import (`log`) is a stub that traps. So stdout and stderr stay the build's own
# until the import is done: what the module prints, and the traceback of an import that
# fails, reach componentize-py's output (pcluster reads the failing module and the exception
# there) instead of a trap that names neither.
_USER = importlib.import_module(_pcluster_config.MODULE)

# A task may live in a submodule the package does not import itself (`pkg.tasks.wait`, as
# pipeline-cluster's packages have them). Only what is imported now is in the component, so
# import every submodule; one that fails to import is noted, and named when a task needs it.
_SUBMODULE_ERRORS = {}
if hasattr(_USER, "__path__"):
    for _info in pkgutil.walk_packages(_USER.__path__, _USER.__name__ + "."):
        if _info.name.rsplit(".", 1)[-1] == "__main__":
            continue
        try:
            importlib.import_module(_info.name)
        except (Exception, SystemExit) as _e:
            _SUBMODULE_ERRORS[_info.name] = f"{type(_e).__name__}: {_e}"
pcluster._building = False

# Output lines of `print` and of the `logging` module reach the log server, tagged by the
# host; the component has no stdout of its own.
sys.stdout = pcluster._LogStream(2)
sys.stderr = pcluster._LogStream(1)


def _raw(payload):
    try:
        return payload.decode()
    except UnicodeDecodeError:
        return payload


def _json_load(payload):
    return json.loads(payload)


_DECODE = {
    ord("s"): bytes.decode,
    ord("b"): lambda p: p,
    ord("r"): _raw,
    ord("j"): _json_load,
    ord("p"): pickle.loads,
}


def decode(item):
    """The Python value of a tagged item."""
    if not item:
        raise ValueError("empty item: no tag")
    fn = _DECODE.get(item[0])
    if fn is None:
        raise ValueError(f"unknown item tag {item[:1]!r}")
    return fn(item[1:])


def _json_dump(value):
    return b"j" + json.dumps(value).encode()


def _pickle_dump(value):
    return b"p" + pickle.dumps(value)


class _Codec:
    obj = staticmethod(_json_dump)


def encode(value):
    """The tagged item of a Python value."""
    t = type(value)
    if t is str:
        return b"s" + value.encode()
    if t is bytes:
        return b"b" + value
    if t is bytearray or t is memoryview:
        return b"b" + bytes(value)
    return _Codec.obj(value)


def _message(exc):
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name


class _Task:
    """The instance's task (componentize-py makes a new `WitWorld` for every call, so the
    state lives here)."""

    call = None
    generator = False


def _outputs(result, out):
    if result is None:
        return 0
    if _Task.generator:
        n = 0
        for v in result:
            if v is not None:
                out.append(encode(v))
                n += 1
        return n
    out.append(encode(result))
    return 1


def _target(name):
    """The task `name` of the user's module: an attribute, or `sub.f` in a submodule."""
    obj = _USER
    for part in name.split("."):
        if not hasattr(obj, part) and hasattr(obj, "__path__"):
            importlib.import_module(f"{obj.__name__}.{part}")
        obj = getattr(obj, part)
    return obj


class WitWorld(wit_world.WitWorld):
    def init(self, name, args, generator):
        try:
            target = _target(name)
        except (AttributeError, ImportError):
            why = "".join(
                f" ({module} failed to import: {error})"
                for module, error in _SUBMODULE_ERRORS.items()
                if f"{_pcluster_config.MODULE}.{name}".startswith(module + ".")
            )
            raise componentize_py_types.Err(
                f"module `{_pcluster_config.MODULE}` has no function or class `{name}`{why}"
            )
        # The args: the chain's codec (`j` or `p`), then a tagged item with the args list.
        values = ()
        if args:
            if args[0] == ord("p"):
                _Codec.obj = staticmethod(_pickle_dump)
            elif args[0] == ord("j"):
                _Codec.obj = staticmethod(_json_dump)
            else:
                raise componentize_py_types.Err(f"task `{name}`: unknown codec {args[:1]!r}")
            try:
                values = decode(args[1:]) if len(args) > 1 else ()
            except Exception as e:
                raise componentize_py_types.Err(f"task `{name}`: unreadable args: {_message(e)}")
            if values is None:
                values = ()
            elif not isinstance(values, (list, tuple)):
                values = (values,)
        pcluster.task._name = name
        try:
            if isinstance(target, type):
                call = target(*values)
            elif values:
                def call(item, _f=target, _a=tuple(values)):
                    return _f(item, *_a)
            else:
                call = target
        except Exception as e:
            raise componentize_py_types.Err(f"task `{name}`: {_message(e)}")
        if not callable(call):
            raise componentize_py_types.Err(f"task `{name}` is not callable")
        _Task.call = call
        _Task.generator = generator

    def process(self, item):
        out = []
        try:
            _outputs(_Task.call(decode(item)), out)
        except pcluster.DropItem:
            return []
        except Exception as e:
            raise componentize_py_types.Err(_message(e))
        return out

    def process_batch(self, items):
        counts = []
        outputs = []
        failures = []
        call = _Task.call
        gen = _Task.generator
        for i, item in enumerate(items):
            mark = len(outputs)
            try:
                # The common cases inline: a str in, one str or bytes out.
                if item[0] == 115:
                    value = item[1:].decode()
                else:
                    value = decode(item)
                result = call(value)
                if result is None:
                    counts.append(0)
                elif gen:
                    counts.append(_outputs(result, outputs))
                else:
                    t = type(result)
                    if t is str:
                        outputs.append(b"s" + result.encode())
                    else:
                        outputs.append(encode(result))
                    counts.append(1)
            except pcluster.DropItem:
                counts.append(0)
            except Exception as e:
                del outputs[mark:]
                counts.append(0)
                failures.append((i, _message(e)))
        return wit_world.BatchOutputs(counts, outputs, failures)
