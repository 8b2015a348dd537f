"""MQTT 3.1/3.1.1 control packets as immutable typed values, and the protocol's enumerations.

Packets are `typing.NamedTuple`s: immutable, cheap to build on the hot path, and comparable in tests.
A packet identifier of 0 means "none" (QoS 0 PUBLISH); on the wire 0 is never valid [MQTT-2.3.1-1].
"""
from __future__ import annotations

from enum import IntEnum
from typing import NamedTuple, Optional, Tuple

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


class Publish(NamedTuple):
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int = 0


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
