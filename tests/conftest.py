"""Shared fixtures: a real broker on an ephemeral loopback port, run in a thread of this process.

`broker` gives a default broker; `make_broker(**config_overrides)` gives one with other Config values.
Every broker started here is shut down and joined when the test ends.
"""
from __future__ import annotations

import threading
from typing import Callable, List

import pytest

from edgebroker.config import Config, Listener
from edgebroker.server import Server


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
        rb = RunningBroker(Config(**overrides))
        started.append(rb)
        return rb

    yield make
    for rb in started:
        rb.stop()


@pytest.fixture
def broker(make_broker) -> RunningBroker:
    return make_broker()
