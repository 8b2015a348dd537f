"""Run code under real MicroPython 1.27 (its WebAssembly port, under Debian's node).

scripts/test.sh installs node and the npm package `@micropython/micropython-webassembly-pyscript` into a
cache directory outside the repository and names its micropython.mjs in $EDGEBROKER_MICROPYTHON. A test
that needs MicroPython fails (it does not skip) when it is missing: run the tests with scripts/test.sh.
"""
from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Dict, Optional, Sequence

HERE = Path(__file__).resolve().parent
RUNNER = HERE / "micropython" / "run.mjs"
FIRMWARE = HERE.parent / "firmware_bridge" / "firmware"
PACKAGE = "@micropython/micropython-webassembly-pyscript"


class MicroPythonError(AssertionError):
    """The program raised (the traceback is in the message) or node failed."""


def micropython_module() -> str:
    path = os.environ.get("EDGEBROKER_MICROPYTHON")
    if not path:
        cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        path = os.path.join(cache, "edgebroker-test", "micropython", "node_modules", PACKAGE, "micropython.mjs")
    if not os.path.isfile(path) or shutil.which("node") is None:
        raise MicroPythonError(f"MicroPython's WebAssembly port is not installed ({path}); run the tests "
                               "with `sh scripts/test.sh`, which installs node and the npm package")
    return path


def firmware_files(*names: str) -> Dict[str, bytes]:
    """The shared firmware files, as a board holds them in /lib."""
    return {f"/lib/{name}": (FIRMWARE / name).read_bytes() for name in names}


def write_spec(code: str, files: Optional[Dict[str, bytes]] = None, uart_fd: Optional[int] = None) -> str:
    spec = {
        "module": micropython_module(),
        "files": {path: base64.b64encode(data).decode() for path, data in (files or {}).items()},
        "code": code,
        "uart_fd": uart_fd,
    }
    fd, path = tempfile.mkstemp(prefix="mpspec-", suffix=".json")
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f)
    return path


def command(spec_path: str) -> Sequence[str]:
    return ["node", str(RUNNER), spec_path]


def run(code: str, files: Optional[Dict[str, bytes]] = None, timeout: float = 60) -> str:
    """Run `code` under MicroPython and return what it printed; MicroPythonError if it raised."""
    spec = write_spec(code, files)
    try:
        proc = subprocess.run(command(spec), capture_output=True, text=True, timeout=timeout)
    finally:
        os.unlink(spec)
    if proc.returncode != 0:
        raise MicroPythonError(f"MicroPython failed (exit {proc.returncode}):\n{proc.stderr}\n{proc.stdout}")
    return proc.stdout
