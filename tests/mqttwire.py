"""An independent MQTT 3.1.1 byte builder and a tiny blocking raw client, for tests.

This module deliberately does NOT import edgebroker: the wire tests compare the broker's bytes with bytes
built here, so a bug in edgebroker.codec cannot agree with itself. Everything is spelled out from the
standard (MQTT Version 3.1.1, OASIS Standard, 29 October 2014), section 2 (fixed header, remaining length)
and section 3 (one function per control packet). Strings may be given as `bytes` to put arbitrary
(possibly ill-formed) UTF-8 on the wire.

MALFORMED is a data table of packets that every receiver must reject by closing the connection, each row
named by the conformance statement it breaks; the codec tests and the wire tests both use it.
"""
from __future__ import annotations

import socket
import struct
import time
from typing import Iterable, List, NamedTuple, Optional, Tuple, Union

Text = Union[str, bytes]

# Control packet types, section 2.2.1 (Table 2.1).
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

MAX_REMAINING_LENGTH = 268435455  # section 2.2.3: four bytes of 7 bits each


# ---------------------------------------------------------------------------------------------------------
# Raw building blocks
# ---------------------------------------------------------------------------------------------------------

def remaining_length(n: int) -> bytes:
    """The variable length encoding of section 2.2.3 (no range check, so tests can build oversize values)."""
    out = bytearray()
    while True:
        digit = n % 128
        n //= 128
        if n > 0:
            digit |= 0x80
        out.append(digit)
        if n == 0:
            return bytes(out)


def u16(n: int) -> bytes:
    """A big-endian 16-bit integer (section 1.5.2)."""
    return struct.pack("!H", n)


def utf8(s: Text) -> bytes:
    """A UTF-8 encoded string with its 2-byte length prefix (section 1.5.3); bytes are used verbatim."""
    data = s.encode("utf-8") if isinstance(s, str) else bytes(s)
    return u16(len(data)) + data


def binary(b: bytes) -> bytes:
    """Binary data with a 2-byte length prefix (used for the will message and the password)."""
    return u16(len(b)) + bytes(b)


def fixed_header(ptype: int, flags: int, length: int) -> bytes:
    """First byte (type << 4 | flags, any flags allowed) and the encoded remaining length."""
    return bytes([((ptype & 0x0F) << 4) | (flags & 0x0F)]) + remaining_length(length)


def raw_packet(ptype: int, flags: int, body: bytes) -> bytes:
    """A whole packet: fixed header with arbitrary flags, remaining length = len(body), then body."""
    return fixed_header(ptype, flags, len(body)) + body


def raw_first_byte(first_byte: int, body: bytes) -> bytes:
    """A whole packet from an explicit first byte (type and flags already combined)."""
    return bytes([first_byte]) + remaining_length(len(body)) + body


# ---------------------------------------------------------------------------------------------------------
# Control packets (section 3)
# ---------------------------------------------------------------------------------------------------------

class Will(NamedTuple):
    topic: Text
    payload: bytes
    qos: int = 0
    retain: bool = False


def connect_flags(clean: bool = True, will: Optional[Will] = None, username: Optional[Text] = None,
                  password: Optional[bytes] = None) -> int:
    """The Connect Flags byte of section 3.1.2.3."""
    flags = 0
    if username is not None:
        flags |= 0x80
    if password is not None:
        flags |= 0x40
    if will is not None:
        flags |= 0x04 | ((will.qos & 0x03) << 3)
        if will.retain:
            flags |= 0x20
    if clean:
        flags |= 0x02
    return flags


