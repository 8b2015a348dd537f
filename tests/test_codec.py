"""edgebroker.codec against the independent byte builder in tests/mqttwire.py (MQTT 3.1.1).

- byte-exact: encode(p.X(...)) == mqttwire.x(...) and Parser().feed(mqttwire.x(...)) == [p.X(...)];
- framing: several packets in one feed, a packet split across feeds, byte-by-byte feeding;
- malformed input: a data table (mqttwire.MALFORMED) named by conformance id, each row raising MalformedPacket,
  whether fed whole or one byte at a time;
- properties (hypothesis): random bytes and mutated valid packets raise nothing but MalformedPacket, fed
  whole or in chunks with the same outcome; generated valid packets round trip and match mqttwire.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from edgebroker import packets as p
from edgebroker.codec import Parser, encode, publish_head
from edgebroker.errors import MalformedPacket

import mqttwire as w

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

PACKET_CLASSES = (p.Connect, p.Connack, p.Publish, p.Puback, p.Pubrec, p.Pubrel, p.Pubcomp, p.Subscribe,
                  p.Suback, p.Unsubscribe, p.Unsuback, p.Pingreq, p.Pingresp, p.Disconnect)


# ---------------------------------------------------------------------------------------------------------
# An oracle: a packet value rendered by mqttwire (which never imports edgebroker)
# ---------------------------------------------------------------------------------------------------------

def wire_of(pkt: object) -> bytes:
    """The bytes mqttwire builds for the same packet value."""
    if isinstance(pkt, p.Connect):
        will = None
        if pkt.will is not None:
            will = w.Will(pkt.will.topic, pkt.will.payload, pkt.will.qos, pkt.will.retain)
        return w.connect(pkt.client_id, clean=pkt.clean_session, keepalive=pkt.keepalive, will=will,
                         username=pkt.username, password=pkt.password, proto_name=pkt.protocol_name,
                         level=pkt.protocol_level)
    if isinstance(pkt, p.Connack):
        return w.connack(pkt.session_present, pkt.return_code)
    if isinstance(pkt, p.Publish):
        return w.publish(pkt.topic, pkt.payload, qos=pkt.qos, retain=pkt.retain, dup=pkt.dup,
                         packet_id=pkt.packet_id if pkt.qos else None)
    if isinstance(pkt, p.Puback):
        return w.puback(pkt.packet_id)
    if isinstance(pkt, p.Pubrec):
        return w.pubrec(pkt.packet_id)
    if isinstance(pkt, p.Pubrel):
        return w.pubrel(pkt.packet_id)
    if isinstance(pkt, p.Pubcomp):
        return w.pubcomp(pkt.packet_id)
    if isinstance(pkt, p.Subscribe):
        return w.subscribe(pkt.packet_id, pkt.topics)
    if isinstance(pkt, p.Suback):
        return w.suback(pkt.packet_id, pkt.return_codes)
    if isinstance(pkt, p.Unsubscribe):
        return w.unsubscribe(pkt.packet_id, pkt.topics)
    if isinstance(pkt, p.Unsuback):
        return w.unsuback(pkt.packet_id)
    if isinstance(pkt, p.Pingreq):
        return w.pingreq()
    if isinstance(pkt, p.Pingresp):
        return w.pingresp()
    if isinstance(pkt, p.Disconnect):
        return w.disconnect()
    raise AssertionError(f"not a packet: {pkt!r}")


def feed_chunks(chunks: List[bytes], parser: Optional[Parser] = None) -> Tuple[list, bool]:
    """Feed chunks in order; return (packets decoded, whether MalformedPacket was raised). Any other
    exception propagates and fails the test: MalformedPacket is the codec's only error for bad input."""
    parser = Parser() if parser is None else parser
    out: list = []
    for chunk in chunks:
        try:
            got = parser.feed(chunk)
        except MalformedPacket:
            return out, True
        assert isinstance(got, list)
        out.extend(got)
    return out, False


def typed(x: object) -> object:
    """A comparable form that includes the packet class: NamedTuple equality is plain tuple equality, so
    p.Puback(1) == p.Pubrec(1) and p.Pingreq() == p.Disconnect(); tests compare typed(...) instead."""
    if isinstance(x, tuple) and hasattr(x, "_fields"):
        return (type(x).__name__,) + tuple(typed(f) for f in x)
    if isinstance(x, (list, tuple)):
        return type(x)(typed(f) for f in x)
    if isinstance(x, (bytearray, memoryview)):
        return bytes(x)
    return x


def byte_by_byte(data: bytes) -> List[bytes]:
    return [data[i:i + 1] for i in range(len(data))]


# ---------------------------------------------------------------------------------------------------------
# Examples: every packet type, byte-exact against mqttwire
# ---------------------------------------------------------------------------------------------------------

BIG = bytes(range(256)) * 8  # 2048 bytes: a 2-byte remaining length

