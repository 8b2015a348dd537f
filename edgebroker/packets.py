"""MQTT 3.1/3.1.1 control packets as immutable typed values, and the protocol's enumerations.

Packets are named tuples (`record.NamedTuple` at run time, `typing.NamedTuple` to a type checker):
immutable, cheap to build on the hot path, and comparable in tests (Publish is a class that compares the
same way and is also the Message it carries: see its docstring).
A packet identifier of 0 means "none" (QoS 0 PUBLISH); on the wire 0 is never valid [MQTT-2.3.1-1].
"""
from __future__ import annotations

import struct

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Iterator, NamedTuple, Optional, Tuple
else:
    from .record import NamedTuple

__all__ = [
    "PacketType", "QoS", "ConnackCode", "SUBACK_FAILURE",
    "Will", "Connect", "Connack", "Publish", "Puback", "Pubrec", "Pubrel", "Pubcomp",
    "Subscribe", "Suback", "Unsubscribe", "Unsuback", "Pingreq", "Pingresp", "Disconnect", "Packet",
    "Message", "publish_head", "encode_remaining_length", "queue_meta", "unpack_meta",
]


# The protocol's numbers as plain int constants, not IntEnums: `enum` is 0.4 MiB of resident memory
# that a plain start otherwise never imports (bench/README.md, Issue 19).
class PacketType:
    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class QoS:
    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


class ConnackCode:
    """CONNACK return codes, MQTT 3.1.1 table 3.1."""
    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


#: SUBACK return code for a refused subscription (MQTT 3.1.1 section 3.9.3).
SUBACK_FAILURE = 0x80


#: PUBLISH first bytes by their flags (DUP, QoS, RETAIN), shared instead of built per message
_FIRST = [bytes((0x30 | flags,)) for flags in range(16)]
_U16 = struct.Struct("!H").pack
_HEAD_1 = struct.Struct(">BH").pack   # remaining length < 128, topic length
_HEAD_2 = struct.Struct(">BBH").pack  # remaining length < 16,384 in two bytes, topic length


def encode_remaining_length(length: int) -> bytes:
    if length < 128:
        return bytes((length,))
    out = bytearray()
    while True:
        byte = length & 0x7F
        length >>= 7
        if length:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def publish_head(body_len: int, raw_topic: bytes) -> bytes:
    """The bytes of a PUBLISH between its first byte and its packet id (or payload): remaining length
    `body_len`, then the topic as a UTF-8 string. One pack for the sizes sensors send."""
    if body_len < 128:
        return _HEAD_1(body_len, len(raw_topic)) + raw_topic
    if body_len < 16384:
        return _HEAD_2((body_len & 0x7F) | 0x80, body_len >> 7, len(raw_topic)) + raw_topic
    return encode_remaining_length(body_len) + _U16(len(raw_topic)) + raw_topic


#: The heads (remaining length + topic) of QoS 1/2 PUBLISHes lately encoded, by (topic, payload size):
#: messages on one topic with payloads of one size (a sensor's readings, a queue of them) share one
#: instead of encoding and keeping one each. Bounded as the codec's topic-name cache: emptied when it
#: holds HEAD_CACHE_SIZE, topics longer than HEAD_CACHE_LONGEST bytes not kept.
_HEADS: Dict[Tuple[str, int], bytes] = {}
HEAD_CACHE_SIZE = 256
HEAD_CACHE_LONGEST = 256


class Message:
    """One application message as it is routed: topic, payload, QoS it was published with, and the
    retain flag it carries on the wire (set only for retained messages sent on subscribe). `store_id`
    belongs to the store: where the message's copy is on disk (see edgebroker/store.py). It encodes its
    PUBLISH bytes once and shares them between subscribers; for QoS > 0 only the packet id differs.
    Compared by identity (the store keys messages by id())."""

    __slots__ = ("topic", "payload", "qos", "retain", "_q0", "_head", "store_id")

    def __init__(self, topic: str, payload: bytes, qos: int, retain: bool = False, store_id: int = 0) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self._q0: Optional[bytes] = None
        self._head: Optional[bytes] = None
        self.store_id = store_id

    def q0(self) -> bytes:
        """The QoS 0 PUBLISH, encoded once and shared by every QoS 0 subscriber."""
        data = self._q0
        if data is None:
            raw = self.topic.encode("utf-8")
            data = self._q0 = b"".join((_FIRST[1 if self.retain else 0],
                                        publish_head(2 + len(raw) + len(self.payload), raw), self.payload))
        return data

    def wire(self, qos: int, packet_id: int, dup: bool = False) -> bytes:
        """The PUBLISH for a QoS 1/2 delivery: shared remaining-length + topic, per-client packet id."""
        return b"".join(self.parts(qos, packet_id, dup))

    def parts(self, qos: int, packet_id: int, dup: bool = False) -> Tuple[bytes, bytes, bytes, bytes]:
        """wire() unjoined, for a caller that joins many packets at once: first byte, the shared
        remaining length + topic, the packet id, the shared payload."""
        head = self._head
        if head is None:
            size = len(self.payload)
            key = (self.topic, size)
            head = _HEADS.get(key)
            if head is None:
                raw = self.topic.encode("utf-8")
                head = publish_head(4 + len(raw) + size, raw)
                if len(raw) <= HEAD_CACHE_LONGEST:
                    if len(_HEADS) >= HEAD_CACHE_SIZE:
                        _HEADS.clear()
                    _HEADS[key] = head
            self._head = head
        return (_FIRST[(qos << 1) | (0x08 if dup else 0) | (0x01 if self.retain else 0)], head,
                packet_id.to_bytes(2, "big"), self.payload)


