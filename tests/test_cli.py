"""The broker's command line, run as a subprocess: `python -m edgebroker -p 0 -v`.

Theory of operation: the broker process's output is read line by line by a thread into a queue; a test
waits for a line matching a pattern with a deadline (the verbose log is Mosquitto's `-v` format, each
line prefixed by a unix timestamp and ": "). The log may go to stdout or to stderr (Mosquitto's default
log_dest is stderr), so a running broker's two streams are merged; the tests of error exits read stderr
alone. The listening port is parsed from "Opening ipv4 listen
socket on port N.". Every broker process and client subprocess is killed at teardown. No sleeps.
"""
from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional, Sequence

import pytest

try:
    import mqttwire as w
except ImportError:
    from tests import mqttwire as w  # type: ignore[no-redef]

REPO = Path(__file__).resolve().parent.parent
TIMEOUT = 10.0
PREFIX = re.compile(r"^\d+(?:\.\d+)?: (.*)$", re.S)
BROKER = [sys.executable, "-m", "edgebroker"]

needs_mosquitto_clients = pytest.mark.skipif(
    not (shutil.which("mosquitto_sub") and shutil.which("mosquitto_pub")),
    reason="mosquitto-clients not installed (apt-get install mosquitto-clients)")


_DATA_HOME: List[str] = []


@pytest.fixture(autouse=True, scope="module")
def _isolated_data_home(tmp_path_factory) -> Iterator[None]:
    """Brokers started here persist under a temporary XDG_DATA_HOME, never the user's or /var/lib."""
    _DATA_HOME.append(str(tmp_path_factory.mktemp("data-home")))
    yield
    _DATA_HOME.clear()


def env() -> dict:
    e = dict(os.environ)
    if _DATA_HOME:
        e["XDG_DATA_HOME"] = _DATA_HOME[0]
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


class Proc:
    """A subprocess whose stdout lines (text, newline stripped) a thread puts into a queue."""

    def __init__(self, argv: Sequence[str], merge_stderr: bool = False) -> None:
        self.argv = list(argv)
        self.p = subprocess.Popen(self.argv, cwd=str(REPO), env=env(), stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE)
        self.lines: "queue.Queue[Optional[str]]" = queue.Queue()
        self.seen: List[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for raw in iter(self.p.stdout.readline, b""):
            self.lines.put(raw.decode("utf-8", "replace").rstrip("\n"))
        self.lines.put(None)  # EOF

    def next_line(self, timeout: float = TIMEOUT) -> Optional[str]:
        """The next stdout line (None at EOF)."""
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output from {self.argv} within {timeout}s; seen:\n"
                                 + "\n".join(self.seen)) from None
        if line is not None:
            self.seen.append(line)
        return line

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(TIMEOUT)
        self.reader.join(TIMEOUT)
        for f in (self.p.stdout, self.p.stderr):
            if f is not None:
                f.close()


class BrokerProc(Proc):
    """The broker subprocess; `expect` walks its log forward, so expected lines are also in order."""

    def expect(self, pattern: str, timeout: float = TIMEOUT) -> "re.Match[str]":
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"log line /{pattern}/ not seen within {timeout}s; log:\n"
                                     + "\n".join(self.seen))
            line = self.next_line(left)
            if line is None:
                raise AssertionError(f"broker exited ({self.p.wait(TIMEOUT)}) before /{pattern}/; log:\n"
                                     + "\n".join(self.seen))
            m = PREFIX.match(line)
            assert m, f"log line without a 'timestamp: ' prefix: {line!r}"
            found = rx.fullmatch(m.group(1))
            if found:
                return found

    def rest(self) -> str:
        """After exit: all output not read yet, up to EOF."""
        out = []
        while True:
            line = self.next_line()
            if line is None:
                return "\n".join(out)
            out.append(line)


@pytest.fixture
def start() -> Iterator[Callable[..., BrokerProc]]:
    """start(*args) -> a BrokerProc; started() -> (proc, ipv4 port) with `-p 0 -v`. Killed at teardown."""
    made: List[Proc] = []

    def run(*args: str) -> BrokerProc:
        pr = BrokerProc(BROKER + list(args), merge_stderr=True)
        made.append(pr)
        return pr

    yield run
    for pr in made:
        pr.stop()


@pytest.fixture
def running(start: Callable[..., BrokerProc]):
    """A verbose broker on an ephemeral port: (proc, port)."""
    pr = start("-p", "0", "-v")
    pr.expect(r"edgebroker version \S+ starting")
    port = int(pr.expect(r"Opening ipv4 listen socket on port (\d+)\.").group(1))
    assert 0 < port < 65536
    return pr, port


@pytest.fixture
def clients() -> Iterator[Callable[..., Proc]]:
    made: List[Proc] = []

    def run(*argv: str) -> Proc:
        pr = Proc(argv)
        made.append(pr)
        return pr

    yield run
    for pr in made:
        pr.stop()


# ---------------------------------------------------------------------------------------------------------

