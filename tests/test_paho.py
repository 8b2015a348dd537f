"""The broker against a real client library (paho-mqtt >= 2.0, MQTT 3.1.1), plus raw sockets where a
client library would hide what we check (abnormal closes, unacknowledged messages, the DUP flag).

Theory of operation: each test gets a broker running in a thread of this process (`broker` or
`make_broker` from conftest) and makes paho clients through the `paho` fixture, which runs each client's
network loop in its own thread and hands received messages to the test through a queue. Nothing waits by
sleeping: a test waits on a queue, an event or `wait_for` with a deadline.

"Nothing else arrived" is proved with a marker: the broker handles one connection's packets in order, so
after a marker message published on the same connection has arrived, every message the broker routed
before it has arrived too. (paho hands a QoS 2 message to the application only at PUBREL, so a marker
that follows QoS 2 deliveries is itself QoS 2.) A disconnect is known to be processed when the broker's
`stats.clients_connected` has dropped.

Conformance statements are those of MQTT Version 3.1.1 (OASIS Standard, 29 October 2014).
"""
from __future__ import annotations

import queue
import time
from typing import Any, Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import pytest

mqtt = pytest.importorskip("paho.mqtt.client")

try:  # tests/ on sys.path (pytest's default rootdir-relative import)
    import mqttwire as w
    from util import wait_for
except ImportError:  # tests imported as a package
    from tests import mqttwire as w  # type: ignore[no-redef]
    from tests.util import wait_for  # type: ignore[no-redef]

TIMEOUT = 5.0


# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------

class Msg(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool


class Paho:
    """A paho client whose loop runs in a thread; messages go to a queue, CONNACK and SUBACK are waited on."""

    def __init__(self, broker: Any, client_id: str = "", clean_session: bool = True,
                 will: Optional[Tuple[str, bytes, int, bool]] = None) -> None:
        self.broker = broker
        self.messages: "queue.Queue[Msg]" = queue.Queue()
        self.connacks: "queue.Queue[Tuple[int, bool]]" = queue.Queue()
        self.subacks: Dict[int, List[int]] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  clean_session=clean_session, protocol=mqtt.MQTTv311)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos=qos, retain=retain)
        self.running = False

    # callbacks (paho's network thread)
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        self.connacks.put((reason_code.value, bool(flags.session_present)))

    def _on_message(self, client: Any, userdata: Any, m: Any) -> None:
        self.messages.put(Msg(m.topic, bytes(m.payload), m.qos, bool(m.retain), bool(m.dup)))

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: Any, properties: Any) -> None:
        self.subacks[mid] = [rc.value for rc in reason_codes]

    # test side
    def connect(self) -> bool:
        """Connect, wait for a successful CONNACK and return its session present flag."""
        self.client.connect(self.broker.host, self.broker.port, keepalive=60)
        self.client.loop_start()
        self.running = True
        rc, session_present = self.connacks.get(timeout=TIMEOUT)
        assert rc == 0, f"CONNACK return code {rc}"
        return session_present

    def subscribe(self, *filters: Tuple[str, int]) -> List[int]:
        """Subscribe and wait for the SUBACK; returns the granted QoS list."""
        rc, mid = self.client.subscribe(list(filters))
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return wait_for(lambda: self.subacks.get(mid), TIMEOUT, what=f"SUBACK for {filters}")

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, wait: bool = True) -> Any:
        """Publish; for QoS 1/2 with wait, return once PUBACK/PUBCOMP came back (the broker has it)."""
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, info.rc
        if wait and qos > 0:
            info.wait_for_publish(TIMEOUT)
            assert info.is_published(), f"no acknowledgement for {topic!r} {payload!r} QoS {qos}"
        return info

    def get(self, timeout: float = TIMEOUT) -> Msg:
        try:
            return self.messages.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no message within {timeout}s") from None

    def get_n(self, n: int, timeout: float = TIMEOUT) -> List[Msg]:
        deadline = time.monotonic() + timeout
        got: List[Msg] = []
        while len(got) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"got {len(got)} of {n} messages within {timeout}s: {got[-5:]}")
            try:
                got.append(self.messages.get(timeout=left))
            except queue.Empty:
                continue
        return got

    def until(self, topic: str, payload: Optional[bytes] = None, timeout: float = TIMEOUT) -> List[Msg]:
        """Messages received before the first one on `topic` (with `payload` if given); that one is consumed."""
        deadline = time.monotonic() + timeout
        before: List[Msg] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"marker {topic!r} not received within {timeout}s; got {before}")
            try:
                m = self.messages.get(timeout=left)
            except queue.Empty:
                continue
            if m.topic == topic and (payload is None or m.payload == payload):
                return before
            before.append(m)

    def disconnect(self) -> None:
        """Send DISCONNECT and stop the loop thread."""
        if self.running:
            self.client.disconnect()
            self.client.loop_stop()
            self.running = False


