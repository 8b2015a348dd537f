"""Persistence: what survives kill -9 and a clean restart, what a bad database file does, a full disk,
and the durability levels.

Theory of operation: crash tests run the broker as a separate process (tests/brokerproc.py, which prints
`PORT <n>` once bound) so it can be killed with SIGKILL mid-stream and restarted on the same data
directory; the other tests run a Server in a thread of this process (conftest's `make_broker`, or the
local `run_server` fixture when the test needs the log or the store). Every database lives in tmp_path,
every process started here is killed at teardown, and nothing waits by sleeping: a test waits for a
condition (`wait_for`), a queue or a socket read, each with a deadline.

"Everything before it has arrived" is proved with a marker: a persistent session keeps its messages in
order, so a marker queued after a restart arrives after every message restored from the database; a
PINGRESP arrives after everything the broker sent on that connection before it.

The database is read with a second sqlite3 connection, as a user inspecting the file would (WAL mode:
a reader sees exactly what was committed).

Conformance statements are those of MQTT Version 3.1.1 (OASIS Standard, 29 October 2014).
"""
from __future__ import annotations

import collections
import os
import pwd
import queue
import random
import select
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import pytest

mqtt = pytest.importorskip("paho.mqtt.client")

try:  # tests/ on sys.path (pytest's default rootdir-relative import)
    import mqttwire as w
    from util import fill_disk, wait_for
except ImportError:  # tests imported as a package
    from tests import mqttwire as w  # type: ignore[no-redef]
    from tests.util import fill_disk, wait_for  # type: ignore[no-redef]

from edgebroker import log as L
from edgebroker.config import Config, Listener
from edgebroker.server import Server
from edgebroker.session import Message
from edgebroker.store import MIGRATIONS, SCHEMA_VERSION, SqliteStore, StoreError

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TIMEOUT = 10.0
DB_NAME = "edgebroker.db"
#: Messages in a crash stream, and how many must be acknowledged before the kill.
STREAM = 10_000
KILL_AFTER = 3_000
TABLES = {"retained", "sessions", "subscriptions", "deliveries", "inbound_qos2", "messages"}


# ---------------------------------------------------------------------------------------------------------
# Helpers: the broker as a process, paho clients, raw clients, the database file
# ---------------------------------------------------------------------------------------------------------

def child_env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def read_line(stream: Any, timeout: float, what: str) -> str:
    """One line from a child's pipe, with a deadline (select, then os.read byte by byte up to newline)."""
    fd = stream.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no {what} within {timeout}s (got {buf!r})")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            ch = os.read(fd, 1)
            if not ch:
                raise AssertionError(f"EOF before {what} (got {buf!r})")
            buf += ch
    return buf.decode("utf-8", "replace").rstrip("\n")


class BrokerProcess:
    """tests/brokerproc.py in a subprocess; its log goes to a file in tmp_path."""

    def __init__(self, directory: Path, log_path: Path, extra: Sequence[str] = ()) -> None:
        self.directory = directory
        self.log_path = log_path
        self._log_file = open(log_path, "ab")
        self.p = subprocess.Popen([sys.executable, str(HERE / "brokerproc.py"), "--dir", str(directory), *extra],
                                  cwd=str(REPO), env=child_env(), stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=self._log_file)
        self.host = "127.0.0.1"
        try:
            line = read_line(self.p.stdout, TIMEOUT, "PORT line from brokerproc")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; exit status {self.p.poll()}; log:\n{self.log()}") from None
        assert line.startswith("PORT "), line
        self.port = int(line.split()[1])

    def log(self) -> str:
        return self.log_path.read_text("utf-8", "replace")

    def kill9(self) -> None:
        """SIGKILL: no shutdown code runs, nothing is flushed or committed on the way out."""
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(TIMEOUT)

    def stop(self) -> None:
        """SIGTERM: the broker's own shutdown runs (sessions noted offline, last commit)."""
        self.p.send_signal(signal.SIGTERM)
        assert self.p.wait(TIMEOUT) == 0, self.log()

    def close(self) -> None:
        if self.p.poll() is None:
            self.p.kill()
        self.p.wait(TIMEOUT)
        if self.p.stdout is not None:
            self.p.stdout.close()
        self._log_file.close()


@pytest.fixture
def broker_process(tmp_path: Path) -> Iterator[Callable[..., BrokerProcess]]:
    """broker_process(directory, *extra_args) -> a running BrokerProcess; all killed at teardown."""
    started: List[BrokerProcess] = []

    def start(directory: Path, *extra: str) -> BrokerProcess:
        bp = BrokerProcess(directory, tmp_path / f"broker-{len(started)}.log", extra)
        started.append(bp)
        return bp

    yield start
    for bp in started:
        bp.close()


class Client:
    """A paho client (MQTT 3.1.1) with its loop in a thread. It does not reconnect by itself: after the
    broker is killed its thread ends, and the test decides when and where it connects again."""

    def __init__(self, client_id: str = "", clean_session: bool = True) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean_session,
                             protocol=mqtt.MQTTv311, reconnect_on_failure=False)
        self.connacks: "queue.Queue[Tuple[int, bool]]" = queue.Queue()
        #: mids whose PUBACK (QoS 1) or PUBCOMP (QoS 2) arrived: paho's on_publish fires only then.
        self.completed: List[int] = []
        #: (topic, payload) in arrival order
        self.received: List[Tuple[str, bytes]] = []
        self.c.on_connect = lambda c, u, flags, rc, props: self.connacks.put((rc.value, bool(flags.session_present)))
        self.c.on_publish = lambda c, u, mid, rc, props: self.completed.append(mid)
        self.c.on_message = lambda c, u, m: self.received.append((m.topic, bytes(m.payload)))

    def connect(self, port: int) -> bool:
        """Connect (or reconnect, to a new port), wait for a successful CONNACK; return session present."""
        self.c.connect("127.0.0.1", port, keepalive=60)
        self.c.loop_start()
        try:
            rc, present = self.connacks.get(timeout=TIMEOUT)
        except queue.Empty:
            raise AssertionError(f"no CONNACK for {self.c._client_id!r} within {TIMEOUT}s") from None
        assert rc == 0, f"CONNACK return code {rc}"
        return present

    def wait_loop_ended(self) -> None:
        """After the broker died: wait for paho's thread to see the lost connection and end."""
        self.c.loop_stop()

    def received_until(self, topic: str, timeout: float) -> List[bytes]:
        """Payloads received before the first message on `topic` (a marker), waiting for it."""
        wait_for(lambda: any(t == topic for t, _ in list(self.received)), timeout,
                 what=f"marker {topic!r} (received {len(self.received)} messages so far)")
        out = []
        for t, payload in list(self.received):
            if t == topic:
                return out
            out.append(payload)
        return out

    def close(self) -> None:
        try:
            self.c.disconnect()
        except Exception:  # noqa: BLE001 (already gone: the broker was killed)
            pass
        self.c.loop_stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    made: List[Client] = []

    def make(client_id: str = "", clean_session: bool = True) -> Client:
        c = Client(client_id, clean_session)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


class RawPublish(NamedTuple):
    dup: bool
    qos: int
    retain: bool
    topic: str
    packet_id: Optional[int]
    payload: bytes


def parse_publish(packet: bytes) -> RawPublish:
    """A whole PUBLISH packet (as read_raw_packet returns it), decoded with mqttwire's own reader."""
    first = packet[0]
    assert first >> 4 == w.PUBLISH, f"expected PUBLISH, got {w.hexs(packet)}"
    i = 1
    while packet[i] & 0x80:
        i += 1
    body = packet[i + 1:]
    qos = (first >> 1) & 3
    n = int.from_bytes(body[:2], "big")
    topic = body[2:2 + n].decode("utf-8")
    j = 2 + n
    packet_id = None
    if qos:
        packet_id = int.from_bytes(body[j:j + 2], "big")
        j += 2
    return RawPublish(bool(first & 0x08), qos, bool(first & 0x01), topic, packet_id, body[j:])


