"""The bridge's client-side session (edgebroker/uplink.py), sans-IO: bytes in, bytes out, a fake clock.

The expected bytes come from tests/mqttwire.py, which does not import edgebroker, so a codec bug cannot
agree with itself.
"""
from __future__ import annotations

import pytest

import mqttwire as w
from edgebroker.packets import Will
from edgebroker.uplink import Acked, Connected, Lost, Received, Refused, Subscribed, UplinkSession


def session(**kw) -> UplinkSession:
    args = dict(client_id="gw.cloud", keepalive=60, window=3)
    args.update(kw)
    return UplinkSession(**args)


def up(s: UplinkSession, now: float = 0.0, present: bool = False) -> None:
    s.connect(now)
    s.take_output()
    assert s.data_received(w.connack(present, 0), now) == [Connected(present)]


def test_connect_is_private_by_default_and_carries_credentials_and_will():
    s = session(username="u", password=b"p", will=Will("$SYS/broker/connection/gw.cloud/state", b"0", 1, True))
    s.connect(0.0)
    assert s.take_output() == w.connect("gw.cloud", clean=False, keepalive=60, level=0x84, username="u",
                                        password=b"p", will=w.Will("$SYS/broker/connection/gw.cloud/state",
                                                                   b"0", 1, True))


def test_mqtt31_private_level_is_0x83():
    s = session(protocol_level=3, clean_session=True, try_private=True)
    s.connect(0.0)
    assert s.take_output() == w.connect("gw.cloud", clean=True, keepalive=60, proto_name="MQIsdp", level=0x83)


def test_refused_private_level_falls_back_to_plain_on_the_next_connection():
    s = session()
    s.connect(0.0)
    s.take_output()
    assert s.data_received(w.connack(False, 1), 0.0) == [Refused(1, True)]
    s.connection_lost()
    s.connect(1.0)
    assert s.take_output() == w.connect("gw.cloud", clean=False, keepalive=60, level=4)
    # A plain CONNECT refused with 1 is a real refusal: no further fallback.
    assert s.data_received(w.connack(False, 1), 1.0) == [Refused(1, False)]


def test_a_remote_that_closes_after_a_private_connect_gets_a_plain_one_next():
    s = session()
    s.connect(0.0)
    s.connection_lost()
    s.connect(1.0)
    assert s.take_output()[8] == 4  # protocol level byte of "\x10 len \x00\x04MQTT level"


def test_refused_credentials_are_reported_and_keep_the_private_level():
    s = session()
    s.connect(0.0)
    s.take_output()
    assert s.data_received(w.connack(False, 5), 0.0) == [Refused(5, False)]
    assert s.private


def test_anything_but_connack_first_is_a_protocol_error():
    s = session()
    s.connect(0.0)
    events = s.data_received(w.suback(1, [0]), 0.0)
    assert isinstance(events[-1], Lost)


def test_window_and_acknowledgements_qos1_and_qos2():
    s = session()
    up(s)
    assert s.publish("a", b"1", 1, False, "t1", 0.0) == 1
    assert s.publish("b", b"2", 2, True, "t2", 0.0) == 2
    assert s.publish("c", b"3", 0, False, "t3", 0.0) == 0  # QoS 0: nothing in flight
    assert s.take_output() == (w.publish("a", b"1", 1, packet_id=1) + w.publish("b", b"2", 2, retain=True, packet_id=2)
                               + w.publish("c", b"3"))
    s.publish("d", b"4", 1, False, "t4", 0.0)
    assert not s.window_free
    assert s.data_received(w.puback(1), 0.0) == [Acked("t1")]
    assert s.window_free
    # QoS 2: PUBREC -> PUBREL; PUBCOMP completes it. A PUBACK for a QoS 2 id is ignored.
    assert s.data_received(w.puback(2), 0.0) == []
    s.take_output()
    assert s.data_received(w.pubrec(2), 0.0) == []
    assert s.take_output() == w.pubrel(2)
    assert s.data_received(w.pubcomp(2), 0.0) == [Acked("t2")]
    assert list(s.inflight) == [3]



def test_a_read_of_acknowledgements_only_gives_what_one_at_a_time_gives():
    """A read holding only PUBACKs (a remote answering a window in one write) takes the codec's run of
    acknowledgements; its events and what stays in flight are those of the same PUBACKs read one by
    one: stale and unknown ids ignored, a PUBACK for a QoS 2 message too."""
    def run(together: bool):
        s = session(window=10)
        up(s)
        for i, qos in enumerate((1, 1, 2, 1, 1), start=1):
            s.publish(f"t/{i}", b"x", qos, False, f"m{i}", 0.0)
        acks = [w.puback(pid) for pid in (2, 3, 7, 1, 2, 5)]
        if together:
            events = s.data_received(b"".join(acks), 0.0)
        else:
            events = [e for a in acks for e in s.data_received(a, 0.0)]
        return events, list(s.inflight)

    assert run(True) == run(False) == ([Acked("m2"), Acked("m1"), Acked("m5")], [3, 4])
    # Not acknowledgements only: a PUBREC among them, the usual path.
    s = session(window=10)
    up(s)
    s.publish("a", b"x", 1, False, "a", 0.0)
    s.publish("b", b"x", 2, False, "b", 0.0)
    s.take_output()
    assert s.data_received(w.puback(1) + w.pubrec(2), 0.0) == [Acked("a")]
    assert s.take_output() == w.pubrel(2)

