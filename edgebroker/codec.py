"""Sans-IO MQTT 3.1/3.1.1 codec: bytes in, packets out; packets in, bytes out.

Theory of operation: `Parser.feed(data)` appends to an internal buffer and returns every complete
packet it holds, keeping a partial one for the next call. The fixed header is checked as soon as its
bytes arrive (type, reserved flags, remaining length, size limit), so garbage and oversized packets are
refused before their body is buffered. Every structural rule of the standard that a single packet can
break raises `MalformedPacket`, and nothing else escapes: decoding errors of any kind are converted.
No sockets, no clock, no logging. Rules that need session state (CONNECT first, protocol level
accepted, client id policy) belong to the broker core, not here.
"""
from __future__ import annotations

import struct

from .errors import MalformedPacket
from .packets import (
    Connack, Connect, Disconnect, Pingreq, Pingresp, Puback, Pubcomp, Publish, Pubrec, Pubrel, decoded_publish,
    Suback, Subscribe, Unsuback, Unsubscribe, Will, encode_remaining_length, publish_head,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["Parser", "encode", "encode_remaining_length", "publish_head", "valid_topic_name", "valid_topic_filter",
           "encode_publish", "MAX_PACKET_SIZE", "MAX_TOPIC_LEVELS"]

#: Largest packet the protocol can express: 1 byte header + 4 bytes of remaining length + 268,435,455.
MAX_REMAINING_LENGTH = 268_435_455
MAX_PACKET_SIZE = MAX_REMAINING_LENGTH + 5

_U16 = struct.Struct("!H")

#: A packet at least this large, once its last byte has arrived, is decoded from the buffer it was
#: gathered in, without a copy: a PUBLISH's payload is that buffer itself, its head cut off in place (a
#: bytearray drops bytes at its front without moving the rest). One 200 MB PUBLISH then costs about
#: 200 MB, not three copies of it (buffer, bytes of the buffer, payload slice).
LARGE_PACKET = 1 << 20

#: Levels a topic name or filter may have: 201, i.e. at most 200 `/` separators, Mosquitto 2.0's
#: TOPIC_HIERARCHY_LIMIT. MQTT sets no limit; Mosquitto closes the connection of a client that sends a
#: deeper one (SUBSCRIBE, UNSUBSCRIBE, PUBLISH, will topic), and so does this codec (MalformedPacket).
#: Bounds the work one topic costs the topic tree; a topic shorter than this many characters cannot
#: break it, so the check costs the hot path one length comparison.
MAX_TOPIC_LEVELS = 201

# Fixed-header flags each packet type must carry [MQTT-2.2.2-1] [MQTT-2.2.2-2]. PUBLISH (3) is absent:
# its flags carry DUP, QoS and RETAIN and are checked by its decoder.
_REQUIRED_FLAGS = {1: 0, 2: 0, 4: 0, 5: 0, 6: 2, 7: 0, 8: 2, 9: 0, 10: 2, 11: 0, 12: 0, 13: 0, 14: 0}
# Every valid first byte of a packet other than PUBLISH: its type's required flags (one set lookup per packet).
_FIRST_BYTES = frozenset((ptype << 4) | flags for ptype, flags in _REQUIRED_FLAGS.items())
# The acknowledgements a QoS 1/2 flow sends, by their only valid first byte: two of them per message
# delivered, so the parser decodes them without the general path when they are well formed.
_ACK_FIRST_BYTES = {0x40: Puback, 0x50: Pubrec, 0x62: Pubrel, 0x70: Pubcomp}


def _bad_first(first: int) -> None:
    """A first byte not in _FIRST_BYTES (nor PUBLISH's): a reserved type or reserved flags."""
    ptype = first >> 4
    if ptype not in _REQUIRED_FLAGS:
        raise MalformedPacket(f"reserved packet type {ptype}", "[MQTT-2.2.1]")
    raise MalformedPacket(f"packet type {ptype} with reserved flags {first & 0x0F:#x}", "[MQTT-2.2.2-2]")


def _too_deep(topic: str) -> bool:
    return len(topic) >= MAX_TOPIC_LEVELS and topic.count("/") >= MAX_TOPIC_LEVELS


def valid_topic_name(topic: str) -> bool:
    """A topic name: at least one character [MQTT-4.7.3-1], no wildcards [MQTT-3.3.2-2]; at most
    MAX_TOPIC_LEVELS levels (ours, as Mosquitto)."""
    return bool(topic) and "+" not in topic and "#" not in topic and not _too_deep(topic)


def valid_topic_filter(topic_filter: str) -> bool:
    """A topic filter: non-empty [MQTT-4.7.3-1]; `#` alone as the last level [MQTT-4.7.1-2];
    `+` alone in its level [MQTT-4.7.1-3]; at most MAX_TOPIC_LEVELS levels (ours, as Mosquitto)."""
    if not topic_filter or _too_deep(topic_filter):
        return False
    if "+" not in topic_filter and "#" not in topic_filter:
        return True
    levels = topic_filter.split("/")
    last = len(levels) - 1
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != last):
            return False
        if "+" in level and level != "+":
            return False
    return True


