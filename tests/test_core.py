"""The broker core tested in memory: no sockets, no threads, a fake clock.

The core is sans-IO (ARCHITECTURE.md): the tests play the loop's part. `Core` holds one Broker and
the fake time; `Core.open()` makes a Connection as the loop would on accept, `Client.send(bytes)`
feeds it as the loop would on recv, `Client.take()` drains what the core wrote to that connection
(decoded with edgebroker.codec.Parser, so tests compare typed packets), and `Core.run_until(t)`
calls `tick` at every timer the core asks for up to `t`, exactly as the loop does when no socket is
ready. Every byte sent to the core is built by tests/mqttwire.py, which does not import edgebroker.

Tests carry the conformance ids of the MQTT 3.1.1 statements they check in their names
(`MQTT_3_1_2_24` for [MQTT-3.1.2-24]).
"""
from __future__ import annotations

import random
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgebroker import __version__
from edgebroker import log as L
from edgebroker.broker import CHECK_INTERVAL, PRE_CONNECT_MAX_BYTES, Broker, Connection
from edgebroker.codec import Parser
from edgebroker.config import Config
from edgebroker.packets import (
    Connack, Pingresp, Puback, Pubcomp, Publish, Pubrec, Pubrel, Suback, Unsuback,
)
from edgebroker.topics import TopicTree, filter_matches

import mqttwire as w


# ---------------------------------------------------------------------------------------------------------
# The in-memory harness
# ---------------------------------------------------------------------------------------------------------

class Client:
    """One connection as the core sees it, plus a decoder for what the core writes to it."""

    def __init__(self, core: "Core", conn: Connection) -> None:
        self.core = core
        self.conn = conn
        self._parser = Parser()
        self._backlog: List[object] = []

    def send(self, data: bytes) -> None:
        """Hand bytes to the core as one recv would (never raises: that is part of what is tested)."""
        self.core.broker.data_received(self.conn, data, self.core.now)

    def take(self) -> List[object]:
        """Every packet the core wrote to this connection since the last take, decoded."""
        conn = self.conn
        data = b"".join(conn.out)
        conn.out.clear()
        conn.out_size = 0
        dirty = self.core.broker.dirty
        dirty[:] = [c for c in dirty if c is not conn]
        out, self._backlog = self._backlog + (self._parser.feed(data) if data else []), []
        return out

    def publishes(self) -> List[Publish]:
        """take(), asserting everything taken is a PUBLISH."""
        got = self.take()
        assert all(isinstance(p, Publish) for p in got), got
        return got  # type: ignore[return-value]

    def ping(self) -> None:
        """PINGREQ; the very next packet must be PINGRESP, so nothing else was pending [MQTT-3.12.4-1]."""
        assert self.take() == [], "unexpected output before the ping"
        self.send(w.pingreq())
        assert self.take() == [Pingresp()]

    def subscribe(self, packet_id: int, *topics: Tuple[str, int]) -> List[object]:
        """SUBSCRIBE; assert the SUBACK grants what was asked; return what followed it (retained)."""
        self.send(w.subscribe(packet_id, topics))
        got = self.take()
        assert got[:1] == [Suback(packet_id, tuple(q for _, q in topics))], got
        return got[1:]

    def disconnect(self) -> None:
        self.send(w.disconnect())
        assert self.closed

    def lose(self) -> None:
        """The network connection drops without DISCONNECT (the loop saw EOF or an error)."""
        self.core.broker.connection_lost(self.conn, self.core.now)

    @property
    def closed(self) -> bool:
        return self.conn.closed


class Core:
    """One Broker with a fake clock and a log that records (level, message)."""

    def __init__(self, **overrides: object) -> None:
        overrides.setdefault("persistence", False)
        overrides.setdefault("sys_interval", 0)  # $SYS only where a test asks for it
        self.config = Config(**overrides)  # type: ignore[arg-type]
        self.logs: List[Tuple[int, str]] = []
        self.now = 0.0
        self.broker = Broker(self.config, now=0.0, log=self._log)
        self._port = 5000

    def _log(self, level: int, message: str) -> None:
        self.logs.append((level, message))

    def open(self) -> Client:
        self._port += 1
        return Client(self, self.broker.connection_made(f"127.0.0.1:{self._port}", 1883, self.now))

    def connect(self, client_id: str, clean: bool = True, keepalive: int = 0, will: Optional[w.Will] = None,
                present: bool = False) -> Client:
        """Open and CONNECT; assert the first packet back is CONNACK accepted with the given session
        present flag. Packets that follow the CONNACK (resends) are kept for the next take()."""
        c = self.open()
        c.send(w.connect(client_id, clean=clean, keepalive=keepalive, will=will))
        got = c.take()
        assert got[:1] == [Connack(present, 0)], f"CONNACK for {client_id!r}: {got}"
        c._backlog = got[1:]
        return c

    def run_until(self, t: float) -> None:
        """Advance the fake clock to t, calling tick at each time the core asked for, as the loop does."""
        b = self.broker
        nxt = b.tick(self.now)
        while nxt <= t:
            self.now = nxt
            nxt = b.tick(nxt)
        self.now = t
        b.tick(t)

    def logged(self, text: str) -> List[str]:
        return [m for _, m in self.logs if text in m]


def fields(p: Publish) -> Tuple[str, bytes, int, bool, bool]:
    """A PUBLISH without its packet id (which is the broker's choice): topic, payload, qos, retain, dup."""
    return (p.topic, p.payload, p.qos, p.retain, p.dup)


def publish_qos1(c: Client, topic: str, payload: bytes, packet_id: int = 1, retain: bool = False) -> None:
    c.send(w.publish(topic, payload, qos=1, packet_id=packet_id, retain=retain))
    assert c.take() == [Puback(packet_id)]  # [MQTT-4.3.2-2]


def publish_qos2(c: Client, topic: str, payload: bytes, packet_id: int = 1, retain: bool = False) -> None:
    """The whole inbound QoS 2 flow: PUBLISH, PUBREC, PUBREL, PUBCOMP [MQTT-4.3.3-2]; the message is
    released to subscribers at the PUBREL."""
    c.send(w.publish(topic, payload, qos=2, packet_id=packet_id, retain=retain))
    assert c.take() == [Pubrec(packet_id)]
    c.send(w.pubrel(packet_id))
    assert c.take() == [Pubcomp(packet_id)]


@pytest.fixture
def core() -> Core:
    return Core()


# ---------------------------------------------------------------------------------------------------------
# Keepalive, the connect deadline, wills
# ---------------------------------------------------------------------------------------------------------

def test_MQTT_3_1_2_24_keepalive_expires_at_one_and_a_half_times_and_will_is_published():
    """[MQTT-3.1.2-24]: no packet within 1.5 x keepalive -> the server disconnects; the will is then
    published [MQTT-3.1.2-8]. Not closed at 1.5k - 0.01 s after the last packet, closed by
    1.5k + CHECK_INTERVAL."""
    core = Core()
    watcher = core.connect("watcher")
    watcher.subscribe(1, ("will/#", 1))
    k = 10
    dev = core.connect("dev", keepalive=k, will=w.Will("will/dev", b"offline", qos=1))
    core.run_until(3.0)
    dev.send(w.pingreq())  # the last packet from dev, at t = 3
    assert dev.take() == [Pingresp()]
    last = core.now

    core.run_until(last + 1.5 * k - 0.01)
    assert not dev.closed, "closed before 1.5 x keepalive had passed"
    assert watcher.take() == []

    core.run_until(last + 1.5 * k + CHECK_INTERVAL)
    assert dev.closed, "still open 1.5 x keepalive + CHECK_INTERVAL after the last packet"
    assert dev.take() == []
    assert dev.conn in core.broker.closing
    assert core.broker.stats.clients_connected == 1
    assert core.logged("Client dev has exceeded timeout")
    got = watcher.publishes()
    assert [fields(p) for p in got] == [("will/dev", b"offline", 1, False, False)]
    assert got[0].packet_id != 0
    watcher.send(w.puback(got[0].packet_id))
    watcher.ping()
    assert not watcher.closed


def test_MQTT_3_1_2_24_any_packet_resets_the_keepalive_timer():
    core = Core()
    dev = core.connect("dev", keepalive=4)
    for t in range(5, 60, 5):  # a packet every 5 s < 1.5 x 4 s
        core.run_until(float(t))
        assert not dev.closed, f"closed at t={t}"
        dev.ping()
    core.run_until(55 + 6 + CHECK_INTERVAL)
    assert dev.closed