#: A queued delivery's store row (seq, 0: not stored) and packet id (0: none yet), and its QoS when that
#: is not its message's, packed in one int beside the message (Session.queue_meta; the store's buffered
#: rows share it): a tuple and two integers of their own cost a persistent session's queue about 100
#: bytes more per message. At the message's QoS (the common case): seq << 16 | packet id, so a clean
#: session's is 0; at another QoS (a subscription's lower QoS, upgrade_outgoing_qos):
#: ~(seq << 18 | packet id << 2 | qos), negative.
def queue_meta(msg: Message, qos: int, seq: int, packet_id: int) -> int:
    if qos == msg.qos:
        return (seq << 16) | packet_id
    return ~((seq << 18) | (packet_id << 2) | qos)


def unpack_meta(msg: Message, meta: int) -> Tuple[int, int, int]:
    """A queued delivery's (qos, seq, packet id) from its message and `queue_meta`."""
    if meta >= 0:
        return msg.qos, meta >> 16, meta & 0xFFFF
    meta = ~meta
    return meta & 3, meta >> 18, (meta >> 2) & 0xFFFF


class Will(NamedTuple):
    topic: str
    payload: bytes
    qos: int
    retain: bool


class Connect(NamedTuple):
    protocol_name: str
    protocol_level: int
    clean_session: bool
    keepalive: int
    client_id: str
    will: Optional[Will] = None
    username: Optional[str] = None
    password: Optional[bytes] = None


class Connack(NamedTuple):
    session_present: bool
    return_code: int


class Publish(Message):
    """A PUBLISH packet, and the Message it carries: the core routes the packet it decoded as that
    message when it can (not retained), so a message costs one object from the read to the subscriber's
    buffer. The parser passes `wire`, the packet's own bytes, for a QoS 0 PUBLISH without RETAIN (first
    byte 0x30): exactly what a QoS 0 subscriber is sent, kept as the message's QoS 0 encoding. Unlike
    Message it compares (and iterates, and hashes) by value, as the other packets do; treat it as
    immutable, as they are."""

    __slots__ = ("dup", "packet_id")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, dup: bool = False,
                 packet_id: int = 0, wire: Optional[bytes] = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self._q0 = wire
        self._head = None
        self.store_id = 0

    def _key(self) -> Tuple[str, bytes, int, bool, bool, int]:
        return (self.topic, self.payload, self.qos, self.retain, self.dup, self.packet_id)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Publish:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __hash__(self) -> int:
        return hash(self._key())

    def __iter__(self) -> Iterator[object]:  # as a tuple of its six fields
        return iter(self._key())

    def __repr__(self) -> str:
        return (f"Publish(topic={self.topic!r}, payload={self.payload!r}, qos={self.qos}, retain={self.retain}, "
                f"dup={self.dup}, packet_id={self.packet_id})")

    def _replace(self, **changes: object) -> "Publish":
        fields = dict(zip(("topic", "payload", "qos", "retain", "dup", "packet_id"), self._key()))
        fields.update(changes)
        return Publish(**fields)  # type: ignore[arg-type]


_new_object = object.__new__


def decoded_publish(topic: str, payload: bytes, qos: int, retain: bool, dup: bool, packet_id: int,
                    wire: Optional[bytes]) -> Publish:
    """`Publish(topic, payload, qos, retain, dup, packet_id, wire)` for the parser, without calling the
    class: a call of a class with an `__init__` in Python enters a new interpreter frame through C,
    which costs more than the nine attributes it sets when every PUBLISH is a loop turn of its own
    (a client publishing now and then). tests/test_codec.py checks that both give the same object."""
    p = _new_object(Publish)
    p.topic = topic
    p.payload = payload
    p.qos = qos
    p.retain = retain
    p.dup = dup
    p.packet_id = packet_id
    p._q0 = wire
    p._head = None
    p.store_id = 0
    return p


class Puback(NamedTuple):
    packet_id: int


class Pubrec(NamedTuple):
    packet_id: int


class Pubrel(NamedTuple):
    packet_id: int


class Pubcomp(NamedTuple):
    packet_id: int


class Subscribe(NamedTuple):
    packet_id: int
    topics: Tuple[Tuple[str, int], ...]


class Suback(NamedTuple):
    packet_id: int
    return_codes: Tuple[int, ...]


class Unsubscribe(NamedTuple):
    packet_id: int
    topics: Tuple[str, ...]


class Unsuback(NamedTuple):
    packet_id: int


class Pingreq(NamedTuple):
    pass


class Pingresp(NamedTuple):
    pass


class Disconnect(NamedTuple):
    pass


Packet = object  # any of the classes above; kept loose so the codec's dispatch tables stay the source of truth
