"""Test helpers that are not fixtures: waiting on conditions with deadlines (never fixed sleeps), filling a disk."""
from __future__ import annotations

import errno
import time
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float = 10.0, interval: float = 0.005, what: str = "") -> T:
    """Poll `condition` until it returns a truthy value or `timeout` seconds pass; return that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or condition}")
        time.sleep(interval)


def fill_disk(directory: Path) -> Path:
    """Write a file in `directory` until its file system has no space left; return the file (deleting
    it gives the space back)."""
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:
        for chunk in (b"\0" * 65536, b"\0" * 512):  # then the last partial block
            try:
                while True:
                    f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler
