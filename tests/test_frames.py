"""The shared serial codecs (firmware_bridge/firmware/frames.py and lines.py) under CPython.

The vectors come from docs/serial-protocol.md (tests/serialvectors.py), so the specification and the
code are checked against each other; the same vectors run under MicroPython in test_micropython.py.
Independent facts anchor them: the CRC check value 0x29B1 and binascii.crc_hqx, and COBS examples
computed by hand from the algorithm's definition.
"""
from __future__ import annotations

import binascii

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge.firmware import frames as F
from firmware_bridge.firmware import lines as L
from serialvectors import by_kind, load_vectors, unhex

TYPES = {"publish": F.PUBLISH, "subscribe": F.SUBSCRIBE, "ack": F.ACK, "ping": F.PING}


def _ids(vectors):
    return ["line%d" % v["_line"] for v in vectors]


def test_the_document_has_vectors_of_every_kind():
    kinds = {k for v in load_vectors() for k in ("crc16", "cobs", "frame", "decode", "input") if k in v}
    assert kinds == {"crc16", "cobs", "frame", "decode", "input"}
    assert len(load_vectors()) >= 30


# ---- CRC -----------------------------------------------------------------------------------------

def test_crc_check_value():
    assert F.crc16(b"123456789") == 0x29B1
    assert F.crc16_py(b"123456789") == 0x29B1


@pytest.mark.parametrize("vector", by_kind("crc16"), ids=_ids(by_kind("crc16")))
def test_crc_vectors(vector):
    data = vector["crc16"].encode()
    assert F.crc16_py(data) == int(vector["value"], 16)
    assert F.crc16(data) == int(vector["value"], 16)


@given(st.binary(max_size=600))
def test_table_crc_equals_binascii(data):
    # The table (what a board runs) against CPython's C implementation of the same CRC.
    assert F.crc16_py(data) == binascii.crc_hqx(data, 0xFFFF)


# ---- COBS ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("vector", by_kind("cobs"), ids=_ids(by_kind("cobs")))
def test_cobs_vectors(vector):
    assert F.cobs_encode(unhex(vector["cobs"])) == unhex(vector["encoded"])
    assert F.cobs_decode(unhex(vector["encoded"])) == unhex(vector["cobs"])


@pytest.mark.parametrize("data, encoded", [
    # Runs of 254 bytes without a zero: the `ff` block has no implied zero after it.
    (bytes(range(1, 255)), b"\xff" + bytes(range(1, 255))),
    (bytes(range(0, 255)), b"\x01\xff" + bytes(range(1, 255))),
    (bytes(range(1, 256)), b"\xff" + bytes(range(1, 255)) + b"\x02\xff"),
    (bytes(range(2, 256)) + b"\x00", b"\xff" + bytes(range(2, 256)) + b"\x01\x01"),
    (bytes(range(3, 256)) + b"\x00\x01", b"\xfe" + bytes(range(3, 256)) + b"\x02\x01"),
    (b"", b"\x01"),
])
def test_cobs_long_runs(data, encoded):
    assert F.cobs_encode(data) == encoded
    assert F.cobs_decode(encoded) == data


@given(st.binary(max_size=1200))
def test_cobs_round_trip_has_no_zero_and_bounded_overhead(data):
    encoded = F.cobs_encode(data)
    assert b"\x00" not in encoded
    assert len(encoded) <= F.max_encoded_length(len(data))
    assert F.cobs_decode(encoded) == data


@pytest.mark.parametrize("encoded", [b"\x05\x11\x22", b"\x03\x00\x01", b"\x00"])
def test_cobs_decode_refuses_invalid(encoded):
    with pytest.raises(ValueError):
        F.cobs_decode(encoded)


# ---- frames --------------------------------------------------------------------------------------

def _frame_of(vector):
    payload = unhex(vector["payload_hex"]) if "payload_hex" in vector else vector["payload"].encode()
    return F.Frame(TYPES[vector["frame"]], vector["id"], vector["topic"], payload, vector["qos"], vector["retain"])


@pytest.mark.parametrize("vector", by_kind("frame"), ids=_ids(by_kind("frame")))
def test_frame_vectors_encode(vector):
    f = _frame_of(vector)
    assert F.encode_body(f.kind, f.msg_id, f.topic, f.payload, f.qos, f.retain) == unhex(vector["body"])
    assert F.encode(f.kind, f.msg_id, f.topic, f.payload, f.qos, f.retain) == unhex(vector["wire"])
    body = unhex(vector["body"])
    # The CRC in the document is the CRC of the bytes before it, by an independent implementation.
    assert binascii.crc_hqx(body[:-2], 0xFFFF) == int.from_bytes(body[-2:], "big")