class RawClients:
    def __init__(self) -> None:
        self.made: List[w.RawClient] = []

    def __call__(self, port: int, client_id: str, clean: bool = True, present: Optional[bool] = None) -> w.RawClient:
        """A raw client connected as client_id; asserts CONNACK accepted (and its session present flag)."""
        c = w.RawClient("127.0.0.1", port, timeout=TIMEOUT)
        self.made.append(c)
        got = c.connect(client_id, clean=clean)
        if present is None:
            assert got[:2] == b"\x20\x02" and got[3] == 0, w.hexs(got)
        else:
            assert got == w.connack(present, 0), f"CONNACK for {client_id}: {w.hexs(got)}"
        return c


@pytest.fixture
def raw() -> Iterator[RawClients]:
    r = RawClients()
    yield r
    for c in r.made:
        c.close()


def subscribe(c: w.RawClient, packet_id: int, filters: Sequence[Tuple[str, int]]) -> None:
    c.send(w.subscribe(packet_id, filters))
    got = c.read_raw_packet()
    assert got == w.suback(packet_id, [q for _, q in filters]), w.hexs(got)


def disconnect(c: w.RawClient) -> None:
    """DISCONNECT and wait for the broker to close: once it has, the session is offline."""
    c.send(w.disconnect())
    c.expect_closed()
    c.close()


def publish_acked(c: w.RawClient, topic: str, payload: bytes, qos: int, packet_id: int, retain: bool = False) -> None:
    """Publish at QoS 1/2 and complete the flow [MQTT-4.3.2-2] [MQTT-4.3.3-2]: once PUBACK/PUBREC is
    back, the broker promises the message is durable."""
    c.send(w.publish(topic, payload, qos=qos, retain=retain, packet_id=packet_id))
    if qos == 1:
        got = c.read_raw_packet()
        assert got == w.puback(packet_id), w.hexs(got)
    else:
        got = c.read_raw_packet()
        assert got == w.pubrec(packet_id), w.hexs(got)
        c.send(w.pubrel(packet_id))
        got = c.read_raw_packet()
        assert got == w.pubcomp(packet_id), w.hexs(got)


def read_until_pingresp(c: w.RawClient) -> List[bytes]:
    """Send PINGREQ and return every packet the broker sent before the PINGRESP [MQTT-3.12.4-1]."""
    c.send(w.pingreq())
    packets = []
    while True:
        p = c.read_raw_packet()
        if p == w.pingresp():
            return packets
        packets.append(p)


def offline_subscriber(raw: RawClients, port: int, client_id: str, filters: Sequence[Tuple[str, int]]) -> None:
    """A persistent session (clean session 0) subscribed to `filters`, then disconnected cleanly."""
    c = raw(port, client_id, clean=False)
    subscribe(c, 1, filters)
    disconnect(c)


def db_query(path: Path, sql: str, args: tuple = ()) -> List[tuple]:
    """Read the database file with a connection of its own (what a user with sqlite3 would see)."""
    con = sqlite3.connect(str(path))
    try:
        return list(con.execute(sql, args))
    finally:
        con.close()


def persist(tmp_path: Path, **overrides: Any) -> Dict[str, Any]:
    """Config options for a database in tmp_path/data (created here: persistence_location must exist)."""
    (tmp_path / "data").mkdir(exist_ok=True)
    kw: Dict[str, Any] = dict(persistence=True, persistence_location=str(tmp_path / "data"))
    kw.update(overrides)
    return kw


def config(tmp_path: Path, **overrides: Any) -> Config:
    kw = persist(tmp_path, listeners=[Listener(0, "127.0.0.1")], allow_anonymous=True, sys_interval=0)
    kw.update(overrides)
    return Config(**kw)


class RunningServer:
    """A Server in a thread of this process with a collecting log: (level, message) pairs."""

    def __init__(self, cfg: Config) -> None:
        self.logs: List[Tuple[int, str]] = []
        self.server = Server(cfg, log=self._log)
        self.store: Any = self.server.store
        self.port = self.server.ports[0]
        self.thread = threading.Thread(target=self.server.serve_forever, name="edgebroker", daemon=True)
        self.thread.start()

    def _log(self, level: int, message: str) -> None:
        self.logs.append((level, message))

    def messages(self, level: int) -> List[str]:
        return [m for lv, m in list(self.logs) if lv == level]

    def stop(self) -> None:
        self.server.shutdown()
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "broker loop did not stop"


@pytest.fixture
def run_server() -> Iterator[Callable[[Config], RunningServer]]:
    started: List[RunningServer] = []

    def start(cfg: Config) -> RunningServer:
        rs = RunningServer(cfg)
        started.append(rs)
        return rs

    yield start
    for rs in started:
        rs.stop()


def build_database(path: Path, retained: int = 400, payload_size: int = 500) -> None:
    """A real edgebroker database with content on many pages, written by the store itself, then closed
    (so its WAL is checkpointed into the file and removed)."""
    store = SqliteStore(str(path))
    for i in range(retained):
        store.retained_set(f"r/{i:04d}", bytes([i % 256]) * payload_size, 1)
    store.subscription_add("s", "r/#", 1)
    store.session_online("s")
    store.commit(time.monotonic())
    store.close()
    assert not Path(str(path) + "-wal").exists(), "WAL left behind after close"


# ---------------------------------------------------------------------------------------------------------
# 1, 2: kill -9 in the middle of a stream
# ---------------------------------------------------------------------------------------------------------

def publish_stream(pub: Client, qos: int) -> Dict[int, int]:
    """Hand STREAM messages "%06d" to paho at once (it sends them as its inflight window allows);
    return mid -> sequence number."""
    mids = {}
    for i in range(STREAM):
        info = pub.c.publish("t/data", b"%06d" % i, qos=qos)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        mids[info.mid] = i
    return mids


#: Commit windows the crash tests run with: none, and one that holds acknowledgements (commit_window_ms).
WINDOWS = [pytest.param("0", id="no-window"), pytest.param("200", id="window-200ms")]


@pytest.mark.parametrize("window", WINDOWS)
def test_kill9_during_qos1_stream_loses_no_acknowledged_message_MQTT_4_3_2_2(window, broker_process, clients, raw,
                                                                             tmp_path):
    """Every QoS 1 message whose PUBACK reached the publisher before kill -9 is delivered after the
    restart to the offline persistent subscriber [MQTT-3.1.2-4] [MQTT-3.1.2-5]: PUBACK means the broker
    accepted ownership [MQTT-4.3.2-2]. Duplicates are allowed (QoS 1 is at least once, section 4.3.2),
    none may be missing, and the order is kept. With a commit window the PUBACKs wait for it."""
    data = tmp_path / "data"
    b = broker_process(data, "--commit-window-ms", window)
    offline_subscriber(raw, b.port, "sub", [("t/#", 1)])
    pub = clients("pub")
    pub.connect(b.port)
    mids = publish_stream(pub, 1)
    wait_for(lambda: len(pub.completed) >= KILL_AFTER, 30, what=f"{KILL_AFTER} PUBACKs")
    b.kill9()
    pub.wait_loop_ended()
    acked = {mids[m] for m in pub.completed}
    assert KILL_AFTER <= len(acked) < STREAM, f"the kill did not land mid-stream ({len(acked)} acked)"

    b2 = broker_process(data, "--commit-window-ms", window)
    marker = clients("marker")
    marker.connect(b2.port)
    marker.c.publish("t/end", b"end", qos=1).wait_for_publish(TIMEOUT)
    sub = clients("sub", clean_session=False)
    assert sub.connect(b2.port) is True, "persistent session lost across kill -9 [MQTT-3.2.2-2]"
    got = [int(p) for p in sub.received_until("t/end", 30)]

    missing = sorted(acked - set(got))
    assert not missing, (f"{len(missing)} of {len(acked)} acknowledged messages lost after kill -9, "
                         f"first {missing[:10]}; delivered {len(got)}")
    assert set(got) <= set(range(STREAM)), "delivered a payload that was never published"
    firsts = list(dict.fromkeys(got))
    assert firsts == sorted(firsts), "order not kept (apart from duplicates)"