def test_keepalive_zero_never_expires():
    """Keepalive 0 turns the mechanism off (section 3.1.2.10); a k=1 client in the same broker shows
    the check ran."""
    core = Core()
    idle = core.connect("idle", keepalive=0)
    short = core.connect("short", keepalive=1)
    core.run_until(2.0)
    assert short.closed
    for t in (1_000.0, 100_000.0, 10_000_000.0):
        core.now = t
        core.broker.tick(t)
        assert not idle.closed
    idle.ping()


def test_connect_deadline_closes_a_silent_connection():
    core = Core(connect_timeout=2.0)
    silent = core.open()
    core.run_until(2.0)
    assert not silent.closed, "closed before connect_timeout"
    core.run_until(2.0 + CHECK_INTERVAL)
    assert silent.closed
    assert silent.take() == []
    assert core.broker.connections == {}
    assert core.broker.stats.clients_connected == 0


def test_connect_deadline_counts_from_accept_not_from_the_last_byte():
    """A client trickling a CONNECT that never completes is closed by the same deadline."""
    core = Core(connect_timeout=2.0)
    slow = core.open()
    data = w.connect("slow")
    for i, t in enumerate((0.5, 1.0, 1.5, 2.0)):
        core.run_until(t)
        slow.send(data[i:i + 1])
    core.run_until(2.0 + CHECK_INTERVAL)
    assert slow.closed
    assert slow.take() == []


def test_connect_deadline_does_not_apply_once_connected():
    core = Core(connect_timeout=2.0)
    c = core.open()
    core.run_until(1.9)
    c.send(w.connect("ok", keepalive=0))
    assert c.take() == [Connack(False, 0)]
    core.run_until(100.0)
    assert not c.closed
    c.ping()


def test_MQTT_3_1_2_8_will_published_when_the_server_closes_on_a_protocol_error():
    """The will is published when the network connection closes for any reason but DISCONNECT,
    including a protocol error (section 3.1.2.5)."""
    core = Core()
    watcher = core.connect("watcher")
    watcher.subscribe(1, ("w/#", 0))
    dev = core.connect("dev", will=w.Will("w/dev", b"bye"))
    dev.send(w.connect("dev"))  # second CONNECT [MQTT-3.1.0-2]
    assert dev.closed
    assert [fields(p) for p in watcher.publishes()] == [("w/dev", b"bye", 0, False, False)]


def test_MQTT_3_14_4_3_disconnect_discards_the_will():
    core = Core()
    watcher = core.connect("watcher")
    watcher.subscribe(1, ("w/#", 0))
    dev = core.connect("dev", will=w.Will("w/dev", b"bye"))
    dev.disconnect()
    assert dev.take() == []
    assert watcher.take() == []


def test_MQTT_3_1_2_17_will_retain_stores_the_will_as_retained():
    core = Core()
    dev = core.connect("dev", will=w.Will("w/dev", b"gone", qos=1, retain=True))
    dev.lose()
    assert core.broker.retained["w/dev"].payload == b"gone"
    late = core.connect("late")
    got = late.subscribe(1, ("w/+", 1))
    assert [fields(p) for p in got] == [("w/dev", b"gone", 1, True, False)]  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# QoS 2 inbound
# ---------------------------------------------------------------------------------------------------------

def test_MQTT_4_3_3_2_qos2_duplicate_before_pubrel_is_delivered_once():
    """The message is held from its PUBLISH (answered with PUBREC) to its PUBREL (answered with PUBCOMP)
    and released to subscribers then, Mosquitto's order; resends in between are acknowledged again and
    not delivered [MQTT-4.3.3-2]: subscribers get it once."""
    core = Core()
    sub = core.connect("sub")
    sub.subscribe(1, ("q2/#", 0))
    pub = core.connect("pub")
    pub.send(w.publish("q2/a", b"one", qos=2, packet_id=7))
    assert pub.take() == [Pubrec(7)]
    assert sub.take() == []

    # The same packet id again before PUBREL (a resend, DUP set or not): PUBREC again, no delivery.
    pub.send(w.publish("q2/a", b"one", qos=2, packet_id=7, dup=True))
    assert pub.take() == [Pubrec(7)]
    pub.send(w.publish("q2/a", b"one", qos=2, packet_id=7))
    assert pub.take() == [Pubrec(7)]
    assert sub.take() == []

    pub.send(w.pubrel(7))
    assert pub.take() == [Pubcomp(7)]
    assert [fields(p) for p in sub.publishes()] == [("q2/a", b"one", 0, False, False)]
    pub.send(w.pubrel(7))  # a second PUBREL: PUBCOMP again, nothing delivered
    assert pub.take() == [Pubcomp(7)]
    assert sub.take() == []

    # After PUBREL the packet id is free again: the same id is a new message.
    pub.send(w.publish("q2/a", b"two", qos=2, packet_id=7))
    assert pub.take() == [Pubrec(7)]
    pub.send(w.pubrel(7))
    assert pub.take() == [Pubcomp(7)]
    assert [fields(p) for p in sub.publishes()] == [("q2/a", b"two", 0, False, False)]


def test_MQTT_4_3_3_2_qos2_awaiting_pubrel_survives_reconnect_of_a_persistent_session():
    """The receiver keeps the packet id until PUBREL across a reconnect (section 4.1: the session holds
    the QoS 2 messages received but not completely acknowledged): the resent PUBLISH is not delivered
    again."""
    core = Core()
    sub = core.connect("sub")
    sub.subscribe(1, ("t", 0))
    pub = core.connect("pub", clean=False)
    pub.send(w.publish("t", b"once", qos=2, packet_id=9))
    assert pub.take() == [Pubrec(9)]
    pub.lose()
    pub = core.connect("pub", clean=False, present=True)
    pub.send(w.publish("t", b"once", qos=2, packet_id=9, dup=True))
    assert pub.take() == [Pubrec(9)]
    pub.send(w.pubrel(9))
    assert pub.take() == [Pubcomp(9)]
    assert [p.payload for p in sub.publishes()] == [b"once"]


def test_MQTT_4_3_3_2_qos2_packet_ids_are_per_client():
    core = Core()
    sub = core.connect("sub")
    sub.subscribe(1, ("t", 0))
    a = core.connect("a")
    b = core.connect("b")
    a.send(w.publish("t", b"from a", qos=2, packet_id=3))
    b.send(w.publish("t", b"from b", qos=2, packet_id=3))
    assert a.take() == [Pubrec(3)] and b.take() == [Pubrec(3)]
    b.send(w.pubrel(3))
    a.send(w.pubrel(3))
    assert a.take() == [Pubcomp(3)] and b.take() == [Pubcomp(3)]
    assert [p.payload for p in sub.publishes()] == [b"from b", b"from a"]


# ---------------------------------------------------------------------------------------------------------
# Persistent sessions, resends
# ---------------------------------------------------------------------------------------------------------

def test_MQTT_3_2_2_2_persistent_session_queues_offline_messages():
    """Subscriptions and QoS 1 messages published while offline survive; CONNACK session present 1
    [MQTT-3.2.2-2], then the queued message [MQTT-3.1.2-5]."""
    core = Core()
    sub = core.connect("sub", clean=False)
    sub.subscribe(1, ("p/#", 1))
    sub.disconnect()
    pub = core.connect("pub")
    publish_qos1(pub, "p/x", b"while away")
    pub.send(w.publish("p/y", b"second", qos=1, packet_id=2))
    assert pub.take() == [Puback(2)]

    sub = core.connect("sub", clean=False, present=True)
    got = sub.publishes()
    assert [fields(p) for p in got] == [("p/x", b"while away", 1, False, False),
                                        ("p/y", b"second", 1, False, False)]
    for p in got:
        sub.send(w.puback(p.packet_id))
    sub.ping()
    # The subscription itself survived too.
    publish_qos1(pub, "p/z", b"live", packet_id=3)
    assert [fields(p) for p in sub.publishes()] == [("p/z", b"live", 1, False, False)]


def test_MQTT_3_2_2_1_new_persistent_session_has_session_present_0():
    core = Core()
    core.connect("fresh", clean=False, present=False)