def test_help_exits_0_with_usage():
    for flag in ("-h", "--help"):
        r = subprocess.run(BROKER + [flag], cwd=str(REPO), env=env(), capture_output=True, timeout=TIMEOUT)
        assert r.returncode == 0, r
        assert "usage" in r.stdout.decode().lower(), r.stdout
        assert b"Traceback" not in r.stderr


def test_port_0_logs_the_ephemeral_port_and_accepts_connections(running):
    pr, port = running
    with w.RawClient("127.0.0.1", port) as c:
        assert c.connect("probe") == w.connack(False, 0)
    pr.expect(r"New connection from 127\.0\.0\.1:\d+ on port %d\." % port)


@needs_mosquitto_clients
def test_seed_scenario_and_verbose_log(running, clients):
    """mosquitto_sub -v -t sensor / mosquitto_pub -t sensor -m 12 against the CLI broker; the subscriber
    prints "sensor 12" and the -v log has Mosquitto's lines for each step, in order."""
    pr, port = running
    hp = ["-h", "127.0.0.1", "-p", str(port)]
    sub = clients("mosquitto_sub", *hp, "-i", "subber", "-v", "-t", "sensor")
    pr.expect(r"New connection from 127\.0\.0\.1:\d+ on port %d\." % port)
    pr.expect(r"New client connected from 127\.0\.0\.1:\d+ as subber \(p2, c1, k60\)\.")
    pr.expect(r"Sending CONNACK to subber \(0, 0\)")
    pr.expect(r"Received SUBSCRIBE from subber")
    pr.expect(r"\tsensor \(QoS 0\)")
    pr.expect(r"Sending SUBACK to subber")
    r = subprocess.run(["mosquitto_pub", *hp, "-i", "pubber", "-t", "sensor", "-m", "12"], capture_output=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, r
    assert sub.next_line() == "sensor 12"
    pr.expect(r"New client connected from 127\.0\.0\.1:\d+ as pubber \(p2, c1, k60\)\.")
    pr.expect(r"Sending CONNACK to pubber \(0, 0\)")
    pr.expect(r"Received PUBLISH from pubber \(d0, q0, r0, m0, 'sensor', \.\.\. \(2 bytes\)\)")
    pr.expect(r"Sending PUBLISH to subber \(d0, q0, r0, m0, 'sensor', \.\.\. \(2 bytes\)\)")
    pr.expect(r"Received DISCONNECT from pubber")
    pr.expect(r"Client pubber disconnected\.")
    sub.p.send_signal(signal.SIGINT)  # mosquitto_sub sends DISCONNECT on SIGINT
    assert sub.p.wait(TIMEOUT) == 0
    pr.expect(r"Received DISCONNECT from subber")
    pr.expect(r"Client subber disconnected\.")


def test_log_ping_close_and_keepalive_timeout(running):
    """PINGREQ/PINGRESP, a close without DISCONNECT and a keep alive expiry [MQTT-3.1.2-24] are logged."""
    pr, port = running
    with w.RawClient("127.0.0.1", port) as c:
        assert c.connect("pinger") == w.connack(False, 0)
        c.ping()
        pr.expect(r"Received PINGREQ from pinger")
        pr.expect(r"Sending PINGRESP to pinger")
    pr.expect(r"Client pinger closed its connection\.")
    with w.RawClient("127.0.0.1", port) as c:
        assert c.connect("sleepy", keepalive=1) == w.connack(False, 0)
        pr.expect(r"New client connected from 127\.0\.0\.1:\d+ as sleepy \(p2, c1, k1\)\.")
        pr.expect(r"Client sleepy has exceeded timeout, disconnecting\.", timeout=4.0)
        c.expect_closed(timeout=2.0)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_with_exit_0(running, sig):
    pr, port = running
    with w.RawClient("127.0.0.1", port) as c:  # a connected client must not keep it alive
        assert c.connect("bystander") == w.connack(False, 0)
        t0 = time.monotonic()
        pr.p.send_signal(sig)
        rc = pr.p.wait(5.0)
        assert rc == 0, "\n".join(pr.seen) + pr.rest()
        assert time.monotonic() - t0 < 3.0
    pr.expect(r"edgebroker version \S+ terminating")
    assert "Traceback" not in pr.rest()


def test_invalid_option_exits_nonzero_with_message():
    r = subprocess.run(BROKER + ["--no-such-option"], cwd=str(REPO), env=env(), capture_output=True,
                       timeout=TIMEOUT)
    assert r.returncode != 0
    err = r.stderr.decode()
    assert "--no-such-option" in err, err
    assert "Traceback" not in err


def test_port_in_use_exits_nonzero_with_clear_error():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        try:
            r = subprocess.run(BROKER + ["-p", str(port)], cwd=str(REPO), env=env(), capture_output=True,
                               timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"broker kept running although port {port} is in use")
    err = r.stderr.decode()
    assert r.returncode != 0, (r.stdout, err)
    assert re.search(r"in use|%d" % port, err, re.I), err
    assert "Traceback" not in err + r.stdout.decode()
