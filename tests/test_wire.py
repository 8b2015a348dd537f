"""Byte-exact tests against a running broker over real loopback sockets (MQTT 3.1.1).

Every packet sent is built by tests/mqttwire.py, which does not import edgebroker, and every packet the
broker sends back is compared whole with bytes built the same way. No sleeps: each read has a deadline,
and "nothing was sent" is proven by a PINGREQ whose PINGRESP must be the very next packet (the broker
handles one connection's packets in order).
"""
from __future__ import annotations

from typing import Callable, List

import pytest

import mqttwire as w
from mqttwire import RawClient, hexs

TIMEOUT = 5.0
ACCEPTED = w.connack(False, 0)  # 20 02 00 00


@pytest.fixture
def open_client(broker) -> Callable[[], RawClient]:
    made: List[RawClient] = []

    def make() -> RawClient:
        c = RawClient(broker.host, broker.port, timeout=TIMEOUT)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def connected(open_client) -> Callable[..., RawClient]:
    """A client that has sent CONNECT and received exactly CONNACK 20 02 00 00."""

    def make(client_id: str, **kw) -> RawClient:
        c = open_client()
        got = c.connect(client_id, **kw)
        assert got == ACCEPTED, f"CONNACK for {client_id!r}: {hexs(got)}"
        return c

    return make


def expect(client: RawClient, want: bytes, what: str = "") -> None:
    got = client.read_raw_packet(TIMEOUT)
    assert got == want, f"{what}: expected {hexs(want)}, got {hexs(got)}"


def expect_nothing_pending(client: RawClient) -> None:
    """The next packet is the PINGRESP to our PINGREQ: nothing else was queued for this client."""
    client.ping()


def subscribe(client: RawClient, packet_id: int, topics, granted) -> None:
    client.send(w.subscribe(packet_id, topics))
    expect(client, w.suback(packet_id, granted), "SUBACK")


def publish_and_complete(client: RawClient, topic: str, payload: bytes, qos: int, retain: bool = False,
                         packet_id: int = 1, dup: bool = False) -> None:
    """Publish from a client and finish the QoS handshake, checking each acknowledgement byte-exact."""
    client.send(w.publish(topic, payload, qos=qos, retain=retain, dup=dup, packet_id=packet_id if qos else None))
    if qos == 1:
        expect(client, w.puback(packet_id), "PUBACK [MQTT-4.3.2-2]")
    elif qos == 2:
        expect(client, w.pubrec(packet_id), "PUBREC [MQTT-4.3.3-2]")
        client.send(w.pubrel(packet_id))
        expect(client, w.pubcomp(packet_id), "PUBCOMP [MQTT-4.3.3-2]")


def _rl_bytes(packet: bytes) -> int:
    """How many bytes the remaining length of this packet takes (1..4)."""
    n = 0
    for b in packet[1:5]:
        n += 1
        if not b & 0x80:
            break
    return n


def publish_packet_id(packet: bytes, topic: str) -> int:
    """The packet identifier of a QoS>0 PUBLISH whose topic is `topic`."""
    pos = 1 + _rl_bytes(packet) + 2 + len(topic.encode("utf-8"))
    return int.from_bytes(packet[pos:pos + 2], "big")


def complete_incoming(client: RawClient, packet: bytes, topic: str) -> None:
    """Acknowledge a PUBLISH the broker sent us (QoS 1: PUBACK; QoS 2: PUBREC, exact PUBREL, PUBCOMP)."""
    qos = (packet[0] >> 1) & 3
    if qos == 0:
        return
    packet_id = publish_packet_id(packet, topic)
    if qos == 1:
        client.send(w.puback(packet_id))
    else:
        client.send(w.pubrec(packet_id))
        expect(client, w.pubrel(packet_id), "PUBREL [MQTT-4.3.3-1]")
        client.send(w.pubcomp(packet_id))