def connect(client_id: Text, clean: bool = True, keepalive: int = 60, will: Optional[Will] = None,
            username: Optional[Text] = None, password: Optional[bytes] = None, proto_name: Text = "MQTT",
            level: int = 4, flags_override: Optional[int] = None, v5_properties: bool = False) -> bytes:
    """CONNECT (section 3.1). flags_override replaces the computed flags byte but not the payload, so the
    payload still holds exactly the fields given. v5_properties adds an empty MQTT 5 property block after
    the keep alive (a realistic MQTT 5 CONNECT when level=5)."""
    flags = connect_flags(clean, will, username, password) if flags_override is None else flags_override
    variable = utf8(proto_name) + bytes([level & 0xFF, flags & 0xFF]) + u16(keepalive)
    if v5_properties:
        variable += b"\x00"
    payload = utf8(client_id)
    if will is not None:
        if v5_properties:
            payload += b"\x00"  # will properties, MQTT 5 only
        payload += utf8(will.topic) + binary(will.payload)
    if username is not None:
        payload += utf8(username)
    if password is not None:
        payload += binary(password)
    return raw_packet(CONNECT, 0, variable + payload)


def connack(session_present: bool, return_code: int) -> bytes:
    """CONNACK (section 3.2): 20 02 <ack flags> <return code>."""
    return raw_packet(CONNACK, 0, bytes([1 if session_present else 0, return_code]))


def publish_flags(qos: int = 0, retain: bool = False, dup: bool = False) -> int:
    return (0x08 if dup else 0) | ((qos & 0x03) << 1) | (0x01 if retain else 0)


def publish(topic: Text, payload: bytes = b"", qos: int = 0, retain: bool = False, dup: bool = False,
            packet_id: Optional[int] = None) -> bytes:
    """PUBLISH (section 3.3). The packet identifier is present iff packet_id is given (or qos > 0, when it
    defaults to 1), so QoS 0 with an identifier or QoS 1 without one can be built for malformed cases."""
    if packet_id is None and qos > 0:
        packet_id = 1
    body = utf8(topic) + (u16(packet_id) if packet_id is not None else b"") + bytes(payload)
    return raw_packet(PUBLISH, publish_flags(qos, retain, dup), body)


def puback(packet_id: int) -> bytes:
    return raw_packet(PUBACK, 0, u16(packet_id))


def pubrec(packet_id: int) -> bytes:
    return raw_packet(PUBREC, 0, u16(packet_id))


def pubrel(packet_id: int) -> bytes:
    """PUBREL: fixed header flags MUST be 0b0010 [MQTT-3.6.1-1]."""
    return raw_packet(PUBREL, 0x02, u16(packet_id))


def pubcomp(packet_id: int) -> bytes:
    return raw_packet(PUBCOMP, 0, u16(packet_id))


def subscribe(packet_id: int, topics: Iterable[Tuple[Text, int]], flags: int = 0x02) -> bytes:
    """SUBSCRIBE (section 3.8): fixed header flags 0b0010 [MQTT-3.8.1-1]; the requested QoS byte is written
    verbatim so reserved bits can be set for malformed cases."""
    body = u16(packet_id) + b"".join(utf8(f) + bytes([q & 0xFF]) for f, q in topics)
    return raw_packet(SUBSCRIBE, flags, body)


def suback(packet_id: int, return_codes: Iterable[int]) -> bytes:
    return raw_packet(SUBACK, 0, u16(packet_id) + bytes(return_codes))


def unsubscribe(packet_id: int, filters: Iterable[Text], flags: int = 0x02) -> bytes:
    """UNSUBSCRIBE (section 3.10): fixed header flags 0b0010 [MQTT-3.10.1-1]."""
    return raw_packet(UNSUBSCRIBE, flags, u16(packet_id) + b"".join(utf8(f) for f in filters))


def unsuback(packet_id: int) -> bytes:
    return raw_packet(UNSUBACK, 0, u16(packet_id))


def pingreq() -> bytes:
    return b"\xc0\x00"


def pingresp() -> bytes:
    return b"\xd0\x00"


def disconnect() -> bytes:
    return b"\xe0\x00"


# ---------------------------------------------------------------------------------------------------------
# Malformed packets: every receiver must close the connection on these (no response).
# ---------------------------------------------------------------------------------------------------------

class Malformed(NamedTuple):
    name: str          # "[MQTT-x.y.z-n] what is wrong": used as the pytest id
    data: bytes        # the complete bytes to send
    is_connect: bool   # True: a CONNECT, so on the wire it is sent as the first packet


def _m(name: str, data: bytes, is_connect: bool = False) -> Malformed:
    return Malformed(name, data, is_connect)