@pytest.fixture
def paho(make_broker: Any) -> Iterator[Callable[..., Paho]]:
    """paho(broker, client_id="", clean_session=True, will=None, connect=True) -> Paho; all closed at the end."""
    made: List[Paho] = []

    def make(broker: Any, client_id: str = "", clean_session: bool = True,
             will: Optional[Tuple[str, bytes, int, bool]] = None, connect: bool = True) -> Paho:
        c = Paho(broker, client_id, clean_session, will)
        made.append(c)
        if connect:
            c.connect()
        return c

    yield make
    for c in made:
        c.disconnect()


@pytest.fixture
def raw(make_broker: Any) -> Iterator[Callable[[Any], w.RawClient]]:
    """raw(broker) -> a connected-socket RawClient (no CONNECT sent yet); all closed at the end."""
    made: List[w.RawClient] = []

    def make(broker: Any) -> w.RawClient:
        c = w.RawClient(broker.host, broker.port, timeout=TIMEOUT)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def stats(broker: Any) -> Any:
    return broker.server.broker.stats


def wait_clients(broker: Any, n: int) -> None:
    """Wait until the broker counts exactly n connected clients (so a disconnect has been processed)."""
    wait_for(lambda: stats(broker).clients_connected == n, TIMEOUT, what=f"clients_connected == {n}")


class RawPublish(NamedTuple):
    dup: bool
    qos: int
    retain: bool
    topic: str
    packet_id: Optional[int]
    payload: bytes


def parse_publish(first: int, body: bytes) -> RawPublish:
    assert first >> 4 == w.PUBLISH, f"expected PUBLISH, got first byte {first:#04x} body {body.hex(' ')}"
    qos = (first >> 1) & 3
    n = int.from_bytes(body[:2], "big")
    topic = body[2:2 + n].decode("utf-8")
    i = 2 + n
    packet_id = None
    if qos:
        packet_id = int.from_bytes(body[i:i + 2], "big")
        i += 2
    return RawPublish(bool(first & 0x08), qos, bool(first & 0x01), topic, packet_id, body[i:])


def raw_subscribe(c: w.RawClient, packet_id: int, filters: Sequence[Tuple[str, int]]) -> None:
    c.send(w.subscribe(packet_id, filters))
    got = c.read_raw_packet()
    assert got == w.suback(packet_id, [q for _, q in filters]), w.hexs(got)


def read_until_pingresp(c: w.RawClient) -> List[RawPublish]:
    """Send PINGREQ and return every PUBLISH the broker sent before the PINGRESP."""
    c.send(w.pingreq())
    publishes = []
    while True:
        first, body = c.read_packet()
        if first == 0xD0:
            return publishes
        publishes.append(parse_publish(first, body))


# ---------------------------------------------------------------------------------------------------------
# QoS
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pub_qos", [0, 1, 2])
def test_delivered_at_min_of_publish_and_subscription_qos_MQTT_3_8_4_6(broker, paho, pub_qos):
    """Every QoS flow client -> broker and broker -> client works, and a subscriber receives the message at
    min(publish QoS, granted QoS) [MQTT-3.8.4-6]; SUBACK grants the requested QoS [MQTT-3.8.4-5];
    QoS 1/2 publishes are acknowledged (paho waits for PUBACK / PUBCOMP) [MQTT-4.3.2-2] [MQTT-4.3.3-2]."""
    subs = []
    for sub_qos in (0, 1, 2):
        s = paho(broker, client_id=f"sub{sub_qos}")
        assert s.subscribe(("qos/topic", sub_qos)) == [sub_qos]
        subs.append(s)
    pub = paho(broker, client_id="pub")
    pub.publish("qos/topic", b"payload-%d" % pub_qos, qos=pub_qos)
    for sub_qos, s in enumerate(subs):
        m = s.get()
        assert (m.topic, m.payload, m.qos, m.retain) == ("qos/topic", b"payload-%d" % pub_qos,
                                                        min(pub_qos, sub_qos), False)
    # exactly one copy each: a QoS 2 marker after it arrives with nothing in between
    pub.publish("qos/topic", b"end", qos=2)
    for s in subs:
        assert s.until("qos/topic", b"end") == []