def check_publish(got: bytes, topic: str, payload: bytes, qos: int, retain: bool) -> int:
    """Compare a PUBLISH from the broker byte-exact (DUP 0 on first delivery [MQTT-3.3.1-1][MQTT-3.3.1-2]);
    the packet identifier, chosen by the broker, must be non-zero [MQTT-2.3.1-1]. Returns it (0 for QoS 0)."""
    assert got and got[0] >> 4 == w.PUBLISH, f"expected PUBLISH, got {hexs(got[:32])}"
    packet_id = None
    if qos > 0:
        packet_id = publish_packet_id(got, topic)
        assert packet_id != 0, f"[MQTT-2.3.1-1] broker sent packet id 0: {hexs(got[:32])}"
    want = w.publish(topic, payload, qos=qos, retain=retain, dup=False, packet_id=packet_id)
    assert got == want, f"PUBLISH: expected {hexs(want[:48])}, got {hexs(got[:48])}"
    return packet_id or 0


def receive_publish(client: RawClient, topic: str, payload: bytes, qos: int, retain: bool) -> int:
    """Read one PUBLISH, check it byte-exact, complete the broker's outgoing QoS flow byte-exact."""
    got = client.read_raw_packet(TIMEOUT)
    packet_id = check_publish(got, topic, payload, qos, retain)
    complete_incoming(client, got, topic)
    return packet_id


def read_until_pingresp(client: RawClient) -> List[bytes]:
    """Send PINGREQ and return every packet received before its PINGRESP."""
    client.send(w.pingreq())
    out = []
    while True:
        got = client.read_raw_packet(TIMEOUT)
        if got == w.pingresp():
            return out
        out.append(got)


# ---------------------------------------------------------------------------------------------------------
# CONNECT / CONNACK
# ---------------------------------------------------------------------------------------------------------

def test_MQTT_3_2_0_1_connack_bytes_exact(open_client):
    """[MQTT-3.2.0-1] the first packet from the server is CONNACK; accepted = 20 02 00 00."""
    c = open_client()
    c.send(w.connect("wire-connack"))
    assert c.recv_exactly(4, TIMEOUT) == b"\x20\x02\x00\x00"
    c.ping()


def test_MQTT_3_2_2_1_session_present_0_for_clean_session(open_client):
    """[MQTT-3.2.2-1] clean session 1 → session present 0, even when a stored session exists."""
    c = open_client()
    assert c.connect("wire-sp-clean", clean=False) == ACCEPTED  # [MQTT-3.2.2-3] no session yet
    c.send(w.subscribe(1, [("sp/#", 1)]))
    expect(c, w.suback(1, [1]))
    c.send(w.disconnect())
    c.expect_closed(TIMEOUT)
    c2 = open_client()
    assert c2.connect("wire-sp-clean", clean=True) == b"\x20\x02\x00\x00"


def test_MQTT_3_2_2_2_session_present_1_when_session_resumed(open_client):
    """[MQTT-3.2.2-2] clean session 0 with a stored session → 20 02 01 00; [MQTT-3.2.2-3] without → 00;
    [MQTT-3.1.2-6] a clean session discards the stored one."""
    c = open_client()
    assert c.connect("wire-sp", clean=False) == b"\x20\x02\x00\x00"
    c.send(w.subscribe(1, [("sp2/#", 1)]))
    expect(c, w.suback(1, [1]))
    c.send(w.disconnect())
    c.expect_closed(TIMEOUT)

    c = open_client()
    assert c.connect("wire-sp", clean=False) == b"\x20\x02\x01\x00"
    c.send(w.disconnect())
    c.expect_closed(TIMEOUT)

    c = open_client()
    assert c.connect("wire-sp", clean=True) == b"\x20\x02\x00\x00"
    c.send(w.disconnect())
    c.expect_closed(TIMEOUT)

    c = open_client()
    assert c.connect("wire-sp", clean=False) == b"\x20\x02\x00\x00"


def test_MQTT_3_1_2_2_mqisdp_level_3_accepted(open_client):
    """MQTT 3.1 clients (protocol name "MQIsdp", level 3) are accepted: 20 02 00 00."""
    c = open_client()
    assert c.connect("wire-31", proto_name="MQIsdp", level=3) == b"\x20\x02\x00\x00"
    c.ping()
    subscribe(c, 3, [("v31/t", 1)], [1])


