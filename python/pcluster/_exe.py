"""Where the ``pcluster`` executable is: ``PCLUSTER_BIN``, else the one installed with this
package (the wheel carries it in ``pcluster/bin``), else the first on ``PATH``."""

import os
import shutil
from pathlib import Path


def pcluster_exe(search_path: bool = True) -> str:
    """The executable; without `search_path`, only PCLUSTER_BIN or the wheel's own (the
    `pcluster` command itself must not find itself on PATH)."""
    explicit = os.environ.get("PCLUSTER_BIN")
    if explicit:
        return explicit
    bundled = Path(__file__).resolve().parent / "bin" / "pcluster"
    if bundled.is_file() and os.access(bundled, os.X_OK):
        return str(bundled)
    found = shutil.which("pcluster") if search_path else None
    if found is None:
        raise FileNotFoundError(
            "no pcluster executable: install the pcluster wheel, put `pcluster` on PATH or set PCLUSTER_BIN"
        )
    return found
