"""The wheel as a Python user installs it: a fresh virtual environment, ``pip install`` of the
wheel (``PCLUSTER_WHEEL``, built by ``python/build-wheel``), no Rust toolchain on ``PATH``.
The wheel's own ``pcluster`` command starts a log server and two nodes that allow native
tasks, and pipeline-cluster's README example and W1 in Python run through ``pcluster.Root``
with native tasks, outputs exact.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import EXAMPLES, NATIVE_TOKEN

SCRIPT = r'''
import shutil, subprocess, sys, time
from pathlib import Path

assert shutil.which("cargo") is None and shutil.which("rustc") is None, "a Rust toolchain is on PATH"
import pcluster

tmp, package = Path(sys.argv[1]), sys.argv[2]
exe = shutil.which("pcluster")
assert exe is not None and Path(exe).parent == Path(sys.executable).parent, exe


def start(args, name):
    port_file = tmp / f"{name}.port"
    proc = subprocess.Popen([exe, *args, "--port-file", str(port_file)], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL)
    end = time.monotonic() + 60
    while not port_file.exists():
        assert proc.poll() is None, f"{name} exited with {proc.returncode}"
        assert time.monotonic() < end, f"{name} did not listen"
        time.sleep(0.02)
    return proc, int(port_file.read_text().strip().rsplit(":", 1)[1])


procs = []
try:
    log, log_port = start(["log", "--host", "127.0.0.1", "--port", "0", "--outfile", str(tmp / "log.txt")], "log")
    procs.append(log)
    port = 0
    for host in ["127.0.0.2", "127.0.0.3"]:
        node, port = start(["node", "--host", host, "--port", str(port), "--log-host", "127.0.0.1",
                            "--log-port", str(log_port), "--workers", "1", "--allow-native",
                            "--cache-dir", str(tmp / "cache")], host)
        procs.append(node)
    nodes = [f"127.0.0.2:{port}", f"127.0.0.3:{port}"]

    sys.path.insert(0, str(Path(package).parent))
    from task_package import DropItem, generator_task, simple_task, w1_drop_odd, w1_duplicate, w1_identity

    outputs = []
    root = pcluster.Root(nodes)
    root.setup("example-pipeline", 1.0, [
        {"function": simple_task, "is_generator": False},
        {"function": generator_task, "is_generator": True},
        {"function": DropItem, "is_generator": False, "args": ("item dropped",)},
    ], local_packages=[package], output_handler=outputs.append, runtime="python")
    root.feed("hello world!", "its me an input item!")
    root.wait_empty()
    assert outputs == [], outputs
    root.reset()

    root.setup("w1-py", 1.0, [
        {"function": w1_identity, "is_generator": False},
        {"function": w1_duplicate, "is_generator": True},
        {"function": w1_drop_odd, "is_generator": False},
    ], local_packages=[package], output_handler=outputs.append, runtime="python")
    items = [f"item-{i}" for i in range(2000)]
    root.feed(items)
    root.wait_empty()
    root.close()
    expected = sorted(i for i in items for _ in range(2) if int(i.split("-")[1]) % 2 == 0)
    assert sorted(outputs) == expected, (len(outputs), len(expected))

    end = time.monotonic() + 60
    while "item dropped" not in (tmp / "log.txt").read_text():
        assert time.monotonic() < end, "no log line of DropItem"
        time.sleep(0.05)
    print("wheel ok")
finally:
    for p in procs:
        p.terminate()
        p.wait(timeout=30)
'''


def test_the_wheel_alone_runs_the_readme_example_natively(tmp_path: Path) -> None:
    wheel = os.environ.get("PCLUSTER_WHEEL")
    if not wheel:
        pytest.fail("PCLUSTER_WHEEL is not set: build the wheel with python/build-wheel (./run-tests does)")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--no-index", wheel], check=True)
    script = tmp_path / "readme.py"
    script.write_text(SCRIPT)
    env = {
        "PATH": f"{venv / 'bin'}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "PCLUSTER_TOKEN": NATIVE_TOKEN,
    }
    done = subprocess.run(
        [str(py), str(script), str(tmp_path), str(EXAMPLES / "task_package")],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "wheel ok" in done.stdout
