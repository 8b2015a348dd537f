"""The broker against Debian's mosquitto_pub / mosquitto_sub (package mosquitto-clients), byte for byte.

Theory of operation: the broker runs in a thread of this process (the `broker` fixture); each
mosquitto_sub is a subprocess whose stdout a thread reads line by line (bytes) into a queue, so a test
waits for a line with a deadline and compares the exact bytes. A subscriber is known to be subscribed
when a probe published to a second topic it listens to comes back ("probe N" for the last N sent): the
SUBSCRIBE may lag the connection, so counting connected clients is not enough. Every subprocess is
killed at teardown.

Conformance statements are those of MQTT Version 3.1.1 (OASIS Standard, 29 October 2014); the 3.1 test
uses MQIsdp protocol level 3.
"""
from __future__ import annotations

import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Sequence

import pytest

try:
    from util import wait_for
except ImportError:
    from tests.util import wait_for  # type: ignore[no-redef]

pytestmark = pytest.mark.skipif(not (shutil.which("mosquitto_sub") and shutil.which("mosquitto_pub")),
                                reason="mosquitto-clients not installed (apt-get install mosquitto-clients)")

TIMEOUT = 10.0


class Proc:
    """A subprocess with stdout read into a queue of lines (bytes, newline kept) by a thread."""

    def __init__(self, argv: Sequence[str], stdin: Optional[int] = None) -> None:
        self.argv = list(argv)
        self.p = subprocess.Popen(self.argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: "queue.Queue[bytes]" = queue.Queue()
        self.seen: List[bytes] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in iter(self.p.stdout.readline, b""):
            self.lines.put(line)
        self.lines.put(b"")  # EOF marker

    def next_line(self, timeout: float = TIMEOUT) -> bytes:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no output line from {self.argv} within {timeout}s; seen {self.seen}") from None
        self.seen.append(line)
        return line

    def stop(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(TIMEOUT)
        for f in (self.p.stdout, self.p.stderr, self.p.stdin):
            if f is not None:
                f.close()
        self.reader.join(TIMEOUT)


@pytest.fixture
def procs() -> Iterator[Callable[..., Proc]]:
    made: List[Proc] = []

    def start(*argv: str, stdin: Optional[int] = None) -> Proc:
        pr = Proc(argv, stdin=stdin)
        made.append(pr)
        return pr

    yield start
    for pr in made:
        pr.stop()


def hp(broker: Any) -> List[str]:
    return ["-h", broker.host, "-p", str(broker.port)]


def pub(broker: Any, *args: str, stdin: Optional[bytes] = None) -> subprocess.CompletedProcess:
    """Run mosquitto_pub to completion; it must exit 0."""
    r = subprocess.run(["mosquitto_pub", *hp(broker), *args], input=stdin, capture_output=True,
                       timeout=TIMEOUT)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r


def sub_run(broker: Any, *args: str) -> subprocess.CompletedProcess:
    """Run mosquitto_sub to completion (use -C and -W)."""
    return subprocess.run(["mosquitto_sub", *hp(broker), *args], capture_output=True, timeout=TIMEOUT + 5)


def wait_subscribed(broker: Any, sub: Proc, probe_topic: str = "probe") -> None:
    """Publish probes to `probe_topic` (which `sub` also subscribes, with -v) until one is printed, then
    consume output up to the last probe sent, so the next line is whatever comes after."""
    deadline = time.monotonic() + TIMEOUT
    n = 0
    while time.monotonic() < deadline:
        n += 1
        pub(broker, "-t", probe_topic, "-m", f"p{n}")
        try:
            line = sub.lines.get(timeout=0.25)
        except queue.Empty:
            continue
        sub.seen.append(line)
        assert line.startswith(probe_topic.encode() + b" p"), line
        last = f"{probe_topic} p{n}\n".encode()
        while line != last:
            line = sub.next_line()
            assert line.startswith(probe_topic.encode() + b" p"), line
        return
    raise AssertionError(f"subscriber never received a probe; output {sub.seen}")


# ---------------------------------------------------------------------------------------------------------

def test_seed_scenario_sub_prints_topic_and_payload(broker, procs):
    """The README scenario: `mosquitto_sub -v -t sensor` prints exactly b"sensor 12\\n" for
    `mosquitto_pub -t sensor -m 12` (QoS 0 end to end [MQTT-4.3.1-1])."""
    sub = procs("mosquitto_sub", *hp(broker), "-v", "-t", "sensor", "-t", "probe")
    wait_subscribed(broker, sub)
    pub(broker, "-t", "sensor", "-m", "12")
    assert sub.next_line() == b"sensor 12\n"
    pub(broker, "-t", "sensor", "-m", "13")
    assert sub.next_line() == b"sensor 13\n"


@pytest.mark.parametrize("qos", [1, 2])
def test_qos_flows_with_mosquitto_clients_MQTT_4_3_2_MQTT_4_3_3(broker, procs, qos):
    """-q 1 / -q 2 on both sides: mosquitto_pub gets PUBACK (QoS 1) [MQTT-4.3.2-2] or PUBREC, PUBCOMP
    (QoS 2) [MQTT-4.3.3-2], and the subscriber receives the message at that QoS."""
    if not shutil.which("stdbuf"):
        pytest.skip("stdbuf (coreutils) not found")
    # stdbuf -oL: mosquitto_sub flushes stdout after each message but not after its -d log lines
    sub = procs("stdbuf", "-oL", "mosquitto_sub", *hp(broker), "-d", "-i", "subber", "-q", str(qos), "-v",
                "-t", "sensor")
    # -d output: wait for the SUBACK with the granted QoS [MQTT-3.8.4-5], then the subscription exists
    while True:
        line = sub.next_line()
        if b"Subscribed (mid: 1): " in line:
            assert line.strip().endswith(b": %d" % qos), line
            break
    r = pub(broker, "-d", "-i", "pubber", "-q", str(qos), "-t", "sensor", "-m", "12")
    out = r.stdout.decode()
    if qos == 1:
        assert "pubber received PUBACK (Mid: 1" in out, out
    else:
        for step in ("received PUBREC (Mid: 1", "sending PUBREL (m1", "received PUBCOMP (Mid: 1"):
            assert step in out, (step, out)
    got = b""
    while b"sensor 12\n" not in got:
        got += sub.next_line()
    assert re.search(rb"subber received PUBLISH \(d0, q%d, r0, m\d+, 'sensor', \.\.\. \(2 bytes\)\)" % qos, got), got


def test_retained_with_r_then_later_subscriber_MQTT_3_3_1_5_MQTT_3_3_1_10(broker):
    """`mosquitto_pub -r` stores a retained message [MQTT-3.3.1-5]; a later `mosquitto_sub -C 1` prints it
    [MQTT-3.3.1-6]; `-r -n` (empty retained) removes it [MQTT-3.3.1-10]."""
    pub(broker, "-r", "-t", "ret/sensor", "-m", "21.5")
    r = sub_run(broker, "-v", "-C", "1", "-W", "5", "-t", "ret/sensor")
    assert (r.returncode, r.stdout) == (0, b"ret/sensor 21.5\n"), r
    r = sub_run(broker, "-d", "-C", "1", "-W", "5", "-t", "ret/#")
    assert re.search(rb"received PUBLISH \(d0, q0, r1, m0, 'ret/sensor', \.\.\. \(4 bytes\)\)", r.stdout), r.stdout
    pub(broker, "-r", "-t", "ret/sensor", "-m", "22.0", "-q", "1")
    r = sub_run(broker, "-v", "-C", "1", "-W", "5", "-t", "ret/sensor")
    assert (r.returncode, r.stdout) == (0, b"ret/sensor 22.0\n"), r
    pub(broker, "-r", "-n", "-t", "ret/sensor")
    # --retained-only prints retained messages and exits at the first non-retained one: the marker.
    sub = Proc(["mosquitto_sub", *hp(broker), "-v", "--retained-only", "-t", "ret/sensor", "-W", "10"])
    try:
        deadline = time.monotonic() + TIMEOUT
        while sub.p.poll() is None and time.monotonic() < deadline:
            pub(broker, "-t", "ret/sensor", "-m", "not-retained")
            try:
                sub.p.wait(0.25)
            except subprocess.TimeoutExpired:
                pass
        assert sub.p.poll() == 0, "mosquitto_sub --retained-only did not see the marker"
        sub.reader.join(TIMEOUT)
        out = []
        while not sub.lines.empty():
            out.append(sub.lines.get())
        assert out == [b""], f"retained message still delivered after an empty retained publish: {out}"
    finally:
        sub.stop()


def test_protocol_mqtt_v31(broker):
    """`-V mqttv31`: MQTT 3.1 (protocol name MQIsdp, level 3) clients publish and subscribe."""
    pub(broker, "-V", "mqttv31", "-r", "-q", "1", "-t", "v31/t", "-m", "old protocol")
    r = sub_run(broker, "-V", "mqttv31", "-v", "-C", "1", "-W", "5", "-t", "v31/#")
    assert (r.returncode, r.stdout) == (0, b"v31/t old protocol\n"), r


def test_pub_line_mode_sends_one_message_per_line(broker, procs):
    """`mosquitto_pub -l` publishes each stdin line as a message, in order [MQTT-4.6.0-6]."""
    sub = procs("mosquitto_sub", *hp(broker), "-v", "-t", "lines", "-t", "probe")
    wait_subscribed(broker, sub)
    pub(broker, "-l", "-t", "lines", stdin=b"first\nsecond line\n3\n")
    assert [sub.next_line() for _ in range(3)] == [b"lines first\n", b"lines second line\n", b"lines 3\n"]


def test_will_from_killed_mosquitto_sub_MQTT_3_1_2_8(broker, procs):
    """mosquitto_sub --will-topic, killed with SIGKILL (no DISCONNECT): the broker publishes its will
    [MQTT-3.1.2-8]; a mosquitto_sub stopped by SIGINT sends DISCONNECT and its will is not published
    [MQTT-3.14.4-3]."""
    watcher = procs("mosquitto_sub", *hp(broker), "-v", "-t", "will/+", "-t", "probe")
    wait_subscribed(broker, watcher)
    polite = procs("mosquitto_sub", *hp(broker), "-i", "polite", "-v", "-t", "anything", "-t", "polite/probe",
                   "--will-topic", "will/polite", "--will-payload", "should not appear")
    dying = procs("mosquitto_sub", *hp(broker), "-i", "dying", "-t", "anything",
                  "--will-topic", "will/dying", "--will-payload", "gone", "--will-qos", "1")
    wait_for(lambda: broker.server.broker.stats.clients_connected >= 3, TIMEOUT, what="3 clients connected")
    # SIGINT only once polite has its SUBACK and a message behind it: mosquitto_sub's SIGINT handler
    # calls mosquitto_disconnect, which can deadlock on the library's packet lock if the signal lands
    # while the main thread queues its SUBSCRIBE right after the CONNACK (seen once: a 10 s hang).
    wait_subscribed(broker, polite, "polite/probe")
    polite.p.send_signal(signal.SIGINT)
    assert polite.p.wait(TIMEOUT) == 0
    wait_for(lambda: broker.server.broker.stats.clients_connected == 2, TIMEOUT, what="polite disconnected")
    dying.p.kill()
    assert watcher.next_line() == b"will/dying gone\n"


def test_sys_broker_version(broker):
    """`mosquitto_sub -t '$SYS/broker/version' -C 1` prints the broker's version string (retained)."""
    r = sub_run(broker, "-C", "1", "-W", "8", "-t", "$SYS/broker/version")
    assert r.returncode == 0, r
    assert re.fullmatch(rb"\S.* version \d+\.\d+\S*\n", r.stdout), r.stdout


def test_sys_basic_topics(broker):
    """The basic $SYS topics are published (retained, like Mosquitto's): version, uptime, clients
    connected, messages received and sent."""
    topics = ["$SYS/broker/version", "$SYS/broker/uptime", "$SYS/broker/clients/connected",
              "$SYS/broker/messages/received", "$SYS/broker/messages/sent"]
    args = ["-v", "-C", str(len(topics)), "-W", "8"]
    for t in topics:
        args += ["-t", t]
    r = sub_run(broker, *args)
    assert r.returncode == 0, r
    values = dict(line.split(" ", 1) for line in r.stdout.decode().splitlines())
    assert sorted(values) == sorted(topics), r.stdout
    assert re.fullmatch(r"\d+ seconds", values["$SYS/broker/uptime"]), values
    for t in topics[2:]:  # (values of the last update, which may predate this client)
        assert values[t].isdigit(), (t, values[t])