EXAMPLES = [
    ("connect-minimal", p.Connect("MQTT", 4, True, 60, "client-1"), w.connect("client-1")),
    ("connect-empty-client-id", p.Connect("MQTT", 4, True, 0, ""), w.connect("", keepalive=0)),
    ("connect-full",
     p.Connect("MQTT", 4, False, 10, "c2", p.Will("w/t", b"bye", 1, True), "user", b"pw"),
     w.connect("c2", clean=False, keepalive=10, will=w.Will("w/t", b"bye", 1, True), username="user",
               password=b"pw")),
    ("connect-will-qos2-no-retain",
     p.Connect("MQTT", 4, True, 65535, "c3", p.Will("a", b"", 2, False)),
     w.connect("c3", keepalive=65535, will=w.Will("a", b"", 2, False))),
    ("connect-username-only", p.Connect("MQTT", 4, True, 5, "c4", None, "ü-ser"),
     w.connect("c4", keepalive=5, username="ü-ser")),
    ("connect-empty-password", p.Connect("MQTT", 4, True, 5, "c5", None, "u", b""),
     w.connect("c5", keepalive=5, username="u", password=b"")),
    ("connect-mqisdp-3.1", p.Connect("MQIsdp", 3, True, 30, "old-client"),
     w.connect("old-client", keepalive=30, proto_name="MQIsdp", level=3)),
    ("connack-accepted", p.Connack(False, 0), b"\x20\x02\x00\x00"),
    ("connack-session-present", p.Connack(True, 0), b"\x20\x02\x01\x00"),
    ("connack-bad-version", p.Connack(False, 1), b"\x20\x02\x00\x01"),
    ("connack-not-authorized", p.Connack(False, 5), b"\x20\x02\x00\x05"),
    ("publish-qos0", p.Publish("a/b", b"hello"), b"\x30\x0a\x00\x03a/bhello"),
    ("publish-qos0-retain", p.Publish("a/b", b"", 0, True), b"\x31\x05\x00\x03a/b"),
    ("publish-qos1", p.Publish("a/b", b"x", 1, False, False, 10), b"\x32\x08\x00\x03a/b\x00\x0ax"),
    ("publish-qos2-dup-retain", p.Publish("t", b"yz", 2, True, True, 65535),
     b"\x3d\x07\x00\x01t\xff\xffyz"),
    ("publish-unicode-topic", p.Publish("température/€/\U0001d11e", b"\x00\xff", 1, False, False, 1),
     w.publish("température/€/\U0001d11e", b"\x00\xff", qos=1, packet_id=1)),
    ("publish-2-byte-length", p.Publish("big", BIG), w.publish("big", BIG)),
    ("publish-3-byte-length", p.Publish("big", BIG * 10), w.publish("big", BIG * 10)),
    ("publish-4-byte-length", p.Publish("big", BIG * 1100), w.publish("big", BIG * 1100)),
    ("publish-levels-empty", p.Publish("/a//b/", b"v"), w.publish("/a//b/", b"v")),
    ("puback", p.Puback(1), b"\x40\x02\x00\x01"),
    ("pubrec", p.Pubrec(0x1234), b"\x50\x02\x12\x34"),
    ("pubrel", p.Pubrel(3), b"\x62\x02\x00\x03"),
    ("pubcomp", p.Pubcomp(65535), b"\x70\x02\xff\xff"),
    ("subscribe", p.Subscribe(10, (("a/b", 0), ("c/+", 1), ("d/#", 2))),
     b"\x82\x14\x00\x0a\x00\x03a/b\x00\x00\x03c/+\x01\x00\x03d/#\x02"),
    ("subscribe-wildcards", p.Subscribe(2, (("#", 2), ("+", 0), ("+/+/#", 1), ("/", 0), ("a//+", 1))),
     w.subscribe(2, [("#", 2), ("+", 0), ("+/+/#", 1), ("/", 0), ("a//+", 1)])),
    ("suback", p.Suback(10, (0, 1, 2, 0x80)), b"\x90\x06\x00\x0a\x00\x01\x02\x80"),
    ("unsubscribe", p.Unsubscribe(7, ("a/b", "c/#")), b"\xa2\x0c\x00\x07\x00\x03a/b\x00\x03c/#"),
    ("unsuback", p.Unsuback(7), b"\xb0\x02\x00\x07"),
    ("pingreq", p.Pingreq(), b"\xc0\x00"),
    ("pingresp", p.Pingresp(), b"\xd0\x00"),
    ("disconnect", p.Disconnect(), b"\xe0\x00"),
]
EXAMPLE_IDS = [e[0] for e in EXAMPLES]


def test_examples_cover_every_packet_type():
    assert {type(pkt) for _, pkt, _ in EXAMPLES} == set(PACKET_CLASSES)


@pytest.mark.parametrize("name,pkt,data", EXAMPLES, ids=EXAMPLE_IDS)
def test_mqttwire_agrees_with_literal_bytes(name, pkt, data):
    """The oracle itself: mqttwire renders each example to the literal (or builder) bytes above."""
    assert wire_of(pkt) == data


@pytest.mark.parametrize("name,pkt,data", EXAMPLES, ids=EXAMPLE_IDS)
def test_encode_is_byte_exact(name, pkt, data):
    got = encode(pkt)
    assert isinstance(got, (bytes, bytearray))
    assert bytes(got) == data, f"{w.hexs(bytes(got)[:64])} != {w.hexs(data[:64])}"


@pytest.mark.parametrize("name,pkt,data", EXAMPLES, ids=EXAMPLE_IDS)
def test_decode_is_exact(name, pkt, data):
    assert typed(Parser().feed(data)) == typed([pkt])


@pytest.mark.parametrize("name,pkt,data", EXAMPLES, ids=EXAMPLE_IDS)
def test_round_trip(name, pkt, data):
    assert typed(Parser().feed(encode(pkt))) == typed([pkt])


@pytest.mark.parametrize("name,pkt,data", EXAMPLES, ids=EXAMPLE_IDS)
def test_decoded_packet_types_and_values(name, pkt, data):
    (got,) = Parser().feed(data)
    assert type(got) is type(pkt)
    assert tuple(got) == tuple(pkt)


