"""Bridges end to end: edgebroker as the gateway (the real command, its own process), Debian's Mosquitto as the
upstream (started here on loopback with its own config), real clients on both sides.

Theory of operation: `Upstream` runs /usr/sbin/mosquitto with a config written for the test (log to a
file the test reads); `Gateway` runs `python -m edgebroker -c gateway.toml` with a [[bridge]] table and
reads its log from stderr (port 0: the port is taken from the "Opening ipv4 listen socket" line). The
clients are edgebroker.client.Client, one per side. Waits are on conditions with deadlines, never sleeps.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Set, Tuple

import pytest

from edgebroker.client import Client, Message, Published

from util import fill_disk, wait_for

REPO = Path(__file__).resolve().parent.parent
MOSQUITTO = "/usr/sbin/mosquitto"
TIMEOUT = 20.0

pytestmark = pytest.mark.skipif(not os.access(MOSQUITTO, os.X_OK),
                                reason="mosquitto not installed (scripts/test.sh installs it)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Upstream:
    """A Mosquitto on a fixed loopback port (so it can be stopped and started again on the same one)."""

    def __init__(self, directory: Path, extra: str = "", port: Optional[int] = None) -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = extra
        self.log_path = self.dir / "mosquitto.log"
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> "Upstream":
        conf = self.dir / "mosquitto.conf"
        # Started as root, Mosquitto would switch to user mosquitto, who cannot write in pytest's directory.
        user = "user root\n" if os.getuid() == 0 else ""
        conf.write_text(f"listener {self.port} 127.0.0.1\n{user}log_dest file {self.log_path}\nlog_type all\n"
                        f"{self.extra}\n")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        proc = self.proc
        ports = [self.port] + [int(p) for p in re.findall(r"^listener (\d+)", self.extra, re.M)]
        wait_for(lambda: proc.poll() is not None or all(accepts(p) for p in ports), TIMEOUT,
                 what="mosquitto to listen")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # a clean exit: Mosquitto saves its persistence file
            self.proc.wait(TIMEOUT)
        self.proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def client(self, client_id: str, clean: bool = True, **kw) -> Client:
        c = Client(client_id, clean_session=clean, **kw)
        c.connect("127.0.0.1", self.port, timeout=TIMEOUT)
        return c


class Gateway:
    """`python -m edgebroker -c FILE` in its own process, killed with -9 or stopped with SIGTERM."""

    def __init__(self, directory: Path, bridge: Optional[str], extra: str = "") -> None:
        self.dir = directory
        (self.dir / "db").mkdir(parents=True, exist_ok=True)
        self.conf = self.dir / "gateway.toml"
        self.conf.write_text(f'persistence_location = "{self.dir / "db"}"\nsys_interval = 1\n'
                             f'allow_anonymous = true\n{extra}\n'
                             f'[[listener]]\nport = 0\naddress = "127.0.0.1"\n'
                             + (f'\n[[bridge]]\n{bridge}\n' if bridge else ""))
        self.proc: Optional[subprocess.Popen] = None
        self.lines: List[str] = []
        self.port = 0

    def start(self) -> "Gateway":
        self.lines = []
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen([sys.executable, "-m", "edgebroker", "-c", str(self.conf)], cwd=str(REPO),
                                     env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        proc = self.proc

        def read() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                self.lines.append(line.rstrip("\n"))

        threading.Thread(target=read, daemon=True).start()

        def bound() -> Optional[int]:
            for line in self.lines:
                if "Opening ipv4 listen socket on port " in line:
                    return int(line.rsplit(" ", 1)[1].rstrip("."))
            assert proc.poll() is None, "\n".join(self.lines)
            return None

        self.port = wait_for(bound, TIMEOUT, what="the gateway to listen")
        return self

    def log(self) -> str:
        return "\n".join(self.lines)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(TIMEOUT)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            assert self.proc.wait(TIMEOUT) == 0, self.log()
        self.proc = None

    def client(self, client_id: str, clean: bool = True, **kw) -> Client:
        c = Client(client_id, clean_session=clean, **kw)
        c.connect("127.0.0.1", self.port, timeout=TIMEOUT)
        return c


@pytest.fixture
def procs() -> Iterator[List]:
    """Everything started is stopped at the end, whatever the test did."""
    started: List = []
    yield started
    for p in started:
        try:
            if isinstance(p, Gateway) and p.proc is not None:
                p.proc.kill()
                p.proc.wait(TIMEOUT)
            elif isinstance(p, Upstream):
                p.stop()
        except Exception:
            pass


def bridge_block(upstream: Any, *topics: str, extra: str = "") -> str:
    """A [[bridge]] table to `upstream` (anything with the loopback port it listens on: `port` or
    `mqtt_port`)."""
    port = getattr(upstream, "mqtt_port", None) or upstream.port
    lines = ", ".join(f'"{t}"' for t in topics)
    return (f'connection = "cloud"\naddress = "127.0.0.1:{port}"\ntopic = [{lines}]\n'
            f'remote_clientid = "gw1.cloud"\nrestart_timeout = 1\n{extra}')


def collect(client: Client, n: int, timeout: float = TIMEOUT) -> List[Message]:
    """Messages until `n` arrived (or the deadline: the caller's assertion shows what came)."""
    got: List[Message] = []
    deadline = time.monotonic() + timeout
    while len(got) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        got.extend(e for e in client.loop(min(remaining, 0.5)) if isinstance(e, Message))
    return got


def subscribe(client: Client, *filters: Tuple[str, int]) -> None:
    client.subscribe(list(filters))
    wait_for(lambda: any(type(e).__name__ == "Subscribed" for e in client.loop(0.2)), TIMEOUT, what="SUBACK")


def offline_upstream(tmp_path: Path, procs: List, flt: str, extra: str = "") -> Upstream:
    """A stopped upstream Mosquitto (persistence on) that keeps a persistent session "cloud" subscribed
    to `flt` at QoS 1, so that it queues what a bridge sends once it is started again."""
    up = Upstream(tmp_path / "up", "allow_anonymous true\npersistence true\n"
                  f"persistence_location {tmp_path / 'up'}/\n{extra}").start()
    procs.append(up)
    cloud = up.client("cloud", clean=False)
    subscribe(cloud, (flt, 1))
    cloud.disconnect()
    up.stop()
    return up


def publish_all(client: Client, messages: List[Tuple[str, bytes, int, bool]]) -> None:
    """Publish with a window of 100 and wait until every QoS 1/2 one is acknowledged."""
    pending = set()
    for topic, payload, qos, retain in messages:
        while len(pending) >= 100:
            for e in client.loop(1.0):
                if isinstance(e, Published):
                    pending.discard(e.mid)
        mid = client.publish(topic, payload, qos, retain)
        if qos:
            pending.add(mid)
    deadline = time.monotonic() + TIMEOUT
    while pending and time.monotonic() < deadline:
        for e in client.loop(0.5):
            if isinstance(e, Published):
                pending.discard(e.mid)
    assert not pending


def bridge_up(gw: Gateway) -> None:
    wait_for(lambda: "Bridge cloud connected" in gw.log(), TIMEOUT, what="the bridge to connect")


# ---- the basic path ----------------------------------------------------------------------------------

def test_forwards_both_ways_and_mosquitto_sees_a_bridge(tmp_path, procs):
    up = Upstream(tmp_path / "up", "allow_anonymous true").start()
    procs.append(up)
    cloud = up.client("cloud-sub")
    subscribe(cloud, ("sensors/#", 1), ("$SYS/broker/connection/gw1.cloud/state", 1))
    gw = Gateway(tmp_path / "gw", bridge_block(up, "sensors/# out 1", "cmd/# in 1", "shared/# both 1")).start()
    procs.append(gw)
    bridge_up(gw)
    # try_private: Mosquitto recognises the bridge flag (protocol level 0x84).
    wait_for(lambda: "New bridge connected" in up.log(), TIMEOUT, what="Mosquitto's bridge log line")
    state = collect(cloud, 1)
    assert [(m.topic, m.payload, m.retain) for m in state] == [("$SYS/broker/connection/gw1.cloud/state", b"1", False)]

    local = gw.client("local-sub")
    subscribe(local, ("cmd/#", 1), ("shared/#", 1), ("sensors/#", 0))
    sensor = gw.client("sensor")
    publish_all(sensor, [("sensors/t1", b"21.5", 1, False), ("sensors/t2", b"q0", 0, False),
                         ("shared/a", b"from-gw", 1, False)])
    got = collect(cloud, 2)
    assert sorted((m.topic, m.payload, m.qos) for m in got) == [("sensors/t1", b"21.5", 1), ("sensors/t2", b"q0", 0)]
    # From the cloud: cmd (in) and shared (both) reach the gateway's subscriber.
    cloud.publish("cmd/fan", b"on", 1)
    cloud.publish("shared/b", b"from-cloud", 1)
    mine = collect(local, 5, timeout=5.0)
    topics = sorted((m.topic, m.payload) for m in mine)
    assert ("cmd/fan", b"on") in topics and ("shared/b", b"from-cloud") in topics
    # Loop prevention: shared/a went up once and did not come back down (no second copy locally);
    # shared/b came down once and did not go back up.
    assert topics.count(("shared/a", b"from-gw")) == 1
    cloud_shared = up.client("cloud-shared")
    subscribe(cloud_shared, ("shared/#", 1))
    publish_all(sensor, [("shared/c", b"once", 1, False)])
    assert [(m.topic, m.payload) for m in collect(cloud_shared, 2, timeout=3.0)] == [("shared/c", b"once")]
    gw.stop()
    for c in (cloud, cloud_shared, local, sensor):
        c.close()


def test_retained_flag_is_kept_up_and_bridge_outgoing_retain_false_clears_it(tmp_path, procs):
    up = Upstream(tmp_path / "up", "allow_anonymous true").start()
    procs.append(up)
    gw = Gateway(tmp_path / "gw", bridge_block(up, "r/# out 1")).start()
    procs.append(gw)
    bridge_up(gw)
    sensor = gw.client("sensor")
    publish_all(sensor, [("r/1", b"kept", 1, True)])
    cloud = up.client("late")
    subscribe(cloud, ("r/#", 1))
    got = collect(cloud, 1)
    assert [(m.topic, m.payload, m.retain) for m in got] == [("r/1", b"kept", True)]  # retained upstream
    gw.stop()
    gw2 = Gateway(tmp_path / "gw2", bridge_block(up, "r/# out 1", extra="bridge_outgoing_retain = false\n"
                                                 'remote_clientid = "gw2.cloud"\n').replace(
        'remote_clientid = "gw1.cloud"\n', "")).start()
    procs.append(gw2)
    bridge_up(gw2)
    live = up.client("live")
    subscribe(live, ("r/2", 1))
    publish_all(gw2.client("sensor2"), [("r/2", b"not-kept", 1, True)])
    assert [(m.payload, m.retain) for m in collect(live, 1)] == [(b"not-kept", False)]
    late = up.client("later")
    subscribe(late, ("r/#", 1))
    # Only the first gateway's retained message is there: the second one's went up without the flag
    # (AWS IoT refuses retained messages: bridge_outgoing_retain false).
    assert [m.payload for m in collect(late, 1)] == [b"kept"]
    gw2.stop()


@pytest.mark.parametrize("line, local_topic, remote_topic", [
    ("a/# out 1", "a/x", "a/x"),
    ("# out 1 gw/ site1/gw/", "gw/x/y", "site1/gw/x/y"),
    ("x out 1 gw/ \\\"\\\"", "gw/x", "x"),
    ("x out 1 \\\"\\\" remote/", "x", "remote/x"),
    ('\\\"\\\" out 1 local/state remote/state', "local/state", "remote/state"),
    ("+/t out 1 l/ r/", "l/k/t", "r/k/t"),
])
def test_topic_lines_and_prefixes_going_out(tmp_path, procs, line, local_topic, remote_topic):
    up = Upstream(tmp_path / "up", "allow_anonymous true").start()
    procs.append(up)
    cloud = up.client("cloud")
    subscribe(cloud, ("#", 1))
    gw = Gateway(tmp_path / "gw", bridge_block(up, line, extra="notifications = false\n")).start()
    procs.append(gw)
    bridge_up(gw)
    # The unrelated message first: the bridge keeps the order, so had it been forwarded it would arrive first.
    publish_all(gw.client("sensor"), [("unrelated/t", b"no", 1, False), (local_topic, b"v", 1, False)])
    got = collect(cloud, 1)
    assert [(m.topic, m.payload) for m in got] == [(remote_topic, b"v")]
    gw.stop()


@pytest.mark.parametrize("line, remote_topic, local_topic", [
    ("a/# in 1", "a/x", "a/x"),
    ("# in 1 gw/ site1/gw/", "site1/gw/x/y", "gw/x/y"),
    ("x in 1 gw/ \\\"\\\"", "x", "gw/x"),
    ("x in 1 \\\"\\\" remote/", "remote/x", "x"),
    ('\\\"\\\" in 1 local/cmd remote/cmd', "remote/cmd", "local/cmd"),
    ("+/t both 1 l/ r/", "r/k/t", "l/k/t"),
])
def test_topic_lines_and_prefixes_coming_in(tmp_path, procs, line, remote_topic, local_topic):
    up = Upstream(tmp_path / "up", "allow_anonymous true").start()
    procs.append(up)
    gw = Gateway(tmp_path / "gw", bridge_block(up, line, extra="notifications = false\n")).start()
    procs.append(gw)
    bridge_up(gw)
    local = gw.client("local")
    subscribe(local, ("#", 1))
    cloud = up.client("cloud")
    # The bridge's SUBSCRIBE may still be on its way: publish retained, which reaches it either way.
    wait_for(lambda: "Received SUBSCRIBE from gw1.cloud" in up.log(), TIMEOUT, what="the bridge's SUBSCRIBE")
    cloud.publish("unrelated/t", b"no", 1)  # first: had it come down, it would arrive first
    cloud.publish(remote_topic, b"v", 1)
    got = collect(local, 1)
    assert [(m.topic, m.payload) for m in got] == [(local_topic, b"v")]
    gw.stop()


# ---- credentials, refusals, reconnects --------------------------------------------------------------

def make_password_file(directory: Path, user: str, password: str) -> Path:
    path = directory / "passwd"
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(path), user, password], check=True,
                   capture_output=True)
    os.chmod(path, 0o644)
    return path


