"""systemd's notify protocol from a real broker process (edgebroker/notify.py, the unit's Type=notify).

Theory of operation: the test plays the service manager. It binds a datagram socket (a path, or an
abstract name given as '@name' as systemd does for user managers), starts `python -m edgebroker -c FILE`
with $NOTIFY_SOCKET naming it, and reads the datagrams the broker sends, each read with a deadline
(no sleeps). It then drives the broker as systemd would: a client connects (STATUS counts it), SIGHUP
(`systemctl reload`: RELOADING=1 with MONOTONIC_USEC, then READY=1), a broken file and SIGHUP again
(READY=1 with the error in STATUS, the broker keeps serving), SIGTERM (STOPPING=1, exit 0). The port
comes from the broker's log ("Opening ipv4 listen socket on port N.").
"""
from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest

try:
    import mqttwire as w
    from notifysock import Manager
except ImportError:
    from tests import mqttwire as w  # type: ignore[no-redef]
    from tests.notifysock import Manager  # type: ignore[no-redef]

from edgebroker.notify import Notifier

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0
CONFIG = ('persistence = false\nsys_interval = 0\nallow_anonymous = true\n'
          '[[listener]]\nport = 0\naddress = "127.0.0.1"\n')


class Broker:
    """`python -m edgebroker -c FILE` with the given environment; its log lines go to a queue."""

    def __init__(self, conf: Path, env: Dict[str, str]) -> None:
        full = dict(os.environ)
        full.update(env)
        full["PYTHONPATH"] = str(REPO)
        self.p = subprocess.Popen([sys.executable, "-m", "edgebroker", "-c", str(conf)], cwd=str(REPO),
                                  env=full, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def port(self) -> int:
        while True:
            line = self.lines.get(timeout=TIMEOUT)
            assert line is not None, f"broker exited ({self.p.poll()}) before listening"
            m = re.search(r"Opening ipv4 listen socket on port (\d+)\.", line)
            if m:
                return int(m.group(1))

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(TIMEOUT)
        if self.p.stdout is not None:
            self.p.stdout.close()


@pytest.fixture
def run() -> Iterator:
    made: List[object] = []

    def start(tmp_path: Path, abstract: bool = False, **env: str):
        if abstract:
            manager = Manager(f"@edgebroker-test-{uuid.uuid4().hex}")
        else:
            manager = Manager(str(tmp_path / "notify"), tmp_path / "notify")
        made.append(manager)
        conf = tmp_path / "edgebroker.toml"
        conf.write_text(CONFIG)
        env["NOTIFY_SOCKET"] = manager.address
        broker = Broker(conf, env)
        made.append(broker)
        return manager, broker, conf

    yield start
    for thing in reversed(made):
        if isinstance(thing, Broker):
            thing.stop()
        else:
            thing.close()  # type: ignore[attr-defined]


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_status_reload_and_stopping(run, tmp_path, abstract):
    manager, broker, conf = run(tmp_path, abstract=abstract)
    ready = manager.expect(READY="1")
    assert ready["STATUS"] == "Serving: 0 clients connected"
    port = broker.port()  # the listeners were bound before READY=1: the port is in the log already

    with w.RawClient("127.0.0.1", port) as c:
        c.send(w.connect("notify-test"))
        assert c.read_packet()[0] == 0x20
        manager.expect(STATUS="Serving: 1 client connected")

        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        broker.p.send_signal(signal.SIGHUP)
        reloading = manager.expect(RELOADING="1")
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        # Type=notify-reload requires the reload's start on CLOCK_MONOTONIC, in microseconds.
        assert before <= int(reloading["MONOTONIC_USEC"]) <= after
        reloaded = manager.next()
        assert reloaded.get("READY") == "1", manager.seen
        assert reloaded["STATUS"] == "Serving: 1 client connected"

        conf.write_text("persistence = false\nmax_inflight_messages = -3\n")
        broker.p.send_signal(signal.SIGHUP)
        manager.expect(RELOADING="1")
        failed = manager.next()
        assert failed.get("READY") == "1", manager.seen
        assert failed["STATUS"].startswith("Reload failed, running configuration kept: ")
        assert "max_inflight_messages" in failed["STATUS"]
        c.send(w.pingreq())
        assert c.read_packet()[0] == 0xD0  # still serving on the old configuration

    manager.expect(STATUS="Serving: 0 clients connected")
    broker.p.send_signal(signal.SIGTERM)
    manager.expect(STOPPING="1")
    assert broker.p.wait(TIMEOUT) == 0


def test_watchdog_pings_at_half_the_interval(run, tmp_path):
    manager, broker, conf = run(tmp_path, WATCHDOG_USEC="200000")
    manager.expect(READY="1")
    for _ in range(3):  # pings keep coming while the broker idles (its own timers are far away)
        manager.expect(WATCHDOG="1")
    broker.p.send_signal(signal.SIGTERM)
    manager.expect(STOPPING="1")
    assert broker.p.wait(TIMEOUT) == 0


def test_from_environ():
    assert Notifier.from_environ({}) is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": ""}) is None
    assert Notifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    n = Notifier.from_environ({"NOTIFY_SOCKET": "@abstract"})
    assert n is not None and n.address == "\0abstract" and n.watchdog_interval is None
    n.close()
    n = Notifier.from_environ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000"})
    assert n is not None and n.watchdog_interval == 30.0
    n.close()
    # WATCHDOG_PID naming another process (a parent that kept the watchdog for itself): no pings.
    n = Notifier.from_environ({"NOTIFY_SOCKET": "/run/x", "WATCHDOG_USEC": "30000000",
                               "WATCHDOG_PID": str(os.getpid() + 1)})
    assert n is not None and n.watchdog_interval is None
    n.close()


def test_status_updates_are_rate_limited(tmp_path):
    """A connect storm is not a datagram storm: one STATUS per STATUS_INTERVAL, the latest count wins."""
    path = tmp_path / "n"
    manager = Manager(str(path), path)
    n = Notifier(str(path))
    try:
        n.ready(100.0, 0)
        assert manager.next()["READY"] == "1"
        assert n.tick(100.2, 5) == pytest.approx(101.0)  # changed too soon: wake up when allowed
        assert n.tick(100.5, 7) == pytest.approx(101.0)
        assert n.tick(101.0, 9) == float("inf")
        assert manager.next() == {"STATUS": "Serving: 9 clients connected"}
        manager.sock.setblocking(False)
        with pytest.raises(BlockingIOError):
            manager.sock.recv(4096)  # nothing else was sent
    finally:
        n.close()
        manager.close()