def test_packet_type_enum_values():
    """Section 2.2.1, Table 2.1."""
    assert [int(getattr(p.PacketType, n)) for n in (
        "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "SUBSCRIBE", "SUBACK",
        "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT")] == list(range(1, 15))


def test_connack_code_enum_values():
    """Section 3.2.2.3, Table 3.1."""
    c = p.ConnackCode
    assert (c.ACCEPTED, c.UNACCEPTABLE_PROTOCOL_VERSION, c.IDENTIFIER_REJECTED, c.SERVER_UNAVAILABLE,
            c.BAD_USERNAME_OR_PASSWORD, c.NOT_AUTHORIZED) == (0, 1, 2, 3, 4, 5)


def test_publish_defaults():
    assert p.Publish("t", b"x") == p.Publish("t", b"x", 0, False, False, 0)
    assert encode(p.Publish("t", b"x")) == b"\x30\x04\x00\x01tx"


# ---------------------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------------------

ALL_DATA = b"".join(data for _, _, data in EXAMPLES)
ALL_PACKETS = [pkt for _, pkt, _ in EXAMPLES]


def test_several_packets_in_one_feed():
    assert typed(Parser().feed(ALL_DATA)) == typed(ALL_PACKETS)


def test_packet_split_across_two_feeds_at_every_offset():
    data = w.publish("a/b", b"payload", qos=1, packet_id=9) + w.pingreq()
    want = [p.Publish("a/b", b"payload", 1, False, False, 9), p.Pingreq()]
    for cut in range(len(data) + 1):
        parser = Parser()
        got = parser.feed(data[:cut])
        got += parser.feed(data[cut:])
        assert typed(got) == typed(want), f"cut at {cut}"


def test_partial_packet_returns_nothing_until_complete():
    parser = Parser()
    data = w.subscribe(4, [("x/#", 1)])
    assert parser.feed(data[:1]) == []
    assert parser.feed(data[1:-1]) == []
    assert typed(parser.feed(data[-1:])) == typed([p.Subscribe(4, (("x/#", 1),))])
    assert parser.feed(b"") == []


def test_empty_feed():
    assert Parser().feed(b"") == []


SMALL_EXAMPLES = [e for e in EXAMPLES if len(e[2]) < 65536]


def test_byte_by_byte():
    """Every example (but the multi-megabyte one) fed one byte per call: a packet is reported exactly when
    its last byte arrives, never before."""
    data = b"".join(d for _, _, d in SMALL_EXAMPLES)
    want = [pkt for _, pkt, _ in SMALL_EXAMPLES]
    ends = set()
    pos = 0
    for _, _, d in SMALL_EXAMPLES:
        pos += len(d)
        ends.add(pos)
    parser = Parser()
    got: list = []
    for i in range(len(data)):
        out = parser.feed(data[i:i + 1])
        if i + 1 not in ends:
            assert out == [], f"packet reported before its last byte (offset {i})"
        else:
            assert len(out) == 1
        got.extend(out)
    assert typed(got) == typed(want)


def test_all_examples_in_64k_chunks():
    parser = Parser()
    got: list = []
    for i in range(0, len(ALL_DATA), 65536):
        got.extend(parser.feed(ALL_DATA[i:i + 65536]))
    assert typed(got) == typed(ALL_PACKETS)


def test_large_packet_in_chunks_is_not_recopied_per_feed(monkeypatch):
    """Bounded CPU for what the peer controls (STYLE 4): a large PUBLISH arriving in 64 KiB segments
    (as recv delivers it) must cost work linear in its size. The quadratic failure mode is re-copying
    the whole partial buffer into a new bytes object on every feed; count those copies instead of timing
    (tests never assert timings): 512 feeds of one 32 MiB packet may copy it a bounded number of times."""
    import edgebroker.codec as codec_module

    copied = []
    real_bytes = bytes

    def counting_bytes(*args):
        result = real_bytes(*args)
        if len(result) > 65536:
            copied.append(len(result))
        return result

    size, chunk = 32 << 20, 65536
    data = w.publish("t", b"\x5a" * size)
    monkeypatch.setattr(codec_module, "bytes", counting_bytes, raising=False)
    parser = Parser()
    out: list = []
    for i in range(0, len(data), chunk):
        out = parser.feed(data[i:i + chunk])
    monkeypatch.undo()
    assert len(out) == 1 and len(out[0].payload) == size
    assert len(copied) <= 2, f"{len(copied)} large copies for {len(data) // chunk + 1} feeds"


def test_missing_counts_what_the_packet_being_gathered_still_lacks():
    """The loop reads more at once while a large packet arrives (server.RECV_LARGE): `missing` says how
    many bytes the packet in progress lacks, 0 when none is in progress or its header is incomplete."""
    data = w.publish("t/x", b"\x01" * 100_000) + w.puback(7)
    parser = Parser()
    assert parser.missing == 0
    assert parser.feed(data[:1]) == [] and parser.missing == 0  # header incomplete: size not known yet
    assert parser.feed(data[1:40_000]) == []
    assert parser.missing == len(data) - 4 - 40_000
    got = parser.feed(data[40_000:])
    assert [p.__class__.__name__ for p in got] == ["Publish", "Puback"] and parser.missing == 0


def test_trailing_partial_kept_for_next_feed():
    parser = Parser()
    tail = w.puback(5)
    assert typed(parser.feed(w.pingreq() + w.pingreq() + tail[:3])) == typed([p.Pingreq(), p.Pingreq()])
    assert parser.buffered == 3
    assert typed(parser.feed(tail[3:] + w.disconnect())) == typed([p.Puback(5), p.Disconnect()])
    assert parser.buffered == 0