@pytest.mark.parametrize("level", [5, 0, 1, 2, 6, 255])
def test_MQTT_3_1_2_2_unsupported_level_connack_1_then_close(open_client, level):
    """[MQTT-3.1.2-2] unsupported protocol level → CONNACK return code 1 (20 02 00 01), then close
    [MQTT-3.2.2-5]; session present 0 [MQTT-3.2.2-4]."""
    c = open_client()
    c.send(w.connect("wire-level", level=level, v5_properties=(level == 5)))
    assert c.read_raw_packet(TIMEOUT) == b"\x20\x02\x00\x01"
    c.expect_closed(TIMEOUT)


def test_MQTT_3_1_4_5_no_processing_after_rejected_connect(open_client, connected):
    """[MQTT-3.1.4-5] data after a rejected CONNECT is not processed: no PINGRESP, no publish routed."""
    watcher = connected("wire-watch-145")
    subscribe(watcher, 1, [("after/reject", 0)], [0])
    c = open_client()
    c.send(w.connect("wire-v5", level=5, v5_properties=True) + w.pingreq() + w.publish("after/reject", b"x"))
    assert c.read_raw_packet(TIMEOUT) == b"\x20\x02\x00\x01"
    c.expect_closed(TIMEOUT)
    expect_nothing_pending(watcher)


def test_MQTT_3_1_3_8_empty_client_id_without_clean_session_rejected(open_client):
    """[MQTT-3.1.3-8] zero-length client id with clean session 0 → 20 02 00 02, then close."""
    c = open_client()
    c.send(w.connect("", clean=False) + w.pingreq())
    assert c.read_raw_packet(TIMEOUT) == b"\x20\x02\x00\x02"
    c.expect_closed(TIMEOUT)


def test_MQTT_3_1_3_6_empty_client_id_with_clean_session_gets_unique_id(open_client):
    """[MQTT-3.1.3-6] zero-length client id with clean session 1 is accepted with an assigned, unique id:
    two such clients are both served (neither takes over the other [MQTT-3.1.4-2])."""
    a = open_client()
    assert a.connect("", clean=True) == b"\x20\x02\x00\x00"
    b = open_client()
    assert b.connect("", clean=True) == b"\x20\x02\x00\x00"
    a.ping()
    b.ping()
    subscribe(a, 1, [("anon/t", 0)], [0])
    publish_and_complete(b, "anon/t", b"hi", 1, packet_id=2)
    receive_publish(a, "anon/t", b"hi", 0, False)


def test_MQTT_3_1_4_2_same_client_id_takes_over(open_client):
    """[MQTT-3.1.4-2] a second connection with the same client id disconnects the first."""
    a = open_client()
    assert a.connect("wire-takeover") == ACCEPTED
    b = open_client()
    assert b.connect("wire-takeover") == ACCEPTED
    a.expect_closed(TIMEOUT)
    b.ping()


@pytest.mark.parametrize("first", [
    pytest.param(w.pingreq(), id="pingreq"),
    pytest.param(w.publish("a/b", b"x"), id="publish"),
    pytest.param(w.subscribe(1, [("a/#", 0)]), id="subscribe"),
    pytest.param(w.puback(1), id="puback"),
    pytest.param(w.disconnect(), id="disconnect"),
])
def test_MQTT_3_1_0_1_first_packet_not_connect_closes(open_client, connected, first):
    """[MQTT-3.1.0-1] the first packet must be CONNECT; anything else closes without a response."""
    bystander = connected("wire-by-310")
    c = open_client()
    c.send(first)
    c.expect_closed(TIMEOUT)
    bystander.ping()


def test_MQTT_3_1_0_2_second_connect_closes(connected):
    """[MQTT-3.1.0-2] a second CONNECT is a protocol violation: close without a response."""
    bystander = connected("wire-by-3102")
    c = connected("wire-twice")
    c.send(w.connect("wire-twice"))
    c.expect_closed(TIMEOUT)
    bystander.ping()


def test_pipelined_connect_subscribe_ping(open_client):
    """Several packets in one TCP segment: the answers come back in order, byte-exact."""
    c = open_client()
    c.send(w.connect("wire-pipe") + w.subscribe(5, [("p/+", 2)]) + w.pingreq())
    assert c.recv_exactly(4 + 5 + 2, TIMEOUT) == ACCEPTED + w.suback(5, [2]) + w.pingresp()