@pytest.mark.parametrize("vector", by_kind("frame"), ids=_ids(by_kind("frame")))
def test_frame_vectors_decode(vector):
    wire = unhex(vector["wire"])
    assert F.decode(wire) == _frame_of(vector)
    assert F.FrameDecoder().feed(wire) == [_frame_of(vector)]


@pytest.mark.parametrize("vector", by_kind("decode"), ids=_ids(by_kind("decode")))
def test_refused_frame_vectors(vector):
    decoder = F.FrameDecoder(vector.get("max_length", F.DEFAULT_MAX_LENGTH))
    events = decoder.feed(unhex(vector["decode"]))
    assert len(events) == 1 and isinstance(events[0], F.Bad), events
    assert events[0].reason == vector["bad"]


def test_shortcut_encoders():
    assert F.decode(F.encode_publish("a", b"1", 1, True, 5)) == F.Frame(F.PUBLISH, 5, "a", b"1", 1, True)
    assert F.decode(F.encode_subscribe("cmd/#", 2, 1)) == F.Frame(F.SUBSCRIBE, 2, "cmd/#", b"", 1)
    ack = F.decode(F.encode_ack(9, F.ACK_REFUSED))
    assert ack.kind == F.ACK and ack.msg_id == 9 and ack.status == F.ACK_REFUSED
    assert F.decode(F.encode_ping(3)) == F.Frame(F.PING, 3)


@pytest.mark.parametrize("args, message", [
    ((9,), "unknown frame type"),
    ((F.PUBLISH, 0, "t", b"", 2), "QoS"),
    ((F.PUBLISH, 70000, "t"), "16 bits"),
    ((F.PUBLISH, 0, "t" * 256), "255"),
])
def test_encode_refuses_what_the_format_cannot_carry(args, message):
    with pytest.raises(ValueError, match=message):
        F.encode(*args)


def _body(version=1, kind=1, flags=0, msg_id=0, topic=b"t", payload=b"1", topic_len=None):
    body = bytes((version, kind, flags, msg_id >> 8, msg_id & 255,
                  len(topic) if topic_len is None else topic_len)) + topic + payload
    crc = binascii.crc_hqx(body, 0xFFFF)
    return body + bytes((crc >> 8, crc & 255))


@pytest.mark.parametrize("body, reason", [
    (_body(version=2), "garbage"),
    (_body(kind=0), "garbage"),
    (_body(kind=5), "garbage"),
    (_body(flags=0x02), "garbage"),   # QoS 2 is not in the format
    (_body(flags=0x08), "garbage"),   # reserved bit
    (_body(topic_len=200), "garbage"),
    (_body(kind=3, topic=b"x"), "garbage"),  # an ACK carries no topic
    (_body(topic=b"\xff\xfe"), "topic"),
    (_body(topic=b"a/+"), "topic"),
    (_body(topic=b"$SYS/x"), "topic"),
    (_body(topic=b""), "topic"),
    (_body(topic=b"a\x00b"), "topic"),
    (_body(kind=2, topic=b""), "topic"),
    (b"\x01\x01\x00\x00\x00\x00\xff", "garbage"),  # shorter than header + CRC
])
def test_invalid_bodies(body, reason):
    event = F.decode(F.cobs_encode(body))
    assert isinstance(event, F.Bad) and event.reason == reason, event


def test_subscribe_may_carry_wildcards():
    assert F.decode(F.cobs_encode(_body(kind=2, topic=b"cmd/+/x"))).topic == "cmd/+/x"


def test_decoder_resynchronises_after_garbage_and_overlong():
    good = F.encode_publish("t", b"1")
    decoder = F.FrameDecoder(max_length=32)
    events = decoder.feed(b"\x00\x00" + b"\x42" * 100 + b"\x00" + good + b"\x13\x37\x00" + good)
    assert events == [F.Bad("overlong"), F.Frame(F.PUBLISH, 0, "t", b"1"), F.Bad("garbage"),
                      F.Frame(F.PUBLISH, 0, "t", b"1")]


def test_decoder_memory_is_bounded_by_max_length():
    decoder = F.FrameDecoder(max_length=64)
    events = []
    for _ in range(1000):
        events += decoder.feed(b"\x55" * 50)
        assert decoder.pending() <= 64
    assert events == [F.Bad("overlong")]  # reported once per frame, not per read
    assert decoder.feed(b"\x00" + F.encode_publish("t", b"1")) == [F.Frame(F.PUBLISH, 0, "t", b"1")]


