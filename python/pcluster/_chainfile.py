"""A taskchain list (pipeline-cluster's form) written as a chain file the root reads.

Each entry ``{"function": f, "is_generator": bool, "args": (...)}`` becomes a ``[[task]]``
with ``module`` (the absolute path of the package among ``local_packages`` that holds ``f``),
``function`` (its name, dotted when it lives in a submodule: ``tasks.wait``), ``generator``
and ``args`` (a TOML array of the Python values). The chain's ``runtime`` and
``requirements`` go to the top of the file.
"""

import math
import os
import sys
from typing import Any, Dict, Iterable, List, Sequence, Tuple


class ChainSpecError(ValueError):
    """A taskchain entry that cannot be turned into a chain file entry."""


def toml_string(s: str) -> str:
    out = ['"']
    for ch in s:
        code = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif code < 0x20 or code == 0x7F:
            out.append(f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ChainSpecError(f"string {s!r} holds a lone surrogate, which TOML cannot carry")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def toml_value(v: Any) -> str:
    """A Python value as a TOML value (arrays and inline tables nest)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return repr(v)
    if isinstance(v, str):
        return toml_string(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        parts = []
        for k, x in v.items():
            if not isinstance(k, str):
                raise ChainSpecError(f"dict key {k!r} in args is not a str")
            parts.append(f"{toml_string(k)} = {toml_value(x)}")
        return "{" + ", ".join(parts) + "}"
    raise ChainSpecError(
        f"task args hold {v!r} of type {type(v).__name__}: args may hold bool, int, float, "
        "str, lists, tuples and dicts with str keys (no None)"
    )


def package_dirs(local_packages: Iterable[str]) -> Dict[str, str]:
    """Top-level module name -> absolute path (package dir or .py file)."""
    found = {}
    for p in local_packages:
        path = os.path.abspath(os.fspath(p))
        if os.path.isdir(path):
            if not os.path.isfile(os.path.join(path, "__init__.py")):
                raise ChainSpecError(f"local package {p} has no __init__.py")
            found[os.path.basename(path.rstrip(os.sep))] = path
        elif path.endswith(".py") and os.path.isfile(path):
            found[os.path.basename(path)[:-3]] = path
        else:
            raise ChainSpecError(f"local package {p} is neither a package directory nor a .py file")
    return found


def task_module(f: Any, packages: Dict[str, str]) -> Tuple[str, str]:
    """The path of the local package holding `f`, and `f`'s name within the package (dotted
    through the submodule that defines it unless the package exposes it)."""
    name = getattr(f, "__name__", None)
    module = getattr(f, "__module__", None)
    if not callable(f) or name is None or module is None:
        raise ChainSpecError(f"task {f!r} is not a function or class")
    qual = getattr(f, "__qualname__", name)
    if qual != name:
        raise ChainSpecError(f"task {qual} is not defined at the top level of a module")
    top = module.split(".")[0]
    if top not in packages:
        raise ChainSpecError(
            f"task {name} lives in module {module}, which is in none of local_packages "
            f"({', '.join(sorted(packages)) or 'none given'})"
        )
    package = sys.modules.get(top)
    if module != top and (package is None or getattr(package, name, None) is not f):
        return packages[top], f"{module[len(top) + 1:]}.{name}"
    return packages[top], name


def chain_toml(
    name: str,
    version: str,
    taskchain: Sequence[Dict[str, Any]],
    local_packages: Iterable[str],
    codec: str,
    runtime: str = "sandbox",
    requirements: Sequence[str] = (),
) -> str:
    """The chain file's text."""
    if not taskchain:
        raise ChainSpecError("the taskchain is empty")
    packages = package_dirs(local_packages)
    lines: List[str] = [
        f"name = {toml_string(str(name))}",
        f"version = {toml_string(str(version))}",
        f"codec = {toml_string(codec)}",
        f"runtime = {toml_string(runtime)}",
        f"requirements = {toml_value([str(r) for r in requirements])}",
    ]
    for i, entry in enumerate(taskchain):
        if not isinstance(entry, dict) or "function" not in entry:
            raise ChainSpecError(f"taskchain entry {i} is not a dict with a \"function\"")
        unknown = set(entry) - {"function", "is_generator", "args"}
        if unknown:
            raise ChainSpecError(f"taskchain entry {i} has unknown keys: {', '.join(sorted(unknown))}")
        f = entry["function"]
        args = entry.get("args", ())
        if not isinstance(args, (list, tuple)):
            raise ChainSpecError(f"taskchain entry {i}: args must be a tuple or list")
        module, function = task_module(f, packages)
        lines += [
            "",
            "[[task]]",
            f"module = {toml_string(module)}",
            f"function = {toml_string(function)}",
            f"generator = {toml_value(bool(entry.get('is_generator', False)))}",
            f"args = {toml_value(list(args))}",
        ]
    return "\n".join(lines) + "\n"