def _binary_at(data: bytes, pos: int, end: int) -> Tuple[bytes, int]:
    """The length-prefixed field at `pos` of a packet body ending at `end`: (its bytes, the position
    after it). Every read checks bounds, so an overrun becomes MalformedPacket."""
    if pos + 2 > end:
        raise MalformedPacket("packet shorter than its fields")
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise MalformedPacket("length prefix runs past the end of the packet")
    return data[pos + 2:stop], stop


def _text_at(data: bytes, pos: int, end: int) -> Tuple[str, int]:
    """The UTF-8 string at `pos` (as _binary_at): CONNECT's and SUBSCRIBE's fields are read by offsets,
    as PUBLISH's are, with no reader object and no method call per field (a device's connect costs
    three or four of them)."""
    if pos + 2 > end:
        raise MalformedPacket("packet shorter than its fields")
    stop = pos + 2 + ((data[pos] << 8) | data[pos + 1])
    if stop > end:
        raise MalformedPacket("length prefix runs past the end of the packet")
    try:
        text = data[pos + 2:stop].decode("utf-8")  # strict: rejects surrogates and overlong forms [MQTT-1.5.3-1]
    except UnicodeDecodeError:
        raise MalformedPacket("string is not valid UTF-8", "[MQTT-1.5.3-1]") from None
    if "\x00" in text:
        raise MalformedPacket("string contains U+0000", "[MQTT-1.5.3-2]")
    return text, stop


def _packet_id_at(data: bytes, pos: int, end: int) -> int:
    if pos + 2 > end:
        raise MalformedPacket("packet shorter than its fields")
    pid = (data[pos] << 8) | data[pos + 1]
    if pid == 0:
        raise MalformedPacket("packet identifier 0", "[MQTT-2.3.1-1]")
    return pid


#: tuple.__new__: a packet's fields in order, without the namedtuple's __new__, a Python function's call
#: per packet (for the packets a connection's handshake sends: CONNECT, SUBSCRIBE)
_new = tuple.__new__
#: A CONNECT body that starts with the protocol name "MQTT" (3.1.1, and MQTT 5's), read without decoding it
_MQTT_NAME = b"\x00\x04MQTT"