def test_unacknowledged_messages_are_resent_in_order_with_dup_after_reconnect():
    s = session()
    up(s)
    s.publish("a", b"1", 1, False, 1, 0.0)
    s.publish("b", b"2", 2, False, 2, 0.0)
    s.publish("c", b"3", 1, False, 3, 0.0)
    s.data_received(w.pubrec(2), 0.0)
    s.connection_lost()
    up(s, 5.0, present=True)
    assert s.resend(5.0) == 3
    assert s.take_output() == (w.publish("a", b"1", 1, dup=True, packet_id=1) + w.pubrel(2)
                               + w.publish("c", b"3", 1, dup=True, packet_id=3))  # [MQTT-4.4.0-1]


def test_incoming_messages_are_acknowledged_and_qos2_delivered_once():
    s = session()
    up(s)
    assert s.data_received(w.publish("x", b"0", 0, retain=True), 0.0) == [Received("x", b"0", 0, True)]
    assert s.data_received(w.publish("x", b"1", 1, packet_id=7), 0.0) == [Received("x", b"1", 1, False)]
    assert s.take_output() == w.puback(7)
    assert s.data_received(w.publish("x", b"2", 2, packet_id=8), 0.0) == [Received("x", b"2", 2, False)]
    assert s.data_received(w.publish("x", b"2", 2, dup=True, packet_id=8), 0.0) == []  # [MQTT-4.3.3-2]
    assert s.take_output() == w.pubrec(8) + w.pubrec(8)
    s.data_received(w.pubrel(8), 0.0)
    assert s.take_output() == w.pubcomp(8)


def test_subscribe_and_suback():
    s = session()
    up(s)
    pid = s.subscribe([("cmd/#", 1), ("cfg", 0)], 0.0)
    assert s.take_output() == w.subscribe(pid, [("cmd/#", 1), ("cfg", 0)])
    assert s.data_received(w.suback(pid, [1, 0x80]), 0.0) == [Subscribed(pid, (1, 0x80))]
    pid = s.unsubscribe(["old/#"], 0.0)
    assert s.take_output() == w.unsubscribe(pid, ["old/#"])


def test_keepalive_ping_and_dead_peer():
    s = session(keepalive=10)
    up(s, 0.0)
    assert s.tick(5.0) == (10.0, None)
    assert s.tick(10.0) == (20.0, None)
    assert s.take_output() == w.pingreq()
    s.data_received(w.pingresp(), 12.0)
    due, lost = s.tick(12.0)
    assert lost is None and due == 20.0  # next ping a keepalive after the last send
    s.tick(20.0)
    s.take_output()
    # No answer at all within a keepalive of the PINGREQ: the peer is dead (no FIN needed).
    assert s.tick(29.9)[1] is None
    assert isinstance(s.tick(30.0)[1], Lost)


def test_no_connack_in_time_is_lost():
    s = session(keepalive=10)
    s.connect(0.0)
    assert s.tick(5.0) == (10.0, None)
    assert isinstance(s.tick(10.0)[1], Lost)


def test_malformed_input_ends_the_connection():
    s = session()
    up(s)
    events = s.data_received(b"\xf0\x00", 0.0)
    assert isinstance(events[-1], Lost)


def test_max_packet_size_bounds_what_the_remote_sends():
    s = session(max_packet_size=64)
    up(s)
    events = s.data_received(w.publish("x", b"y" * 100), 0.0)
    assert isinstance(events[-1], Lost)


@pytest.mark.parametrize("level", [1, 5])
def test_only_mqtt31_and_311(level):
    with pytest.raises(ValueError):
        session(protocol_level=level)


@pytest.mark.parametrize("level, name", [(0x84, "MQTT"), (0x83, "MQIsdp")])
def test_codec_reads_the_bridge_flag_connect_in_full(level, name):
    """The receiving side: a CONNECT with Mosquitto's bridge flag is parsed like a plain one (the core
    then treats the peer as a bridge)."""
    from edgebroker.codec import Parser
    from edgebroker.packets import Connect

    (p,) = Parser().feed(w.connect("peer", clean=False, keepalive=30, proto_name=name, level=level, username="u"))
    assert p == Connect(name, level, False, 30, "peer", None, "u", None)