def test_connect_split_byte_by_byte(open_client):
    """A CONNECT arriving one byte per segment is reassembled."""
    c = open_client()
    for b in w.connect("wire-bytes"):
        c.send(bytes([b]))
    assert c.recv_exactly(4, TIMEOUT) == ACCEPTED


# ---------------------------------------------------------------------------------------------------------
# SUBSCRIBE / UNSUBSCRIBE / PING / DISCONNECT
# ---------------------------------------------------------------------------------------------------------

def test_MQTT_3_8_4_1_suback_bytes_exact(connected):
    """[MQTT-3.8.4-1][MQTT-3.8.4-2][MQTT-3.8.4-5][MQTT-3.9.3-1] SUBACK with the SUBSCRIBE's packet id and
    one granted QoS per filter, in order: 90 05 00 0a 00 01 02."""
    c = connected("wire-suback")
    c.send(w.subscribe(10, [("a/b", 0), ("c/+", 1), ("d/#", 2)]))
    assert c.read_raw_packet(TIMEOUT) == b"\x90\x05\x00\x0a\x00\x01\x02"


def test_MQTT_3_8_4_3_resubscribe_replaces(connected):
    """[MQTT-3.8.4-3] subscribing again to the same filter replaces the subscription (new QoS granted and
    used), and a message is delivered once."""
    sub = connected("wire-resub")
    subscribe(sub, 1, [("rs/t", 2)], [2])
    subscribe(sub, 2, [("rs/t", 0)], [0])
    pub = connected("wire-resub-pub")
    publish_and_complete(pub, "rs/t", b"once", 2, packet_id=3)
    receive_publish(sub, "rs/t", b"once", 0, False)
    expect_nothing_pending(sub)


def test_MQTT_3_10_4_4_unsuback_bytes_exact_and_unsubscribed(connected):
    """[MQTT-3.10.4-4] UNSUBACK b0 02 <packet id>; [MQTT-3.10.4-5] also when nothing was subscribed;
    afterwards no message is delivered [MQTT-3.10.4-2]."""
    sub = connected("wire-unsub")
    subscribe(sub, 1, [("u/t", 1)], [1])
    sub.send(w.unsubscribe(0x0203, ["u/t"]))
    assert sub.read_raw_packet(TIMEOUT) == b"\xb0\x02\x02\x03"
    sub.send(w.unsubscribe(4, ["never/subscribed"]))
    assert sub.read_raw_packet(TIMEOUT) == b"\xb0\x02\x00\x04"
    pub = connected("wire-unsub-pub")
    publish_and_complete(pub, "u/t", b"gone", 1, packet_id=9)
    expect_nothing_pending(sub)


def test_MQTT_3_12_4_1_pingresp_bytes_exact(connected):
    """[MQTT-3.12.4-1] PINGREQ → PINGRESP d0 00."""
    c = connected("wire-ping")
    c.send(b"\xc0\x00")
    assert c.recv_exactly(2, TIMEOUT) == b"\xd0\x00"
    c.send(b"\xc0\x00\xc0\x00")
    assert c.recv_exactly(4, TIMEOUT) == b"\xd0\x00\xd0\x00"


def test_disconnect_closes_and_discards_will(connected):
    """Section 3.14.4: on DISCONNECT the server closes the connection and discards the will
    [MQTT-3.14.4-3]."""
    watcher = connected("wire-will-watch")
    subscribe(watcher, 1, [("will/d", 0)], [0])
    c = connected("wire-will-d", will=w.Will("will/d", b"dead", 0, False))
    c.send(w.disconnect())
    c.expect_closed(TIMEOUT)
    expect_nothing_pending(watcher)


def test_MQTT_3_1_2_8_will_published_on_abrupt_close(connected):
    """[MQTT-3.1.2-8] a connection closed without DISCONNECT publishes the will; delivered with
    QoS min(will QoS, granted QoS) and retain 0 to an existing subscription [MQTT-3.3.1-9]."""
    watcher = connected("wire-will-watch2")
    subscribe(watcher, 1, [("will/a", 1)], [1])
    c = connected("wire-will-a", will=w.Will("will/a", b"gone", 2, False))
    c.close()
    receive_publish(watcher, "will/a", b"gone", 1, False)


# ---------------------------------------------------------------------------------------------------------
# PUBLISH flows
# ---------------------------------------------------------------------------------------------------------