@pytest.mark.parametrize("window", WINDOWS)
def test_kill9_during_qos2_stream_delivers_exactly_once_MQTT_4_3_3_2(window, broker_process, clients, raw, tmp_path):
    """QoS 2 from a persistent publisher session: every message whose PUBCOMP came back before the kill
    is delivered; after the restart paho resumes its unfinished flows (PUBLISH with DUP for those without
    PUBREC, PUBREL for the others) and the broker, which persisted the inbound packet ids awaiting
    PUBREL, must not deliver any of them twice [MQTT-4.3.3-2]. In the end every one of the messages is
    delivered exactly once. With a commit window the PUBRECs and PUBCOMPs wait for it."""
    data = tmp_path / "data"
    b = broker_process(data, "--commit-window-ms", window)
    offline_subscriber(raw, b.port, "sub", [("t/#", 2)])
    pub = clients("pub", clean_session=False)
    pub.connect(b.port)
    mids = publish_stream(pub, 2)
    wait_for(lambda: len(pub.completed) >= KILL_AFTER, 30, what=f"{KILL_AFTER} PUBCOMPs")
    b.kill9()
    pub.wait_loop_ended()
    before_kill = {mids[m] for m in pub.completed}
    assert KILL_AFTER <= len(before_kill) < STREAM, f"the kill did not land mid-stream ({len(before_kill)})"

    b2 = broker_process(data, "--commit-window-ms", window)
    assert pub.connect(b2.port) is True, "publisher's persistent session lost across kill -9 [MQTT-3.2.2-2]"
    wait_for(lambda: len(set(pub.completed)) >= STREAM, 60,
             what=f"all {STREAM} PUBCOMPs after the restart (have {len(set(pub.completed))})")
    pub.c.publish("t/end", b"end", qos=2).wait_for_publish(TIMEOUT)
    sub = clients("sub", clean_session=False)
    assert sub.connect(b2.port) is True, "subscriber's persistent session lost across kill -9 [MQTT-3.2.2-2]"
    got = [int(p) for p in sub.received_until("t/end", 60)]

    counts = collections.Counter(got)
    twice = sorted(s for s, n in counts.items() if n > 1)
    assert not twice, f"{len(twice)} QoS 2 messages delivered more than once, first {twice[:10]}"
    lost = sorted(before_kill - set(counts))
    assert not lost, f"{len(lost)} messages PUBCOMP'd before the kill were lost, first {lost[:10]}"
    missing = sorted(set(range(STREAM)) - set(counts))
    assert not missing, f"{len(missing)} messages completed after the restart never delivered, first {missing[:10]}"
    assert got == sorted(got), "order not kept"


def test_inbound_qos2_packet_id_survives_kill9_so_a_resend_is_not_delivered_twice_MQTT_4_3_3_2(
        broker_process, raw, tmp_path):
    """The deterministic core of the QoS 2 stream test: PUBREC came back for packet id 7, the broker is
    killed before PUBREL; the publisher (clean session 0) resends the PUBLISH with DUP after the restart.
    The broker persisted the id, so it answers PUBREC without routing the message again [MQTT-4.3.3-2]."""
    data = tmp_path / "data"
    b = broker_process(data)
    offline_subscriber(raw, b.port, "sub", [("t/#", 2)])
    pub = raw(b.port, "qpub", clean=False, present=False)
    pub.send(w.publish("t/q2", b"once", qos=2, packet_id=7))
    assert pub.read_raw_packet() == w.pubrec(7)
    b.kill9()
    pub.close()

    b2 = broker_process(data)
    pub2 = raw(b2.port, "qpub", clean=False, present=True)
    pub2.send(w.publish("t/q2", b"once", qos=2, packet_id=7, dup=True))
    assert pub2.read_raw_packet() == w.pubrec(7)
    pub2.send(w.pubrel(7))
    assert pub2.read_raw_packet() == w.pubcomp(7)
    sub = raw(b2.port, "sub", clean=False, present=True)
    got = read_until_pingresp(sub)
    assert [(p.topic, p.payload, p.qos, p.dup) for p in map(parse_publish, got)] == [("t/q2", b"once", 2, False)], \
        [w.hexs(p) for p in got]


def test_inbound_qos2_message_held_until_pubrel_survives_kill9(broker_process, raw, tmp_path):
    """The message is released to subscribers at PUBREL (Mosquitto's order), so between PUBREC and PUBREL
    only the broker holds it: its PUBREC promised it. Killed in between, the restarted broker still has
    it, and the publisher's PUBREL (no PUBLISH resent, as [MQTT-4.3.3-1] requires of it) releases it,
    retained flag and all, exactly once; a second PUBREL releases nothing."""
    data = tmp_path / "data"
    b = broker_process(data)
    offline_subscriber(raw, b.port, "sub", [("t/#", 2)])
    pub = raw(b.port, "qpub", clean=False, present=False)
    pub.send(w.publish("t/held", b"promised", qos=2, packet_id=7, retain=True))
    assert pub.read_raw_packet() == w.pubrec(7)
    watcher = raw(b.port, "watcher")
    subscribe(watcher, 1, [("t/#", 0)])
    assert read_until_pingresp(watcher) == [], "delivered before its PUBREL"
    b.kill9()
    pub.close()

    b2 = broker_process(data)
    pub2 = raw(b2.port, "qpub", clean=False, present=True)
    pub2.send(w.pubrel(7))
    assert pub2.read_raw_packet() == w.pubcomp(7)
    pub2.send(w.pubrel(7))
    assert pub2.read_raw_packet() == w.pubcomp(7)
    sub = raw(b2.port, "sub", clean=False, present=True)
    got = read_until_pingresp(sub)
    assert [(p.topic, p.payload, p.qos) for p in map(parse_publish, got)] == [("t/held", b"promised", 2)], \
        [w.hexs(p) for p in got]
    late = raw(b2.port, "late")
    subscribe(late, 1, [("t/held", 0)])
    assert read_until_pingresp(late) == [w.publish("t/held", b"promised", retain=True)]
    assert db_query(data / DB_NAME, "SELECT count(*) FROM inbound_qos2") == [(0,)]


# ---------------------------------------------------------------------------------------------------------
# 4: in-flight messages to an online subscriber at the kill
# ---------------------------------------------------------------------------------------------------------

def test_unacknowledged_inflight_resent_with_dup_after_kill9_MQTT_4_4_0_1(broker_process, raw, tmp_path):
    """A persistent subscriber received four messages and acknowledged none but the last one's PUBLISH
    (PUBREC). After kill -9 and a restart it reconnects with clean session 0: the broker resends the
    unacknowledged PUBLISH packets with DUP set and the same packet ids, and the PUBREL of the one it had
    released, in the original order [MQTT-4.4.0-1] [MQTT-4.6.0-1]. Once acknowledged, nothing is resent
    after another kill."""
    data = tmp_path / "data"
    b = broker_process(data)
    sub = raw(b.port, "rs", clean=False, present=False)
    subscribe(sub, 1, [("t/#", 2)])
    pub = raw(b.port, "rp")
    sent = [("t/1", b"one", 1), ("t/2", b"two", 1), ("t/3", b"three", 2), ("t/4", b"four", 2)]
    for i, (topic, payload, qos) in enumerate(sent, start=1):
        publish_acked(pub, topic, payload, qos, packet_id=i)
    first = [sub.read_raw_packet() for _ in sent]
    pids = [parse_publish(p).packet_id for p in first]
    assert first == [w.publish(t, p, qos=q, packet_id=pid) for (t, p, q), pid in zip(sent, pids)], \
        [w.hexs(p) for p in first]
    sub.send(w.pubrec(pids[3]))
    got = sub.read_raw_packet()
    assert got == w.pubrel(pids[3]), w.hexs(got)  # [MQTT-4.3.3-1] PUBREL answers PUBREC
    b.kill9()
    sub.close()

    b2 = broker_process(data)
    sub2 = raw(b2.port, "rs", clean=False, present=True)  # [MQTT-3.2.2-2]
    expected = [w.publish(t, p, qos=q, dup=True, packet_id=pid) for (t, p, q), pid in zip(sent[:3], pids[:3])]
    expected.append(w.pubrel(pids[3]))
    got_after = read_until_pingresp(sub2)
    assert got_after == expected, ("resent after restart:\n" + "\n".join(w.hexs(p) for p in got_after)
                                   + "\nexpected:\n" + "\n".join(w.hexs(p) for p in expected))

    # Acknowledge everything. Forgetting acknowledged deliveries gates nothing the broker sends, so it
    # is committed once the loop is idle: wait for the file to show it, then kill.
    sub2.send(w.puback(pids[0]) + w.puback(pids[1]) + w.pubrec(pids[2]))
    assert sub2.read_raw_packet() == w.pubrel(pids[2])
    sub2.send(w.pubcomp(pids[2]) + w.pubcomp(pids[3]))
    assert read_until_pingresp(sub2) == []
    path = data / DB_NAME
    wait_for(lambda: db_query(path, "SELECT count(*) FROM deliveries") == [(0,)], TIMEOUT,
             what="the acknowledged deliveries forgotten on disk once the broker is idle")
    b2.kill9()
    sub2.close()
    b3 = broker_process(data)
    sub3 = raw(b3.port, "rs", clean=False, present=True)
    assert read_until_pingresp(sub3) == [], "acknowledged messages resent after a second kill -9"


