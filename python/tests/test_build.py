"""Building Python tasks with this Python's environment (the virtual environment ``./run-tests``
makes, holding componentize-py, numpy and pytest with its pure-Python dependencies): a
package with C extensions fails with an error that names it and says why; a pure-Python
package installed only here is bundled into the component and runs on the nodes.
"""

import importlib.util
import json
from pathlib import Path
from typing import Iterator, List

import pytest

import pcluster
from conftest import Cluster


@pytest.fixture
def root(cluster: Cluster) -> Iterator[pcluster.Root]:
    r = pcluster.Root(cluster.nodes)
    yield r
    r.close()


def task_chain(tmp_path: Path, package: str, source: str, function: str) -> Path:
    """A chain file of one task, `function` of the package `package` holding `source`."""
    pkg = tmp_path / package
    pkg.mkdir()
    (pkg / "__init__.py").write_text(source)
    chain = tmp_path / f"{package}.toml"
    # JSON strings are valid TOML strings: the path is quoted whatever it holds.
    chain.write_text(
        f'name = "{package}"\nmodule = {json.dumps(str(pkg))}\n\n[[task]]\nfunction = "{function}"\n'
    )
    return chain


def test_a_package_with_c_extensions_fails_naming_it(tmp_path: Path) -> None:
    assert importlib.util.find_spec("numpy"), "numpy is not installed here (./run-tests installs it)"
    chain = task_chain(
        tmp_path,
        "np_task",
        "import numpy\n\n\ndef double(item):\n    return str(numpy.int64(item) * 2)\n",
        "double",
    )
    root = pcluster.Root()
    try:
        with pytest.raises(pcluster.PclusterError) as failed:
            root.setup("np", "1", str(chain))
    finally:
        root.close()
    message = str(failed.value)
    assert "the task imports `numpy`, which has C extensions" in message
    assert "C extensions cannot be bundled into the sandboxed component runtime" in message
    assert "need a native Python runtime" in message
    # The explanation comes first, componentize-py's own output after it.
    assert message.index("native Python runtime") < message.index("componentize-py's output:")


def test_a_pure_python_package_of_this_environment_is_bundled(root: pcluster.Root, tmp_path: Path) -> None:
    # pytest's own dependencies: installed in this virtual environment only.
    for name in ("iniconfig", "pluggy"):
        assert importlib.util.find_spec(name), f"{name} is not installed here"
    chain = task_chain(
        tmp_path,
        "venv_task",
        "import iniconfig\nimport pluggy\n\n\n"
        "def which(item):\n    return f'{item} {iniconfig.__name__} {pluggy.__name__}'\n",
        "which",
    )
    outputs: List[str] = []
    root.setup("venv", "1", str(chain), output_handler=outputs.append)
    root.feed("x")
    root.wait_empty()
    root.reset()
    assert outputs == ["x iniconfig pluggy"]