def _decode_connect(flags: int, body: bytes) -> Connect:
    end = len(body)
    if body.startswith(_MQTT_NAME):
        name, pos = "MQTT", 6
    else:
        name, pos = _text_at(body, 0, end)
    if pos + 4 > end:
        raise MalformedPacket("packet shorter than its fields")
    level = body[pos]
    cflags = body[pos + 1]
    keepalive = (body[pos + 2] << 8) | body[pos + 3]
    pos += 4
    if level not in (3, 4, 0x83, 0x84):  # 0x80: Mosquitto's bridge flag (try_private), then 3.1 or 3.1.1
        # Not a protocol we parse: return what we know so the broker can refuse it with CONNACK 1
        # [MQTT-3.1.2-2]; the payload of a newer protocol (MQTT 5 properties) is not ours to read.
        return Connect(name, level, bool(cflags & 0x02), keepalive, "")
    if cflags & 0x01:
        raise MalformedPacket("CONNECT reserved flag set", "[MQTT-3.1.2-3]")
    will_flag = cflags & 0x04
    will_qos = (cflags >> 3) & 0x03
    will_retain = bool(cflags & 0x20)
    if not will_flag and (will_qos or will_retain):
        raise MalformedPacket("will QoS or retain set without the will flag", "[MQTT-3.1.2-13]")
    if will_qos == 3:
        raise MalformedPacket("will QoS 3", "[MQTT-3.1.2-14]")
    has_password = cflags & 0x40
    has_username = cflags & 0x80
    if has_password and not has_username:
        raise MalformedPacket("password flag without username flag", "[MQTT-3.1.2-22]")
    client_id, pos = _text_at(body, pos, end)
    will = username = password = None
    if will_flag:
        will_topic, pos = _text_at(body, pos, end)
        if _too_deep(will_topic):
            raise MalformedPacket(f"will topic of more than {MAX_TOPIC_LEVELS} levels")
        if not valid_topic_name(will_topic):
            raise MalformedPacket("will topic is not a valid topic name", "[MQTT-3.1.2-9]")
        will_payload, pos = _binary_at(body, pos, end)
        will = Will(will_topic, will_payload, will_qos, will_retain)
    if has_username:
        username, pos = _text_at(body, pos, end)
    if has_password:
        password, pos = _binary_at(body, pos, end)
    if pos != end:
        raise MalformedPacket("packet longer than its fields")
    return _new(Connect, (name, level, bool(cflags & 0x02), keepalive, client_id, will,  # type: ignore[return-value]
                          username, password))


#: The CONNECT flags `_handshake` takes, with what they say: (clean session, username, password). No
#: will, no reserved bit; anything else goes the general way.
_HANDSHAKE_FLAGS = {0x00: (False, False, False), 0x02: (True, False, False), 0x80: (False, True, False),
                    0x82: (True, True, False), 0xC0: (False, True, True), 0xC2: (True, True, True)}
#: What a CONNECT's body starts with for `_handshake`: protocol name "MQTT", level 4 (MQTT 3.1.1)
_MQTT_311 = b"\x00\x04MQTT\x04"


def _handshake(data: bytes, n: int) -> Optional[List[object]]:
    """A connection's first read (`data`, n >= 14 bytes, starting with a CONNECT's first byte) when it is
    exactly an MQTT 3.1.1 CONNECT without a will, alone or followed by a SUBSCRIBE of one filter without
    wildcards, each with a one-byte remaining length: its packets, as the general walk of `feed`
    decodes them. None for anything else (another shape, or anything malformed), which then takes that
    walk and gets its packets or its error from it: this path only ever says yes to what the walk
    accepts. A connect storm's handshake costs a fraction of the general path's work this way."""
    end = data[1] + 2  # a remaining length of one byte, or (>= 0x80) end beyond n below
    if end > n or end < 14 or data[1] >= 0x80 or not data.startswith(_MQTT_311, 2):
        return None
    fields = _HANDSHAKE_FLAGS.get(data[9])
    if fields is None:
        return None
    stop = 14 + data[12] * 256 + data[13]
    if stop > end:
        return None
    try:
        client_id = data[14:stop].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\x00" in client_id:
        return None
    username = password = None
    if fields[1]:  # (S6-auth's; a few more calls against a hash's 140 us)
        try:
            username, stop = _text_at(data, stop, end)
            if fields[2]:
                password, stop = _binary_at(data, stop, end)
        except MalformedPacket:
            return None
    if stop != end:
        return None
    connect = _new(Connect, ("MQTT", 4, fields[0], data[10] * 256 + data[11], client_id, None, username, password))
    if end == n:
        return [connect]
    # SUBSCRIBE: 0x82, remaining length, packet id, one filter, its QoS; the read ends with it
    if data[end] != 0x82 or end + 7 > n or data[end + 1] >= 0x80 or data[end + 1] + end + 2 != n:
        return None
    pid = data[end + 2] * 256 + data[end + 3]
    stop = end + 6 + data[end + 4] * 256 + data[end + 5]
    if pid == 0 or stop + 1 != n:
        return None
    try:
        topic_filter = data[end + 6:stop].decode("utf-8")
    except UnicodeDecodeError:
        return None
    qos = data[stop]
    if (qos > 2 or not topic_filter or "+" in topic_filter or "#" in topic_filter or "\x00" in topic_filter
            or len(topic_filter) >= MAX_TOPIC_LEVELS):
        return None
    return [connect, _new(Subscribe, (pid, ((topic_filter, qos),)))]