def test_MQTT_4_3_2_2_puback_bytes_exact(connected):
    """[MQTT-3.3.4-1][MQTT-4.3.2-2] PUBLISH QoS 1 → PUBACK 40 02 <same packet id>."""
    c = connected("wire-q1")
    c.send(w.publish("q1/t", b"x", qos=1, packet_id=0x1234))
    assert c.read_raw_packet(TIMEOUT) == b"\x40\x02\x12\x34"


def test_MQTT_4_3_3_2_qos2_flow_bytes_exact(connected):
    """[MQTT-4.3.3-2] PUBLISH QoS 2 → PUBREC 50 02 id; PUBREL 62 02 id → PUBCOMP 70 02 id."""
    c = connected("wire-q2")
    c.send(w.publish("q2/t", b"x", qos=2, packet_id=0xABCD))
    assert c.read_raw_packet(TIMEOUT) == b"\x50\x02\xab\xcd"
    c.send(w.pubrel(0xABCD))
    assert c.read_raw_packet(TIMEOUT) == b"\x70\x02\xab\xcd"


def test_MQTT_4_3_3_2_qos2_duplicate_publish_delivered_once(connected):
    """[MQTT-4.3.3-2] a re-sent QoS 2 PUBLISH (DUP 1, same id) before PUBREL gets PUBREC again and is not
    delivered twice."""
    sub = connected("wire-q2dup-sub")
    subscribe(sub, 1, [("q2d/t", 2)], [2])
    pub = connected("wire-q2dup-pub")
    pub.send(w.publish("q2d/t", b"one", qos=2, packet_id=7))
    expect(pub, w.pubrec(7), "PUBREC")
    pub.send(w.publish("q2d/t", b"one", qos=2, dup=True, packet_id=7))
    expect(pub, w.pubrec(7), "PUBREC for the duplicate")
    pub.send(w.pubrel(7))
    expect(pub, w.pubcomp(7), "PUBCOMP")
    receive_publish(sub, "q2d/t", b"one", 2, False)
    expect_nothing_pending(sub)


def test_MQTT_4_3_3_2_pubrel_for_unknown_id_gets_pubcomp(connected):
    """A PUBREL for a packet id the server does not know is still answered with PUBCOMP (section 4.3.3,
    [MQTT-4.3.3-2]; Mosquitto does the same)."""
    c = connected("wire-pubrel-unknown")
    c.send(w.pubrel(42))
    assert c.read_raw_packet(TIMEOUT) == b"\x70\x02\x00\x2a"


@pytest.mark.parametrize("pub_qos", [0, 1, 2])
@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_MQTT_3_8_4_6_delivery_qos_is_min_of_pub_and_sub(connected, pub_qos, sub_qos):
    """[MQTT-3.8.4-6] delivered QoS = min(published, granted); byte-exact PUBLISH with DUP 0
    [MQTT-3.3.1-1] and retain 0; the broker's outgoing QoS 1/2 flow byte-exact [MQTT-4.3.3-1]."""
    sub = connected("wire-d-sub")
    subscribe(sub, 1, [("d/+/x", sub_qos)], [sub_qos])
    pub = connected("wire-d-pub")
    publish_and_complete(pub, "d/1/x", b"payload-%d%d" % (pub_qos, sub_qos), pub_qos, packet_id=11)
    receive_publish(sub, "d/1/x", b"payload-%d%d" % (pub_qos, sub_qos), min(pub_qos, sub_qos), False)
    expect_nothing_pending(sub)


@pytest.mark.parametrize("size", [0, 121, 122, 200, 16380, 20000, 2_100_000])
def test_delivery_payload_sizes_byte_exact(connected, size):
    """Remaining lengths of 1, 2, 3 and 4 bytes (section 2.2.3) pass through byte-exact."""
    payload = bytes((i * 7) & 0xFF for i in range(size))
    sub = connected("wire-size-sub")
    subscribe(sub, 1, [("size/t", 1)], [1])
    pub = connected("wire-size-pub")
    publish_and_complete(pub, "size/t", payload, 1, packet_id=1)
    receive_publish(sub, "size/t", payload, 1, False)