def test_MQTT_4_4_0_1_inflight_messages_resent_with_dup_in_original_order():
    """Unacknowledged PUBLISH packets are resent on reconnect with DUP set [MQTT-3.3.1-1], the same
    packet ids, in the original order [MQTT-4.6.0-1]; then the queue continues."""
    core = Core(max_inflight_messages=3)
    sub = core.connect("sub", clean=False)
    sub.subscribe(1, ("r/#", 2))
    pub = core.connect("pub")
    pub.send(w.publish("r/1", b"m1", qos=1, packet_id=1))
    pub.send(w.publish("r/2", b"m2", qos=2, packet_id=2) + w.pubrel(2))
    pub.send(w.publish("r/3", b"m3", qos=1, packet_id=3))
    pub.send(w.publish("r/4", b"m4", qos=1, packet_id=4))  # beyond the window: queued
    first = sub.publishes()
    assert [fields(p) for p in first] == [("r/1", b"m1", 1, False, False), ("r/2", b"m2", 2, False, False),
                                          ("r/3", b"m3", 1, False, False)]
    sub.lose()

    sub = core.connect("sub", clean=False, present=True)
    again = sub.publishes()
    assert [(p.packet_id, p.topic, p.payload, p.qos, p.dup) for p in again] == \
        [(p.packet_id, p.topic, p.payload, p.qos, True) for p in first]
    # The queued message follows once the window has room, not as a resend.
    sub.send(w.puback(first[0].packet_id))
    got = sub.publishes()
    assert [fields(p) for p in got] == [("r/4", b"m4", 1, False, False)]


def test_MQTT_4_4_0_1_pubrel_resent_for_a_qos2_message_whose_pubrec_was_received():
    core = Core()
    sub = core.connect("sub", clean=False)
    sub.subscribe(1, ("q", 2))
    pub = core.connect("pub")
    pub.send(w.publish("q", b"a", qos=2, packet_id=1) + w.pubrel(1))
    pub.send(w.publish("q", b"b", qos=2, packet_id=2) + w.pubrel(2))
    a, b = sub.publishes()
    sub.send(w.pubrec(b.packet_id))
    assert sub.take() == [Pubrel(b.packet_id)]  # [MQTT-4.3.3-3]
    sub.lose()

    sub = core.connect("sub", clean=False, present=True)
    got = sub.take()
    # a: PUBLISH again with DUP; b: its PUBREL, not the PUBLISH (the subscriber has the message).
    assert got == [Publish("q", b"a", 2, False, True, a.packet_id), Pubrel(b.packet_id)]
    sub.send(w.pubcomp(b.packet_id))
    sub.send(w.pubrec(a.packet_id))
    assert sub.take() == [Pubrel(a.packet_id)]
    sub.send(w.pubcomp(a.packet_id))
    assert core.broker.sessions["sub"].inflight == {}
    sub.ping()


def test_sessions_share_one_read_only_empty_inflight_until_their_first_qos1_delivery():
    """Memory (issue 19): a session never sent a QoS 1/2 message has no inflight dict of its own (64
    bytes per idle client); the shared one refuses writes, so no session can put a message in another's.
    The first delivery, a queued one (the refill) and a restored one each get a dict of their own."""
    core = Core(max_inflight_messages=1)
    a = core.connect("a")
    a.subscribe(1, ("t", 1))
    b = core.connect("b")
    b.subscribe(1, ("t", 1))
    sa, sb = core.broker.sessions["a"], core.broker.sessions["b"]
    assert sa.inflight is sb.inflight and sa.inflight == {}
    with pytest.raises(TypeError):
        sa.inflight[1] = []  # type: ignore[index]
    pub = core.connect("pub")
    pub.send(w.publish("t", b"1", qos=1, packet_id=1) + w.publish("t", b"2", qos=1, packet_id=2))
    assert [m.payload for m in a.publishes()] == [b"1"]  # the window of 1: b"2" waits in the queue
    assert list(sa.inflight) == [1] and sa.inflight is not sb.inflight
    assert [m.payload for m in b.publishes()] == [b"1"] and list(sb.inflight) == [1]
    a.send(w.puback(1))
    assert [m.payload for m in a.publishes()] == [b"2"] and list(sa.inflight) == [2]
    c = core.connect("c", clean=False)
    c.subscribe(1, ("t", 1))
    c.lose()
    pub.send(w.publish("t", b"3", qos=1, packet_id=3))
    c = core.connect("c", clean=False, present=True)  # the queued message goes through the refill
    assert [m.payload for m in c.publishes()] == [b"3"]
    assert len(core.broker.sessions["c"].inflight) == 1


# ---------------------------------------------------------------------------------------------------------
# Bounds: inflight window, offline queue
# ---------------------------------------------------------------------------------------------------------

def test_max_inflight_messages_window_and_queue_order():
    core = Core(max_inflight_messages=2)
    sub = core.connect("sub")
    sub.subscribe(1, ("win", 1))
    pub = core.connect("pub")
    for i in range(6):
        publish_qos1(pub, "win", b"m%d" % i, packet_id=i + 1)
    got = sub.publishes()
    assert [p.payload for p in got] == [b"m0", b"m1"], "window of 2 not respected"
    received = list(got)
    # Acknowledge out of order: each PUBACK frees one slot and the next queued message goes out.
    sub.send(w.puback(got[1].packet_id))
    nxt = sub.publishes()
    assert [p.payload for p in nxt] == [b"m2"]
    received += nxt
    # A new message published while the queue is not empty goes behind it, not ahead.
    publish_qos1(pub, "win", b"m6", packet_id=7)
    assert sub.take() == []
    unacked = [got[0], nxt[0]]
    while unacked:
        sub.send(w.puback(unacked.pop(0).packet_id))
        more = sub.publishes()
        received += more
        unacked += more
    assert [p.payload for p in received] == [b"m%d" % i for i in range(7)]
    assert len({p.packet_id for p in received[:2]}) == 2


def test_acks_in_one_read_refill_the_window_before_a_later_pingreq_is_answered_MQTT_4_6_0_2():
    """Several PUBACK/PUBCOMP in one read refill the inflight window once, after the run of them, yet
    before the packet that follows: the messages they let out precede the PINGRESP, in queue order
    [MQTT-4.6.0-2] [MQTT-3.12.4-1]."""
    core = Core(max_inflight_messages=3)
    sub = core.connect("sub")
    sub.subscribe(1, ("r", 1))
    pub = core.connect("pub")
    for i in range(8):
        publish_qos1(pub, "r", b"m%d" % i, packet_id=i + 1)
    first = sub.publishes()
    assert [p.payload for p in first] == [b"m0", b"m1", b"m2"]
    sub.send(b"".join(w.puback(p.packet_id) for p in first[:2]) + w.pingreq() + w.puback(first[2].packet_id))
    got = sub.take()
    assert [getattr(p, "payload", p) for p in got] == [b"m3", b"m4", Pingresp(), b"m5"], got


def _window_of_four() -> Tuple[Core, Client, List[Publish]]:
    """A subscriber with a window of 4: one QoS 2 and three QoS 1 messages in flight, six queued."""
    core = Core(max_inflight_messages=4)
    sub = core.connect("sub")
    sub.subscribe(1, ("r/#", 2))
    pub = core.connect("pub")
    publish_qos2(pub, "r/2", b"two", packet_id=1)
    for i in range(9):
        publish_qos1(pub, "r/1", b"m%d" % i, packet_id=i + 2)
    return core, sub, sub.publishes()


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(1, 5), min_size=1, max_size=10))
def test_property_a_read_of_pubacks_acts_as_the_same_acks_arriving_byte_by_byte(picks):
    """A read holding only PUBACKs takes a shorter path than the general parser (Parser.ack_run); the
    result must not depend on it: PUBACKs for messages in flight free their slots and the window is
    refilled in queue order; a PUBACK for an unknown id or a second one for the same id changes
    nothing [MQTT-4.3.2] [MQTT-4.6.0-2] (one for the QoS 2 message closes the connection:
    tests/test_edges.py). The reference feeds the same
    bytes one at a time, which the short path never accepts."""
    results = []
    for split in (False, True):
        core, sub, sent = _window_of_four()
        assert [p.qos for p in sent] == [2, 1, 1, 1]
        ids = [p.packet_id for p in sent] + [999, 0xFFFF]  # the last two were never sent
        data = b"".join(w.puback(ids[i]) for i in picks)
        for chunk in ([data[i:i + 1] for i in range(len(data))] if split else [data]):
            sub.send(chunk)
        session = sub.conn.session
        out = b"".join(sub.conn.out)
        assert sub.conn.out_size == len(out)
        got = [(p.payload, p.packet_id, p.qos, p.dup) for p in sub.publishes()]
        results.append((got, [(k, v[2]) for k, v in session.inflight.items()], len(session.queue)))
        assert not sub.closed
    assert results[0] == results[1]
    freed = {i for i in picks if 1 <= i <= 3}
    assert len(results[0][0]) == len(freed)
    assert results[0][1][0] == (sent[0].packet_id, 0), "the QoS 2 message must stay in flight"