def test_a_parser_holds_no_buffer_of_its_own_between_whole_packets():
    """Memory (issue 19): an idle connection's parser shares the empty bytes instead of an empty
    bytearray each (56 bytes); a partial packet gets a buffer, which goes when the packet is complete."""
    parser = Parser()
    assert parser._buf == b"" and parser._buf.__class__ is bytes
    packet = w.publish("a/b", b"x" * 10)
    assert parser.feed(packet[:4]) == [] and parser.buffered == 4
    assert parser.feed(packet[4:7]) == [] and parser.buffered == 7
    assert typed(parser.feed(packet[7:] + w.pingreq())) == typed([p.Publish("a/b", b"x" * 10), p.Pingreq()])
    assert parser._buf == b"" and parser._buf.__class__ is bytes


def test_protocol_maximum_remaining_length_header_is_accepted():
    """Section 2.2.3: 268435455 (ff ff ff 7f) is the largest legal remaining length; with the default
    max_packet_size=0 (protocol max) the header alone is not an error, the parser waits for the body."""
    assert Parser().feed(b"\x30\xff\xff\xff\x7f") == []
    assert Parser(max_packet_size=0).feed(b"\x30\xff\xff\xff\x7f\x00") == []


def test_two_byte_and_three_byte_remaining_length_boundaries():
    for n in (127, 128, 16383, 16384):
        body_len = n - 3  # topic "t" = 3 bytes
        data = w.publish("t", b"\xaa" * body_len)
        assert data[1:1 + len(w.remaining_length(n))] == w.remaining_length(n)
        assert typed(Parser().feed(data)) == typed([p.Publish("t", b"\xaa" * body_len)])
        assert encode(p.Publish("t", b"\xaa" * body_len)) == data


# ---------------------------------------------------------------------------------------------------------
# Non-3.1.1 protocol levels decode so that the broker can answer CONNACK 1 [MQTT-3.1.2-2]
# ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("level", [0, 1, 2, 5, 6, 255])
def test_MQTT_3_1_2_2_unsupported_level_decodes_to_connect(level):
    data = w.connect("someone", level=level, v5_properties=(level == 5))
    (pkt,) = Parser().feed(data)
    assert isinstance(pkt, p.Connect)
    assert pkt.protocol_level == level
    assert pkt.client_id == ""


def test_MQTT_3_1_2_2_mqtt5_connect_with_properties_and_will_decodes():
    data = w.connect("v5", level=5, v5_properties=True, will=w.Will("w", b"x", 1, False), username="u",
                     password=b"p")
    parser = Parser()
    (pkt,) = parser.feed(data + w.pingreq()[:1])
    assert isinstance(pkt, p.Connect) and pkt.protocol_level == 5
    # The stream stays in sync after the unparsed payload: the next packet decodes.
    assert typed(parser.feed(w.pingreq()[1:])) == typed([p.Pingreq()])


# ---------------------------------------------------------------------------------------------------------
# max_packet_size
# ---------------------------------------------------------------------------------------------------------

def test_max_packet_size_allows_a_packet_of_exactly_the_limit():
    """max_packet_size counts the whole packet, fixed header included (as MQTT 5's Maximum Packet Size
    and Mosquitto's max_packet_size do): a 100-byte packet passes a limit of 100."""
    data = w.publish("t", b"x" * 95)
    assert len(data) == 100
    assert typed(Parser(max_packet_size=100).feed(data)) == typed([p.Publish("t", b"x" * 95)])


def test_max_packet_size_rejects_one_byte_more():
    data = w.publish("t", b"x" * 96)
    assert len(data) == 101
    with pytest.raises(MalformedPacket):
        Parser(max_packet_size=100).feed(data)


def test_max_packet_size_rejects_on_the_header_alone():
    """Bounded memory: an oversize packet is refused as soon as its remaining length is known, without
    waiting for (and buffering) the body."""
    with pytest.raises(MalformedPacket):
        Parser(max_packet_size=1000).feed(b"\x30\xff\xff\xff\x7f")
    with pytest.raises(MalformedPacket):
        Parser(max_packet_size=1000).feed(b"\x30\xe9\x07")  # 1001


def test_max_packet_size_rejects_byte_by_byte():
    parser = Parser(max_packet_size=50)
    data = w.publish("t", b"y" * 100)
    with pytest.raises(MalformedPacket):
        for i in range(len(data)):
            parser.feed(data[i:i + 1])


# ---------------------------------------------------------------------------------------------------------
# Malformed table: every row raises MalformedPacket, whole or byte by byte
# ---------------------------------------------------------------------------------------------------------

MALFORMED_IDS = [m.name.replace("[", "").replace("]", "") for m in w.MALFORMED]


@pytest.mark.parametrize("case", w.MALFORMED, ids=MALFORMED_IDS)
def test_malformed_raises(case):
    with pytest.raises(MalformedPacket):
        Parser().feed(case.data)


@pytest.mark.parametrize("case", w.MALFORMED, ids=MALFORMED_IDS)
def test_malformed_raises_byte_by_byte(case):
    packets, raised = feed_chunks(byte_by_byte(case.data))
    assert raised and packets == []


@pytest.mark.parametrize("case", w.MALFORMED, ids=MALFORMED_IDS)
def test_malformed_after_valid_packets_raises(case):
    parser = Parser()
    assert typed(parser.feed(w.pingreq())) == typed([p.Pingreq()])
    with pytest.raises(MalformedPacket):
        parser.feed(case.data)