def test_MQTT_3_3_1_3_dup_not_propagated(connected):
    """[MQTT-3.3.1-3] the DUP flag of an incoming PUBLISH is not propagated to subscribers."""
    sub = connected("wire-dup-sub")
    subscribe(sub, 1, [("dup/t", 1)], [1])
    pub = connected("wire-dup-pub")
    publish_and_complete(pub, "dup/t", b"d", 1, packet_id=3, dup=True)
    receive_publish(sub, "dup/t", b"d", 1, False)


def test_MQTT_3_3_5_1_overlapping_subscriptions_max_qos(connected):
    """[MQTT-3.3.5-1] overlapping subscriptions: the message is delivered respecting the maximum QoS of
    the matching subscriptions (Mosquitto sends one copy per matching subscription; we only read the first
    and require that at least one copy has QoS 2)."""
    sub = connected("wire-ovl-sub")
    subscribe(sub, 1, [("ovl/#", 0), ("ovl/t", 2)], [0, 2])
    pub = connected("wire-ovl-pub")
    publish_and_complete(pub, "ovl/t", b"o", 2, packet_id=4)
    copies = read_until_pingresp(sub)
    assert copies, "message not delivered"
    for got in copies:
        qos = (got[0] >> 1) & 3
        check_publish(got, "ovl/t", b"o", qos, False)
        complete_incoming(sub, got, "ovl/t")
    assert max((got[0] >> 1) & 3 for got in copies) == 2, [hexs(g) for g in copies]


def test_publisher_does_not_receive_without_subscription(connected):
    c = connected("wire-self")
    publish_and_complete(c, "self/t", b"x", 1, packet_id=1)
    expect_nothing_pending(c)


def test_MQTT_4_7_1_wildcards_match_per_level(connected):
    """[MQTT-4.7.1-1..3] '+' matches exactly one level, '#' the parent and any number of levels; a/#
    does not match "ab" (no regular-expression prefix matching)."""
    sub = connected("wire-wild")
    subscribe(sub, 1, [("w/+/c", 0), ("x/#", 0)], [0, 0])
    pub = connected("wire-wild-pub")
    for topic, delivered in [("w/b/c", True), ("w/b/c/d", False), ("w/c", False), ("w//c", True),
                             ("x", True), ("x/y/z", True), ("xy", False), ("y/x", False)]:
        publish_and_complete(pub, topic, topic.encode(), 1, packet_id=1)
        if delivered:
            receive_publish(sub, topic, topic.encode(), 0, False)
        expect_nothing_pending(sub)


def test_MQTT_4_7_2_1_dollar_topics_not_matched_by_leading_wildcard(connected):
    """[MQTT-4.7.2-1] filters starting with a wildcard do not match topic names starting with '$'."""
    sub = connected("wire-dollar")
    subscribe(sub, 1, [("#", 0), ("+/x", 0)], [0, 0])
    pub = connected("wire-dollar-pub")
    publish_and_complete(pub, "$app/x", b"d", 1, packet_id=1)
    publish_and_complete(pub, "plain/x", b"p", 1, packet_id=2)
    # "plain/x" matches both filters; every copy must be "plain/x", never "$app/x".
    copies = read_until_pingresp(sub)
    assert copies, "plain/x not delivered"
    for got in copies:
        assert got == w.publish("plain/x", b"p"), hexs(got)


# ---------------------------------------------------------------------------------------------------------
# Retained messages
# ---------------------------------------------------------------------------------------------------------