@pytest.mark.parametrize("qos", [1, 2])
def test_1000_messages_exactly_once_in_order_MQTT_4_6_0_6(broker, paho, qos):
    """1,000 QoS 1 / QoS 2 messages from one publisher arrive once each, in the order published: the broker
    treats each topic as an Ordered Topic [MQTT-4.6.0-5] and sends PUBLISH packets for the same topic and
    QoS in the order received [MQTT-4.6.0-6]; QoS 2 is delivered exactly once [MQTT-4.3.3-1]."""
    sub = paho(broker, client_id="sub")
    assert sub.subscribe(("bulk", qos)) == [qos]
    pub = paho(broker, client_id="pub")
    expected = [b"%d" % i for i in range(1000)]
    infos = [pub.publish("bulk", p, qos=qos, wait=False) for p in expected]
    got = sub.get_n(1000, timeout=30)
    assert [m.payload for m in got] == expected
    assert {(m.topic, m.qos, m.dup) for m in got} == {("bulk", qos, False)}
    for info in infos:
        info.wait_for_publish(TIMEOUT)
        assert info.is_published()
    pub.publish("bulk", b"end", qos=qos)
    assert sub.until("bulk", b"end") == [], "duplicates after the 1,000 messages"


# ---------------------------------------------------------------------------------------------------------
# Topic filters
# ---------------------------------------------------------------------------------------------------------