def test_MalformedPacket_is_an_Exception():
    assert issubclass(MalformedPacket, Exception)


# ---------------------------------------------------------------------------------------------------------
# Hypothesis strategies for valid packets
# ---------------------------------------------------------------------------------------------------------

# Any Unicode scalar value except U+0000 [MQTT-1.5.3-2]; surrogates cannot be encoded [MQTT-1.5.3-1].
_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
_level_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\x00+#/")


def _utf8_len_ok(s: str) -> bool:
    return len(s.encode("utf-8")) <= 65535


texts = st.text(_chars, max_size=20)
topic_names = st.lists(st.text(_level_chars, max_size=6), min_size=1, max_size=5).map("/".join).filter(bool)


@st.composite
def topic_filters(draw) -> str:
    levels = draw(st.lists(st.one_of(st.just("+"), st.text(_level_chars, max_size=5)), min_size=0, max_size=4))
    if draw(st.booleans()) or not levels:
        levels.append("#")
    f = "/".join(levels)
    assume(f)
    return f


packet_ids = st.integers(1, 65535)
payloads = st.binary(max_size=300)

wills = st.builds(p.Will, topic_names, payloads, st.integers(0, 2), st.booleans())


@st.composite
def connects(draw) -> p.Connect:
    name, level = draw(st.sampled_from([("MQTT", 4), ("MQIsdp", 3)]))
    username = draw(st.none() | texts)
    password = draw(st.none() | st.binary(max_size=30)) if username is not None else None
    return p.Connect(name, level, draw(st.booleans()), draw(st.integers(0, 65535)), draw(texts),
                     draw(st.none() | wills), username, password)


@st.composite
def publishes(draw) -> p.Publish:
    qos = draw(st.integers(0, 2))
    return p.Publish(draw(topic_names), draw(payloads), qos, draw(st.booleans()),
                     draw(st.booleans()) if qos else False, draw(packet_ids) if qos else 0)


@st.composite
def connacks(draw) -> p.Connack:
    rc = draw(st.integers(0, 5))
    return p.Connack(draw(st.booleans()) if rc == 0 else False, rc)


valid_packets = st.one_of(
    connects(),
    connacks(),
    publishes(),
    st.builds(p.Puback, packet_ids),
    st.builds(p.Pubrec, packet_ids),
    st.builds(p.Pubrel, packet_ids),
    st.builds(p.Pubcomp, packet_ids),
    st.builds(p.Subscribe, packet_ids,
              st.lists(st.tuples(topic_filters(), st.integers(0, 2)), min_size=1, max_size=5).map(tuple)),
    st.builds(p.Suback, packet_ids, st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=5).map(tuple)),
    st.builds(p.Unsubscribe, packet_ids, st.lists(topic_filters(), min_size=1, max_size=5).map(tuple)),
    st.builds(p.Unsuback, packet_ids),
    st.builds(p.Pingreq),
    st.builds(p.Pingresp),
    st.builds(p.Disconnect),
)


@st.composite
def chunkings(draw, data: bytes) -> List[bytes]:
    """data cut at random offsets (possibly empty chunks)."""
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=12)))
    out = []
    prev = 0
    for c in cuts + [len(data)]:
        out.append(data[prev:c])
        prev = c
    return out


def assert_stable(pkts: list) -> None:
    """Whatever decodes is a packet value, and re-encoding it decodes to the same value."""
    for pkt in pkts:
        assert type(pkt) in PACKET_CLASSES, f"decoded a non-packet {pkt!r}"
        if isinstance(pkt, p.Connect) and pkt.protocol_level not in (3, 4):
            continue  # payload deliberately not parsed; only the level matters
        assert typed(Parser().feed(encode(pkt))) == typed([pkt])


# ---------------------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------------------

@FAST
@given(valid_packets)
def test_property_valid_packets_round_trip_and_match_mqttwire(pkt):
    data = encode(pkt)
    assert bytes(data) == wire_of(pkt)
    assert typed(Parser().feed(data)) == typed([pkt])


@FAST
@given(st.lists(valid_packets, min_size=1, max_size=6), st.data())
def test_property_valid_stream_in_random_chunks(pkts, data):
    stream = b"".join(wire_of(x) for x in pkts)
    got, raised = feed_chunks(data.draw(chunkings(stream)))
    assert not raised
    assert typed(got) == typed(pkts)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400))
def test_property_random_bytes_whole_raise_only_malformed(data):
    pkts, _ = feed_chunks([data])
    assert_stable(pkts)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=400), st.data())
def test_property_random_bytes_in_chunks_same_outcome_as_whole(data, d):
    whole, whole_raised = feed_chunks([data])
    chunked, chunk_raised = feed_chunks(d.draw(chunkings(data)))
    assert chunk_raised == whole_raised
    if not whole_raised:
        assert typed(chunked) == typed(whole)
    assert_stable(chunked)


@st.composite
def packet_starts(draw) -> bytes:
    """Random bodies behind plausible fixed headers, so the fuzz reaches every packet decoder."""
    first = draw(st.sampled_from([0x10, 0x20, 0x30, 0x32, 0x34, 0x3B, 0x40, 0x50, 0x62, 0x70, 0x82, 0x90, 0xA2,
                                  0xB0, 0xC0, 0xD0, 0xE0]))
    body = draw(st.binary(max_size=80))
    return w.raw_first_byte(first, body)