def test_MQTT_3_3_1_8_retained_sent_on_subscribe_with_retain_flag(connected):
    """[MQTT-3.3.1-5] a retained PUBLISH is stored; [MQTT-3.3.1-8] a new subscription gets it with
    RETAIN 1; [MQTT-3.3.1-9] a live message to an established subscription has RETAIN 0 even if it was
    published with RETAIN 1; the new retained message replaces the old one."""
    pub = connected("wire-ret-pub")
    publish_and_complete(pub, "ret/a", b"stored", 1, retain=True, packet_id=3)

    sub = connected("wire-ret-sub")
    sub.send(w.subscribe(1, [("ret/#", 1)]))
    first = sub.read_raw_packet(TIMEOUT)
    if first == w.suback(1, [1]):
        receive_publish(sub, "ret/a", b"stored", 1, True)
    else:  # the retained message came first (allowed); then the SUBACK
        check_publish(first, "ret/a", b"stored", 1, True)
        complete_incoming(sub, first, "ret/a")
        expect(sub, w.suback(1, [1]))
    expect_nothing_pending(sub)

    publish_and_complete(pub, "ret/a", b"live", 0, retain=True)
    receive_publish(sub, "ret/a", b"live", 0, False)
    expect_nothing_pending(sub)

    sub2 = connected("wire-ret-sub2")
    sub2.send(w.subscribe(2, [("ret/a", 0)]))
    got = [sub2.read_raw_packet(TIMEOUT), sub2.read_raw_packet(TIMEOUT)]
    assert sorted(got) == sorted([w.suback(2, [0]), w.publish("ret/a", b"live", qos=0, retain=True)]), \
        [hexs(g) for g in got]
    expect_nothing_pending(sub2)


def test_MQTT_3_3_1_8_retained_qos_downgraded_to_granted(connected):
    """[MQTT-3.8.4-6] a retained QoS 2 message sent to a QoS 0 subscription arrives as QoS 0, RETAIN 1."""
    pub = connected("wire-retq-pub")
    publish_and_complete(pub, "retq/t", b"r2", 2, retain=True, packet_id=5)
    sub = connected("wire-retq-sub")
    sub.send(w.subscribe(1, [("retq/t", 0)]))
    got = [sub.read_raw_packet(TIMEOUT), sub.read_raw_packet(TIMEOUT)]
    assert sorted(got) == sorted([w.suback(1, [0]), w.publish("retq/t", b"r2", qos=0, retain=True)]), \
        [hexs(g) for g in got]


def test_MQTT_3_3_1_10_zero_byte_retained_clears(connected):
    """[MQTT-3.3.1-10][MQTT-3.3.1-11] a zero-byte retained PUBLISH removes the retained message and is not
    itself stored; [MQTT-3.3.1-7] a RETAIN 0 publish does not replace it."""
    pub = connected("wire-clr-pub")
    publish_and_complete(pub, "clr/a", b"x", 1, retain=True, packet_id=1)
    publish_and_complete(pub, "clr/a", b"not-retained", 1, retain=False, packet_id=2)

    sub = connected("wire-clr-sub")
    sub.send(w.subscribe(1, [("clr/a", 0)]))
    got = [sub.read_raw_packet(TIMEOUT), sub.read_raw_packet(TIMEOUT)]
    assert sorted(got) == sorted([w.suback(1, [0]), w.publish("clr/a", b"x", retain=True)]), \
        [hexs(g) for g in got]

    publish_and_complete(pub, "clr/a", b"", 1, retain=True, packet_id=3)
    receive_publish(sub, "clr/a", b"", 0, False)  # processed as normal for existing subscribers

    sub2 = connected("wire-clr-sub2")
    sub2.send(w.subscribe(1, [("clr/a", 0)]))
    expect(sub2, w.suback(1, [0]))
    expect_nothing_pending(sub2)


# ---------------------------------------------------------------------------------------------------------
# Protocol violations close the connection; other clients are still served
# ---------------------------------------------------------------------------------------------------------

MALFORMED_IDS = [m.name.replace("[", "").replace("]", "") for m in w.MALFORMED]


@pytest.mark.parametrize("case", w.MALFORMED, ids=MALFORMED_IDS)
def test_MQTT_4_8_0_1_malformed_packet_closes_connection(open_client, connected, case):
    """[MQTT-4.8.0-1] (and the row's own id): a malformed packet closes that connection without any
    response, and a client connected beforehand is still served. CONNECT rows are sent as the first
    packet (after a valid CONNECT they would only test [MQTT-3.1.0-2])."""
    bystander = connected("wire-bystander")
    victim = open_client()
    if not case.is_connect:
        assert victim.connect("wire-victim") == ACCEPTED
    victim.send(case.data)
    victim.expect_closed(TIMEOUT)
    bystander.ping()
    subscribe(bystander, 1, [("still/served", 0)], [0])


