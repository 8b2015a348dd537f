"""MQTT 3.1/3.1.1 control packets as immutable typed values, and the protocol's enumerations.

Packets are `typing.NamedTuple`s: immutable, cheap to build on the hot path, and comparable in tests
(Publish is a small class that compares the same way: see its docstring).
A packet identifier of 0 means "none" (QoS 0 PUBLISH); on the wire 0 is never valid [MQTT-2.3.1-1].
"""
from __future__ import annotations

from enum import IntEnum
from typing import Iterator, NamedTuple, Optional, Tuple

__all__ = [
    "PacketType", "QoS", "ConnackCode", "SUBACK_FAILURE",
    "Will", "Connect", "Connack", "Publish", "Puback", "Pubrec", "Pubrel", "Pubcomp",
    "Subscribe", "Suback", "Unsubscribe", "Unsuback", "Pingreq", "Pingresp", "Disconnect", "Packet",
]


class PacketType(IntEnum):
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


class QoS(IntEnum):
    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


class ConnackCode(IntEnum):
    """CONNACK return codes, MQTT 3.1.1 table 3.1."""
    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5


#: SUBACK return code for a refused subscription (MQTT 3.1.1 section 3.9.3).
SUBACK_FAILURE = 0x80


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


class Publish:
    """A PUBLISH. Not a NamedTuple like the others, for one extra that takes no part in comparisons:
    `wire`, the packet's own bytes, which the parser keeps for a QoS 0 PUBLISH without RETAIN (first
    byte 0x30): they are exactly what a QoS 0 subscriber is sent, so the hot path forwards them
    instead of encoding the message again. None otherwise. Treat it as immutable, as the tuples."""

    __slots__ = ("topic", "payload", "qos", "retain", "dup", "packet_id", "wire")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False, dup: bool = False,
                 packet_id: int = 0, wire: Optional[bytes] = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.wire = wire

    def _key(self) -> Tuple[str, bytes, int, bool, bool, int]:
        return (self.topic, self.payload, self.qos, self.retain, self.dup, self.packet_id)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is not Publish:
            return NotImplemented
        return self._key() == other._key()  # type: ignore[attr-defined]

    def __iter__(self) -> Iterator[object]:  # as a tuple of its six fields
        return iter(self._key())

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return (f"Publish(topic={self.topic!r}, payload={self.payload!r}, qos={self.qos}, retain={self.retain}, "
                f"dup={self.dup}, packet_id={self.packet_id})")

    def _replace(self, **changes: object) -> "Publish":
        fields = dict(zip(self.__slots__, self._key() + (self.wire,)))
        fields.update(changes)
        return Publish(**fields)  # type: ignore[arg-type]


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