def test_password_and_a_refusal_that_is_retried_with_backoff(tmp_path, procs):
    pw = make_password_file(tmp_path / "up", "gateway", "s3cret")
    up = Upstream(tmp_path / "up", f"allow_anonymous false\npassword_file {pw}").start()
    procs.append(up)
    good = Gateway(tmp_path / "good", bridge_block(up, "s/# out 1", extra='remote_username = "gateway"\n'
                                                   'remote_password = "s3cret"\n')).start()
    procs.append(good)
    bridge_up(good)
    cloud = up.client("cloud", username="gateway", password=b"s3cret")
    subscribe(cloud, ("s/#", 1))
    publish_all(good.client("p"), [("s/1", b"ok", 1, False)])
    assert [(m.topic, m.payload) for m in collect(cloud, 1)] == [("s/1", b"ok")]
    good.stop()
    bad = Gateway(tmp_path / "bad", bridge_block(up, "s/# out 1", extra='remote_username = "gateway"\n'
                                                 'remote_password = "wrong"\n')).start()
    procs.append(bad)
    wait_for(lambda: bad.log().count("connection refused (CONNACK 5)") >= 1
             or "connection refused (CONNACK 4)" in bad.log(), TIMEOUT, what="the refusal in the log")
    # Retried, but not in a tight loop: the failures after the first are rate-limited in the log, and
    # Mosquitto sees a handful of attempts per second at most (restart_timeout 1 here).
    probe = bad.client("probe")
    subscribe(probe, ("$SYS/broker/connection/gw1.cloud/#", 0))
    values = {m.topic.rsplit("/", 1)[-1]: m.payload for m in collect(probe, 12, timeout=3.0)}
    assert values.get("state") == b"0"
    assert b"CONNACK" in values.get("last_error", b"")
    attempts = up.log().count("New connection from")
    assert attempts < 40, attempts
    bad.stop()