_frames = st.builds(
    F.Frame,
    st.sampled_from([F.PUBLISH, F.SUBSCRIBE, F.ACK, F.PING]),
    st.integers(0, 0xFFFF),
    st.text(alphabet=st.characters(blacklist_characters="+#\x00$", blacklist_categories=("Cs",)),
            min_size=1, max_size=40),
    st.binary(max_size=300),
    st.integers(0, 1),
    st.booleans(),
)


def _normal(f):
    # ACK and PING carry no topic.
    if f.kind in (F.ACK, F.PING):
        return F.Frame(f.kind, f.msg_id, "", f.payload, f.qos, f.retain)
    return f


@settings(max_examples=200)
@given(st.lists(_frames, max_size=8), st.data())
def test_any_split_of_a_stream_decodes_the_same(frames, data):
    frames = [_normal(f) for f in frames]
    stream = b"".join(F.encode(f.kind, f.msg_id, f.topic, f.payload, f.qos, f.retain) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = F.FrameDecoder()
    events = []
    last = 0
    for cut in cuts + [len(stream)]:
        events += decoder.feed(stream[last:cut])
        last = cut
    assert events == frames


@settings(max_examples=300)
@given(st.binary(max_size=3000))
def test_random_bytes_never_raise(data):
    decoder = F.FrameDecoder(max_length=256)
    for event in decoder.feed(data):
        assert isinstance(event, (F.Frame, F.Bad))
    assert decoder.pending() <= 256


def test_a_flipped_bit_is_caught():
    wire = bytearray(F.encode_publish("sensors/t", b"21.5", 1, False, 7))
    caught = 0
    for i in range(len(wire) - 1):
        for bit in range(8):
            damaged = bytearray(wire)
            damaged[i] ^= 1 << bit
            events = F.FrameDecoder().feed(bytes(damaged))
            assert F.Frame(F.PUBLISH, 7, "sensors/t", b"21.5", 1) not in events
            caught += 1
    assert caught == 8 * (len(wire) - 1)


# ---- lines ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("vector", by_kind("input"), ids=_ids(by_kind("input")))
def test_line_vectors(vector):
    decoder = L.LineDecoder(vector.get("max_length", L.DEFAULT_MAX_LENGTH))
    events = decoder.feed(vector["input"].encode())
    assert len(events) == 1, events
    event = events[0]
    if isinstance(event, bytes):
        event = L.parse(vector["format"], event)
    if "bad" in vector:
        assert isinstance(event, F.Bad) and event.reason == vector["bad"], event
    else:
        assert event == [(t, p.encode()) for t, p in vector["publishes"]]


def test_line_decoder_splits_and_bounds():
    decoder = L.LineDecoder(max_length=10)
    assert decoder.feed(b"a 1\r\n\r\n\nb 2") == [b"a 1"]
    assert decoder.feed(b"2\n" + b"x" * 30) == [b"b 22", F.Bad("overlong")]
    assert decoder.feed(b"y" * 30 + b"\nc 3\n") == [b"c 3"]
    # A line of exactly max_length whose CR and LF arrive later is not overlong.
    assert decoder.feed(b"0123456789\r") == []
    assert decoder.feed(b"\n") == [b"0123456789"]


@given(st.binary(max_size=2000), st.integers(1, 50))
def test_line_decoder_random_input(data, step):
    decoder = L.LineDecoder(max_length=64)
    for i in range(0, len(data), step):
        for event in decoder.feed(data[i:i + step]):
            if isinstance(event, bytes):
                assert len(event) <= 64 and b"\n" not in event
                for fmt in L.FORMATS:
                    result = L.parse(fmt, event)
                    assert isinstance(result, (list, F.Bad))


def test_invalid_utf8_topic_refused_but_payload_bytes_pass():
    assert L.parse("line", b"t \xff\xfe") == [("t", b"\xff\xfe")]
    assert L.parse("line", b"\xc3 1").reason == "topic"
    assert L.parse("kv", b"\xc3=1").reason == "topic"
    assert L.parse("json", b"{\"t\": \"\xff\"}").reason == "garbage"


def test_encode_line():
    assert L.encode_line("cmd/led", b"on") == b"cmd/led on\n"
    assert L.encode_line("cmd/led", b"a\nb") is None
    assert L.encode_line("a b", b"1") is None
    with pytest.raises(ValueError):
        L.parse("yaml", b"x")