def test_verbose_log_has_a_line_per_puback_also_when_a_read_holds_only_pubacks():
    """Under -v (log type debug) each PUBACK gets Mosquitto's "Received PUBACK" line, whether it came
    alone, with other packets, or in a read of PUBACKs only."""
    core = Core(max_inflight_messages=5)
    core.broker.debug = True  # what a logger with debug enabled sets
    sub = core.connect("sub")
    sub.subscribe(1, ("v", 1))
    pub = core.connect("pub")
    for i in range(4):
        publish_qos1(pub, "v", b"m%d" % i, packet_id=i + 1)
    ids = [p.packet_id for p in sub.publishes()]
    sub.send(w.puback(ids[0]) + w.puback(ids[1]))  # PUBACKs only
    sub.send(w.puback(ids[2]) + w.pingreq())       # the general path
    sub.send(w.puback(ids[3]))
    assert core.logged("Received PUBACK from sub") == [
        f"Received PUBACK from sub (Mid: {i}, RC:0)" for i in ids]


def test_max_inflight_messages_qos2_slot_held_until_pubcomp():
    core = Core(max_inflight_messages=1)
    sub = core.connect("sub")
    sub.subscribe(1, ("w2", 2))
    pub = core.connect("pub")
    for i in (1, 2):
        publish_qos2(pub, "w2", b"m%d" % i, packet_id=i)
    (m1,) = sub.publishes()
    sub.send(w.pubrec(m1.packet_id))
    assert sub.take() == [Pubrel(m1.packet_id)]  # still in flight: no second PUBLISH yet
    sub.send(w.pubcomp(m1.packet_id))
    (m2,) = sub.publishes()
    assert m2.payload == b"m2"


def _offline_subscriber(core: Core, client_id: str = "away", qos: int = 1) -> None:
    sub = core.connect(client_id, clean=False)
    sub.subscribe(1, ("off/#", qos))
    sub.disconnect()


def test_max_queued_messages_drops_are_counted_and_logged_once():
    core = Core(max_queued_messages=3)
    _offline_subscriber(core)
    pub = core.connect("pub")
    for i in range(6):
        publish_qos1(pub, "off/t", b"m%d" % i, packet_id=i + 1)
    assert core.broker.stats.publish_dropped == 3
    drops = core.logged("dropped")
    assert len(drops) == 1, drops
    assert "away" in drops[0] and "max_queued_messages" in drops[0]
    assert all(level == L.NOTICE for level, m in core.logs if "dropped" in m)

    sub = core.connect("away", clean=False, present=True)
    got = sub.publishes()
    assert [p.payload for p in got] == [b"m0", b"m1", b"m2"], "the oldest are kept, the newest dropped"
    for p in got:
        sub.send(w.puback(p.packet_id))
    sub.disconnect()
    # The queue drained: a new overflow is logged again (once).
    for i in range(5):
        publish_qos1(pub, "off/t", b"n%d" % i, packet_id=i + 1)
    assert core.broker.stats.publish_dropped == 5
    assert len(core.logged("dropped")) == 2


def test_max_queued_bytes_bounds_the_offline_queue_payload():
    core = Core(max_queued_bytes=10, max_queued_messages=0)
    _offline_subscriber(core)
    pub = core.connect("pub")
    for i, payload in enumerate((b"aaaa", b"bbbb", b"cccc", b"dd", b"e")):
        publish_qos1(pub, "off/t", payload, packet_id=i + 1)
    # 4 + 4 fit, + 4 would be 12 > 10: dropped; + 2 = 10 fits; + 1 = 11: dropped.
    assert core.broker.stats.publish_dropped == 2
    assert len(core.logged("max_queued_bytes")) == 1
    sub = core.connect("away", clean=False, present=True)
    assert [p.payload for p in sub.publishes()] == [b"aaaa", b"bbbb", b"dd"]
    assert core.broker.sessions["away"].queued_bytes == 0


@pytest.mark.parametrize("queue_qos0", [False, True])
def test_queue_qos0_messages(queue_qos0):
    core = Core(queue_qos0_messages=queue_qos0)
    _offline_subscriber(core, qos=1)
    pub = core.connect("pub")
    pub.send(w.publish("off/q0", b"zero"))  # QoS 0 publish
    pub.send(w.publish("off/q1", b"one", qos=1, packet_id=1))
    assert pub.take() == [Puback(1)]
    sub = core.connect("away", clean=False, present=True)
    got = [fields(p) for p in sub.publishes()]
    expected = [("off/q1", b"one", 1, False, False)]
    if queue_qos0:
        expected.insert(0, ("off/q0", b"zero", 0, False, False))
    assert got == expected
    assert core.broker.stats.publish_dropped == 0


def test_a_drain_of_mixed_qos_keeps_the_queue_order_and_its_counts():
    """The refill sends QoS 1/2 messages that got their packet id when queued in a loop of its own; a
    QoS 0 message among them (queue_qos0_messages) is handed to the general one, which goes on with the
    rest: the client gets the queue in its order, each QoS 1/2 message with a packet id of its own, and
    the queue's byte count and the sent counters come out right."""
    core = Core(queue_qos0_messages=True, max_inflight_messages=4)
    _offline_subscriber(core, qos=2)
    pub = core.connect("pub")
    sent = [(b"a", 1), (b"b", 2), (b"c", 0), (b"d", 1), (b"e", 1), (b"f", 0), (b"g", 2)]
    for i, (payload, qos) in enumerate(sent):
        if qos == 0:
            pub.send(w.publish("off/t", payload))
        elif qos == 1:
            publish_qos1(pub, "off/t", payload, packet_id=i + 1)
        else:
            publish_qos2(pub, "off/t", payload, packet_id=i + 1)
    stats = core.broker.stats
    before = stats.publish_sent
    sub = core.connect("away", clean=False, present=True)
    got = sub.publishes()
    # the window of 4 holds the QoS 1/2 messages; the QoS 0 one between them goes with them
    assert [(x.payload, x.qos) for x in got] == [(b"a", 1), (b"b", 2), (b"c", 0), (b"d", 1), (b"e", 1)]
    assert len({x.packet_id for x in got if x.qos}) == 4
    session = core.broker.sessions["away"]
    assert session.queued_bytes == 2 and len(session.queue) == 2
    for x in got:
        if x.qos == 1:
            sub.send(w.puback(x.packet_id))
        elif x.qos == 2:
            sub.send(w.pubrec(x.packet_id))
    rest = [x for x in sub.take() if isinstance(x, Publish)]
    assert [(x.payload, x.qos) for x in rest] == [(b"f", 0), (b"g", 2)]
    assert session.queued_bytes == 0 and not session.queue
    assert stats.publish_sent - before == 7


def test_a_queued_delivery_keeps_its_packet_id_and_row_at_the_top_of_their_ranges():
    """A queued delivery's QoS, packet id and store row are kept packed beside its message: ids up to
    65535 then wrapping to 1, and rows (seq) past 2**32, come out as they went in, for a delivery at
    its message's QoS and for one below it (a QoS 2 message to a QoS 1 subscription); and a queued
    message keeps no copy of its publisher's packet id."""
    core = Core(max_inflight_messages=10)
    _offline_subscriber(core, qos=1)
    session = core.broker.sessions["away"]
    session._next_pid = 65533
    core.broker._seq = 2 ** 40
    pub = core.connect("pub")
    publish_qos1(pub, "off/t", b"a", packet_id=40000)
    publish_qos2(pub, "off/t", b"b", packet_id=40001)
    publish_qos1(pub, "off/t", b"c", packet_id=40002)
    assert [m.payload for m in session.queue] == [b"a", b"b", b"c"]
    assert all(getattr(m, "packet_id", 0) == 0 for m in session.queue)
    sub = core.connect("away", clean=False, present=True)
    got = sub.publishes()
    assert [(x.payload, x.qos, x.packet_id, x.dup) for x in got] == [
        (b"a", 1, 65534, False), (b"b", 1, 65535, False), (b"c", 1, 1, False)]
    assert [(pid, e[1], e[3]) for pid, e in session.inflight.items()] == [
        (65534, 1, 2 ** 40 + 1), (65535, 1, 2 ** 40 + 2), (1, 1, 2 ** 40 + 3)]
    sub.send(w.puback(65534) + w.puback(65535) + w.puback(1))
    sub.ping()
    assert not session.inflight and not session.queue


