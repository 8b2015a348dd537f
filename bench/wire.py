"""A tiny MQTT 3.1.1 encoder and packet splitter for the load generator.

Deliberately independent of edgebroker's codec (the benchmark must not share a bug with the broker it
measures) and of paho (too slow for a hot path). Only what the scenarios need: CONNECT, SUBSCRIBE,
PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP, PINGREQ, DISCONNECT out; anything in, split by the fixed
header and remaining length. The hot loops in `bench.workers` inline the same splitting for speed.

Payload layout of every benchmark message (big-endian), padded with zero bytes to the payload size:
    u32 publisher id | u32 sequence number | u64 time.perf_counter_ns() at send (0 when not used)
"""
from __future__ import annotations

import struct
from typing import Iterable, List, Optional, Tuple

# Packet types (high nibble of the first byte).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT = 8, 9, 10, 11, 12, 13, 14

PAYLOAD_HEADER = struct.Struct(">IIQ")
PINGREQ_BYTES = b"\xc0\x00"
DISCONNECT_BYTES = b"\xe0\x00"


class ProtocolError(Exception):
    """The broker sent something the benchmark did not expect."""


def remaining_length(n: int) -> bytes:
    if n < 0 or n > 268_435_455:
        raise ValueError(f"remaining length {n} out of range")
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def connect(client_id: str, clean: bool = True, keepalive: int = 0, username: Optional[str] = None,
            password: Optional[str] = None) -> bytes:
    """CONNECT for MQTT 3.1.1 without will; username and password only where given (S6-auth).
    keepalive 0 = no keepalive, so idle benchmark connections need no PINGREQ."""
    flags = (0x02 if clean else 0x00) | (0x80 if username is not None else 0) | (0x40 if password is not None else 0)
    body = _str("MQTT") + bytes((4, flags)) + keepalive.to_bytes(2, "big") + _str(client_id)
    if username is not None:
        body += _str(username)
    if password is not None:
        body += _str(password)
    return b"\x10" + remaining_length(len(body)) + body


def subscribe(packet_id: int, filters: Iterable[Tuple[str, int]]) -> bytes:
    body = packet_id.to_bytes(2, "big") + b"".join(_str(f) + bytes((q,)) for f, q in filters)
    return b"\x82" + remaining_length(len(body)) + body


def publish(topic: str, payload: bytes, qos: int = 0, packet_id: int = 0, retain: bool = False,
            dup: bool = False) -> bytes:
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    raw = _str(topic)
    pid = packet_id.to_bytes(2, "big") if qos else b""
    return bytes((first,)) + remaining_length(len(raw) + len(pid) + len(payload)) + raw + pid + payload


def puback(packet_id: int) -> bytes:
    return b"\x40\x02" + packet_id.to_bytes(2, "big")


def pubrec(packet_id: int) -> bytes:
    return b"\x50\x02" + packet_id.to_bytes(2, "big")


def pubrel(packet_id: int) -> bytes:
    return b"\x62\x02" + packet_id.to_bytes(2, "big")


def pubcomp(packet_id: int) -> bytes:
    return b"\x70\x02" + packet_id.to_bytes(2, "big")


def payload(pub_id: int, seq: int, size: int, ts_ns: int = 0) -> bytes:
    head = PAYLOAD_HEADER.pack(pub_id, seq, ts_ns)
    if size < len(head):
        raise ValueError(f"payload size {size} below the {len(head)}-byte header")
    return head + bytes(size - len(head))


def packet_id_for(seq: int) -> int:
    """Packet id of the seq-th QoS>0 message of one connection: 1..65535, cycling. Safe while fewer than
    65535 messages are in flight, which every window here guarantees."""
    return seq % 65535 + 1


def split(buf: bytes, start: int = 0) -> Tuple[List[Tuple[int, int, int]], int]:
    """Complete packets in buf[start:] as (first byte, body start, body end); and where the first
    incomplete packet starts (== len(buf) when none is left over)."""
    out: List[Tuple[int, int, int]] = []
    i, n = start, len(buf)
    while n - i >= 2:
        rl = 0
        mult = 1
        j = i + 1
        while True:
            if j >= n:
                return out, i
            b = buf[j]
            rl += (b & 0x7F) * mult
            j += 1
            if b < 0x80:
                break
            mult <<= 7
            if j - i > 5:
                raise ProtocolError("remaining length longer than 4 bytes")
        end = j + rl
        if end > n:
            return out, i
        out.append((buf[i], j, end))
        i = end
    return out, i


def publish_fields(buf: bytes, first: int, body: int, end: int) -> Tuple[str, int, Optional[int], int]:
    """(topic, qos, packet id or None, payload start) of a PUBLISH located by `split`."""
    tlen = (buf[body] << 8) | buf[body + 1]
    topic = bytes(buf[body + 2:body + 2 + tlen]).decode("utf-8")
    p = body + 2 + tlen
    qos = (first >> 1) & 3
    pid = None
    if qos:
        pid = (buf[p] << 8) | buf[p + 1]
        p += 2
    return topic, qos, pid, p