@pytest.mark.parametrize("data", [
    pytest.param(w.connack(False, 0), id="CONNACK"),
    pytest.param(w.suback(1, [0]), id="SUBACK"),
    pytest.param(w.unsuback(1), id="UNSUBACK"),
    pytest.param(w.pingresp(), id="PINGRESP"),
])
def test_MQTT_4_8_0_1_server_to_client_packet_from_client_closes(connected, data):
    """[MQTT-4.8.0-1] CONNACK, SUBACK, UNSUBACK and PINGRESP flow only server → client (Table 2.1);
    a client sending one commits a protocol violation and is disconnected without response."""
    bystander = connected("wire-bystander-s2c")
    victim = connected("wire-s2c")
    victim.send(data)
    victim.expect_closed(TIMEOUT)
    bystander.ping()


def test_MQTT_4_8_0_1_malformed_after_valid_packets_in_same_segment(connected):
    """[MQTT-3.3.2-2][MQTT-4.8.0-1] a malformed packet after a valid one in the same segment closes the
    connection; nothing after the malformed packet is answered."""
    c = connected("wire-mixed")
    c.send(w.pingreq() + w.publish("a/+", b"x") + w.pingreq())
    # The first PINGRESP may or may not be flushed before the close; the second must never be sent.
    assert c.expect_closed(TIMEOUT, allow_data=True) in (b"", w.pingresp())


def test_junk_stream_closes_and_broker_keeps_serving(connected, open_client):
    """Section 2.2.3 / Mosquitto's junk test: a stream of 0xff bytes (type 15, endless remaining length)
    closes the connection; the broker keeps serving others."""
    bystander = connected("wire-junk-by")
    c = open_client()
    try:
        c.send(b"\xff" * 65536)
    except OSError:
        pass  # the broker may close before reading everything
    c.expect_closed(TIMEOUT)
    bystander.ping()


def test_max_packet_size_oversize_packet_closes(make_broker):
    """Config max_packet_size (whole packet, fixed header included, as Mosquitto): a packet of exactly
    the limit is served, one byte more closes that connection without response [MQTT-4.8.0-1-style bound]
    while other clients are served."""
    rb = make_broker(max_packet_size=200)
    bystander = RawClient(rb.host, rb.port, timeout=TIMEOUT)
    victim = RawClient(rb.host, rb.port, timeout=TIMEOUT)
    try:
        assert bystander.connect("wire-mps-by") == ACCEPTED
        assert victim.connect("wire-mps") == ACCEPTED
        ok = w.publish("m/t", b"a" * 190, qos=1, packet_id=1)
        assert len(ok) == 200
        victim.send(ok)
        assert victim.read_raw_packet(TIMEOUT) == w.puback(1)
        too_big = w.publish("m/t", b"a" * 191, qos=1, packet_id=2)
        assert len(too_big) == 201
        victim.send(too_big)
        victim.expect_closed(TIMEOUT)
        bystander.ping()
    finally:
        victim.close()
        bystander.close()


def test_reads_small_after_a_small_read_and_whole_bursts_after(broker, connected):
    """The loop asks for a few hundred bytes after a small read (a sensor's PUBLISH now and then)
    and for RECV_SIZE again once a read fills that (RECV_LARGE while a larger packet arrives): a burst
    behind a small read, a large PUBLISH among small ones, arrive whole and in order."""
    from edgebroker.server import RECV_SIZE, RECV_SMALL
    sub = connected("reads-sub")
    subscribe(sub, 1, [("reads/#", 0)], [0])
    pub = connected("reads-pub")
    first = w.publish("reads/one", b"21.5")
    pub.send(first)
    expect(sub, first, "the small one")
    conns = {c.client_id: c for c in broker.server.broker.connections}
    assert conns["reads-pub"].recv_size == RECV_SMALL
    burst = [w.publish(f"reads/{i}", bytes([i]) * 20) for i in range(40)]
    large = w.publish("reads/large", bytes(range(256)) * 400)
    pub.send(b"".join(burst[:20]) + large + b"".join(burst[20:]))
    for i, packet in enumerate(burst[:20] + [large] + burst[20:]):
        expect(sub, packet, f"packet {i} of the burst")
    assert conns["reads-pub"].recv_size in (RECV_SIZE, RECV_SMALL)  # small again if the last read was
    pub.send(first)
    expect(sub, first, "the small one again")
    expect_nothing_pending(sub)
