"""Test helpers that are not fixtures: waiting on conditions with deadlines (never fixed sleeps)."""
from __future__ import annotations

import time
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