def _decode_connack(flags: int, body: bytes) -> Connack:
    if len(body) != 2:
        raise MalformedPacket("CONNACK remaining length is not 2")
    if body[0] & 0xFE:
        raise MalformedPacket("CONNACK reserved bits set")
    return Connack(bool(body[0] & 1), body[1])


#: Topic names seen lately, by their bytes: decoded and checked once, and one string shared by every
#: message on that topic (a queued message does not carry a copy of its own). Bounded: emptied when it
#: holds TOPIC_CACHE_SIZE names, and names longer than TOPIC_CACHE_LONGEST bytes are not kept (at most
#: about 300 KiB then, against 64 MiB for 512 names of the longest a packet can carry).
_topics: Dict[bytes, str] = {}
TOPIC_CACHE_SIZE = 512
TOPIC_CACHE_LONGEST = 256


def _topic_name(raw: bytes) -> str:
    """A PUBLISH's topic name from its bytes, checked, and remembered in _topics."""
    try:
        topic = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedPacket("string is not valid UTF-8", "[MQTT-1.5.3-1]") from None
    if not topic or "+" in topic or "#" in topic:
        raise MalformedPacket("PUBLISH topic name empty or with wildcards", "[MQTT-3.3.2-2] [MQTT-4.7.3-1]")
    if "\x00" in topic:
        raise MalformedPacket("string contains U+0000", "[MQTT-1.5.3-2]")
    if len(raw) >= MAX_TOPIC_LEVELS and _too_deep(topic):  # its UTF-8 length bounds its levels
        raise MalformedPacket(f"topic name of more than {MAX_TOPIC_LEVELS} levels")
    if len(raw) <= TOPIC_CACHE_LONGEST:
        if len(_topics) >= TOPIC_CACHE_SIZE:
            _topics.clear()
        _topics[raw] = topic
    return topic


#: A PUBLISH's QoS and RETAIN by its flags (the first byte's low four bits). The hot path below reads
#: its fields with tuple lookups, + and *, which CPython runs inline, rather than >>, & and | (a call
#: into the int type each): at a low rate every PUBLISH is a loop turn of its own with cold caches, and
#: each distinct operation costs its cache lines again.
_QOS_OF_FLAGS = tuple((flags >> 1) & 0x03 for flags in range(16))
_RETAIN_OF_FLAGS = tuple(bool(flags & 0x01) for flags in range(16))


