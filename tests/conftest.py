"""Shared fixtures: a real broker on an ephemeral loopback port, run in a thread of this process.

`broker` gives a default broker; `make_broker(**config_overrides)` gives one with other Config values.
Every broker started here is shut down and joined when the test ends.

No test may touch the user's default database (~/.local/share/edgebroker, /var/lib/edgebroker as root):
`_isolated_data_home` points XDG_DATA_HOME at a temporary directory for the whole session, in this
process's environment, so every broker started here or in a subprocess (which inherits it) that is
given no persistence_location keeps its database there (tests/test_ops.py checks it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Callable, Iterator, List

import pytest

from edgebroker.config import Config, Listener
from edgebroker.server import Server


@pytest.fixture(autouse=True, scope="session")
def _isolated_data_home() -> Iterator[str]:
    saved = os.environ.get("XDG_DATA_HOME")
    home = tempfile.mkdtemp(prefix="edgebroker-test-data-home-")
    os.environ["XDG_DATA_HOME"] = home
    try:
        yield home
    finally:
        if saved is None:
            os.environ.pop("XDG_DATA_HOME", None)
        else:
            os.environ["XDG_DATA_HOME"] = saved
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture
def small_disk() -> Iterator[Callable[[Path], Path]]:
    """small_disk(directory) mounts a real file system of its own (tmpfs, 8 MiB) on `directory` (made
    here), so that a database there can fill its disk; tests/util.py's `fill_disk` fills it. Unmounted at teardown.
    Needs root (CI and this machine run the tests as root); skips with the reason otherwise."""
    mounted: List[Path] = []

    def mount(directory: Path) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(directory)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs (needs root): {done.stderr.strip()}")
        mounted.append(directory)
        return directory

    yield mount
    for directory in mounted:
        subprocess.run(["umount", "-l", str(directory)], check=False)


class RunningBroker:
    """A Server running its loop in a background thread, bound to 127.0.0.1 on an ephemeral port."""

    def __init__(self, config: Config) -> None:
        self.server = Server(config)
        self.host = "127.0.0.1"
        self.port = self.server.ports[0]
        self.thread = threading.Thread(target=self.server.serve_forever, name="edgebroker", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(10)
        assert not self.thread.is_alive(), "broker loop did not stop"


@pytest.fixture
def make_broker() -> Callable[..., RunningBroker]:
    started: List[RunningBroker] = []

    def make(**overrides) -> RunningBroker:
        overrides.setdefault("listeners", [Listener(port=0, address="127.0.0.1")])
        overrides.setdefault("persistence", False)  # tests that persist pass persistence_location=tmp_path
        # A configured listener refuses anonymous clients by default (Mosquitto 2.0); most tests connect
        # without a username. Tests of authentication pass allow_anonymous themselves.
        overrides.setdefault("allow_anonymous", True)
        rb = RunningBroker(Config(**overrides))
        started.append(rb)
        return rb

    yield make
    for rb in started:
        rb.stop()


@pytest.fixture
def broker(make_broker) -> RunningBroker:
    return make_broker()