def test_remote_restart_reconnects_and_resends(tmp_path, procs):
    up = Upstream(tmp_path / "up", "allow_anonymous true\npersistence true\n"
                  f"persistence_location {tmp_path / 'up'}/\nmax_queued_messages 0").start()
    procs.append(up)
    cloud = up.client("cloud", clean=False)
    subscribe(cloud, ("s/#", 1))
    cloud.disconnect()
    gw = Gateway(tmp_path / "gw", bridge_block(up, "s/# out 1")).start()
    procs.append(gw)
    bridge_up(gw)
    sensor = gw.client("sensor")
    publish_all(sensor, [(f"s/{i}", str(i).encode(), 1, False) for i in range(100)])
    up.stop()
    wait_for(lambda: "next attempt" in gw.log(), TIMEOUT, what="the gateway to notice")
    publish_all(sensor, [(f"s/{i}", str(i).encode(), 1, False) for i in range(100, 300)])
    up.start()
    wait_for(lambda: gw.log().count("Bridge cloud connected") >= 2, TIMEOUT, what="the reconnect")
    cloud = up.client("cloud", clean=False)
    seen: Set[int] = set()  # at least once: a message in flight when the remote stopped may come twice,
    deadline = time.monotonic() + TIMEOUT  # so count distinct ones (collect(cloud, 300) would stop early)
    while len(seen) < 300 and time.monotonic() < deadline:
        seen.update(int(m.payload) for m in collect(cloud, 1, timeout=0.5))
    assert sorted(seen) == list(range(300))  # none lost
    gw.stop()