def _decode_publish_at(flags: int, data: bytes, start: int, end: int, head: int = -1) -> Publish:
    """PUBLISH, the hot path: decoded straight from the read buffer by offsets (no body copy, no
    reader object). `head`: where the packet starts in `data`, to keep its bytes as `wire` (see
    Publish) when it is a QoS 0 PUBLISH without RETAIN."""
    qos = _QOS_OF_FLAGS[flags]
    if qos == 3:
        raise MalformedPacket("PUBLISH QoS 3", "[MQTT-3.3.1-4]")
    dup = flags >= 0x08
    if dup and qos == 0:
        raise MalformedPacket("DUP set on a QoS 0 PUBLISH", "[MQTT-3.3.1-2]")
    if end - start < 2:
        raise MalformedPacket("packet shorter than its fields")
    topic_end = start + 2 + data[start] * 256 + data[start + 1]
    if topic_end > end:
        raise MalformedPacket("length prefix runs past the end of the packet")
    raw = data[start + 2:topic_end]
    topic = _topics.get(raw)
    if topic is None:
        topic = _topic_name(raw)
    if qos:
        if topic_end + 2 > end:
            raise MalformedPacket("packet shorter than its fields")
        packet_id = data[topic_end] * 256 + data[topic_end + 1]
        if packet_id == 0:
            raise MalformedPacket("packet identifier 0", "[MQTT-2.3.1-1]")
        return decoded_publish(topic, data[topic_end + 2:end], qos, _RETAIN_OF_FLAGS[flags], dup, packet_id, None)
    if flags:
        return decoded_publish(topic, data[topic_end:end], 0, True, False, 0, None)
    return decoded_publish(topic, data[topic_end:end], 0, False, False, 0, data[head:end] if head >= 0 else None)


def _decode_publish(flags: int, body: bytes) -> Publish:
    return _decode_publish_at(flags, body, 0, len(body))


def _id_only(cls: type) -> Callable[[int, bytes], object]:
    def decode(flags: int, body: bytes) -> object:
        if len(body) != 2:
            raise MalformedPacket(f"{cls.__name__.upper()} remaining length is not 2")
        pid = (body[0] << 8) | body[1]
        if pid == 0:
            raise MalformedPacket("packet identifier 0", "[MQTT-2.3.1-1]")
        return cls(pid)
    return decode


def _decode_subscribe(flags: int, body: bytes) -> Subscribe:
    end = len(body)
    pid = _packet_id_at(body, 0, end)
    pos = 2
    topics = []
    while pos < end:
        topic_filter, pos = _text_at(body, pos, end)
        if "+" in topic_filter or "#" in topic_filter or not topic_filter or len(topic_filter) >= MAX_TOPIC_LEVELS:
            _check_filter(topic_filter)  # else it is a valid filter, and no call is needed to say so
        if pos >= end:
            raise MalformedPacket("packet shorter than its fields")
        qos = body[pos]
        pos += 1
        if qos > 2:  # also catches the reserved upper bits
            raise MalformedPacket("SUBSCRIBE requested QoS byte invalid", "[MQTT-3-8.3-4]")
        topics.append((topic_filter, qos))
    if not topics:
        raise MalformedPacket("SUBSCRIBE with no topic filter", "[MQTT-3.8.3-3]")
    return _new(Subscribe, (pid, tuple(topics)))  # type: ignore[return-value]


def _check_filter(topic_filter: str) -> None:
    """A SUBSCRIBE's or UNSUBSCRIBE's topic filter: MalformedPacket unless valid."""
    if _too_deep(topic_filter):
        raise MalformedPacket(f"topic filter of more than {MAX_TOPIC_LEVELS} levels")
    if not valid_topic_filter(topic_filter):
        raise MalformedPacket(f"invalid topic filter {topic_filter!r}", "[MQTT-4.7.1-2]")


def _decode_suback(flags: int, body: bytes) -> Suback:
    pid = _packet_id_at(body, 0, len(body))
    codes = tuple(body[2:])
    if not codes or any(c not in (0, 1, 2, 0x80) for c in codes):
        raise MalformedPacket("SUBACK return codes invalid")
    return Suback(pid, codes)