# ---------------------------------------------------------------------------------------------------------
# Routing
# ---------------------------------------------------------------------------------------------------------

def test_MQTT_3_3_5_1_overlapping_subscriptions_one_copy_at_the_highest_qos():
    core = Core()
    sub = core.connect("sub")
    sub.subscribe(1, ("a/+", 0), ("a/#", 2), ("a/b", 1), ("#", 0))
    pub = core.connect("pub")
    publish_qos2(pub, "a/b", b"x", packet_id=1)
    got = sub.publishes()
    assert [fields(p) for p in got] == [("a/b", b"x", 2, False, False)]
    publish_qos1(pub, "a/b", b"y", packet_id=2)
    assert [fields(p) for p in sub.publishes()] == [("a/b", b"y", 1, False, False)]  # [MQTT-3.8.4-6]
    pub.send(w.publish("a/c/d", b"z"))
    assert [fields(p) for p in sub.publishes()] == [("a/c/d", b"z", 0, False, False)]


@pytest.mark.parametrize("filters", [1, 125, 126, 300])
def test_MQTT_3_8_4_5_suback_has_one_code_per_filter_on_both_sides_of_a_one_byte_length(filters):
    """The SUBACK's remaining length is 2 + one byte per filter: up to 125 filters it fits one byte
    (and is built in one piece), from 126 it takes two [MQTT-3.8.4-5] [MQTT-3.8.4-2]."""
    core = Core()
    c = core.connect("many")
    topics = [(f"t/{k}", k % 3) for k in range(filters)]
    c.send(w.subscribe(7, topics))
    raw = b"".join(c.conn.out)
    head = b"\x90" + w.remaining_length(2 + filters)
    assert raw.startswith(head) and len(head) == (2 if filters < 126 else 3)
    assert c.take() == [Suback(7, tuple(q for _, q in topics))]


def test_MQTT_3_8_4_3_resubscribe_replaces_the_qos():
    core = Core()
    sub = core.connect("sub")
    sub.subscribe(1, ("t", 2))
    sub.subscribe(2, ("t", 0))
    pub = core.connect("pub")
    publish_qos1(pub, "t", b"x")
    assert [fields(p) for p in sub.publishes()] == [("t", b"x", 0, False, False)]
    assert core.broker.tree.count == 1


@pytest.mark.parametrize("upgrade", [False, True])
def test_upgrade_outgoing_qos(upgrade):
    core = Core(upgrade_outgoing_qos=upgrade)
    sub = core.connect("sub")
    sub.subscribe(1, ("up", 2), ("down", 1))
    pub = core.connect("pub")
    pub.send(w.publish("up", b"q0"))
    (p,) = sub.publishes()
    if upgrade:
        assert fields(p) == ("up", b"q0", 2, False, False) and p.packet_id != 0
    else:
        assert fields(p) == ("up", b"q0", 0, False, False)
    # Never above the subscription's QoS [MQTT-3.8.4-6], with or without the option.
    publish_qos2(pub, "down", b"q2", packet_id=5)
    (p,) = sub.publishes()
    assert fields(p) == ("down", b"q2", 1, False, False)


def test_retained_stored_replaced_and_cleared():
    """Stored [MQTT-3.3.1-5]; sent on subscribe with RETAIN set [MQTT-3.3.1-6] [MQTT-3.3.1-8]; live
    copies have RETAIN clear [MQTT-3.3.1-9]; a new retained message replaces the old [MQTT-3.3.1-7];
    an empty payload clears it [MQTT-3.3.1-10] [MQTT-3.3.1-11] and is still delivered live."""
    core = Core()
    live = core.connect("live")
    live.subscribe(1, ("r/#", 1))
    pub = core.connect("pub")

    publish_qos1(pub, "r/1", b"v1", retain=True)
    assert core.broker.retained["r/1"].payload == b"v1"
    assert [fields(p) for p in live.publishes()] == [("r/1", b"v1", 1, False, False)]

    first = core.connect("first")
    got = first.subscribe(1, ("r/+", 2))
    assert [fields(p) for p in got] == [("r/1", b"v1", 1, True, False)]  # type: ignore[arg-type]
    first.send(w.puback(got[0].packet_id))  # type: ignore[attr-defined]

    pub.send(w.publish("r/1", b"v2", retain=True))  # QoS 0 retained replaces it
    assert [fields(p) for p in live.publishes()] == [("r/1", b"v2", 0, False, False)]
    assert [fields(p) for p in first.publishes()] == [("r/1", b"v2", 0, False, False)]
    second = core.connect("second")
    got = second.subscribe(1, ("r/1", 1), ("nothing/here", 0))
    assert [fields(p) for p in got] == [("r/1", b"v2", 0, True, False)]  # type: ignore[arg-type]

    publish_qos1(pub, "r/1", b"", packet_id=2, retain=True)
    assert "r/1" not in core.broker.retained
    assert [fields(p) for p in live.publishes()] == [("r/1", b"", 1, False, False)]
    third = core.connect("third")
    assert third.subscribe(1, ("r/#", 1), ("r/1", 0)) == []


def test_MQTT_3_3_1_6_retained_qos_is_the_lower_of_message_and_subscription():
    core = Core()
    pub = core.connect("pub")
    publish_qos2(pub, "rq", b"x", packet_id=1, retain=True)
    sub = core.connect("sub")
    got = sub.subscribe(1, ("rq", 0))
    assert [fields(p) for p in got] == [("rq", b"x", 0, True, False)]  # type: ignore[arg-type]
    sub2 = core.connect("sub2")
    got = sub2.subscribe(1, ("+", 2))
    assert [fields(p) for p in got] == [("rq", b"x", 2, True, False)]  # type: ignore[arg-type]


def test_MQTT_4_7_2_1_dollar_topics_not_matched_by_leading_wildcards():
    core = Core()
    hash_sub = core.connect("hash")
    hash_sub.subscribe(1, ("#", 0))
    plus_sub = core.connect("plus")
    plus_sub.subscribe(1, ("+/x", 0), ("+/#", 0), ("+", 0))
    dollar_sub = core.connect("dollar")
    dollar_sub.subscribe(1, ("$test/+", 0), ("$test/#", 0))
    pub = core.connect("pub")
    pub.send(w.publish("$test/x", b"d", retain=True))
    assert hash_sub.take() == [] and plus_sub.take() == []
    assert [fields(p) for p in dollar_sub.publishes()] == [("$test/x", b"d", 0, False, False)]
    pub.send(w.publish("plain/x", b"p"))
    assert [p.topic for p in hash_sub.publishes()] == ["plain/x"]
    assert [p.topic for p in plus_sub.publishes()] == ["plain/x"]
    assert dollar_sub.take() == []
    # Retained $ topics (ours and $SYS) are not sent to a new `#` or `+/...` subscription either.
    core.broker.publish_sys(1.0)
    late = core.connect("late")
    assert late.subscribe(1, ("#", 0), ("+/x", 0), ("+/broker/version", 0)) == []
    assert [p.topic for p in late.subscribe(2, ("$SYS/broker/version", 0))] == ["$SYS/broker/version"]


# ---------------------------------------------------------------------------------------------------------
# Sessions: takeover, clean session, unsubscribe
# ---------------------------------------------------------------------------------------------------------

def test_MQTT_3_1_4_2_takeover_closes_the_first_connection():
    core = Core()
    first = core.connect("same")
    first.subscribe(1, ("t", 0))
    second = core.connect("same")
    assert first.closed
    assert first.conn in core.broker.closing
    assert first.take() == []
    assert not second.closed
    assert core.broker.stats.clients_connected == 1
    assert core.broker.sessions["same"].conn is second.conn
    first.send(w.pingreq())  # data arriving late on the old connection is ignored
    assert first.take() == []
    pub = core.connect("pub")
    pub.send(w.publish("t", b"x"))
    assert second.take() == []  # clean session: the first connection's subscription is gone
    second.ping()


def test_MQTT_3_1_4_2_takeover_of_a_persistent_session_keeps_it():
    core = Core()
    first = core.connect("same", clean=False)
    first.subscribe(1, ("t", 1))
    second = core.connect("same", clean=False, present=True)
    assert first.closed and not second.closed
    pub = core.connect("pub")
    publish_qos1(pub, "t", b"x")
    assert [fields(p) for p in second.publishes()] == [("t", b"x", 1, False, False)]
    assert first.take() == []