WILDCARD_CASES = {
    # filter: topics it must match, in TOPICS order [MQTT-4.7.1-2] [MQTT-4.7.1-3]
    "sport/tennis/+": ["sport/tennis/player1"],
    "sport/#": ["sport", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking", "sport/"],
    "+/tennis/#": ["sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking", "sports/tennis"],
    "sport/+": ["sport/tennis", "sport/"],
    "+": ["sport", "finance"],
    "/+": ["/finance"],
    "+/+": ["sport/tennis", "/finance", "sport/", "sports/tennis"],
    "#": ["sport", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking", "/finance",
          "finance", "sport/", "sports/tennis"],
    "sport/tennis/player1": ["sport/tennis/player1"],
}
TOPICS = ["sport", "sport/tennis", "sport/tennis/player1", "sport/tennis/player1/ranking", "/finance",
          "finance", "sport/", "sports/tennis"]


def test_wildcards_plus_and_hash_MQTT_4_7_1_2_MQTT_4_7_1_3(broker, paho):
    """`#` matches the parent level and any number of child levels [MQTT-4.7.1-2]; `+` matches exactly one
    level, including an empty one [MQTT-4.7.1-3]. Examples of section 4.7.1."""
    subs = {}
    for i, f in enumerate(WILDCARD_CASES):
        s = paho(broker, client_id=f"wild{i}")
        assert s.subscribe((f, 0), ("marker/end", 0)) == [0, 0]
        subs[f] = s
    pub = paho(broker, client_id="pub")
    for t in TOPICS:
        pub.publish(t, t.encode(), qos=0)
    pub.publish("marker/end", b"", qos=0)
    for f, s in subs.items():
        got = [m.topic for m in s.until("marker/end")]
        assert got == WILDCARD_CASES[f], f"filter {f!r}"


def test_wildcards_do_not_match_dollar_topics_MQTT_4_7_2_1(make_broker, paho):
    """Topic filters starting with a wildcard (`#`, `+/...`, `+`) do not match $SYS topic names, neither
    retained ones sent on subscribe nor periodic updates [MQTT-4.7.2-1]; `$SYS/#` does match them."""
    broker = make_broker(sys_interval=1.0)
    wild = paho(broker, client_id="wild")
    wild.subscribe(("#", 0), ("+/broker/version", 0), ("+/#", 0), ("+", 0))
    sys_sub = paho(broker, client_id="sys")
    sys_sub.subscribe(("$SYS/#", 0))
    first = sys_sub.get()  # the $SYS tree exists (retained, or the first periodic update)
    assert first.topic.startswith("$SYS/"), first
    # Also let one periodic update pass (RETAIN 0 to an established subscription), if one comes soon:
    # it was routed to `wild` too, at the same time, if `#` wrongly matched it.
    deadline = time.monotonic() + 2.5
    while first.retain and time.monotonic() < deadline:
        try:
            first = sys_sub.messages.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            break
    pub = paho(broker, client_id="pub")
    pub.publish("marker", b"m", qos=0)
    got = wild.until("marker")
    assert [m.topic for m in got if m.topic.startswith("$")] == []


def test_overlapping_subscriptions_one_copy_at_max_qos_MQTT_3_3_5_1(broker, paho):
    """A message matching several subscriptions of one client is delivered respecting the maximum QoS of
    all the matching subscriptions [MQTT-3.3.5-1]; we (as Mosquitto 1.x's default) deliver one copy."""
    sub = paho(broker, client_id="sub")
    assert sub.subscribe(("ov/#", 0), ("ov/+", 2), ("ov/x", 1)) == [0, 2, 1]
    pub = paho(broker, client_id="pub")
    for qos in (0, 1, 2):
        pub.publish("ov/x", b"q%d" % qos, qos=qos)
        pub.publish("ov/end", b"end%d" % qos, qos=2)
        got = sub.until("ov/end", b"end%d" % qos)
        assert [(m.topic, m.payload, m.qos) for m in got] == [("ov/x", b"q%d" % qos, qos)]


# ---------------------------------------------------------------------------------------------------------
# Retained messages
# ---------------------------------------------------------------------------------------------------------

def test_retained_stored_replaced_cleared_MQTT_3_3_1_5_to_12(broker, paho):
    """A retained message is stored [MQTT-3.3.1-5] and sent to a new subscription [MQTT-3.3.1-6] with the
    RETAIN flag set [MQTT-3.3.1-8], while live deliveries have it clear [MQTT-3.3.1-9]; a new retained
    message replaces it; a PUBLISH without RETAIN neither stores nor removes it [MQTT-3.3.1-12]; an empty
    retained payload is delivered as normal and removes it [MQTT-3.3.1-10] without being stored itself
    [MQTT-3.3.1-11]."""
    pub = paho(broker, client_id="pub")
    live = paho(broker, client_id="live")
    live.subscribe(("ret/#", 1))

    pub.publish("ret/a", b"one", qos=1, retain=True)
    assert live.get() == Msg("ret/a", b"one", 1, False, False)

    s1 = paho(broker, client_id="s1")
    s1.subscribe(("ret/#", 1))
    assert s1.get() == Msg("ret/a", b"one", 1, True, False)

    pub.publish("ret/a", b"two", qos=0, retain=True)  # replaces, stored at QoS 0
    assert live.get() == Msg("ret/a", b"two", 0, False, False)
    pub.publish("ret/a", b"not-retained", qos=1, retain=False)
    assert live.get() == Msg("ret/a", b"not-retained", 1, False, False)

    s2 = paho(broker, client_id="s2")
    s2.subscribe(("ret/a", 1))
    pub.publish("ret/a", b"marker", qos=1)
    assert s2.until("ret/a", b"marker") == [Msg("ret/a", b"two", 0, True, False)]

    pub.publish("ret/a", b"", qos=1, retain=True)  # clears
    assert live.until("ret/a", b"marker") == []  # live's copy of s2's marker, nothing else
    assert live.get() == Msg("ret/a", b"", 1, False, False)

    s3 = paho(broker, client_id="s3")
    s3.subscribe(("ret/#", 1))
    pub.publish("ret/a", b"marker2", qos=1)
    assert s3.until("ret/a", b"marker2") == [], "retained message not cleared by an empty payload"


def test_retained_delivered_at_min_of_stored_and_subscription_qos(broker, paho):
    """A retained message keeps its QoS [MQTT-3.3.1-5] and is delivered at min(its QoS, granted QoS)
    [MQTT-3.8.4-6]."""
    pub = paho(broker, client_id="pub")
    pub.publish("rq/two", b"2", qos=2, retain=True)
    pub.publish("rq/one", b"1", qos=1, retain=True)
    s = paho(broker, client_id="s")
    s.subscribe(("rq/two", 1))
    assert s.get() == Msg("rq/two", b"2", 1, True, False)
    s.subscribe(("rq/one", 2))
    assert s.get() == Msg("rq/one", b"1", 1, True, False)


# ---------------------------------------------------------------------------------------------------------
# Will messages
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("will_qos,will_retain", [(0, False), (1, True), (2, True)])
def test_will_published_on_abnormal_close_MQTT_3_1_2_8(broker, paho, raw, will_qos, will_retain):
    """A connection closed without DISCONNECT publishes the will [MQTT-3.1.2-8] at its QoS, as retained if
    Will Retain is set [MQTT-3.1.2-17] (live subscribers see RETAIN 0 [MQTT-3.3.1-9], later ones RETAIN 1)."""
    sub = paho(broker, client_id="sub")
    sub.subscribe(("will/topic", 2))
    c = raw(broker)
    assert c.connect("dying", will=w.Will("will/topic", b"gone", will_qos, will_retain)) == w.connack(False, 0)
    c.close()  # abnormal: no DISCONNECT
    assert sub.get() == Msg("will/topic", b"gone", will_qos, False, False)
    later = paho(broker, client_id="later")
    later.subscribe(("will/topic", 2))
    pub = paho(broker, client_id="pub")
    pub.publish("will/topic", b"marker", qos=2)
    expected = [Msg("will/topic", b"gone", will_qos, True, False)] if will_retain else []
    assert later.until("will/topic", b"marker") == expected


def test_will_not_published_after_disconnect_MQTT_3_1_2_10_MQTT_3_14_4_3(broker, paho, raw):
    """On DISCONNECT the server discards the will without publishing it [MQTT-3.14.4-3] [MQTT-3.1.2-10]."""
    sub = paho(broker, client_id="sub")
    sub.subscribe(("will/topic", 2))
    c = raw(broker)
    assert c.connect("polite", will=w.Will("will/topic", b"gone", 1, True)) == w.connack(False, 0)
    wait_clients(broker, 2)
    c.send(w.disconnect())
    c.expect_closed()  # on DISCONNECT the server SHOULD close the connection (section 3.14.4), as Mosquitto
    wait_clients(broker, 1)
    pub = paho(broker, client_id="pub")
    pub.publish("will/topic", b"marker", qos=2)
    assert sub.until("will/topic", b"marker") == [], "will published after DISCONNECT"
    later = paho(broker, client_id="later")
    later.subscribe(("will/topic", 2))
    pub.publish("will/topic", b"marker2", qos=2)
    assert later.until("will/topic", b"marker2") == [], "will stored as retained after DISCONNECT"


def test_will_published_when_a_paho_socket_dies(broker, paho):
    """The same with a paho client whose socket is closed under it (no DISCONNECT) [MQTT-3.1.2-8]."""
    sub = paho(broker, client_id="sub")
    sub.subscribe(("will/paho", 1))
    victim = paho(broker, client_id="victim", will=("will/paho", b"bye", 1, False))
    victim.client.loop_stop()  # stop its thread first, so paho neither reconnects nor sends DISCONNECT
    victim.running = False
    victim.client.socket().close()
    assert sub.get() == Msg("will/paho", b"bye", 1, False, False)


# ---------------------------------------------------------------------------------------------------------
# Keep alive
# ---------------------------------------------------------------------------------------------------------

def test_keepalive_enforced_at_one_and_a_half_times_MQTT_3_1_2_24(broker, paho, raw):
    """With Keep Alive 1 s and no traffic, the server closes the connection after 1.5 s, as if the network
    had failed [MQTT-3.1.2-24], so the will is published [MQTT-3.1.2-8]."""
    sub = paho(broker, client_id="sub")
    sub.subscribe(("ka/will", 1))
    c = raw(broker)
    t0 = time.monotonic()
    assert c.connect("sleepy", keepalive=1, will=w.Will("ka/will", b"timeout", 1, False)) == w.connack(False, 0)
    c.expect_closed(timeout=4.0)
    elapsed = time.monotonic() - t0
    assert 1.5 <= elapsed < 3.0, f"closed after {elapsed:.2f}s, expected 1.5 s (one and a half keep alives)"
    assert sub.get() == Msg("ka/will", b"timeout", 1, False, False)


def test_pingreq_gets_pingresp_MQTT_3_12_4_1(broker, raw):
    """The server answers PINGREQ with PINGRESP [MQTT-3.12.4-1]."""
    c = raw(broker)
    assert c.connect("pinger", keepalive=10) == w.connack(False, 0)
    c.ping()
    c.ping()


# ---------------------------------------------------------------------------------------------------------
# Client identifiers and takeover
# ---------------------------------------------------------------------------------------------------------

def test_empty_client_id_with_clean_session_gets_unique_id_MQTT_3_1_3_6(broker, paho):
    """A zero-length ClientId with CleanSession 1 is accepted and assigned a unique id [MQTT-3.1.3-6]: two
    such clients are connected at once (neither takes over the other) and both work."""
    a = paho(broker, client_id="")
    b = paho(broker, client_id="")
    a.subscribe(("anon", 0))
    b.subscribe(("anon", 0))
    wait_clients(broker, 2)
    a.publish("anon", b"hi", qos=1)
    assert a.get().payload == b"hi"
    assert b.get().payload == b"hi"


def test_empty_client_id_without_clean_session_rejected_MQTT_3_1_3_8(broker, raw):
    """A zero-length ClientId with CleanSession 0 gets CONNACK 0x02 (identifier rejected) and the network
    connection is closed [MQTT-3.1.3-8]."""
    c = raw(broker)
    assert c.connect("", clean=False) == w.connack(False, 2)
    c.expect_closed()


def test_empty_client_id_refused_when_not_allowed(make_broker, raw):
    """allow_zero_length_clientid = false: CONNACK 0x02 and close (Mosquitto's behaviour)."""
    broker = make_broker(allow_zero_length_clientid=False)
    c = raw(broker)
    assert c.connect("", clean=True) == w.connack(False, 2)
    c.expect_closed()


def test_second_connection_with_same_client_id_takes_over_MQTT_3_1_4_2(broker, raw):
    """If the ClientId represents a client already connected, the server disconnects the existing client
    [MQTT-3.1.4-2]; the new connection is accepted and works."""
    first = raw(broker)
    assert first.connect("twin") == w.connack(False, 0)
    second = raw(broker)
    assert second.connect("twin") == w.connack(False, 0)
    first.expect_closed()
    second.ping()
    wait_clients(broker, 1)


def test_takeover_publishes_will_of_replaced_connection_MQTT_3_1_2_8(broker, paho, raw):
    """A taken-over connection is closed without a DISCONNECT from its client, so its will is published:
    "The Will Message MUST be published when the Network Connection is subsequently closed unless the Will
    Message has been deleted by the Server on receipt of a DISCONNECT Packet" [MQTT-3.1.2-8]. (Brokers
    differ here: Mosquitto 1.x published it, Mosquitto 2.x clears it; the 3.1.1 text is what we follow.)"""
    sub = paho(broker, client_id="sub")
    sub.subscribe(("takeover/will", 1))
    first = raw(broker)
    assert first.connect("twin", will=w.Will("takeover/will", b"replaced", 1, False)) == w.connack(False, 0)
    second = raw(broker)
    assert second.connect("twin") == w.connack(False, 0)
    first.expect_closed()
    assert sub.get() == Msg("takeover/will", b"replaced", 1, False, False)


# ---------------------------------------------------------------------------------------------------------
# Persistent sessions and the offline queue
# ---------------------------------------------------------------------------------------------------------

def test_persistent_session_queues_qos1_and_qos2_while_offline_MQTT_3_1_2_5_MQTT_3_2_2_2(broker, paho):
    """A CleanSession 0 client gets Session Present 0 the first time [MQTT-3.2.2-3]; while it is offline
    QoS 1 and 2 messages matching its subscriptions are stored [MQTT-3.1.2-5]; on reconnect Session
    Present is 1 [MQTT-3.2.2-2], the session resumes [MQTT-3.1.2-4] and they arrive in order at the
    subscription's QoS [MQTT-4.6.0-6] [MQTT-3.8.4-6]."""
    sub = paho(broker, client_id="persist", clean_session=False, connect=False)
    assert sub.connect() is False
    sub.subscribe(("persist/t", 1))
    pub = paho(broker, client_id="pub")
    sub.disconnect()
    wait_clients(broker, 1)
    expected = []
    for i in range(20):
        qos = 1 + i % 2
        pub.publish("persist/t", b"m%d" % i, qos=qos)
        expected.append(b"m%d" % i)
    again = paho(broker, client_id="persist", clean_session=False, connect=False)
    assert again.connect() is True
    got = again.get_n(20)
    assert [m.payload for m in got] == expected
    assert {(m.topic, m.qos) for m in got} == {("persist/t", 1)}
    pub.publish("persist/t", b"end", qos=1)
    assert again.until("persist/t", b"end") == []


def test_an_unlimited_window_delivers_a_large_offline_queue_in_order_to_paho(make_broker, paho):
    """max_inflight_messages 0: 3,000 messages of 200 B queued offline (about ten REFILL_BYTES slices)
    reach a reconnecting paho client complete and in order [MQTT-4.6.0-6], and a message published
    after them comes last."""
    broker = make_broker(max_inflight_messages=0, max_queued_messages=5000)
    sub = paho(broker, client_id="big", clean_session=False)
    sub.subscribe(("big/t", 1))
    sub.disconnect()
    pub = paho(broker, client_id="pub")
    wait_clients(broker, 1)
    expected = [b"%0200d" % i for i in range(3000)]
    for payload in expected[:-1]:
        pub.publish("big/t", payload, qos=1, wait=False)
    pub.publish("big/t", expected[-1], qos=1)
    again = paho(broker, client_id="big", clean_session=False, connect=False)
    assert again.connect() is True
    assert [m.payload for m in again.get_n(3000)] == expected
    pub.publish("big/t", b"end", qos=1)
    assert again.until("big/t", b"end") == []


def test_clean_session_discards_state_MQTT_3_1_2_6_MQTT_3_2_2_1(broker, paho):
    """CleanSession 1 discards a stored session [MQTT-3.1.2-6] and gets Session Present 0 [MQTT-3.2.2-1]:
    the old subscription is gone and nothing queued is delivered."""
    sub = paho(broker, client_id="cs", clean_session=False)
    sub.subscribe(("cs/t", 1))
    pub = paho(broker, client_id="pub")
    sub.disconnect()
    wait_clients(broker, 1)
    pub.publish("cs/t", b"queued", qos=1)
    clean = paho(broker, client_id="cs", clean_session=True, connect=False)
    assert clean.connect() is False
    clean.subscribe(("cs/marker", 1))
    pub.publish("cs/t", b"after", qos=1)
    pub.publish("cs/marker", b"m", qos=1)
    assert clean.until("cs/marker") == []
    clean.disconnect()
    wait_clients(broker, 1)
    # and a later CleanSession 0 connection starts a new session
    fresh = paho(broker, client_id="cs", clean_session=False, connect=False)
    assert fresh.connect() is False


def test_qos0_not_queued_for_offline_client_by_default(broker, paho):
    """queue_qos0_messages = false (Mosquitto's default): QoS 0 messages are not stored for an offline
    persistent client [MQTT-3.1.2-5 says QoS 1 and 2 MUST be; QoS 0 MAY be]."""
    sub = paho(broker, client_id="q0", clean_session=False)
    sub.subscribe(("q0/t", 1))
    pub = paho(broker, client_id="pub")
    sub.disconnect()
    wait_clients(broker, 1)
    for i in range(3):
        pub.publish("q0/t", b"zero%d" % i, qos=0)
    pub.publish("q0/t", b"one", qos=1)  # processed after the QoS 0 ones
    again = paho(broker, client_id="q0", clean_session=False, connect=False)
    assert again.connect() is True
    assert again.get() == Msg("q0/t", b"one", 1, False, False)
    pub.publish("q0/t", b"end", qos=1)
    assert again.until("q0/t", b"end") == []


def test_qos0_queued_for_offline_client_when_configured(make_broker, paho):
    """queue_qos0_messages = true: QoS 0 messages are stored for an offline persistent client too."""
    broker = make_broker(queue_qos0_messages=True)
    sub = paho(broker, client_id="q0", clean_session=False)
    sub.subscribe(("q0/t", 1))
    pub = paho(broker, client_id="pub")
    sub.disconnect()
    wait_clients(broker, 1)
    for i in range(3):
        pub.publish("q0/t", b"zero%d" % i, qos=0)
    pub.publish("q0/t", b"one", qos=1)
    again = paho(broker, client_id="q0", clean_session=False, connect=False)
    assert again.connect() is True
    got = again.get_n(4)
    assert [(m.payload, m.qos) for m in got if m.qos == 0] == [(b"zero0", 0), (b"zero1", 0), (b"zero2", 0)]
    assert (b"one", 1) in [(m.payload, m.qos) for m in got]


def test_max_queued_messages_bounds_offline_queue(make_broker, paho):
    """max_queued_messages = 5: of 8 QoS 1 messages published while the client is offline, exactly 5 are
    delivered (Mosquitto keeps the queue and drops the newcomers) and the 3 others are counted as dropped."""
    broker = make_broker(max_queued_messages=5)
    sub = paho(broker, client_id="bounded", clean_session=False)
    sub.subscribe(("bq/t", 1))
    pub = paho(broker, client_id="pub")
    sub.disconnect()
    wait_clients(broker, 1)
    dropped_before = stats(broker).publish_dropped
    for i in range(8):
        pub.publish("bq/t", b"%d" % i, qos=1)
    again = paho(broker, client_id="bounded", clean_session=False, connect=False)
    assert again.connect() is True
    pub.publish("bq/t", b"end", qos=1)
    got = again.until("bq/t", b"end")
    assert len(got) == 5, [m.payload for m in got]
    assert [m.payload for m in got] == [b"0", b"1", b"2", b"3", b"4"]
    assert stats(broker).publish_dropped - dropped_before == 3


# ---------------------------------------------------------------------------------------------------------
# Inflight window and redelivery (raw subscriber that controls its acknowledgements)
# ---------------------------------------------------------------------------------------------------------

def test_max_inflight_messages_honoured(make_broker, paho, raw):
    """max_inflight_messages = 5: a subscriber that never acknowledges receives exactly 5 QoS 1 publishes;
    each PUBACK [MQTT-4.3.2-1 sender side] frees one slot and the next queued message follows, in order."""
    broker = make_broker(max_inflight_messages=5)
    c = raw(broker)
    assert c.connect("slow") == w.connack(False, 0)
    raw_subscribe(c, 1, [("inflight/t", 1)])
    pub = paho(broker, client_id="pub")
    for i in range(10):
        pub.publish("inflight/t", b"%d" % i, qos=1)
    first = read_until_pingresp(c)
    assert [p.payload for p in first] == [b"0", b"1", b"2", b"3", b"4"]
    assert all(p.qos == 1 and not p.dup and p.packet_id for p in first)
    assert len({p.packet_id for p in first}) == 5, "packet identifiers in flight must be distinct [MQTT-2.3.1-2]"
    c.send(w.puback(first[0].packet_id))
    nxt = parse_publish(*c.read_packet())
    assert nxt.payload == b"5" and nxt.qos == 1
    assert read_until_pingresp(c) == [], "more than one slot freed by one PUBACK"
    for p in first[1:] + [nxt]:
        c.send(w.puback(p.packet_id))
    rest = [parse_publish(*c.read_packet()) for _ in range(4)]
    assert [p.payload for p in rest] == [b"6", b"7", b"8", b"9"]


def test_max_inflight_messages_honoured_while_an_offline_queue_drains(broker, paho, raw):
    """The default window (20) holds for messages queued while the client was offline, too: 30 queued,
    20 arrive on reconnect, and each PUBACK lets exactly one more out (Mosquitto 2.0.11 lets 20 more out
    per PUBACK here: bench/README.md, "S8 and the window")."""
    c = raw(broker)
    assert c.connect("drainer", clean=False) == w.connack(False, 0)
    raw_subscribe(c, 1, [("drain/t", 1)])
    c.send(w.disconnect())
    c.close()
    wait_clients(broker, 0)
    pub = paho(broker, client_id="pub")
    for i in range(30):
        pub.publish("drain/t", b"%d" % i, qos=1)
    again = raw(broker)
    assert again.connect("drainer", clean=False) == w.connack(True, 0)
    first = read_until_pingresp(again)
    assert [p.payload for p in first] == [b"%d" % i for i in range(20)]
    for k, p in enumerate(first[:3]):
        again.send(w.puback(p.packet_id))
        nxt = parse_publish(*again.read_packet())
        assert nxt.payload == b"%d" % (20 + k)
        assert read_until_pingresp(again) == [], "more than one slot freed by one PUBACK"


def test_unacknowledged_qos1_resent_with_dup_on_reconnect_MQTT_4_4_0_1(broker, paho, raw):
    """When a client reconnects with CleanSession 0, the server re-sends unacknowledged PUBLISH packets with
    their original packet identifiers [MQTT-4.4.0-1] and the DUP flag set [MQTT-3.3.1-1]."""
    c = raw(broker)
    assert c.connect("forgetful", clean=False) == w.connack(False, 0)
    raw_subscribe(c, 1, [("dup/t", 1)])
    pub = paho(broker, client_id="pub")
    pub.publish("dup/t", b"hello", qos=1)
    first = parse_publish(*c.read_packet())
    assert (first.dup, first.qos, first.topic, first.payload) == (False, 1, "dup/t", b"hello")
    c.close()  # no PUBACK, no DISCONNECT
    wait_clients(broker, 1)
    again = raw(broker)
    assert again.connect("forgetful", clean=False) == w.connack(True, 0)
    got = again.read_raw_packet()
    assert got == w.publish("dup/t", b"hello", qos=1, dup=True, packet_id=first.packet_id), w.hexs(got)
    again.send(w.puback(first.packet_id))
    assert read_until_pingresp(again) == [], "message sent again after its PUBACK"


def test_unacknowledged_qos2_resent_with_dup_on_reconnect_MQTT_4_4_0_1(broker, paho, raw):
    """The same for QoS 2 before PUBREC: PUBLISH re-sent with DUP and the same packet id [MQTT-4.4.0-1];
    after PUBREC the server sends PUBREL [MQTT-4.3.3-1], and PUBCOMP ends the flow."""
    c = raw(broker)
    assert c.connect("forgetful2", clean=False) == w.connack(False, 0)
    raw_subscribe(c, 1, [("dup/t2", 2)])
    pub = paho(broker, client_id="pub")
    pub.publish("dup/t2", b"exactly", qos=2)
    first = parse_publish(*c.read_packet())
    assert (first.dup, first.qos, first.payload) == (False, 2, b"exactly")
    c.close()
    wait_clients(broker, 1)
    again = raw(broker)
    assert again.connect("forgetful2", clean=False) == w.connack(True, 0)
    got = again.read_raw_packet()
    assert got == w.publish("dup/t2", b"exactly", qos=2, dup=True, packet_id=first.packet_id), w.hexs(got)
    again.send(w.pubrec(first.packet_id))
    assert again.read_raw_packet() == w.pubrel(first.packet_id)
    again.send(w.pubcomp(first.packet_id))
    assert read_until_pingresp(again) == []