def _decode_unsubscribe(flags: int, body: bytes) -> Unsubscribe:
    end = len(body)
    pid = _packet_id_at(body, 0, end)
    pos = 2
    topics = []
    while pos < end:
        topic_filter, pos = _text_at(body, pos, end)
        _check_filter(topic_filter)
        topics.append(topic_filter)
    if not topics:
        raise MalformedPacket("UNSUBSCRIBE with no topic filter", "[MQTT-3.10.3-2]")
    return Unsubscribe(pid, tuple(topics))


def _empty(cls: type) -> Callable[[int, bytes], object]:
    instance = cls()

    def decode(flags: int, body: bytes) -> object:
        if body:
            raise MalformedPacket(f"{cls.__name__.upper()} remaining length is not 0")
        return instance
    return decode


# "Anything not in this map is invalid": types 0 and 15 are reserved [MQTT-2.2.1].
_DECODERS: Dict[int, Callable[[int, bytes], object]] = {
    1: _decode_connect, 2: _decode_connack, 3: _decode_publish,
    4: _id_only(Puback), 5: _id_only(Pubrec), 6: _id_only(Pubrel), 7: _id_only(Pubcomp),
    8: _decode_subscribe, 9: _decode_suback, 10: _decode_unsubscribe, 11: _id_only(Unsuback),
    12: _empty(Pingreq), 13: _empty(Pingresp), 14: _empty(Disconnect),
}