def test_MQTT_3_1_2_6_clean_session_discards_the_old_session():
    core = Core()
    sub = core.connect("cs", clean=False)
    sub.subscribe(1, ("c/#", 1))
    sub.disconnect()
    pub = core.connect("pub")
    publish_qos1(pub, "c/1", b"queued")
    sub = core.connect("cs", clean=True, present=False)
    assert sub.take() == [], "the old session's queue was not discarded"
    publish_qos1(pub, "c/2", b"after", packet_id=2)
    assert sub.take() == [], "the old session's subscription was not discarded"
    assert core.broker.tree.match("c/2") == {}
    sub.disconnect()
    # A clean session ends with its connection [MQTT-3.1.2-6]: nothing left to resume.
    assert "cs" not in core.broker.sessions
    core.connect("cs", clean=False, present=False)


def test_MQTT_3_10_4_5_unsubscribe_stops_delivery_and_unsuback_even_for_an_unknown_filter():
    core = Core()
    sub = core.connect("sub")
    sub.subscribe(1, ("u/+", 0), ("u/a", 1))
    pub = core.connect("pub")
    pub.send(w.publish("u/a", b"1"))
    assert [p.payload for p in sub.publishes()] == [b"1"]  # fills the match cache for u/a

    sub.send(w.unsubscribe(2, ["u/#"]))  # not a subscribed filter: compared character by character
    assert sub.take() == [Unsuback(2)]  # [MQTT-3.10.4-4] [MQTT-3.10.4-5]
    sub.send(w.unsubscribe(3, ["u/a"]))
    assert sub.take() == [Unsuback(3)]
    pub.send(w.publish("u/a", b"2", qos=1, packet_id=1))
    assert pub.take() == [Puback(1)]
    assert [fields(p) for p in sub.publishes()] == [("u/a", b"2", 0, False, False)]  # via u/+ only

    sub.send(w.unsubscribe(4, ["u/+", "never/subscribed"]))
    assert sub.take() == [Unsuback(4)]
    pub.send(w.publish("u/a", b"3"))
    pub.send(w.publish("u/b", b"4"))
    assert sub.take() == []  # [MQTT-3.10.4-2]
    assert core.broker.tree.count == 0
    sub.ping()


# ---------------------------------------------------------------------------------------------------------
# Protocol state and malformed input
# ---------------------------------------------------------------------------------------------------------

BEFORE_CONNECT = [
    pytest.param(w.publish("t", b"x"), id="[MQTT-3.1.0-1] PUBLISH before CONNECT"),
    pytest.param(w.subscribe(1, [("t", 0)]), id="[MQTT-3.1.0-1] SUBSCRIBE before CONNECT"),
    pytest.param(w.pingreq(), id="[MQTT-3.1.0-1] PINGREQ before CONNECT"),
    pytest.param(w.disconnect(), id="[MQTT-3.1.0-1] DISCONNECT before CONNECT"),
    pytest.param(w.connack(False, 0), id="[MQTT-3.1.0-1] CONNACK before CONNECT"),
]


@pytest.mark.parametrize("data", BEFORE_CONNECT)
def test_MQTT_3_1_0_1_first_packet_must_be_connect(data):
    core = Core()
    other = core.connect("other")
    c = core.open()
    c.send(data + w.connect("late"))
    assert c.closed
    assert c.take() == []
    assert core.broker.stats.clients_connected == 1
    other.ping()


AFTER_CONNECT = [
    pytest.param(w.connect("again"), id="[MQTT-3.1.0-2] second CONNECT"),
    pytest.param(w.connect("c"), id="[MQTT-3.1.0-2] second CONNECT same client id"),
    pytest.param(w.connack(False, 0), id="CONNACK from a client"),
    pytest.param(w.suback(1, [0]), id="SUBACK from a client"),
    pytest.param(w.unsuback(1), id="UNSUBACK from a client"),
    pytest.param(w.pingresp(), id="PINGRESP from a client"),
]


@pytest.mark.parametrize("data", AFTER_CONNECT)
def test_packets_a_connected_client_must_not_send_close_the_connection(data):
    core = Core()
    other = core.connect("other")
    c = core.connect("c")
    c.send(data + w.pingreq())
    assert c.closed
    assert c.take() == [], "no response (no second CONNACK, no PINGRESP) after the bad packet"
    assert core.broker.stats.clients_connected == 1
    assert core.logged("protocol error")
    other.ping()


def test_MQTT_4_8_0_1_malformed_packets_close_only_that_connection():
    """Every row of mqttwire.MALFORMED, whole and byte by byte: the connection is closed with no
    response (no CONNACK for a malformed CONNECT), nothing escapes data_received, and a bystander
    keeps working."""
    core = Core()
    bystander = core.connect("bystander")
    bystander.subscribe(1, ("by/#", 1))
    pub = core.connect("pub")
    for case in w.MALFORMED:
        for split in (False, True):
            c = core.open() if case.is_connect else core.connect("victim")
            chunks = [case.data[i:i + 1] for i in range(len(case.data))] if split else [case.data]
            for chunk in chunks:
                c.send(chunk)  # must not raise
            assert c.closed, f"{case.name} (split={split}) did not close the connection"
            assert c.take() == [], f"{case.name}: a response was sent"
            c.send(w.pingreq())  # data after close is ignored
            assert c.take() == []
            assert core.broker.stats.clients_connected == 2, case.name
    assert not bystander.closed and not pub.closed
    publish_qos1(pub, "by/x", b"still here")
    assert [fields(p) for p in bystander.publishes()] == [("by/x", b"still here", 1, False, False)]
    assert len(core.broker.connections) == 2


def test_oversized_declared_length_closes_before_connect_and_after():
    """Before CONNECT only PRE_CONNECT_MAX_BYTES are allowed; after it, max_packet_size (a whole
    packet, fixed header included). The check fires on the fixed header alone."""
    core = Core(max_packet_size=1024)
    c = core.open()
    c.send(w.fixed_header(w.CONNECT, 0, 200 * 1024 * 1024))
    assert c.closed and c.take() == []
    c = core.open()
    c.send(w.fixed_header(w.CONNECT, 0, PRE_CONNECT_MAX_BYTES))
    assert c.closed

    sub = core.connect("sub")
    sub.subscribe(1, ("big", 0))
    pub = core.connect("pub")
    n = 1024 - len(w.publish("big", b""))
    while len(w.publish("big", b"x" * n)) > 1024:
        n -= 1
    exact = w.publish("big", b"x" * n)
    assert len(exact) == 1024
    pub.send(exact)
    assert not pub.closed
    assert [len(p.payload) for p in sub.publishes()] == [n]
    pub.send(w.publish("big", b"x" * (n + 1)))
    assert pub.closed
    assert sub.take() == []

    c = core.connect("huge")
    c.send(w.fixed_header(w.PUBLISH, 0, 200 * 1024 * 1024) + b"\x00\x03big")
    assert c.closed
    assert not sub.closed


def _mutate(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        op = rng.randrange(4)
        if op == 0 and b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
        elif op == 1:
            b.insert(rng.randint(0, len(b)), rng.randrange(256))
        elif op == 2 and b:
            del b[rng.randrange(len(b))]
        elif b:
            del b[rng.randint(0, len(b) - 1):]
    return bytes(b)


def _valid_packets(rng: random.Random) -> List[bytes]:
    pid = rng.randint(1, 65535)
    return [
        w.publish("f/%d" % rng.randrange(5), bytes(rng.randrange(256) for _ in range(rng.randrange(20))),
                  qos=rng.randrange(3), retain=rng.random() < 0.2, packet_id=pid if rng.random() < 0.7 else None),
        w.subscribe(pid, [("f/+", rng.randrange(3)), ("#", 0)]),
        w.unsubscribe(pid, ["f/+"]),
        w.puback(pid), w.pubrec(pid), w.pubrel(pid), w.pubcomp(pid), w.pingreq(),
        w.connect("fz%d" % rng.randrange(10), clean=rng.random() < 0.5, keepalive=rng.randrange(100),
                  will=w.Will("f/w", b"w", rng.randrange(3), rng.random() < 0.5) if rng.random() < 0.3 else None),
    ]


def test_MQTT_4_8_0_1_random_and_mutated_input_never_raises_out_of_data_received():
    """A seeded fuzz of the whole core: random bytes, mutated valid packets, random chunking. Nothing
    escapes data_received; afterwards the counters agree with the connections that remain."""
    rng = random.Random(20240611)
    core = Core()
    bystander = core.connect("bystander")
    bystander.subscribe(1, ("f/#", 0))
    for round_ in range(600):
        c = core.open()
        kind = rng.randrange(4)
        if kind == 0:
            stream = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
        elif kind == 1:
            stream = _mutate(rng, rng.choice(_valid_packets(rng)))
        elif kind == 2:
            stream = w.connect("fz-%d" % round_) + b"".join(
                _mutate(rng, p) if rng.random() < 0.3 else p for p in rng.sample(_valid_packets(rng), 4))
        else:
            stream = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 20))) + w.connect("g%d" % round_)
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 64)
            c.send(stream[pos:pos + step])
            pos += step
        c.take()
        core.now += 0.01
        if not c.closed:
            c.lose()
        bystander.take()
    b = core.broker
    assert not bystander.closed
    assert b.stats.clients_connected == 1
    assert list(b.connections) == [bystander.conn]
    bystander.ping()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(connect_first=st.booleans(), chunks=st.lists(st.binary(max_size=64), max_size=8))