@pytest.mark.parametrize("stop", ["kill9", "clean"])
def test_queued_messages_sent_then_broker_stops_are_resent_with_dup_and_same_ids_MQTT_4_4_0_1(
        stop, broker_process, raw, tmp_path):
    """Messages queued for an offline persistent session get their packet ids when queued, so sending
    them writes nothing to the database. The subscriber comes back, receives them and acknowledges none;
    then the broker is killed (its rows still say queued, the client was connected: they may have been
    sent) or stopped cleanly (the client's disconnect noted them as sent). Either way, after the restart
    they are re-delivered with DUP set and their original packet ids [MQTT-4.4.0-1] [MQTT-3.3.1-1]."""
    data = tmp_path / "data"
    b = broker_process(data)
    offline_subscriber(raw, b.port, "qs", [("q/#", 2)])
    pub = raw(b.port, "qp")
    sent = [("q/1", b"one", 1), ("q/2", b"two", 2), ("q/3", b"three", 1)]
    for i, (topic, payload, qos) in enumerate(sent, start=1):
        publish_acked(pub, topic, payload, qos, packet_id=i)
    path = data / DB_NAME
    rows = db_query(path, "SELECT topic, packet_id, state FROM deliveries ORDER BY seq")
    assert [(t, st) for t, _, st in rows] == [(t, 2) for t, _, _ in sent], rows  # 2: queued
    sub = raw(b.port, "qs", clean=False, present=True)
    first = [parse_publish(sub.read_raw_packet()) for _ in sent]
    assert [(p.topic, p.payload, p.qos, p.dup) for p in first] == [(t, m, q, False) for t, m, q in sent]
    assert [p.packet_id for p in first] == [pid for _, pid, _ in rows], "sent with the ids stored when queued"
    assert read_until_pingresp(sub) == []
    assert db_query(path, "SELECT topic, packet_id, state FROM deliveries ORDER BY seq") == rows, \
        "sending a queued message changed its row"
    if stop == "kill9":
        b.kill9()
        sub.close()
    else:
        disconnect(sub)
        b.stop()

    b2 = broker_process(data)
    sub2 = raw(b2.port, "qs", clean=False, present=True)
    again = read_until_pingresp(sub2)
    expected = [w.publish(t, m, qos=q, dup=True, packet_id=p.packet_id) for (t, m, q), p in zip(sent, first)]
    assert again == expected, "\n".join(w.hexs(x) for x in again)


def test_packet_id_reused_while_in_flight_is_replaced_durably_MQTT_2_3_1_2(tmp_path):
    """After the 16-bit ids wrap (a queue of more than 65,535 messages) a queued message's stored id can
    belong to a message still in flight when its turn comes. It then gets a free id [MQTT-2.3.1-2], and
    the new id is committed before the PUBLISH carrying it leaves: a QoS 2 message resent after a crash
    under another id would be delivered twice."""
    cfg = config(tmp_path)
    store = SqliteStore(cfg.database_path())
    store.session_online("wrap")
    store.subscription_add("wrap", "w/#", 2)
    store.delivery_add(1, "wrap", Message("w/a", b"in flight", 2), 2, 5, 0)   # sent, awaiting PUBREC
    store.delivery_add(2, "wrap", Message("w/b", b"queued", 2), 2, 5, 2)      # queued with the same id
    store.commit(0.0)
    store.close()
    from edgebroker.broker import Broker
    store = SqliteStore(cfg.database_path())
    b = Broker(cfg, now=0.0, store=store)
    c = b.connection_made("127.0.0.1:1", 1883, 0.0)
    b.data_received(c, w.connect("wrap", clean=False), 0.0)
    b.end_turn(0.0)
    out = b"".join(c.out)
    assert out.startswith(w.connack(1, 0)), w.hexs(out)
    rest = out[len(w.connack(1, 0)):]
    first = w.publish("w/a", b"in flight", qos=2, dup=True, packet_id=5)
    assert rest.startswith(first), w.hexs(rest)
    second = parse_publish(rest[len(first):])
    assert (second.topic, second.qos, second.dup) == ("w/b", 2, True), second
    assert second.packet_id not in (None, 5)
    assert db_query(Path(cfg.database_path()), "SELECT seq, packet_id FROM deliveries ORDER BY seq") == \
        [(1, 5), (2, second.packet_id)], "the new id was not committed with the turn that sent it"
    store.close()


def test_forgetting_acknowledged_deliveries_rides_with_the_next_commit(tmp_path):
    """Acknowledged deliveries are deleted from the database without a commit of their own (nothing we
    send waits on it), not even when the loop goes quiet: they ride with the next change something waits
    on, or are committed after at most DEFER_MAX_AGE. One commit per message at a sensor's trickle, not
    two."""
    from edgebroker.broker import Broker
    from edgebroker.store import DEFER_MAX_AGE
    cfg = config(tmp_path)
    store = SqliteStore(cfg.database_path())
    path = Path(cfg.database_path())
    b = Broker(cfg, now=0.0, store=store)
    sub = b.connection_made("127.0.0.1:1", 1883, 0.0)
    b.data_received(sub, w.connect("d", clean=False) + w.subscribe(1, [("d/#", 1)]), 0.0)
    pub = b.connection_made("127.0.0.1:2", 1883, 0.0)
    b.data_received(pub, w.connect("dp") + b"".join(w.publish(f"d/{i}", b"x", qos=1, packet_id=i)
                                                      for i in range(1, 4)), 0.0)
    b.end_turn(0.0)
    assert db_query(path, "SELECT count(*) FROM deliveries") == [(3,)]
    commits = store.commits
    b.data_received(sub, w.puback(1) + w.puback(2), 0.1)
    b.end_turn(0.1)
    b.end_turn(0.2)  # a quiet turn (a timer): still nothing to write for
    assert store.commits == commits and db_query(path, "SELECT count(*) FROM deliveries") == [(3,)]
    assert store.wake_at(0.2) == 0.1 + DEFER_MAX_AGE
    # The next message's commit (its PUBACK waits on it) carries the two deletions: one commit in all.
    b.data_received(pub, w.publish("d/4", b"x", qos=1, packet_id=4), 0.3)
    b.end_turn(0.3)
    assert store.commits == commits + 1
    assert db_query(path, "SELECT count(*) FROM deliveries") == [(2,)]
    assert store.wake_at(0.3) == float("inf")
    b.data_received(sub, w.puback(3), 1.0)
    b.end_turn(1.0)
    b.end_turn(1.0 + DEFER_MAX_AGE / 2)
    assert db_query(path, "SELECT count(*) FROM deliveries") == [(2,)], "committed before it was due"
    b.end_turn(1.0 + DEFER_MAX_AGE)
    assert db_query(path, "SELECT count(*) FROM deliveries") == [(1,)], "not committed once due"
    assert store.wake_at(2.5) == float("inf")
    store.close()