def _connect_body_with(flags: int, payload: bytes, name: Text = "MQTT", level: int = 4) -> bytes:
    return raw_packet(CONNECT, 0, utf8(name) + bytes([level, flags]) + u16(60) + payload)


MALFORMED: List[Malformed] = [
    # Fixed header flags [MQTT-2.2.2-1][MQTT-2.2.2-2]
    _m("[MQTT-2.2.2-1] PUBREL flags 0000", raw_packet(PUBREL, 0x00, u16(1))),
    _m("[MQTT-2.2.2-1] PUBREL flags 0011", raw_packet(PUBREL, 0x03, u16(1))),
    _m("[MQTT-2.2.2-1] SUBSCRIBE flags 0000", subscribe(1, [("a", 0)], flags=0x00)),
    _m("[MQTT-2.2.2-1] SUBSCRIBE flags 1010", subscribe(1, [("a", 0)], flags=0x0A)),
    _m("[MQTT-2.2.2-1] UNSUBSCRIBE flags 0000", unsubscribe(1, ["a"], flags=0x00)),
    _m("[MQTT-2.2.2-1] UNSUBSCRIBE flags 0110", unsubscribe(1, ["a"], flags=0x06)),
    _m("[MQTT-2.2.2-1] PUBACK flags 0010", raw_packet(PUBACK, 0x02, u16(1))),
    _m("[MQTT-2.2.2-1] PUBREC flags 0001", raw_packet(PUBREC, 0x01, u16(1))),
    _m("[MQTT-2.2.2-1] PUBCOMP flags 1000", raw_packet(PUBCOMP, 0x08, u16(1))),
    _m("[MQTT-2.2.2-1] PINGREQ flags 0001", raw_packet(PINGREQ, 0x01, b"")),
    _m("[MQTT-2.2.2-1] DISCONNECT flags 0010", raw_packet(DISCONNECT, 0x02, b"")),
    _m("[MQTT-2.2.2-1] CONNECT fixed header flags 0001",
       raw_packet(CONNECT, 0x01, connect("c")[2:]), is_connect=True),
    # Packet types 0 and 15 are reserved (section 2.2.1)
    _m("[MQTT-2.2.1] reserved packet type 0", b"\x00\x00"),
    _m("[MQTT-2.2.1] reserved packet type 15", b"\xf0\x00"),
    # Remaining length: at most four bytes (section 2.2.3)
    _m("[MQTT-2.2.3] remaining length with a 5th byte", b"\x30\xff\xff\xff\xff\x01"),
    _m("[MQTT-2.2.3] remaining length with a 5th byte, PINGREQ", b"\xc0\x80\x80\x80\x80\x00"),
    # UTF-8 strings [MQTT-1.5.3-1][MQTT-1.5.3-2]
    _m("[MQTT-1.5.3-1] PUBLISH topic invalid UTF-8 byte ff", publish(b"a/\xff")),
    _m("[MQTT-1.5.3-1] PUBLISH topic truncated UTF-8 sequence", publish(b"a\xc3")),
    _m("[MQTT-1.5.3-1] PUBLISH topic overlong encoding c0 80", publish(b"a\xc0\x80")),
    _m("[MQTT-1.5.3-1] PUBLISH topic encodes surrogate U+D800", publish(b"a\xed\xa0\x80")),
    _m("[MQTT-1.5.3-1] SUBSCRIBE filter invalid UTF-8", subscribe(1, [(b"\xfe", 0)])),
    _m("[MQTT-1.5.3-1] UNSUBSCRIBE filter invalid UTF-8", unsubscribe(1, [b"x\x80"])),
    _m("[MQTT-1.5.3-1] CONNECT client id invalid UTF-8", connect(b"id\xff"), is_connect=True),
    _m("[MQTT-1.5.3-1] CONNECT username invalid UTF-8", connect("c", username=b"\xff\xfe"), is_connect=True),
    _m("[MQTT-1.5.3-1] CONNECT will topic invalid UTF-8", connect("c", will=Will(b"w\xff", b"x")),
       is_connect=True),
    _m("[MQTT-1.5.3-2] PUBLISH topic contains U+0000", publish(b"a\x00b")),
    _m("[MQTT-1.5.3-2] SUBSCRIBE filter contains U+0000", subscribe(1, [(b"a\x00", 0)])),
    _m("[MQTT-1.5.3-2] UNSUBSCRIBE filter contains U+0000", unsubscribe(1, [b"\x00"])),
    _m("[MQTT-1.5.3-2] CONNECT client id contains U+0000", connect(b"c\x00d"), is_connect=True),
    # PUBLISH
    _m("[MQTT-3.3.1-4] PUBLISH QoS 3", publish("a", b"x", qos=3, packet_id=1)),
    _m("[MQTT-3.3.1-4] PUBLISH QoS 3 retain dup", publish("a", b"x", qos=3, retain=True, dup=True, packet_id=1)),
    _m("[MQTT-3.3.2-2] PUBLISH topic with +", publish("a/+/b", b"x")),
    _m("[MQTT-3.3.2-2] PUBLISH topic with #", publish("a/#", b"x")),
    _m("[MQTT-3.3.2-2] PUBLISH topic is #", publish("#", b"x", qos=1, packet_id=5)),
    _m("[MQTT-3.3.2-2] PUBLISH topic with + inside a level", publish("a+b", b"x")),
    _m("[MQTT-4.7.3-1] PUBLISH empty topic name", publish("", b"x")),
    # Packet identifiers [MQTT-2.3.1-1]
    _m("[MQTT-2.3.1-1] PUBLISH QoS 1 packet id 0", publish("a", b"x", qos=1, packet_id=0)),
    _m("[MQTT-2.3.1-1] PUBLISH QoS 2 packet id 0", publish("a", b"x", qos=2, packet_id=0)),
    _m("[MQTT-2.3.1-1] SUBSCRIBE packet id 0", subscribe(0, [("a", 0)])),
    _m("[MQTT-2.3.1-1] UNSUBSCRIBE packet id 0", unsubscribe(0, ["a"])),
    _m("[MQTT-2.3.1-1] PUBACK packet id 0", puback(0)),
    _m("[MQTT-2.3.1-1] PUBREC packet id 0", pubrec(0)),
    _m("[MQTT-2.3.1-1] PUBREL packet id 0", pubrel(0)),
    _m("[MQTT-2.3.1-1] PUBCOMP packet id 0", pubcomp(0)),
    # Topic filters [MQTT-4.7.1-2][MQTT-4.7.1-3][MQTT-4.7.3-1]
    _m("[MQTT-4.7.3-1] SUBSCRIBE empty topic filter", subscribe(1, [("", 0)])),
    _m("[MQTT-4.7.3-1] UNSUBSCRIBE empty topic filter", unsubscribe(1, [""])),
    _m("[MQTT-4.7.1-2] SUBSCRIBE # not last", subscribe(1, [("a/#/b", 0)])),
    _m("[MQTT-4.7.1-2] SUBSCRIBE # not a whole level", subscribe(1, [("a/b#", 0)])),
    _m("[MQTT-4.7.1-2] SUBSCRIBE # then more", subscribe(1, [("#/", 0)])),
    _m("[MQTT-4.7.1-2] SUBSCRIBE ## level", subscribe(1, [("a/##", 0)])),
    _m("[MQTT-4.7.1-3] SUBSCRIBE + not a whole level (suffix)", subscribe(1, [("a/b+", 0)])),
    _m("[MQTT-4.7.1-3] SUBSCRIBE + not a whole level (prefix)", subscribe(1, [("+a/b", 0)])),
    _m("[MQTT-4.7.1-3] SUBSCRIBE ++ level", subscribe(1, [("a/++/b", 0)])),
    _m("[MQTT-4.7.1-2] SUBSCRIBE second filter invalid", subscribe(1, [("ok/#", 1), ("bad#", 0)])),
    _m("[MQTT-4.7.1-2] UNSUBSCRIBE # not last", unsubscribe(1, ["a/#/b"])),
    _m("[MQTT-4.7.1-3] UNSUBSCRIBE + not a whole level", unsubscribe(1, ["a+"])),
    # SUBSCRIBE / UNSUBSCRIBE payloads [MQTT-3.8.3-3][MQTT-3-8.3-4][MQTT-3.10.3-2]
    _m("[MQTT-3.8.3-3] SUBSCRIBE with no topic filter", subscribe(1, [])),
    _m("[MQTT-3.10.3-2] UNSUBSCRIBE with no topic filter", unsubscribe(1, [])),
    _m("[MQTT-3-8.3-4] SUBSCRIBE requested QoS 3", subscribe(1, [("a", 3)])),
    _m("[MQTT-3-8.3-4] SUBSCRIBE reserved bit 2 set", subscribe(1, [("a", 0x04)])),
    _m("[MQTT-3-8.3-4] SUBSCRIBE reserved bit 7 set", subscribe(1, [("a", 0x81)])),
    # CONNECT flags [MQTT-3.1.2-3][MQTT-3.1.2-13][MQTT-3.1.2-14][MQTT-3.1.2-15][MQTT-3.1.2-22]
    _m("[MQTT-3.1.2-3] CONNECT reserved flag bit 0 set", connect("c", flags_override=0x03), is_connect=True),
    _m("[MQTT-3.1.2-13] CONNECT will flag 0 with will QoS 1", connect("c", flags_override=0x0A), is_connect=True),
    _m("[MQTT-3.1.2-13] CONNECT will flag 0 with will QoS 2", connect("c", flags_override=0x12), is_connect=True),
    _m("[MQTT-3.1.2-14] CONNECT will QoS 3",
       connect("c", will=Will("w", b"x", qos=3)), is_connect=True),
    _m("[MQTT-3.1.2-15] CONNECT will flag 0 with will retain",
       connect("c", flags_override=0x22), is_connect=True),
    _m("[MQTT-3.1.2-22] CONNECT password flag without username flag",
       _connect_body_with(0x42, utf8("c") + binary(b"pw")), is_connect=True),
    # Declared fields overrunning or underrunning the remaining length (sections 2.2.3, 3.x)
    _m("[MQTT-2.2.3] PUBACK remaining length 1 (field overruns)", b"\x40\x01\x00"),
    _m("[MQTT-2.2.3] PUBACK remaining length 3 (trailing byte)", b"\x40\x03\x00\x01\x00"),
    _m("[MQTT-2.2.3] PUBREL remaining length 0", b"\x62\x00"),
    _m("[MQTT-2.2.3] PUBCOMP remaining length 4", b"\x70\x04\x00\x01\x00\x02"),
    _m("[MQTT-2.2.3] PINGREQ remaining length 1", b"\xc0\x01\x00"),
    _m("[MQTT-2.2.3] DISCONNECT remaining length 2", b"\xe0\x02\x00\x00"),
    _m("[MQTT-2.2.3] PUBLISH topic length overruns remaining length", raw_packet(PUBLISH, 0, u16(10) + b"abc")),
    _m("[MQTT-2.2.3] PUBLISH remaining length 1", raw_packet(PUBLISH, 0, b"\x00")),
    _m("[MQTT-2.2.3] PUBLISH QoS 1 with no room for packet id", raw_packet(PUBLISH, 0x02, utf8("a") + b"\x00")),
    _m("[MQTT-2.2.3] SUBSCRIBE filter without QoS byte", raw_packet(SUBSCRIBE, 0x02, u16(1) + utf8("a/b"))),
    _m("[MQTT-2.2.3] SUBSCRIBE filter length overruns", raw_packet(SUBSCRIBE, 0x02, u16(1) + u16(9) + b"ab\x00")),
    _m("[MQTT-2.2.3] UNSUBSCRIBE trailing single byte", raw_packet(UNSUBSCRIBE, 0x02, u16(1) + utf8("a") + b"\x00")),
    _m("[MQTT-2.2.3] UNSUBSCRIBE only one byte of packet id", raw_packet(UNSUBSCRIBE, 0x02, b"\x01")),
    _m("[MQTT-2.2.3] CONNECT truncated after protocol name", raw_packet(CONNECT, 0, utf8("MQTT")), is_connect=True),
    _m("[MQTT-2.2.3] CONNECT client id overruns", raw_packet(CONNECT, 0, connect("abcdef")[2:-3]),
       is_connect=True),
    _m("[MQTT-2.2.3] CONNECT trailing bytes after payload", raw_packet(CONNECT, 0, connect("c")[2:] + b"\x00"),
       is_connect=True),
    _m("[MQTT-2.2.3] CONNECT username flag but no username",
       _connect_body_with(0x82, utf8("c")), is_connect=True),
    _m("[MQTT-2.2.3] CONNECT will flag but no will message",
       _connect_body_with(0x06, utf8("c") + utf8("w/t")), is_connect=True),
]