# ---- the outage test ----------------------------------------------------------------------------------

def test_outage_kill9_and_restart_lose_nothing_and_keep_order(tmp_path, procs):
    """The upstream is down; 10,000 QoS 1 messages are published on the gateway, which is killed with -9
    half-way and restarted; the upstream comes back; all 10,000 reach an upstream subscriber, in order."""
    n = 10_000
    up = offline_upstream(tmp_path, procs, "data/#", "max_queued_messages 0\nmax_inflight_messages 0")
    gw = Gateway(tmp_path / "gw", bridge_block(up, "data/# out 1")).start()
    procs.append(gw)
    sensor = gw.client("sensor")
    publish_all(sensor, [("data/seq", str(i).encode(), 1, False) for i in range(n // 2)])
    sensor.close()
    gw.kill9()
    gw.start()
    sensor = gw.client("sensor")
    publish_all(sensor, [("data/seq", str(i).encode(), 1, False) for i in range(n // 2, n)])
    probe = gw.client("probe")
    subscribe(probe, ("$SYS/broker/connection/gw1.cloud/queue/messages", 0))
    seen: List[bytes] = []
    wait_for(lambda: str(n).encode() in seen or seen.extend(m.payload for m in collect(probe, 1, 0.5)), TIMEOUT,
             what=f"$SYS queue/messages = {n}")
    up.start()
    bridge_up(gw)
    cloud = up.client("cloud", clean=False)
    got = collect(cloud, n, timeout=60.0)
    payloads = [int(m.payload) for m in got]
    assert len(payloads) == n, (len(payloads), payloads[-5:])
    assert payloads == list(range(n))
    gw.stop()


# ---- quotas -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("drop, kept", [("oldest", list(range(15, 20))), ("newest", list(range(5)))])
def test_full_queue_drops_by_policy_counts_and_logs_once(tmp_path, procs, drop, kept):
    up = offline_upstream(tmp_path, procs, "q/#")
    gw = Gateway(tmp_path / "gw", bridge_block(up, "q/# out 1", extra=f"bridge_max_queued_messages = 5\n"
                                                f'bridge_queue_drop = "{drop}"\n')).start()
    procs.append(gw)
    publish_all(gw.client("sensor"), [("q/n", str(i).encode(), 1, False) for i in range(20)])
    probe = gw.client("probe")
    subscribe(probe, ("$SYS/broker/connection/gw1.cloud/messages/dropped", 0))
    seen: List[bytes] = []
    wait_for(lambda: b"15" in seen or seen.extend(m.payload for m in collect(probe, 1, 0.5)), TIMEOUT,
             what="$SYS dropped = 15")
    assert gw.log().count("queue full") == 1  # once per episode, not once per message
    up.start()
    bridge_up(gw)
    cloud = up.client("cloud", clean=False)
    assert [int(m.payload) for m in collect(cloud, 5)] == kept
    gw.stop()


# ---- a full disk under the queue ----------------------------------------------------------------------

def test_full_disk_under_the_queue_loses_nothing_and_delivers_once_space_returns(tmp_path, procs, small_disk):
    """The upstream is down and the gateway's disk fills up: the gateway keeps acknowledging its sensors
    (it says that what it holds is not safe against a crash meanwhile), the upstream comes back while the
    disk is still full (the bridge sends what it holds in memory, the rest waits for the database), space
    returns: every message reaches the upstream, in order."""
    n = 600
    up = offline_upstream(tmp_path, procs, "data/#", "max_queued_messages 0")
    disk = small_disk(tmp_path / "gw" / "db")
    gw = Gateway(tmp_path / "gw", bridge_block(up, "data/# out 1")).start()
    procs.append(gw)
    sensor = gw.client("sensor")
    body = b"x" * 1000
    publish_all(sensor, [("data/seq", b"%d %s" % (i, body), 1, False) for i in range(10)])
    filler = fill_disk(disk)
    publish_all(sensor, [("data/seq", b"%d %s" % (i, body), 1, False) for i in range(10, n)])
    wait_for(lambda: "cannot write persistence database" in gw.log(), TIMEOUT, what="the gateway to see the full disk")
    up.start()
    bridge_up(gw)
    wait_for(lambda: "wait for the database" in gw.log(), TIMEOUT,
             what="the bridge to say that the rest of its queue waits for the disk")
    filler.unlink()
    wait_for(lambda: "is writable again" in gw.log(), TIMEOUT, what="the database to be written")
    cloud = up.client("cloud", clean=False)
    got = collect(cloud, n, timeout=60.0)
    payloads = [int(m.payload.split(b" ", 1)[0]) for m in got]
    assert payloads == list(range(n)), (len(payloads), payloads[-5:])
    gw.stop()


# ---- the receiving side: a Mosquitto bridge connecting to edgebroker ------------------------------------

def test_a_mosquitto_bridge_is_treated_as_a_bridge(tmp_path, procs):
    """Mosquitto bridges into edgebroker with try_private (protocol level 0x84): edgebroker logs a bridge,
    does not send the bridge's own messages back to it, and keeps the retain flag of what it forwards."""
    edge = Gateway(tmp_path / "edge", None, 'log_type = ["error", "warning", "notice", "information", '
                                            '"subscribe"]').start()
    procs.append(edge)
    up = Upstream(tmp_path / "mosq", f"allow_anonymous true\nconnection edge\naddress 127.0.0.1:{edge.port}\n"
                  "topic both/# both 1\nremote_clientid mosq-bridge\nnotifications false").start()
    procs.append(up)
    wait_for(lambda: "New bridge connected" in edge.log(), TIMEOUT, what="edgebroker to log a bridge")
    wait_for(lambda: "mosq-bridge 1 both/#" in edge.log(), TIMEOUT, what="its SUBSCRIBE")
    on_edge = edge.client("edge-sub")
    subscribe(on_edge, ("both/#", 1))
    on_mosq = up.client("mosq-sub")
    subscribe(on_mosq, ("both/#", 1))
    mosq_pub = up.client("mosq-pub")
    mosq_pub.publish("both/from-mosquitto", b"1", 1)
    assert [(m.topic, m.payload) for m in collect(on_edge, 1)] == [("both/from-mosquitto", b"1")]
    # Not echoed back to Mosquitto (which would deliver it a second time to its subscriber).
    edge_pub = edge.client("edge-pub")
    publish_all(edge_pub, [("both/from-edge", b"2", 1, True)])
    got = collect(on_mosq, 3, timeout=3.0)
    assert [(m.topic, m.payload) for m in got] == [("both/from-mosquitto", b"1"), ("both/from-edge", b"2")]
    # The retained flag reached Mosquitto with the message: a late subscriber there gets it retained.
    late = up.client("late")
    subscribe(late, ("both/from-edge", 1))
    assert [(m.payload, m.retain) for m in collect(late, 1)] == [(b"2", True)]
    edge.stop()


# ---- TLS to the upstream ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    from tlscerts import make_certs

    return make_certs(str(tmp_path_factory.mktemp("certs")))


def tls_upstream(directory: Path, cafile: str, server: str, key: str, plain: int, require: bool) -> Upstream:
    """TLS on the bridge's port; a second, plain listener (`plain`) for the test's subscriber."""
    return Upstream(directory, f"allow_anonymous true\ncafile {cafile}\ncertfile {server}\nkeyfile {key}\n"
                               f"require_certificate {'true' if require else 'false'}\nlistener {plain} 127.0.0.1")


def test_tls_with_client_certificate_and_a_name_to_resolve(tmp_path, procs, certs):
    """TLS with the broker's certificate verified (for "localhost", resolved off the loop) and a client
    certificate, as AWS IoT wants."""
    plain = free_port()
    up = tls_upstream(tmp_path / "up", certs.ca, certs.server, certs.server_key, plain, True).start()
    procs.append(up)
    cloud = Client("cloud")
    cloud.connect("127.0.0.1", plain, timeout=TIMEOUT)
    subscribe(cloud, ("s/#", 1))
    block = bridge_block(up, "s/# out 1").replace("127.0.0.1:", "localhost:") + (
        f'bridge_cafile = "{certs.ca}"\nbridge_certfile = "{certs.client}"\nbridge_keyfile = "{certs.client_key}"\n')
    gw = Gateway(tmp_path / "gw", block).start()
    procs.append(gw)
    bridge_up(gw)
    publish_all(gw.client("sensor"), [("s/1", b"over-tls", 1, False)])
    assert [(m.topic, m.payload) for m in collect(cloud, 1)] == [("s/1", b"over-tls")]
    gw.stop()


def test_tls_host_name_is_checked_unless_insecure(tmp_path, procs, certs):
    import trustme

    ca = trustme.CA()
    other = ca.issue_cert("broker.example")
    d = tmp_path / "other"
    d.mkdir()
    ca.cert_pem.write_to_path(str(d / "ca.pem"))
    other.cert_chain_pems[0].write_to_path(str(d / "server.pem"))
    other.private_key_pem.write_to_path(str(d / "server.key"))
    up = tls_upstream(tmp_path / "up", str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"), free_port(),
                      False).start()
    procs.append(up)
    block = bridge_block(up, "s/# out 1") + f'bridge_cafile = "{d / "ca.pem"}"\n'
    gw = Gateway(tmp_path / "gw", block).start()
    procs.append(gw)
    wait_for(lambda: "Bridge cloud: TLS" in gw.log() and "next attempt" in gw.log(), TIMEOUT,
             what="the refused certificate in the log")
    assert "mismatch" in gw.log() or "hostname" in gw.log(), gw.log()
    assert "Bridge cloud connected" not in gw.log()
    gw.stop()
    gw2 = Gateway(tmp_path / "gw2", block + "bridge_insecure = true\n").start()
    procs.append(gw2)
    bridge_up(gw2)
    gw2.stop()


# ---- RabbitMQ's MQTT plugin as the upstream ------------------------------------------------------------

RABBITMQ = "/usr/lib/rabbitmq/bin/rabbitmq-server"


class Rabbit:
    """One RabbitMQ node with the MQTT plugin, on loopback ports, with its own epmd, data and cookie in a
    temporary directory; its whole process group is ended at teardown."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        for sub in ("mnesia", "log", "home"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        self.mqtt_port = free_port()
        amqp, dist, epmd = free_port(), free_port(), free_port()
        (directory / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.default = 127.0.0.1:{amqp}\nmqtt.listeners.tcp.default = 127.0.0.1:{self.mqtt_port}\n"
            "mqtt.allow_anonymous = true\nloopback_users = none\n")
        self.env = dict(os.environ, HOME=str(directory / "home"), ERL_EPMD_PORT=str(epmd),
                        ERL_EPMD_ADDRESS="127.0.0.1", RABBITMQ_NODENAME=f"eb{amqp}@localhost",
                        RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_DIST_PORT=str(dist),
                        RABBITMQ_MNESIA_BASE=str(directory / "mnesia"), RABBITMQ_LOG_BASE=str(directory / "log"),
                        RABBITMQ_ENABLED_PLUGINS_FILE=str(directory / "enabled_plugins"),
                        RABBITMQ_CONFIG_FILE=str(directory / "rabbitmq.conf"))
        self.epmd_port = epmd
        self.procs: List[subprocess.Popen] = []

    def start(self) -> "Rabbit":
        out = open(self.dir / "rabbitmq.out", "wb")
        # Our own epmd on a port of our own, loopback only (Erlang's default would be a shared daemon on
        # every address), in the same process group as the node.
        epmd = subprocess.Popen(["epmd", "-address", "127.0.0.1", "-port", str(self.epmd_port)], env=self.env,
                                stdout=out, stderr=out, start_new_session=True)
        self.procs.append(epmd)
        node = subprocess.Popen([RABBITMQ], env=self.env, stdout=out, stderr=out, start_new_session=True)
        self.procs.append(node)
        try:
            wait_for(lambda: node.poll() is not None or accepts(self.mqtt_port), 90.0, interval=0.2,
                     what="RabbitMQ's MQTT listener")
        except AssertionError:
            self.stop()
            pytest.skip("rabbitmq-server did not start within 90 s here: "
                        + (self.dir / "rabbitmq.out").read_text(errors="replace")[-300:])
        if node.poll() is not None:
            self.stop()
            pytest.skip("rabbitmq-server cannot run here: "
                        + (self.dir / "rabbitmq.out").read_text(errors="replace")[-300:])
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the group we created: the script, beam, its children
                except ProcessLookupError:
                    pass
            proc.wait(TIMEOUT)
        self.procs = []


@pytest.fixture(scope="module")
def rabbit(tmp_path_factory) -> Iterator[Rabbit]:
    if not os.access(RABBITMQ, os.X_OK) or not shutil.which("epmd"):
        pytest.skip("rabbitmq-server not installed (scripts/test.sh installs it)")
    r = Rabbit(tmp_path_factory.mktemp("rabbitmq")).start()
    yield r
    r.stop()


def test_rabbitmq_upstream_refuses_the_bridge_flag_and_gets_a_plain_connect(tmp_path, procs, rabbit):
    """RabbitMQ does not accept protocol level 0x84 (it closes the connection): the bridge connects again
    at once without it, and messages flow both ways."""
    gw = Gateway(tmp_path / "gw", bridge_block(rabbit, "s/# out 1", "c/# in 1")).start()
    procs.append(gw)
    bridge_up(gw)
    assert "connecting again without it" in gw.log(), gw.log()
    cloud = Client("rabbit-sub")
    cloud.connect("127.0.0.1", rabbit.mqtt_port, timeout=TIMEOUT)
    subscribe(cloud, ("s/#", 1))
    publish_all(gw.client("sensor"), [("s/1", b"to-rabbit", 1, False)])
    assert [(m.topic, m.payload) for m in collect(cloud, 1)] == [("s/1", b"to-rabbit")]
    local = gw.client("local")
    subscribe(local, ("c/#", 1))
    # The bridge's SUBSCRIBE to c/# may still be on its way: publish until one arrives.
    got: List[Message] = []
    for _ in range(20):
        cloud.publish("c/x", b"from-rabbit", 1)
        got = collect(local, 1, timeout=0.5)
        if got:
            break
    assert [(m.topic, m.payload) for m in got][:1] == [("c/x", b"from-rabbit")]
    gw.stop()
    cloud.close()


# ---- start types, reload ------------------------------------------------------------------------------

def sys_snapshot(client: Client, wanted: Dict[str, bytes], timeout: float = TIMEOUT) -> Dict[str, bytes]:
    """The bridge's $SYS values (by last topic level) once every `wanted` value is seen at once."""
    values: Dict[str, bytes] = {}

    def seen() -> bool:
        for m in collect(client, 1, 0.3):
            values[m.topic.split("/gw1.cloud/", 1)[1]] = m.payload
        return all(values.get(k) == v for k, v in wanted.items())

    wait_for(seen, timeout, what=f"$SYS {wanted}")
    return values


def test_lazy_bridge_connects_at_threshold_and_leaves_when_idle(tmp_path, procs):
    up = Upstream(tmp_path / "up", "allow_anonymous true").start()
    procs.append(up)
    cloud = up.client("cloud")
    subscribe(cloud, ("l/#", 1))
    gw = Gateway(tmp_path / "gw", bridge_block(up, "l/# out 1", extra='start_type = "lazy"\nthreshold = 3\n'
                                                "idle_timeout = 1\n")).start()
    procs.append(gw)
    probe = gw.client("probe")
    subscribe(probe, ("$SYS/broker/connection/gw1.cloud/#", 0))
    sensor = gw.client("sensor")
    publish_all(sensor, [("l/1", b"1", 1, False), ("l/2", b"2", 1, False)])
    sys_snapshot(probe, {"queue/messages": b"2", "connects": b"0", "state": b"0"})
    publish_all(sensor, [("l/3", b"3", 1, False)])
    assert [m.payload for m in collect(cloud, 3)] == [b"1", b"2", b"3"]
    wait_for(lambda: "idle for 1 s, disconnecting (lazy)" in gw.log(), TIMEOUT, what="the idle disconnect")
    gw.stop()


def test_sighup_with_a_changed_bridge_keeps_the_running_one_and_says_so(tmp_path, procs):
    up = Upstream(tmp_path / "up", "allow_anonymous true").start()
    procs.append(up)
    gw = Gateway(tmp_path / "gw", bridge_block(up, "h/# out 1")).start()
    procs.append(gw)
    bridge_up(gw)
    gw.conf.write_text(gw.conf.read_text().replace("h/# out 1", "h/# out 2"))
    assert gw.proc is not None
    gw.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "bridge changes take effect after a restart" in gw.log(), TIMEOUT, what="the refusal")
    cloud = up.client("cloud")
    subscribe(cloud, ("h/#", 2))
    publish_all(gw.client("sensor"), [("h/1", b"x", 2, False)])
    assert [(m.payload, m.qos) for m in collect(cloud, 1)] == [(b"x", 1)]  # still the running line's QoS 1
    gw.stop()


def test_the_will_on_the_remote_says_0_when_the_gateway_dies(tmp_path, procs):
    up = Upstream(tmp_path / "up", "allow_anonymous true").start()
    procs.append(up)
    cloud = up.client("cloud")
    subscribe(cloud, ("$SYS/broker/connection/gw1.cloud/state", 1))
    gw = Gateway(tmp_path / "gw", bridge_block(up, "w/# out 1", extra="keepalive_interval = 5\n")).start()
    procs.append(gw)
    assert [m.payload for m in collect(cloud, 1)] == [b"1"]
    gw.kill9()
    assert [m.payload for m in collect(cloud, 1)] == [b"0"]  # Mosquitto publishes the bridge's will


def test_fallback_address_after_the_primary_fails(tmp_path, procs):
    up = Upstream(tmp_path / "up", "allow_anonymous true").start()
    procs.append(up)
    dead = free_port()  # nothing listens there
    block = bridge_block(up, "f/# out 1").replace(f'address = "127.0.0.1:{up.port}"',
                                                   f'address = ["127.0.0.1:{dead}", "127.0.0.1:{up.port}"]')
    gw = Gateway(tmp_path / "gw", block).start()
    procs.append(gw)
    wait_for(lambda: f"Bridge cloud connected to 127.0.0.1:{up.port}" in gw.log(), TIMEOUT, what="the fallback")
    assert "ECONNREFUSED" in gw.log() or "refused" in gw.log().lower()
    gw.stop()


@pytest.mark.parametrize("disk", ["room", "full"])
def test_a_damaged_queue_row_is_skipped_and_counted(tmp_path, procs, small_disk, disk):
    """A row that cannot be a message is found at the start, deleted and counted, never sent. With the
    disk full at that start (the database opened in exclusive locking mode, the delete not written), the
    read back skips it all the same."""
    import sqlite3

    up = offline_upstream(tmp_path, procs, "d/#")
    if disk == "full":
        small_disk(tmp_path / "gw" / "db")
    gw = Gateway(tmp_path / "gw", bridge_block(up, "d/# out 1")).start()
    procs.append(gw)
    publish_all(gw.client("sensor"), [("d/n", str(i).encode(), 1, False) for i in range(3)])
    gw.stop()
    db = sqlite3.connect(str(gw.dir / "db" / "edgebroker.db"))
    db.execute("UPDATE bridge_queue SET qos = 7 WHERE seq = (SELECT min(seq) + 1 FROM bridge_queue)")
    db.commit()
    db.close()
    if disk == "full":
        fill_disk(gw.dir / "db")
    gw.start()  # (returns at the listen line, which comes before the store's: wait for the start's end)
    wait_for(lambda: "edgebroker version" in gw.log() and " running" in gw.log(), TIMEOUT, what="the start")
    assert ("exclusive locking mode" in gw.log()) == (disk == "full"), gw.log()
    up.start()
    bridge_up(gw)
    cloud = up.client("cloud", clean=False)
    assert [m.payload for m in collect(cloud, 2)] == [b"0", b"2"]
    assert "damaged queue row" in gw.log()
    probe = gw.client("probe")
    subscribe(probe, ("$SYS/broker/connection/gw1.cloud/#", 0))
    sys_snapshot(probe, {"queue/damaged": b"1", "queue/messages": b"0"})
    gw.stop()


def test_without_persistence_the_bridge_queues_in_memory(tmp_path, procs):
    """persistence false: the queue lives in memory only (nothing survives a restart), both directions work."""
    up = Upstream(tmp_path / "up", "allow_anonymous true").start()
    procs.append(up)
    cloud = up.client("cloud")
    subscribe(cloud, ("m/#", 1))
    gw = Gateway(tmp_path / "gw", bridge_block(up, "m/# out 1", "n/# in 1"), "persistence = false").start()
    procs.append(gw)
    bridge_up(gw)
    local = gw.client("local")
    subscribe(local, ("n/#", 1))
    publish_all(gw.client("sensor"), [("m/1", b"up", 1, False)])
    assert [m.payload for m in collect(cloud, 1)] == [b"up"]
    wait_for(lambda: "Received SUBSCRIBE from gw1.cloud" in up.log(), TIMEOUT, what="the bridge's SUBSCRIBE")
    cloud.publish("n/1", b"down", 1)
    assert [m.payload for m in collect(local, 1)] == [b"down"]
    gw.stop()


def test_back_to_the_primary_once_it_answers(tmp_path, procs):
    """round_robin false: connected to the fallback, the bridge probes the primary and returns to it."""
    fallback = Upstream(tmp_path / "fallback", "allow_anonymous true").start()
    procs.append(fallback)
    primary = Upstream(tmp_path / "primary", "allow_anonymous true")  # not started yet
    procs.append(primary)
    block = bridge_block(fallback, "p/# out 1").replace(
        f'address = "127.0.0.1:{fallback.port}"', f'address = ["127.0.0.1:{primary.port}", "127.0.0.1:{fallback.port}"]')
    gw = Gateway(tmp_path / "gw", block).start()
    procs.append(gw)
    wait_for(lambda: f"connected to 127.0.0.1:{fallback.port}" in gw.log(), TIMEOUT, what="the fallback")
    primary.start()
    wait_for(lambda: f"connected to 127.0.0.1:{primary.port}" in gw.log(), TIMEOUT, what="the primary again")
    assert "answers again; reconnecting to it" in gw.log()
    cloud = primary.client("cloud")
    subscribe(cloud, ("p/#", 1))
    publish_all(gw.client("sensor"), [("p/1", b"primary", 1, False)])
    assert [m.payload for m in collect(cloud, 1)] == [b"primary"]
    gw.stop()