class Parser:
    """Incremental decoder for one byte stream. Raises only MalformedPacket; after it raises, the
    stream is out of sync and the connection must be closed [MQTT-4.8.0-1]."""

    __slots__ = ("_buf", "_need", "max_packet_size")

    def __init__(self, max_packet_size: int = 0) -> None:
        #: the partial packet at the end of the last read: b"" (shared) while there is none, a bytearray
        #: of its own while there is (an empty bytearray per idle connection is 56 bytes)
        self._buf: Union[bytes, bytearray] = b""
        self._need = 0  # size of the partial packet in _buf once its header is known, else 0
        self.max_packet_size = max_packet_size if max_packet_size > 0 else MAX_PACKET_SIZE

    def _take_large(self) -> List[object]:
        """The large packet at the front of the buffer is complete: decode it in place (see
        LARGE_PACKET), then whatever followed it in the last read, as usual."""
        buf = self._buf
        need = self._need
        rest = bytes(buf[need:])  # at most one read's worth
        del buf[need:]
        self._buf = b""
        self._need = 0
        first = buf[0]
        i = 1
        while buf[i] & 0x80:  # the header was checked when it arrived
            i += 1
        i += 1
        try:
            if first >> 4 == 3:
                # Topic and packet id are checked on a small copy of the packet's head; the payload is
                # the buffer with that head removed.
                head = _decode_publish_at(first & 0x0F, bytes(buf[:min(need, i + 65541)]), i,
                                          min(need, i + 65541))
                del buf[:min(need, i + 65541) - len(head.payload)]
                packet: object = head._replace(payload=buf)
            else:
                packet = _DECODERS[first >> 4](first & 0x0F, bytes(buf[i:]))
        except MalformedPacket:
            raise
        except Exception as exc:
            raise MalformedPacket(f"undecodable packet ({exc.__class__.__name__})") from exc
        out = [packet]
        if rest:
            try:
                out += self.feed(rest)
            except MalformedPacket as exc:
                exc.packets = out + exc.packets
                raise
        return out

    def ack_run(self, data: bytes, first: int) -> Optional[Sequence[int]]:
        """The packet ids of `data` when it is exactly a run of well-formed 4-byte acknowledgements
        with first byte `first` (a subscriber acknowledging what one write delivered) and no partial
        packet is buffered; else None, and nothing changes: the caller then uses feed. The stream stays
        in sync either way. It spares the per-packet objects of the commonest read a broker gets."""
        n = len(data)
        if n == 4:  # one acknowledgement: a client that answers each message by itself (paho)
            if data[0] != first or data[1] != 2 or self._buf or self.max_packet_size < 4:
                return None
            pid = (data[2] << 8) | data[3]
            return (pid,) if pid else None
        if not n or n & 3 or self._buf or self.max_packet_size < 4:
            return None
        # The ids as a list, never a tuple: CPython 3.11 keeps every freed tuple of exactly 20 items on
        # its free list and never takes one back (gh-121439, fixed in 3.12), so a subscriber
        # acknowledging the default window of 20 per read left 2,000 of them (400 KiB) in the heap.
        k = n >> 2
        if data[0::4].count(first) != k or data[1::4].count(2) != k:
            return None  # something else in the read
        ids = list(struct.unpack(">%dH" % (n >> 1), data))[1::2]
        if 0 in ids:
            return None  # packet id 0: malformed, [MQTT-2.3.1-1]
        return ids

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a packet."""
        return len(self._buf)

    @property
    def missing(self) -> int:
        """Bytes the packet being gathered still lacks, once its header has arrived (else 0)."""
        return self._need - len(self._buf) if self._need else 0

    def feed(self, data: bytes) -> List[object]:
        buf = self._buf
        n = len(data)
        if (not buf and 1 < n <= 129 and 0x30 <= data[0] < 0x40 and data[1] == n - 2
                and n <= self.max_packet_size and data.__class__ is bytes):
            # The read is one whole PUBLISH with a one-byte remaining length, nothing buffered: the
            # read of a client that publishes now and then (S5), a loop turn of its own. Decoded
            # without the walk below.
            try:
                return [_decode_publish_at(data[0] - 0x30, data, 2, n, 0)]
            except Exception as exc:
                raise _undecodable(exc, [])
        if buf:
            buf += data
            if len(buf) < self._need:
                return []  # a large packet still arriving: append only, so its cost stays linear
            if self._need >= LARGE_PACKET:
                return self._take_large()
            view = bytes(buf)
        else:
            if 13 < n <= self.max_packet_size and data[0] == 0x10 and data.__class__ is bytes:
                # A connection's first read: its CONNECT, and often its SUBSCRIBE with it (S6, a
                # fleet reconnecting). The usual shapes are decoded without the walk below.
                packets = _handshake(data, n)
                if packets is not None:
                    return packets
            view = bytes(data)
        self._need = 0
        out: List[object] = []
        pos = 0
        n = len(view)
        decoders = _DECODERS
        acks = _ACK_FIRST_BYTES if self.max_packet_size >= 4 else {}
        try:
            while pos < n:
                first = view[pos]
                ptype = first >> 4
                flags = first & 0x0F
                if ptype != 3:  # PUBLISH, the hot path, has no fixed flags to check
                    ack = acks.get(first)
                    if (ack is not None and pos + 4 <= n and view[pos + 1] == 2
                            and (view[pos + 2] or view[pos + 3])):
                        out.append(ack((view[pos + 2] << 8) | view[pos + 3]))
                        pos += 4
                        continue
                    if first not in _FIRST_BYTES:
                        _bad_first(first)
                # Remaining length: at most four bytes, seven bits each (section 2.2.3).
                i = pos + 1
                if i < n and view[i] < 0x80:  # one byte: a packet of less than 128 bytes
                    length = view[i]
                    i += 1
                else:
                    length = 0
                    shift = 0
                    while True:
                        if i >= n:
                            length = -1
                            break
                        b = view[i]
                        i += 1
                        length |= (b & 0x7F) << shift
                        if not b & 0x80:
                            break
                        shift += 7
                        if shift == 28:
                            raise MalformedPacket("remaining length longer than four bytes")
                    if length < 0:
                        break  # header incomplete
                if i - pos + length > self.max_packet_size:
                    raise MalformedPacket(f"packet of {i - pos + length} bytes exceeds max_packet_size "
                                          f"{self.max_packet_size}")
                end = i + length
                if end > n:
                    self._need = end - pos
                    break  # body incomplete
                if ptype == 3:
                    out.append(_decode_publish_at(flags, view, i, end, pos))
                else:
                    out.append(decoders[ptype](flags, view[i:end]))
                pos = end
        except Exception as exc:
            raise _undecodable(exc, out)
        if pos == n:
            if buf:
                self._buf = b""
        elif buf:
            del buf[:pos]  # type: ignore[union-attr]  # a bytearray when not empty
        else:
            self._buf = bytearray(view[pos:])
        return out




def _undecodable(exc: Exception, packets: List[object]) -> MalformedPacket:
    """What `Parser.feed` raises: the MalformedPacket carrying the packets decoded before it. Any other
    exception becomes one too (defence in depth: the codec's promise is one error type only)."""
    if not isinstance(exc, MalformedPacket):
        error = MalformedPacket(f"undecodable packet ({exc.__class__.__name__})")
        error.__cause__ = exc
        exc = error
    exc.packets = packets
    return exc


def _string(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _U16.pack(len(raw)) + raw


def _binary(data: bytes) -> bytes:
    return _U16.pack(len(data)) + data


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_remaining_length(len(body)) + body


def _encode_connect(p: Connect) -> bytes:
    flags = 0x02 if p.clean_session else 0
    payload = [_string(p.client_id)]
    if p.will is not None:
        flags |= 0x04 | (p.will.qos << 3) | (0x20 if p.will.retain else 0)
        payload.append(_string(p.will.topic))
        payload.append(_binary(p.will.payload))
    if p.username is not None:
        flags |= 0x80
        payload.append(_string(p.username))
    if p.password is not None:
        flags |= 0x40
        payload.append(_binary(p.password))
    header = _string(p.protocol_name) + bytes((p.protocol_level, flags)) + _U16.pack(p.keepalive)
    return _frame(0x10, header + b"".join(payload))


def encode_publish(topic: str, payload: bytes, qos: int = 0, retain: bool = False, dup: bool = False,
                   packet_id: int = 0) -> bytes:
    first = 0x30 | (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = _string(topic) + (_U16.pack(packet_id) if qos else b"") + payload
    return _frame(first, body)


def _encode_publish(p: Publish) -> bytes:
    return encode_publish(p.topic, p.payload, p.qos, p.retain, p.dup, p.packet_id)


_ENCODERS: Dict[type, Callable[[object], bytes]] = {
    Connect: _encode_connect,  # type: ignore[dict-item]
    Connack: lambda p: bytes((0x20, 2, 1 if p.session_present else 0, p.return_code)),
    Publish: _encode_publish,  # type: ignore[dict-item]
    Puback: lambda p: b"\x40\x02" + _U16.pack(p.packet_id),
    Pubrec: lambda p: b"\x50\x02" + _U16.pack(p.packet_id),
    Pubrel: lambda p: b"\x62\x02" + _U16.pack(p.packet_id),
    Pubcomp: lambda p: b"\x70\x02" + _U16.pack(p.packet_id),
    Subscribe: lambda p: _frame(0x82, _U16.pack(p.packet_id)
                                + b"".join(_string(f) + bytes((q,)) for f, q in p.topics)),
    Suback: lambda p: _frame(0x90, _U16.pack(p.packet_id) + bytes(p.return_codes)),
    Unsubscribe: lambda p: _frame(0xA2, _U16.pack(p.packet_id) + b"".join(_string(f) for f in p.topics)),
    Unsuback: lambda p: b"\xb0\x02" + _U16.pack(p.packet_id),
    Pingreq: lambda p: b"\xc0\x00",
    Pingresp: lambda p: b"\xd0\x00",
    Disconnect: lambda p: b"\xe0\x00",
}


def encode(packet: object) -> bytes:
    """The wire bytes of one packet value."""
    return _ENCODERS[type(packet)](packet)