@settings(max_examples=500, deadline=None)
@given(packet_starts())
def test_property_random_bodies_raise_only_malformed(data):
    pkts, _ = feed_chunks([data])
    assert_stable(pkts)
    pkts2, _ = feed_chunks(byte_by_byte(data))
    assert_stable(pkts2)


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(wire_of(draw(valid_packets)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        if kind == "insert" or not data:
            data.insert(draw(st.integers(0, len(data))), draw(st.integers(0, 255)))
        elif kind == "flip":
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[draw(st.integers(0, len(data) - 1))]
        else:
            del data[draw(st.integers(0, len(data) - 1)):]
    return bytes(data)


@FAST
@given(mutated(), st.data())
def test_property_mutated_packets_raise_only_malformed(data, d):
    whole, whole_raised = feed_chunks([data])
    assert_stable(whole)
    chunked, chunk_raised = feed_chunks(d.draw(chunkings(data)))
    assert chunk_raised == whole_raised
    if not whole_raised:
        assert typed(chunked) == typed(whole)
    assert_stable(chunked)


@FAST
@given(mutated(), valid_packets)
def test_property_valid_packet_after_mutated_one_or_error(data, pkt):
    """A mutated packet followed by a valid one: either an error, or the stream decodes without losing
    sync in a way that makes the codec raise anything but MalformedPacket."""
    pkts, _ = feed_chunks([data + wire_of(pkt)])
    assert_stable(pkts)


# ---------------------------------------------------------------------------------------------------------
# Parser.ack_run: a read of acknowledgements only, decoded without packet objects
# ---------------------------------------------------------------------------------------------------------

def test_ack_run_returns_the_packet_ids_in_order():
    data = w.puback(1) + w.puback(65535) + w.puback(1) + w.puback(258)
    assert list(Parser().ack_run(data, 0x40)) == [1, 65535, 1, 258]
    assert list(Parser().ack_run(w.pubcomp(7) + w.pubcomp(8), 0x70)) == [7, 8]
    assert list(Parser().ack_run(w.puback(258), 0x40)) == [258]  # one by itself, as paho answers each message


def test_ack_run_of_twenty_leaves_no_tuples_of_twenty_behind():
    """A subscriber acknowledges the default window of 20 in one read. CPython 3.11's tuple free list
    keeps freed tuples of exactly 20 items and never reuses them (gh-121439), so ids in a 20-tuple
    left up to 2,000 of them (about 400 KiB) in every QoS 1 broker's heap. Counted in a fresh
    interpreter by its allocator statistics (which name the free list only where it exists)."""
    code = (
        "import sys\n"
        "from edgebroker.codec import Parser\n"
        "data = b''.join(bytes((0x40, 2, 0, i)) for i in range(1, 21))\n"
        "parser = Parser()\n"
        "for _ in range(3000):\n"
        "    assert list(parser.ack_run(data, 0x40)) == list(range(1, 21))\n"
        "sys._debugmallocstats()\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert done.returncode == 0, done.stderr
    kept = [line for line in done.stderr.splitlines() if "free 20-sized PyTupleObjects" in line]
    assert all(int(line.split()[0]) < 100 for line in kept), kept


@pytest.mark.parametrize("data", [
    b"",
    w.puback(1) + w.pubrec(2),                  # another packet type in the run
    w.puback(1) + w.puback(2)[:3],              # a trailing partial packet
    w.puback(1) + b"\x40\x02\x00\x00",          # packet id 0 [MQTT-2.3.1-1]
    b"\x40\x02\x00\x00",                        # one acknowledgement, packet id 0
    b"\x40\x03\x00\x01",                        # wrong remaining length
    b"\x41\x02\x00\x01",                        # reserved flags set [MQTT-2.2.2-2]
    w.pingreq() + w.pingreq(),                  # four bytes, not acknowledgements
], ids=["empty", "mixed", "partial", "id-0", "one-id-0", "length", "flags", "pingreqs"])
def test_ack_run_declines_anything_else_and_feed_then_decides(data):
    parser = Parser()
    assert parser.ack_run(data, 0x40) is None
    assert parser.buffered == 0, "a declined read must leave the parser as it was"


def test_ack_run_declines_while_a_partial_packet_is_buffered():
    """The parser holds the first bytes of a packet: the next read completes it, so it cannot be taken
    as whole acknowledgements (the stream would lose sync)."""
    parser = Parser()
    assert parser.feed(w.puback(9)[:2]) == []
    assert parser.ack_run(w.puback(1), 0x40) is None
    assert typed(parser.feed(w.puback(9)[2:] + w.puback(1))) == typed([p.Puback(9), p.Puback(1)])


def test_ack_run_declines_when_max_packet_size_is_below_four():
    assert Parser(max_packet_size=3).ack_run(w.puback(1), 0x40) is None


@FAST
@given(st.binary(min_size=4, max_size=64).filter(lambda b: len(b) % 4 == 0)
       | st.lists(st.integers(0, 65535), min_size=1, max_size=40).map(
           lambda ids: b"".join(b"\x40\x02" + i.to_bytes(2, "big") for i in ids)))
def test_property_ack_run_agrees_with_feed(data):
    """Whatever ack_run accepts, feed decodes to exactly those PUBACKs; what feed rejects or decodes
    as anything else, ack_run declines."""
    ids = Parser().ack_run(data, 0x40)
    try:
        fed = Parser().feed(data)
    except MalformedPacket:
        fed = None
    if ids is not None:
        assert fed is not None and typed(fed) == typed([p.Puback(i) for i in ids])
    else:
        assert fed is None or not all(isinstance(x, p.Puback) for x in fed) or len(fed) * 4 != len(data)


# ---------------------------------------------------------------------------------------------------------
# publish_head: the shared part of an outgoing PUBLISH
# ---------------------------------------------------------------------------------------------------------

@FAST
@given(st.one_of(st.sampled_from([0, 127, 128, 16383, 16384, 2097151, 2097152, 268435455]),
                 st.integers(0, 268435455)),
       st.text(min_size=1, max_size=40))
def test_property_publish_head_is_remaining_length_then_topic_string(body_len, topic):
    """Section 2.2.3 (remaining length, 1 to 4 bytes) then a UTF-8 string (1.5.3), built here by
    mqttwire's independent encoder; the one- and two-byte lengths take a shorter path."""
    raw = topic.encode("utf-8")
    assert publish_head(body_len, raw) == w.remaining_length(body_len) + w.utf8(topic)


def test_publish_topic_names_are_checked_once_and_shared_but_the_cache_stays_bounded():
    """A topic name seen before is the same string object (decoded and checked once); a bad name is
    refused every time, never remembered; the cache of names is bounded in count and name length."""
    from edgebroker import codec
    codec._topics.clear()
    a, b = Parser().feed(w.publish("s/1/t", b"1") + w.publish("s/1/t", b"2"))
    assert a.topic == "s/1/t" and a.topic is b.topic
    for _ in range(2):
        with pytest.raises(MalformedPacket):
            Parser().feed(w.publish("s/+/t", b"x"))
    assert b"s/+/t" not in codec._topics
    long_name = "x" * (codec.TOPIC_CACHE_LONGEST + 1)
    Parser().feed(w.publish(long_name, b"x"))
    assert long_name.encode() not in codec._topics
    Parser().feed(b"".join(w.publish(f"n/{i}", b"x") for i in range(codec.TOPIC_CACHE_SIZE * 2)))
    assert len(codec._topics) <= codec.TOPIC_CACHE_SIZE


def test_qos1_heads_are_shared_by_topic_and_payload_size_but_the_cache_stays_bounded():
    """Messages on one topic with payloads of one size share the encoded head of their QoS 1/2 PUBLISH
    (a queue of a sensor's readings keeps one, not one each); each delivery's bytes are still exactly
    mqttwire's independent encoding; other sizes and topics get heads of their own; the cache is bounded
    in count and topic length."""
    p._HEADS.clear()
    a, b, c = (p.Message("s/1/t", payload, 1) for payload in (b"21.5", b"22.0", b"22.25"))
    assert a.wire(1, 300) == w.publish("s/1/t", b"21.5", qos=1, packet_id=300)
    assert b.wire(2, 7, dup=True) == w.publish("s/1/t", b"22.0", qos=2, packet_id=7, dup=True)
    assert c.wire(1, 65535) == w.publish("s/1/t", b"22.25", qos=1, packet_id=65535)
    assert a.parts(1, 1)[1] is b.parts(1, 2)[1] and a.parts(1, 1)[1] is not c.parts(1, 3)[1]
    long_name = "x" * (p.HEAD_CACHE_LONGEST + 1)
    assert p.Message(long_name, b"x", 1).wire(1, 9) == w.publish(long_name, b"x", qos=1, packet_id=9)
    assert all(key[0] != long_name for key in p._HEADS)
    for i in range(p.HEAD_CACHE_SIZE * 2):
        assert p.Message(f"n/{i}", b"x" * (i % 7), 1).wire(1, 1) == w.publish(f"n/{i}", b"x" * (i % 7), qos=1,
                                                                             packet_id=1)
    assert len(p._HEADS) <= p.HEAD_CACHE_SIZE


# ---- one whole PUBLISH in a read: Parser.feed's short path ---------------------------------------

def test_decoded_publish_is_the_object_the_class_makes():
    from edgebroker.packets import decoded_publish
    for args in (("a/b", b"x", 0, False, False, 0, b"\x30\x06\x00\x03a/bx"), ("t", b"", 1, True, True, 7, None),
                 ("t", b"pp", 2, False, False, 65535, None)):
        made, decoded = p.Publish(*args), decoded_publish(*args)
        assert decoded.__class__ is p.Publish
        for name in p.Publish.__slots__ + p.Message.__slots__:
            assert getattr(decoded, name) == getattr(made, name), name


@pytest.mark.parametrize("packet", [
    w.publish("s/t", b"21.5"), w.publish("s/t", b"v", qos=1, packet_id=9), w.publish("s/t", b"", retain=True),
    w.publish("s/t", b"v", qos=2, dup=True, packet_id=300), w.publish("t", b"x" * 123),
])
def test_a_read_of_one_publish_decodes_as_in_a_longer_read(packet):
    alone = Parser().feed(packet)
    among = Parser().feed(w.pingreq() + packet)[1:]
    assert len(alone) == 1 and alone == among
    assert alone[0]._q0 == among[0]._q0  # the QoS 0 bytes kept as the message's encoding, or None


@pytest.mark.parametrize("packet", [
    w.raw_first_byte(0x36, w.utf8("t") + b"\x00\x01"),        # QoS 3
    w.raw_first_byte(0x38, w.utf8("t")),                      # DUP on QoS 0
    w.raw_first_byte(0x30, w.utf8("a/+")),                    # a wildcard in a topic name
    w.raw_first_byte(0x30, b"\x00\x02\xff\xfe"),              # not UTF-8
    w.raw_first_byte(0x32, w.utf8("t") + b"\x00\x00"),        # packet id 0
    w.raw_first_byte(0x30, b"\x00\x09ab"),                    # the topic runs past the packet
])
def test_a_read_of_one_malformed_publish_raises_with_no_packets(packet):
    with pytest.raises(MalformedPacket) as err:
        Parser().feed(packet)
    assert err.value.packets == []


def test_a_bytearray_read_takes_the_long_path_and_gives_bytes():
    got = Parser().feed(bytearray(w.publish("s/t", b"21.5")))
    assert got[0].payload == b"21.5" and got[0].payload.__class__ is bytes


# ---- a connection's first read: CONNECT (and SUBSCRIBE), Parser.feed's handshake path ---------------

@st.composite
def handshakes(draw) -> bytes:
    """A first read as clients send it: an MQTT 3.1.1 CONNECT (with or without credentials, sometimes a
    will, sometimes MQTT 3.1), alone or followed by a SUBSCRIBE of one filter or a few."""
    username = draw(st.none() | texts)
    password = draw(st.none() | st.binary(max_size=30)) if username is not None else None
    will = draw(st.none() | wills) if draw(st.integers(0, 4)) == 0 else None
    name, level = ("MQTT", 4) if draw(st.integers(0, 4)) else ("MQIsdp", 3)
    data = w.connect(draw(texts), draw(st.booleans()), draw(st.integers(0, 65535)), will, username, password,
                     name, level)
    if draw(st.booleans()):
        filters = st.one_of(topic_names, topic_filters())
        data += w.subscribe(draw(packet_ids), draw(st.lists(st.tuples(filters, st.integers(0, 2)), min_size=1,
                                                            max_size=1 if draw(st.integers(0, 3)) else 3)))
    return data


def _general(data: bytes) -> Tuple[list, bool]:
    """What the general walk of Parser.feed makes of `data` (a bytearray never takes the handshake path)."""
    try:
        return Parser(512 * 1024).feed(bytearray(data)), False
    except MalformedPacket as exc:
        return exc.packets, True


@pytest.mark.parametrize("data", [
    w.connect("bench-idle-7", True, 0) + w.subscribe(1, [("bench/idle/7", 0)]),  # S6's handshake
    w.connect("bench-idle-7", True, 0, username="bench-idle-7", password=b"pw-7")
    + w.subscribe(1, [("bench/idle/7", 0)]),                                       # S6-auth's
    w.connect("sensor-1", False, 60),                                               # paho's: CONNECT alone
    w.connect("", True, 60, username="u"),
    w.connect("é", True, 5) + w.subscribe(65535, [("a/é", 2)]),
])
def test_the_usual_first_reads_take_the_handshake_path_and_decode_as_the_general_walk(data):
    from edgebroker import codec
    fast = codec._handshake(data, len(data))
    assert fast is not None  # the path is taken (else the property below would hold trivially)
    assert typed(Parser(512 * 1024).feed(data)) == typed(fast) == typed(_general(data)[0])


@FAST
@given(handshakes() | mutated() | st.builds(lambda a, b: a + b, handshakes(), st.binary(max_size=8)), st.data())
def test_property_handshake_path_says_yes_only_to_what_the_general_walk_decodes_the_same(data, d):
    """The handshake path returns exactly the general walk's packets or declines (None); a read of any
    kind, whole or in chunks, decodes the same through feed as through the general walk alone."""
    from edgebroker import codec
    fast = codec._handshake(data, len(data)) if len(data) >= 14 and data[0] == 0x10 else None  # (its caller's test)
    general, raised = _general(data)
    if fast is not None:
        assert not raised and typed(fast) == typed(general)
    try:
        whole, whole_raised = Parser(512 * 1024).feed(data), False
    except MalformedPacket as exc:
        whole, whole_raised = exc.packets, True
    assert whole_raised == raised and typed(whole) == typed(general)
    chunked, chunk_raised = feed_chunks(d.draw(chunkings(data)), Parser(512 * 1024))
    assert chunk_raised == raised
    if not raised:
        assert typed(chunked) == typed(general)


@pytest.mark.parametrize("data", [
    w.connect("c", True, 0) + b"\x82\x85\x00\x01\x00\x80" + b"a" * 128 + b"\x00",  # a two-byte remaining length
    w.connect("c", True, 0, will=p.Will("w/t", b"gone", 1, False)),                # a will
    w.connect("c", True, 0, proto_name="MQIsdp", level=3),                          # MQTT 3.1
    w.connect("c", True, 0, level=0x84),                                            # a bridge
    w.connect("c", True, 0) + w.subscribe(1, [("a", 0), ("b", 1)]),                 # two filters
    w.connect("c", True, 0) + w.subscribe(1, [("a/+", 0)]),                         # a wildcard
    w.connect("c", True, 0) + w.subscribe(1, [("a", 0)]) + w.pingreq(),             # more after it
    w.connect("c", True, 0) + w.subscribe(0, [("a", 0)]),                           # packet id 0
    w.connect("c", True, 0) + w.subscribe(1, [("a", 3)]),                           # QoS 3
    w.connect("c\x00", True, 0),                                                    # U+0000
    w.connect("c", True, 0, flags_override=0x03),                                   # the reserved flag
])
def test_other_first_reads_are_left_to_the_general_walk(data):
    from edgebroker import codec
    assert codec._handshake(data, len(data)) is None
    try:
        got, raised = Parser(512 * 1024).feed(data), False
    except MalformedPacket as exc:
        got, raised = exc.packets, True
    assert (typed(got), raised) == (typed(_general(data)[0]), _general(data)[1])