def test_delivery_acknowledged_before_its_row_is_written_costs_no_write(tmp_path):
    """With durability periodic nothing is written between saves; a message delivered to a persistent
    session and acknowledged before the save cancels its own INSERT, so the save changes no row for
    it (SQLite's total_changes counts every row a statement inserted, updated or deleted)."""
    from edgebroker.broker import Broker
    cfg = config(tmp_path, durability="periodic", autosave_interval=3600.0)
    store = SqliteStore(cfg.database_path(), cfg.durability, cfg.autosave_interval)
    b = Broker(cfg, now=0.0, store=store)
    sub = b.connection_made("127.0.0.1:1", 1883, 0.0)
    b.data_received(sub, w.connect("p", clean=False) + w.subscribe(1, [("p/#", 1)]), 0.0)
    pub = b.connection_made("127.0.0.1:2", 1883, 0.0)
    b.data_received(pub, w.connect("pp"), 0.0)
    store.commit(0.0, force=True)
    before = store._conn.total_changes
    sub.out.clear()
    b.data_received(pub, b"".join(w.publish(f"p/{i}", b"x", qos=1, packet_id=i) for i in range(1, 4)), 1.0)
    b.end_turn(1.0)
    sent = [parse_publish(p) for p in w.split_packets(b"".join(sub.out))]
    assert [p.topic for p in sent] == ["p/1", "p/2", "p/3"]
    b.data_received(sub, b"".join(w.puback(p.packet_id) for p in sent), 2.0)  # type: ignore[arg-type]
    store.commit(2.0, force=True)
    assert store._conn.total_changes == before, "rows written for deliveries acknowledged before the save"
    b.data_received(pub, w.publish("p/4", b"kept", qos=1, packet_id=4), 3.0)
    store.commit(3.0, force=True)
    assert store._conn.total_changes == before + 1
    assert db_query(Path(cfg.database_path()), "SELECT topic FROM deliveries") == [("p/4",)]
    store.close()


def test_bridge_rows_acknowledged_in_order_wait_for_the_commit_as_one_run(tmp_path):
    """A remote acknowledges a bridge's messages in order: the deletes of their rows wait for the next
    commit as one buffered run (a DELETE of seq BETWEEN first AND last), not one buffered entry per row,
    the memory a drain of thousands held for up to DEFER_MAX_AGE. Out of order, around a row whose
    INSERT is still buffered, and across bridges sharing the sequence, exactly the removed rows go."""
    cfg = config(tmp_path)
    store = SqliteStore(cfg.database_path())
    path = Path(cfg.database_path())
    for seq in range(1, 2001):
        store.bridge_add(seq, "b" if seq % 10 else "c", f"t/{seq}", b"x", 1, False)
    store.commit(0.0)
    assert db_query(path, "SELECT count(*) FROM bridge_queue") == [(2000,)]
    for seq in range(1, 1001):
        store.bridge_remove(seq)
    assert len(store.buffered) == 1
    store.bridge_add(2001, "b", "t/2001", b"x", 1, False)  # its INSERT buffered: removing it cancels it
    for seq in (1002, 1001, 1004, 2001, 1005, 1003, 1500):
        store.bridge_remove(seq)
    assert db_query(path, "SELECT count(*) FROM bridge_queue") == [(2000,)], "committed before it was due"
    store.commit(0.1, force=True)
    left = [s for (s,) in db_query(path, "SELECT seq FROM bridge_queue ORDER BY seq")]
    assert left == [s for s in range(1006, 2001) if s != 1500]
    store.bridge_remove(1007)  # a new run after the commit: 1006 stays
    store.bridge_remove(1008)
    store.commit(0.2, force=True)
    assert db_query(path, "SELECT min(seq), count(*) FROM bridge_queue") == [(1006, 992)]
    store.close()


def test_bridge_rows_go_in_by_runs_and_come_back_with_their_sizes(tmp_path):
    """A turn's bridge rows go in by multi-row statements (runs of 64, 16 and 4, the rest one by one):
    every row arrives whole, in order, and bridge_rows gives each with the bytes bridge_summary counts
    (a non-ASCII topic counts its UTF-8 bytes). bridge_damaged finds exactly the rows that cannot be
    messages, and nothing in a queue of good ones."""
    cfg = config(tmp_path)
    store = SqliteStore(cfg.database_path())
    path = Path(cfg.database_path())
    seq = 0
    for run in (64 + 16 + 4 + 3, 1, 5, 130):
        for _ in range(run):
            seq += 1
            store.bridge_add(seq, "b", f"t/{seq}" if seq % 7 else f"t/\u00e9/{seq}", bytes([seq % 256]) * (seq % 5),
                             seq % 3, bool(seq % 2))
        store.commit(float(seq), force=True)
    rows = store.bridge_rows("b", 0, 1000)
    assert [r[0] for r in rows] == list(range(1, seq + 1))
    for s_, topic, payload, qos, retain, size in rows:
        assert topic == (f"t/{s_}" if s_ % 7 else f"t/\u00e9/{s_}")
        assert (payload, qos, retain) == (bytes([s_ % 256]) * (s_ % 5), s_ % 3, s_ % 2)
        assert type(payload) is bytes and size == len(topic.encode("utf-8")) + len(payload)
    assert store.bridge_summary() == {"b": (seq, sum(r[5] for r in rows))}
    assert store.bridge_damaged() == []
    db = sqlite3.connect(str(path))
    db.execute("UPDATE bridge_queue SET qos = 7 WHERE seq = 3")
    db.execute("UPDATE bridge_queue SET retain = 2 WHERE seq = 10")
    db.execute("UPDATE bridge_queue SET payload = NULL WHERE seq = 20")
    db.execute("UPDATE bridge_queue SET payload = 'text' WHERE seq = 21")
    db.execute("UPDATE bridge_queue SET topic = 't/+' WHERE seq = 30")
    db.execute("UPDATE bridge_queue SET topic = '' WHERE seq = 31")
    db.execute("UPDATE bridge_queue SET topic = x'74' WHERE seq = 32")
    db.execute("UPDATE bridge_queue SET qos = NULL, bridge = 'c' WHERE seq = 40")
    db.commit()
    db.close()
    damaged = store.bridge_damaged()
    assert [(name, s_) for name, s_, _ in damaged] == [("b", 3), ("b", 10), ("b", 20), ("b", 21), ("b", 30),
                                                       ("b", 31), ("b", 32), ("c", 40)]
    # each with the bytes bridge_summary counts of it (a NULL payload: none), so that the summary less
    # the damaged rows is what the good ones hold (start_bridges counts the queue so)
    sizes = dict((s_, size) for _, s_, size in damaged)
    assert (sizes[3], sizes[20], sizes[21], sizes[31]) == (3 + 3, 0, len("t/\u00e9/21".encode()) + 4, 0 + 1)
    good = [r for r in store.bridge_rows("b", 0, 1000) if r[0] not in sizes]
    count, total = store.bridge_summary()["b"]
    assert (count - 7, total - sum(size for name, _, size in damaged if name == "b")) == (
        len(good), sum(r[5] for r in good))
    store.close()


def _sqlite_memory() -> Any:
    """SQLite's own memory counters (sqlite3_memory_used and _highwater) through ctypes, from the library
    the sqlite3 module uses."""
    import ctypes
    import ctypes.util
    import _sqlite3
    for name in (_sqlite3.__file__, ctypes.util.find_library("sqlite3")):
        try:
            lib = ctypes.CDLL(name)
            used, high = lib.sqlite3_memory_used, lib.sqlite3_memory_highwater
        except (OSError, AttributeError, TypeError):
            continue
        used.restype = high.restype = ctypes.c_int64
        return used, high
    raise AssertionError("SQLite's library has no sqlite3_memory_used")


def test_opening_a_large_database_stays_within_the_page_cache(tmp_path):
    """The start's quick_check reads every page of the database. It runs under the broker's page cache
    (CACHE_KIB), not SQLite's default of 2 MiB, which stayed resident for the process's life: a gateway
    restarted with thousands of bridge rows queued held 0.5 to 1 MiB more (bench/README.md, "Issue 19:
    the bridge rows")."""
    from edgebroker.store import CACHE_KIB
    used, high = _sqlite_memory()
    path = str(tmp_path / "big.db")
    store = SqliteStore(path)
    for seq in range(1, 20001):
        store.bridge_add(seq, "cloud", f"t/{seq % 8}", bytes(100), 1, False)
    store.commit(0.0)
    store.close()
    assert os.path.getsize(path) > 2 * 1024 * 1024  # more than the default cache holds
    before = used()
    high(1)  # reset the high-water mark to what is in use now
    store = SqliteStore(path)
    opened = high(0) - before
    store.close()
    # About 350 KB at CACHE_KIB 128 (the cache, its page headers, the schema, the statements); 2.6 MB
    # when the check ran under the default cache.
    assert opened < 1024 * 1024, f"opening took {opened:,} bytes of SQLite memory (cache {CACHE_KIB} KiB)"


