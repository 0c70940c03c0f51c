"""Where the ``pcluster`` executable is: ``PCLUSTER_BIN``, else the one installed with this
package (the wheel carries it in ``pcluster/bin``), else the first on ``PATH``."""

import os
import shutil
from pathlib import Path


def pcluster_exe() -> str:
    explicit = os.environ.get("PCLUSTER_BIN")
    if explicit:
        return explicit
    bundled = Path(__file__).resolve().parent / "bin" / "pcluster"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    found = shutil.which("pcluster")
    if found is None:
        raise FileNotFoundError(
            "no pcluster executable: install the pcluster wheel, put `pcluster` on PATH or set PCLUSTER_BIN"
        )
    return found
