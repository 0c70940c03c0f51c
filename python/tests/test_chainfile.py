"""Taskchain lists as chain files: module paths, names, generators and args as TOML."""

import os
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES, PACKAGE
from pcluster import _chainfile, _native

HERE = Path(__file__).parent
sys.path.insert(0, str(EXAMPLES))
import task_package  # noqa: E402

sys.path.pop(0)

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 reads TOML


def readme_chain():
    return [
        {"function": task_package.simple_task, "is_generator": False},
        {"function": task_package.generator_task, "is_generator": True},
        {"function": task_package.DropItem, "is_generator": False, "args": ("item dropped",)},
    ]


def test_the_readme_taskchain_becomes_a_chain_file(tmp_path: Path) -> None:
    text = _chainfile.chain_toml("example-pipeline", "1.0", readme_chain(), [str(PACKAGE)], "json")
    chain = tomllib.loads(text)
    package = os.path.abspath(PACKAGE)
    assert chain["name"] == "example-pipeline" and chain["version"] == "1.0" and chain["codec"] == "json"
    assert chain["task"] == [
        {"module": package, "function": "simple_task", "generator": False, "args": []},
        {"module": package, "function": "generator_task", "generator": True, "args": []},
        {"module": package, "function": "DropItem", "generator": False, "args": ["item dropped"]},
    ]
    path = tmp_path / "chain.toml"
    path.write_text(text)
    assert _native.chain_has_python(str(path))


def test_args_keep_their_values() -> None:
    args = ('q"uote\\\n\x7f😀', 3, -1.5, float("inf"), True, [1, ["x"]], {"k": {"n": 2}})
    chain = [{"function": task_package.DropItem, "args": args}]
    text = _chainfile.chain_toml("x", "1", chain, [str(PACKAGE)], "pickle")
    assert tomllib.loads(text)["task"][0]["args"] == list(args)[:5] + [[1, ["x"]], {"k": {"n": 2}}]


def test_what_cannot_be_a_chain_says_why() -> None:
    pkg = [str(PACKAGE)]
    with pytest.raises(_chainfile.ChainSpecError, match="none of local_packages"):
        _chainfile.chain_toml("x", "1", [{"function": os.path.join}], pkg, "json")
    with pytest.raises(_chainfile.ChainSpecError, match="no None"):
        _chainfile.chain_toml("x", "1", [{"function": task_package.DropItem, "args": (None,)}], pkg, "json")
    with pytest.raises(_chainfile.ChainSpecError, match="unknown keys: generator"):
        _chainfile.chain_toml("x", "1", [{"function": task_package.DropItem, "generator": True}], pkg, "json")
    with pytest.raises(_chainfile.ChainSpecError, match="neither a package directory"):
        _chainfile.chain_toml("x", "1", readme_chain(), [str(HERE / "nowhere")], "json")
    with pytest.raises(_chainfile.ChainSpecError, match="empty"):
        _chainfile.chain_toml("x", "1", [], pkg, "json")


def test_rust_chains_are_not_python(tmp_path: Path) -> None:
    repo = HERE.parents[1]
    assert not _native.chain_has_python(str(repo / "examples/hello.toml"))
    (tmp_path / "tasks.py").write_text("def f(item):\n    return item\n")
    chain = tmp_path / "chain.toml"
    chain.write_text(f'name = "x"\nmodule = "{repo / "tasks-example"}"\n[[task]]\nfunction = "a"\n'
                     '[[task]]\nfunction = "f"\nmodule = "tasks.py"\n')
    assert _native.chain_has_python(str(chain))