# ---------------------------------------------------------------------------------------------------------
# 3: a clean restart keeps retained messages and persistent sessions, nothing else
# ---------------------------------------------------------------------------------------------------------

def test_retained_and_sessions_survive_restart_MQTT_3_1_2_4_MQTT_3_3_1_5(make_broker, raw, tmp_path):
    """Retained set, replaced and cleared [MQTT-3.3.1-5] [MQTT-3.3.1-10]: the restarted broker has exactly
    the final state. A persistent session keeps its subscriptions and its queued QoS 1 message
    [MQTT-3.1.2-4] [MQTT-3.1.2-5], but not QoS 0 messages (queue_qos0_messages false); a clean session's
    subscriptions do not survive [MQTT-3.1.2-6]."""
    b = make_broker(**persist(tmp_path))
    ps = raw(b.port, "ps", clean=False, present=False)
    subscribe(ps, 1, [("s/#", 1)])
    disconnect(ps)
    cs = raw(b.port, "cs", clean=True)  # connected while the broker stops
    subscribe(cs, 1, [("s/#", 1)])
    pub = raw(b.port, "pub")
    steps = [("r/a", b"a1"), ("r/b", b"b1"), ("r/a", b"a2"), ("r/c", b"c1"), ("r/c", b""), ("r/gone", b"")]
    for i, (topic, payload) in enumerate(steps, start=1):
        publish_acked(pub, topic, payload, 1, packet_id=i, retain=True)
    pub.send(w.publish("s/q0", b"zero", qos=0))
    publish_acked(pub, "s/q1", b"one", 1, packet_id=99)  # after the QoS 0 one: both routed
    b.stop()

    path = tmp_path / "data" / DB_NAME
    assert db_query(path, "SELECT topic, payload FROM retained ORDER BY topic") == [("r/a", b"a2"), ("r/b", b"b1")]
    assert db_query(path, "SELECT client_id FROM sessions") == [("ps",)]
    assert db_query(path, "SELECT client_id, topic_filter, qos FROM subscriptions") == [("ps", "s/#", 1)]
    assert db_query(path, "SELECT client_id, topic, payload, qos FROM deliveries") == [("ps", "s/q1", b"one", 1)], \
        "only the QoS 1 message is queued for the offline session"

    b2 = make_broker(**persist(tmp_path))
    retained = {t: m.payload for t, m in b2.server.broker.retained.items() if not t.startswith("$")}
    assert retained == {"r/a": b"a2", "r/b": b"b1"}
    n = raw(b2.port, "newcomer")
    subscribe(n, 1, [("r/#", 0)])
    got = sorted(read_until_pingresp(n))
    assert got == sorted([w.publish("r/a", b"a2", retain=True), w.publish("r/b", b"b1", retain=True)]), \
        [w.hexs(p) for p in got]  # [MQTT-3.3.1-6] [MQTT-3.3.1-8]

    ps2 = raw(b2.port, "ps", clean=False, present=True)  # [MQTT-3.2.2-2]
    queued = read_until_pingresp(ps2)
    assert len(queued) == 1, [w.hexs(p) for p in queued]
    q = parse_publish(queued[0])
    assert (q.topic, q.payload, q.qos, q.dup, q.retain) == ("s/q1", b"one", 1, False, False), q
    ps2.send(w.puback(q.packet_id))  # type: ignore[arg-type]
    cs2 = raw(b2.port, "cs", clean=False, present=False)  # the clean session left nothing [MQTT-3.2.2-3]
    pub2 = raw(b2.port, "pub")
    publish_acked(pub2, "s/after", b"live", 1, packet_id=1)
    live = parse_publish(ps2.read_raw_packet())  # no SUBSCRIBE after the restart
    assert (live.topic, live.payload, live.qos, live.dup) == ("s/after", b"live", 1, False)
    assert read_until_pingresp(cs2) == [], "a clean session's subscription survived the restart"


# ---------------------------------------------------------------------------------------------------------
# 5: bad database files
# ---------------------------------------------------------------------------------------------------------

def make_random(path: Path) -> None:
    path.write_bytes(random.Random(1883).randbytes(24 * 1024))


def make_zeros(path: Path) -> None:
    path.write_bytes(bytes(16 * 1024))  # the power-loss case Mosquitto users report


def make_truncated(path: Path) -> None:
    build_database(path)
    size = path.stat().st_size
    assert size >= 16 * 4096, f"test database too small to truncate meaningfully ({size} bytes)"
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def make_newer(path: Path) -> None:
    build_database(path, retained=10)
    con = sqlite3.connect(str(path))
    con.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    con.close()


def make_foreign(path: Path) -> None:
    """A valid SQLite database of another application (user_version 0, its own `sessions` table)."""
    con = sqlite3.connect(str(path))
    con.execute("CREATE TABLE sessions (id INTEGER PRIMARY KEY, user TEXT)")
    con.execute("INSERT INTO sessions (user) VALUES ('alice')")
    con.commit()
    con.close()