# ---------------------------------------------------------------------------------------------------------
# Reading packets back (its own remaining-length reader)
# ---------------------------------------------------------------------------------------------------------

def split_packets(data: bytes) -> List[bytes]:
    """Split a byte string holding whole packets into a list of packets (each with its fixed header)."""
    out = []
    i = 0
    while i < len(data):
        j = i + 1
        length = 0
        shift = 0
        while True:
            b = data[j]
            length |= (b & 0x7F) << shift
            shift += 7
            j += 1
            if not b & 0x80:
                break
        out.append(data[i:j + length])
        i = j + length
    return out


class RawClient:
    """A blocking TCP client speaking raw bytes; every read has a deadline (no sleeps anywhere)."""

    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_exactly(self, n: int, timeout: Optional[float] = None) -> bytes:
        """Exactly n bytes, or AssertionError on EOF, reset or timeout."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {n} bytes, got {bytes(buf)!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                raise AssertionError(f"timed out waiting for {n} bytes, got {bytes(buf)!r}") from None
            except ConnectionError as e:
                raise AssertionError(f"connection error {e!r} waiting for {n} bytes, got {bytes(buf)!r}") from None
            if not chunk:
                raise AssertionError(f"connection closed waiting for {n} bytes, got {bytes(buf)!r}")
            buf += chunk
        return bytes(buf)

    def read_packet(self, timeout: Optional[float] = None) -> Tuple[int, bytes]:
        """One packet as (first byte, body), using a minimal remaining-length reader of its own."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)

        def left() -> float:
            return max(0.001, deadline - time.monotonic())

        first = self.recv_exactly(1, left())[0]
        length = 0
        shift = 0
        for _ in range(4):
            b = self.recv_exactly(1, left())[0]
            length |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                break
        else:
            raise AssertionError("peer sent a remaining length longer than 4 bytes")
        body = self.recv_exactly(length, left()) if length else b""
        return first, body

    def read_raw_packet(self, timeout: Optional[float] = None) -> bytes:
        """One whole packet as the exact bytes received (fixed header included)."""
        first, body = self.read_packet(timeout)
        return bytes([first]) + remaining_length(len(body)) + body

    def expect_closed(self, timeout: Optional[float] = None, allow_data: bool = False) -> bytes:
        """Assert the peer closes (EOF or reset) within the timeout. Unless allow_data, any byte received
        first is a failure (a malformed packet must get no response). Returns the bytes received."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        got = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"connection still open after timeout; received {bytes(got)!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(4096)
            except socket.timeout:
                raise AssertionError(f"connection still open after timeout; received {bytes(got)!r}") from None
            except ConnectionError:
                chunk = b""
            if not chunk:
                if got and not allow_data:
                    raise AssertionError(f"expected a close without response, but received {bytes(got)!r}")
                return bytes(got)
            got += chunk

    def connect(self, client_id: Text = "c", **kw: object) -> bytes:
        """Send CONNECT and return the exact CONNACK bytes."""
        self.send(connect(client_id, **kw))  # type: ignore[arg-type]
        return self.read_raw_packet()

    def ping(self) -> None:
        """PINGREQ and assert the exact PINGRESP [MQTT-3.12.4-1]."""
        self.send(pingreq())
        got = self.read_raw_packet()
        assert got == pingresp(), f"expected PINGRESP d0 00, got {got.hex(' ')}"


def hexs(data: bytes) -> str:
    """Bytes as spaced hex, for assertion messages."""
    return data.hex(" ")