def test_property_data_received_never_raises(connect_first, chunks):
    core = Core()
    c = core.connect("p") if connect_first else core.open()
    for chunk in chunks:
        c.send(chunk)
    c.take()
    if not c.closed:
        c.lose()
    assert core.broker.stats.clients_connected == 0
    assert core.broker.connections == {}


# ---------------------------------------------------------------------------------------------------------
# $SYS
# ---------------------------------------------------------------------------------------------------------

def test_publish_sys_retains_version_and_connected_count_and_publishes_only_changes():
    core = Core()
    sub = core.connect("sys-sub")
    sub.subscribe(1, ("$SYS/broker/clients/+", 0), ("$SYS/broker/version", 0))
    other = core.connect("other")
    b = core.broker
    b.publish_sys(1.0)
    assert b.retained["$SYS/broker/version"].payload == ("edgebroker version " + __version__).encode()
    assert b.retained["$SYS/broker/clients/connected"].payload == b"2"
    assert b.retained["$SYS/broker/clients/connected"].retain
    live = sub.publishes()
    got = {p.topic: p.payload for p in live}
    assert got["$SYS/broker/clients/connected"] == b"2"
    assert got["$SYS/broker/clients/maximum"] == b"2"
    assert got["$SYS/broker/version"] == ("edgebroker version " + __version__).encode()
    assert all(not p.retain for p in live)  # live copies [MQTT-3.3.1-9]

    other.disconnect()
    b.publish_sys(2.0)
    assert b.retained["$SYS/broker/clients/connected"].payload == b"1"
    live = sub.publishes()
    got = {p.topic: p.payload for p in live}
    assert got["$SYS/broker/clients/connected"] == b"1"
    assert "$SYS/broker/version" not in got, "unchanged values are not published again"
    assert "$SYS/broker/clients/maximum" not in got
    assert all(not p.retain for p in live)  # [MQTT-3.3.1-9]
    b.publish_sys(3.0)
    assert sub.take() == []


def test_sys_interval_drives_publish_sys_from_tick():
    core = Core(sys_interval=10)
    core.connect("a")
    core.run_until(0.0)
    b = core.broker
    assert b.retained["$SYS/broker/clients/connected"].payload == b"1"
    core.connect("b")
    core.run_until(9.9)
    assert b.retained["$SYS/broker/clients/connected"].payload == b"1"
    core.run_until(10.0)
    assert b.retained["$SYS/broker/clients/connected"].payload == b"2"
    assert b.retained["$SYS/broker/uptime"].payload == b"10 seconds"


# ---------------------------------------------------------------------------------------------------------
# The topic trie
# ---------------------------------------------------------------------------------------------------------

MATCHES = [
    ("a/#", "a", True), ("a/#", "a/b/c", True), ("a/#", "ab", False), ("a/#", "ab/c", False),
    ("sport/#", "sport", True), ("sport/tennis/#", "sport/tennis", True),
    ("sport/tennis/+", "sport/tennis/player1", True), ("sport/tennis/+", "sport/tennis/player1/ranking", False),
    ("sport/+", "sport", False), ("sport/+", "sport/", True),
    ("+/+", "/finance", True), ("/+", "/finance", True), ("+", "/finance", False),
    ("#", "$SYS/x", False), ("+/monitor/Clients", "$SYS/monitor/Clients", False),
    ("$SYS/#", "$SYS/monitor/Clients", True), ("$SYS/monitor/+", "$SYS/monitor/Clients", True),
    ("#", "a", True), ("+", "a", True), ("a/+/c", "a//c", True), ("a", "a/", False), ("A", "a", False),
]


@pytest.mark.parametrize("topic_filter,topic,expected", MATCHES)
def test_filter_matches_and_topic_tree_agree_on_spec_examples(topic_filter, topic, expected):
    """Section 4.7 examples: `sport/#` matches `sport`, `a/#` does not match `ab`, `$` topics
    [MQTT-4.7.2-1]."""
    assert filter_matches(topic_filter, topic) is expected
    tree = TopicTree()
    tree.subscribe(topic_filter, "s", 1)
    assert (tree.match(topic) == {"s": 1}) is expected
    assert (tree.match(topic) == {}) is (not expected)


def test_topic_tree_match_cache_invalidated_on_subscribe_and_unsubscribe():
    tree = TopicTree()
    tree.subscribe("a/+", "s1", 0)
    assert tree.match("a/b") == {"s1": 0}
    tree.subscribe("a/b", "s2", 2)
    assert tree.match("a/b") == {"s1": 0, "s2": 2}
    tree.subscribe("#", "s1", 1)  # higher QoS for s1 through another filter
    assert tree.match("a/b") == {"s1": 1, "s2": 2}
    assert tree.unsubscribe("#", "s1")
    assert tree.match("a/b") == {"s1": 0, "s2": 2}
    assert tree.unsubscribe("a/+", "s1")
    assert tree.match("a/b") == {"s2": 2}
    assert not tree.unsubscribe("a/+", "s1")
    assert not tree.unsubscribe("x/y/z", "s2")
    assert tree.unsubscribe("a/b", "s2")
    assert tree.match("a/b") == {}
    assert tree.count == 0


def test_topic_tree_caches_every_unmatched_topic_as_one_shared_empty_result():
    # Memory (issue 19): thousands of topics nobody subscribes to (retained sensor readings) cost their
    # cache entry only, not an empty dict each; a subscription that matches them still shows.
    tree = TopicTree()
    tree.subscribe("a/+", "s1", 1)
    misses = [tree.match(f"b/{k}") for k in range(50)]
    assert all(m == {} for m in misses) and len({id(m) for m in misses}) == 1
    assert tree.match("a/x") == {"s1": 1} and tree.match("a/x") is not misses[0]
    tree.subscribe("b/#", "s2", 0)
    assert tree.match("b/7") == {"s2": 0} and misses[0] == {}


def test_topic_tree_count_and_pruning():
    tree = TopicTree()
    assert tree.subscribe("a/b/c", "s", 0)
    assert not tree.subscribe("a/b/c", "s", 1)  # replaced, not added [MQTT-3.8.4-3]
    assert tree.subscribe("a/b/c", "t", 0)
    assert tree.count == 2
    tree.unsubscribe("a/b/c", "s")
    tree.unsubscribe("a/b/c", "t")
    assert tree.count == 0
    assert tree._root.children == {}, "empty branches are pruned"


def test_topic_tree_literal_filters_match_only_their_own_topic_and_are_dropped_when_empty():
    """Filters without a wildcard are kept by the topic name they match (not in the trie): with or
    without wildcard filters beside them, each matches its own topic only, with the highest QoS."""
    tree = TopicTree()
    for k in range(3):
        tree.subscribe(f"dev/{k}/cmd", f"s{k}", k)
    assert tree.match("dev/1/cmd") == {"s1": 1}
    assert tree.match("dev/1") == {} and tree.match("dev/1/cmd/x") == {}
    tree.subscribe("dev/+/cmd", "s1", 2)
    tree.subscribe("dev/#", "log", 0)
    assert tree.match("dev/1/cmd") == {"s1": 2, "log": 0}
    assert tree.match("dev/2/cmd") == {"s1": 2, "s2": 2, "log": 0}
    assert tree.unsubscribe("dev/+/cmd", "s1") and tree.unsubscribe("dev/#", "log")
    assert tree.match("dev/1/cmd") == {"s1": 1}
    assert not tree.unsubscribe("dev/1/cmd", "s2")
    for k in range(3):
        assert tree.unsubscribe(f"dev/{k}/cmd", f"s{k}")
    assert tree.count == 0 and tree._literal == {} and tree._root.children == {}