BAD_FILES = {
    "random-bytes": (make_random, "not a usable SQLite database", "Move it aside"),
    "all-zero-16KiB": (make_zeros, "not a usable SQLite database", "Move it aside"),
    "truncated-half": (make_truncated, "", "Move it aside"),
    "newer-schema": (make_newer, f"schema version {SCHEMA_VERSION + 1}", "Run the newer edgebroker"),
    "other-application": (make_foreign, "", "aside"),
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_bad_database_gives_clear_error_and_is_left_untouched(case, tmp_path):
    make, what, advice = BAD_FILES[case]
    data = tmp_path / "data"
    data.mkdir()
    path = data / DB_NAME
    make(path)
    original = path.read_bytes()
    with pytest.raises(StoreError) as info:
        Server(config(tmp_path))
    message = str(info.value)
    assert str(path) in message, message
    assert what in message, message
    assert advice in message, message
    exc = info.value
    assert exc.__cause__ is None and (exc.__context__ is None or exc.__suppress_context__), \
        "the StoreError should stand alone (raised from None), not chain a sqlite traceback"
    assert path.read_bytes() == original, "the broker changed a database it refused"


def test_database_in_use_by_another_process(tmp_path):
    """Another process holds the write lock (BEGIN EXCLUSIVE), as a second broker on the same file would:
    StoreError saying it is in use. (Costs sqlite3's default 5 s busy timeout.)"""
    data = tmp_path / "data"
    data.mkdir()
    path = data / DB_NAME
    build_database(path, retained=10)
    original = path.read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sqlite3, sys\n"
                               "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
                               "c.execute('BEGIN EXCLUSIVE')\n"
                               "print('LOCKED', flush=True)\n"
                               "sys.stdin.read()\n", str(path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert read_line(holder.stdout, TIMEOUT, "LOCKED from the lock holder") == "LOCKED"
        with pytest.raises(StoreError) as info:
            Server(config(tmp_path))
        message = str(info.value)
        assert str(path) in message and "in use" in message, message
    finally:
        holder.kill()
        holder.wait(TIMEOUT)
        holder.stdin.close()  # type: ignore[union-attr]
        holder.stdout.close()  # type: ignore[union-attr]
    assert path.read_bytes() == original


#: Run as root, this imports what it needs, then drops to the given uid/gid (os.setuid) and runs either
#: Server(...) on ./data or the CLI's main() (default config). The interpreter and its libraries live
#: under /root, closed to other users, so everything is imported before the privileges go.
UNPRIVILEGED = """
import os, sys
import argparse, gettext, locale, sqlite3  # argparse's messages import locale lazily
from edgebroker.cli import broker as cli
from edgebroker.config import Config, Listener
from edgebroker.server import Server
from edgebroker.session import Message
from edgebroker.store import StoreError
uid, gid, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
cli._parser().format_help()  # argparse imports more modules lazily (shutil, ...): load them now
if os.geteuid() != uid:
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)
if mode == "cli":
    sys.exit(cli.main(["-p", "0"]))
try:
    Server(Config(listeners=[Listener(0, "127.0.0.1")], persistence_location="data"))
except StoreError as exc:
    print(exc)
    sys.exit(3)
print("STARTED")
"""


def run_unprivileged(mode: str, cwd: Path, extra_env: Dict[str, str]) -> subprocess.CompletedProcess:
    """Run UNPRIVILEGED in `mode` as `nobody` when we are root (root ignores file permissions), else as
    ourselves. The child starts in cwd while still privileged and then uses relative paths only, because
    the ancestors of tmp_path (/tmp/pytest-of-root, mode 0700) are closed to other users."""
    uid, gid = os.geteuid(), os.getegid()
    if uid == 0:
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            pytest.skip("running as root and no 'nobody' user to test file permissions with")
        uid, gid = nobody.pw_uid, nobody.pw_gid
    cwd.chmod(0o755)  # tmp_path is 0700: the child must be able to look up names in its own directory
    env = child_env()
    env.update(extra_env)
    return subprocess.run([sys.executable, "-c", UNPRIVILEGED, str(uid), str(gid), mode], cwd=str(cwd), env=env,
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=TIMEOUT)


def make_read_only_database(directory: Path) -> Path:
    directory.mkdir(parents=True)
    path = directory / DB_NAME
    build_database(path, retained=10)
    path.chmod(0o444)
    directory.chmod(0o777)  # only the file is read-only: the directory could take the -wal and -shm files
    return path


def test_read_only_database_file(tmp_path):
    path = make_read_only_database(tmp_path / "data")
    original = path.read_bytes()
    done = run_unprivileged("server", tmp_path, {})
    out = done.stdout.decode()
    assert done.returncode == 3, (done.returncode, out, done.stderr.decode())
    assert os.path.join("data", DB_NAME) in out and "not readable and writable" in out, out
    assert "permissions" in out, out
    assert path.read_bytes() == original


def test_read_only_database_file_through_the_cli(tmp_path):
    """The CLI's main() with the default config (database in $XDG_DATA_HOME/edgebroker): exit status 1,
    one `Error:` line naming the file, no traceback."""
    path = make_read_only_database(tmp_path / "edgebroker")
    done = run_unprivileged("cli", tmp_path, {"XDG_DATA_HOME": "."})
    err = done.stderr.decode()
    assert done.returncode == 1, (done.returncode, err)
    assert "Traceback" not in err, err
    assert f"Error: persistence database {os.path.join('.', 'edgebroker', DB_NAME)}" in err, err
    assert path.stat().st_mode & 0o777 == 0o444


# ---------------------------------------------------------------------------------------------------------
# 6: migrations
# ---------------------------------------------------------------------------------------------------------

def test_schema_version_1_database_is_migrated(run_server, raw, tmp_path):
    """A database written by schema version 1 (MIGRATIONS[0] only) is migrated to SCHEMA_VERSION on start
    and its retained message and persistent subscription keep working."""
    sqlite_utils = pytest.importorskip("sqlite_utils")
    data = tmp_path / "data"
    data.mkdir()
    path = data / DB_NAME
    db = sqlite_utils.Database(str(path))
    MIGRATIONS[0](db)
    db.execute("PRAGMA user_version = 1")
    db["retained"].insert({"topic": "m/r", "payload": b"kept", "qos": 1})
    db["sessions"].insert({"client_id": "old"})
    db["subscriptions"].insert({"client_id": "old", "topic_filter": "m/#", "qos": 1})
    db.conn.commit()
    db.conn.close()
    assert "disconnected_at" not in [r[1] for r in db_query(path, "PRAGMA table_info(sessions)")]

    rs = run_server(config(tmp_path))
    assert db_query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert "disconnected_at" in [r[1] for r in db_query(path, "PRAGMA table_info(sessions)")]
    assert any("migrated from schema version 1" in m for m in rs.messages(L.NOTICE)), rs.logs

    n = raw(rs.port, "newcomer")
    subscribe(n, 1, [("m/#", 0)])
    assert read_until_pingresp(n) == [w.publish("m/r", b"kept", retain=True)]
    pub = raw(rs.port, "pub")
    publish_acked(pub, "m/x", b"for old", 1, packet_id=1)
    old = raw(rs.port, "old", clean=False, present=True)
    got = read_until_pingresp(old)
    assert [(p.topic, p.payload, p.qos) for p in map(parse_publish, got)] == [("m/x", b"for old", 1)]


def test_schema_version_6_inbound_qos2_rows_migrate_and_release_nothing(run_server, raw, tmp_path):
    """Migration 7 gives inbound_qos2 the held message's columns. A row written by schema 6 or older (id only:
    its message was delivered when it arrived) keeps NULL there: after the upgrade a resend of that
    PUBLISH is acknowledged without a delivery and its PUBREL releases nothing [MQTT-4.3.3-2]."""
    sqlite_utils = pytest.importorskip("sqlite_utils")
    data = tmp_path / "data"
    data.mkdir()
    path = data / DB_NAME
    db = sqlite_utils.Database(str(path))
    for migration in MIGRATIONS[:6]:
        migration(db)
    db.execute("PRAGMA user_version = 6")
    db["sessions"].insert({"client_id": "qpub"})
    db["inbound_qos2"].insert({"client_id": "qpub", "packet_id": 7})
    db.conn.commit()
    db.conn.close()
    assert [r[1] for r in db_query(path, "PRAGMA table_info(inbound_qos2)")] == ["client_id", "packet_id"]

    rs = run_server(config(tmp_path))
    assert db_query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    assert [r[1] for r in db_query(path, "PRAGMA table_info(inbound_qos2)")] == \
        ["client_id", "packet_id", "topic", "payload", "retain"]
    watcher = raw(rs.port, "watcher")
    subscribe(watcher, 1, [("t/#", 0)])
    pub = raw(rs.port, "qpub", clean=False, present=True)
    pub.send(w.publish("t/q2", b"delivered before the upgrade", qos=2, packet_id=7, dup=True))
    assert pub.read_raw_packet() == w.pubrec(7)
    pub.send(w.pubrel(7))
    assert pub.read_raw_packet() == w.pubcomp(7)
    assert read_until_pingresp(watcher) == []


@pytest.mark.parametrize("start", ["empty-file", "no-file"])
def test_fresh_schema_from_nothing(start, run_server, tmp_path):
    """(A persistence_location that does not exist is an error: tests/test_ops.py.)"""
    data = tmp_path / "data"
    data.mkdir()
    if start == "empty-file":
        (data / DB_NAME).write_bytes(b"")
    run_server(config(tmp_path))
    path = data / DB_NAME
    assert db_query(path, "PRAGMA user_version") == [(SCHEMA_VERSION,)]
    tables = {r[0] for r in db_query(path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert TABLES <= tables, tables
    assert db_query(path, "PRAGMA journal_mode") == [("wal",)]


# ---------------------------------------------------------------------------------------------------------
# 7: disk full
# ---------------------------------------------------------------------------------------------------------

def test_disk_full_keeps_serving_then_commits_when_space_returns(run_server, raw, tmp_path):
    rs = run_server(config(tmp_path))
    store = rs.store
    path = tmp_path / "data" / DB_NAME
    watcher = raw(rs.port, "watcher")
    subscribe(watcher, 1, [("big/#", 0), ("live/#", 0)])
    pub = raw(rs.port, "pub")
    # The loop is idle (no persistent state changes pending): freeze the database at its current size.
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    payload = bytes(range(256)) * 256  # 64 KiB: needs new pages
    for i in range(1, 6):
        publish_acked(pub, f"big/{i}", payload, 1, packet_id=i, retain=True)
        got = parse_publish(watcher.read_raw_packet())
        assert (got.topic, len(got.payload)) == (f"big/{i}", len(payload))
    wait_for(lambda: store.errors >= 2, TIMEOUT, what="a failed commit and its retry")
    publish_acked(pub, "live/x", b"still serving", 1, packet_id=10)
    assert parse_publish(watcher.read_raw_packet()).payload == b"still serving"
    errors = [m for m in rs.messages(L.ERR) if "cannot write persistence database" in m]
    assert len(errors) == 1, f"the failure should be logged once, got {errors}"
    assert str(path) in errors[0]
    assert db_query(path, "SELECT count(*) FROM retained WHERE topic LIKE 'big/%'") == [(0,)]

    store._conn.execute("PRAGMA max_page_count = 1073741823")
    wait_for(lambda: db_query(path, "SELECT count(*) FROM retained WHERE topic LIKE 'big/%'") == [(5,)], TIMEOUT,
             what="the pending retained messages committed once space returned")
    assert db_query(path, "SELECT payload FROM retained WHERE topic = 'big/3'") == [(payload,)]
    wait_for(lambda: any("writable again" in m for m in rs.messages(L.NOTICE)), TIMEOUT, what="recovery notice")


def test_disk_full_retries_once_a_second_and_does_not_spin(run_server, raw, tmp_path):
    """While commits fail, the loop sleeps until the next retry (RETRY_INTERVAL): a full disk must not
    also pin the CPU. Turns are counted by a timer the loop calls every turn, over two retries with no
    traffic at all (it spun in tens of thousands of turns a second before)."""
    rs = run_server(config(tmp_path))
    store = rs.store
    turns = [0]

    def count(now: float) -> float:
        turns[0] += 1
        return float("inf")

    rs.server.add_timer(count)
    pub = raw(rs.port, "pub")
    pages = store._conn.execute("PRAGMA page_count").fetchone()[0]
    store._conn.execute(f"PRAGMA max_page_count = {pages}")
    publish_acked(pub, "big/1", bytes(65536), 1, packet_id=1, retain=True)
    wait_for(lambda: store.errors >= 2, TIMEOUT, what="a failed commit and its retry")
    before = turns[0]
    wait_for(lambda: store.errors >= 4, TIMEOUT, what="two more retries")
    assert turns[0] - before <= 20, f"{turns[0] - before} loop turns for two retries with no traffic"
    store._conn.execute("PRAGMA max_page_count = 1073741823")
    wait_for(lambda: any("writable again" in m for m in rs.messages(L.NOTICE)), TIMEOUT, what="recovery notice")


def test_restart_on_a_full_disk_serves_what_the_file_holds_and_writes_once_space_returns(
        broker_process, raw, tmp_path, small_disk):
    """A gateway whose disk filled up restarts (a reboot, a power cut). SQLite cannot create the WAL
    database's -shm file there, so the store opens it in exclusive locking mode (the index in memory)
    and says so: the broker starts, serves the retained and queued messages the file holds, keeps
    acknowledging new ones while its writes fail and are retried, and writes them once space returns;
    a kill -9 after that loses nothing. Before, it refused to start ("No space left on device")."""
    data = small_disk(tmp_path / "data")  # a real 8 MiB file system of its own
    b = broker_process(data)
    offline_subscriber(raw, b.port, "s", [("q/#", 1)])
    pub = raw(b.port, "p")
    publish_acked(pub, "r/1", b"kept", 1, packet_id=1, retain=True)
    publish_acked(pub, "q/1", b"queued", 1, packet_id=2)
    disconnect(pub)
    b.stop()
    filler = fill_disk(data)

    b2 = broker_process(data)
    assert "exclusive locking mode" in b2.log(), b2.log()
    watcher = raw(b2.port, "w")
    watcher.send(w.subscribe(1, [("r/#", 0)]))
    assert watcher.read_raw_packet() == w.suback(1, [0])
    kept = parse_publish(watcher.read_raw_packet())
    assert (kept.retain, kept.topic, kept.payload) == (True, "r/1", b"kept")  # [MQTT-3.3.1-6]
    sub = raw(b2.port, "s", clean=False, present=True)
    got = parse_publish(sub.read_raw_packet())
    assert (got.topic, got.payload) == ("q/1", b"queued")
    sub.send(w.puback(got.packet_id))
    disconnect(sub)
    pub = raw(b2.port, "p")
    publish_acked(pub, "q/2", b"while full", 1, packet_id=1)  # queued for the offline session
    wait_for(lambda: "cannot write persistence database" in b2.log(), TIMEOUT, what="the failed write logged")
    filler.unlink()
    wait_for(lambda: "is writable again" in b2.log(), TIMEOUT, what="the write once space returned")
    b2.kill9()

    b3 = broker_process(data)
    assert "exclusive" not in b3.log(), b3.log()  # space again: the normal mode, readable by others
    sub = raw(b3.port, "s", clean=False, present=True)
    after = [parse_publish(p) for p in read_until_pingresp(sub)]
    assert [(p.topic, p.payload) for p in after] == [("q/2", b"while full")]  # q/1's PUBACK was written too


def test_a_new_database_on_a_full_disk_is_refused_with_the_cause_not_move_it_aside(tmp_path, small_disk):
    """No database yet and no space to create one: the broker cannot start, and says that the disk is
    full (not that the file is damaged and should be moved aside, as for other SQLite errors)."""
    data = small_disk(tmp_path / "data")
    fill_disk(data)
    done = subprocess.run([sys.executable, str(HERE / "brokerproc.py"), "--dir", str(data)], cwd=str(REPO),
                          env=child_env(), capture_output=True, text=True, timeout=TIMEOUT * 3)
    assert done.returncode == 1, done.stderr
    error = [line for line in done.stderr.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and "0 KiB free" in error[0] and "Free some space" in error[0], done.stderr
    assert "mv " not in error[0]


# ---------------------------------------------------------------------------------------------------------
# 8: durability levels
# ---------------------------------------------------------------------------------------------------------

def retained_in_file(path: Path) -> List[str]:
    return [r[0] for r in db_query(path, "SELECT topic FROM retained ORDER BY topic")]


def test_periodic_durability_writes_when_the_interval_is_due(run_server, raw, tmp_path):
    """durability periodic, autosave_interval 1 s: a change is not in the file at once, and is within
    a few intervals even when nothing else happens afterwards (a quiet gateway)."""
    path = tmp_path / "data" / DB_NAME
    t0 = time.monotonic()
    rs = run_server(config(tmp_path, durability="periodic", autosave_interval=1.0))
    pub = raw(rs.port, "pub")
    publish_acked(pub, "p/1", b"x", 1, packet_id=1, retain=True)
    early = retained_in_file(path)
    if time.monotonic() - t0 < 0.8:  # still inside the first interval: the save cannot be due yet
        assert early == [], "periodic durability wrote before the interval was due"
    wait_for(lambda: retained_in_file(path) == ["p/1"], 5,
             what="the retained message saved within a few autosave intervals (no further traffic)")


def test_periodic_durability_on_changes(run_server, raw, tmp_path):
    """autosave_on_changes with autosave_interval 3: the file is written at the third change."""
    path = tmp_path / "data" / DB_NAME
    rs = run_server(config(tmp_path, durability="periodic", autosave_interval=3, autosave_on_changes=True))
    pub = raw(rs.port, "pub")
    publish_acked(pub, "p/1", b"x", 1, packet_id=1, retain=True)
    publish_acked(pub, "p/2", b"x", 1, packet_id=2, retain=True)
    assert retained_in_file(path) == [], "saved before autosave_interval changes"
    publish_acked(pub, "p/3", b"x", 1, packet_id=3, retain=True)
    wait_for(lambda: retained_in_file(path) == ["p/1", "p/2", "p/3"], TIMEOUT, what="save at the third change")


@pytest.mark.parametrize("durability, synchronous", [("sync", 2), ("crash", 1), ("periodic", 1)])
def test_durability_sets_synchronous(durability, synchronous, run_server, tmp_path):
    """sync = synchronous FULL (2, each commit fsynced); crash and periodic = NORMAL (1) in WAL mode."""
    rs = run_server(config(tmp_path, durability=durability))
    assert rs.store._conn.execute("PRAGMA synchronous").fetchone()[0] == synchronous
    assert rs.store._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