def test_topic_tree_literal_filter_of_one_subscriber_is_a_pair_until_a_second_comes():
    """Memory (issue 19): a device's own topic has one subscriber, kept as a (subscriber, qos) pair, not
    a dict; the second subscriber makes it a dict, and it goes back to a pair when one is left. The
    match and the count are the same either way, and QoS is replaced, not added [MQTT-3.8.4-3]."""
    tree = TopicTree()
    assert tree.subscribe("dev/1", "a", 0)
    assert tree._literal["dev/1"] == ("a", 0)
    assert not tree.subscribe("dev/1", "a", 2)
    assert tree._literal["dev/1"] == ("a", 2) and tree.match("dev/1") == {"a": 2} and tree.count == 1
    assert tree.subscribe("dev/1", "b", 1)
    assert tree._literal["dev/1"] == {"a": 2, "b": 1} and tree.match("dev/1") == {"a": 2, "b": 1}
    assert not tree.unsubscribe("dev/1", "c") and tree.count == 2
    assert tree.unsubscribe("dev/1", "a")
    assert tree._literal["dev/1"] == ("b", 1) and tree.match("dev/1") == {"b": 1} and tree.count == 1
    assert not tree.unsubscribe("dev/1", "a")
    tree.subscribe("dev/+", "w", 0)  # the walk merges the pair too
    assert tree.match("dev/1") == {"b": 1, "w": 0}
    assert tree.unsubscribe("dev/1", "b") and "dev/1" not in tree._literal
    assert tree.match("dev/1") == {"w": 0} and tree.count == 1


def test_topic_tree_keeps_no_cache_entry_for_a_device_topic_while_no_filter_has_a_wildcard():
    """Memory (issue 19): a message to each of many devices on topics of their own (S6) cached a dict per
    topic; with one subscriber (or none) and no wildcard filter the answer comes from the literal lookup
    and nothing is kept. A topic with two subscribers, or any topic once a wildcard filter exists, is
    cached as before."""
    tree = TopicTree()
    for k in range(100):
        tree.subscribe(f"dev/{k}", f"s{k}", 1)
    tree.subscribe("dev/0", "log", 0)
    assert [tree.match(f"dev/{k}") for k in (1, 2, 99)] == [{"s1": 1}, {"s2": 1}, {"s99": 1}]
    assert tree.match("dev/none") == {} and tree._cache == {}
    assert tree.match("dev/0") == {"s0": 1, "log": 0} and list(tree._cache) == ["dev/0"]
    tree.subscribe("dev/+", "w", 0)
    assert tree.match("dev/1") == {"s1": 1, "w": 0} and "dev/1" in tree._cache


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.sampled_from(["t", "t/u", "+", "t/#"]),
                              st.sampled_from("abc"), st.integers(0, 2)), max_size=30))
def test_property_topic_tree_agrees_with_a_dict_of_subscriptions(ops):
    """Random subscribes and unsubscribes of a few subscribers on a few filters (several subscribers per
    filter, so the literal filters go between their pair and dict forms): match, count and the return
    values agree with a plain model, a dict of (filter, subscriber) -> qos."""
    tree = TopicTree()
    model: Dict[Tuple[str, str], int] = {}
    for sub, topic_filter, who, qos in ops:
        if sub:
            assert tree.subscribe(topic_filter, who, qos) == ((topic_filter, who) not in model)
            model[(topic_filter, who)] = qos
        else:
            assert tree.unsubscribe(topic_filter, who) == ((topic_filter, who) in model)
            model.pop((topic_filter, who), None)
        for topic in ("t", "t/u", "x"):
            expected: Dict[str, int] = {}
            for (f, w), q in model.items():
                if filter_matches(f, topic):
                    expected[w] = max(q, expected.get(w, -1))
            assert tree.match(topic) == expected, (topic, model)
        assert tree.count == len(model)


LEVELS_T = ["a", "b", "$s", ""]
LEVELS_F = LEVELS_T + ["+"]


def _reference_match(topic_filter: str, topic: str) -> bool:
    """Section 4.7 written out independently: `#` matches the rest (zero or more levels, so the
    parent too), `+` one level, and a topic starting with `$` is not matched by a leading wildcard."""
    f = topic_filter.split("/")
    t = topic.split("/")
    if topic.startswith("$") and f[0] in ("+", "#"):
        return False

    def rec(i: int, j: int) -> bool:
        if i == len(f):
            return j == len(t)
        if f[i] == "#":
            return True
        if j == len(t):
            return False
        return (f[i] == "+" or f[i] == t[j]) and rec(i + 1, j + 1)

    return rec(0, 0)


topic_names = st.lists(st.sampled_from(LEVELS_T), min_size=1, max_size=4).map("/".join).filter(bool)
topic_filters = st.builds(
    lambda levels, hash_: "/".join(levels + (["#"] if hash_ else [])),
    st.lists(st.sampled_from(LEVELS_F), min_size=0, max_size=4), st.booleans(),
).filter(bool)


@settings(max_examples=300, deadline=None)
@given(subs=st.lists(st.tuples(topic_filters, st.integers(0, 2)), min_size=1, max_size=12),
       topics=st.lists(topic_names, min_size=1, max_size=10),
       drop=st.sets(st.integers(0, 11)))
def test_property_topic_tree_match_agrees_with_filter_matches(subs, topics, drop):
    """For random filters (one subscriber each) and topics, TopicTree.match returns exactly the
    subscribers whose filter filter_matches (and the reference) accepts, with their QoS; again after
    unsubscribing some (the cache must not serve stale results)."""
    tree = TopicTree()
    subscribed: Dict[int, Tuple[str, int]] = {}
    for i, (topic_filter, qos) in enumerate(subs):
        tree.subscribe(topic_filter, i, qos)
        subscribed[i] = (topic_filter, qos)

    def check() -> None:
        for topic in topics:
            expected = {i: q for i, (f, q) in subscribed.items() if filter_matches(f, topic)}
            assert tree.match(topic) == expected, (topic, subscribed)
            assert tree.match(topic) == expected  # and from the cache
            for f, _ in subscribed.values():
                assert filter_matches(f, topic) == _reference_match(f, topic), (f, topic)

    check()
    for i in sorted(drop):
        if i in subscribed:
            assert tree.unsubscribe(subscribed.pop(i)[0], i)
    check()
    assert tree.count == len(subscribed)


def test_MQTT_3_1_3_6_assigned_client_id_is_the_prefix_and_a_random_uuid():
    """An empty client id with clean session 1 gets auto_id_prefix + a random version 4 UUID in
    upper-case hex, as Mosquitto assigns it [MQTT-3.1.3-6]; two of them differ."""
    import re

    core = Core(auto_id_prefix="gw-")
    ids = [core.connect("").conn.client_id for _ in range(2)]
    for cid in ids:
        assert re.fullmatch(r"gw-[0-9A-F]{8}-[0-9A-F]{4}-4[0-9A-F]{3}-[89AB][0-9A-F]{3}-[0-9A-F]{12}", cid), cid
    assert ids[0] != ids[1]


def test_subscribe_log_lines_only_when_their_log_type_is_on():
    """A SUBSCRIBE's `<client> <qos> <filter>` line (log_type subscribe, off by default as in Mosquitto)
    is written once the type is on, after a reload too; while off nothing is logged for it."""
    import io
    stream = io.StringIO()
    logger = L.Logger(types=L.DEFAULT_TYPES, stream=stream, timestamp=False)
    config = Config(persistence=False)
    broker = Broker(config, 0.0, logger)
    conn = broker.connection_made("127.0.0.1:1", 1883, 0.0)
    broker.data_received(conn, w.connect("dev-1") + w.subscribe(1, [("a/b", 1)]), 0.0)
    assert "dev-1 1 a/b" not in stream.getvalue()
    logger.types |= L.SUBSCRIBE  # what a reload with log_type subscribe sets
    broker.reconfigure(config)
    broker.data_received(conn, w.subscribe(2, [("c/d", 0)]), 0.0)
    assert "dev-1 0 c/d\n" in stream.getvalue()
    lines: List[str] = []  # a plain log function (no `enabled`) gets every line
    plain = Broker(config, 0.0, lambda level, message: lines.append(message))
    other = plain.connection_made("127.0.0.1:2", 1883, 0.0)
    plain.data_received(other, w.connect("dev-2") + w.subscribe(1, [("e/f", 2)]), 0.0)
    assert "dev-2 2 e/f" in lines
