"""Binary serial frames: COBS framing, a small header, CRC-16/CCITT-FALSE. Shared by broker and boards.

This one file is what the broker imports under CPython and what a MicroPython board runs (copy it to
the board's /lib), so the two sides cannot drift. It is therefore written in the subset of Python
that MicroPython 1.27 runs: no dataclasses, no typing, no f-strings, no `del` on bytearray slices,
no bytes methods that take an int argument, no reliance on dict order. tests/test_micropython.py
runs it under real MicroPython (the WebAssembly port) against the vectors in docs/serial-protocol.md.

A frame on the wire is COBS(body) followed by one 0x00 delimiter. The body is

    version (1 byte, 1) | type (1) | flags (1) | message id (2, big-endian) |
    topic length (1) | topic (UTF-8) | payload | CRC-16/CCITT-FALSE of everything before it (2, big-endian)

Types: PUBLISH, SUBSCRIBE (a board asks for a topic filter), ACK (answers a QoS 1 PUBLISH, a
SUBSCRIBE or a PING, same message id; payload one status byte), PING. Flags: bits 0-1 QoS (0 or 1),
bit 2 retain; other bits must be 0. docs/serial-protocol.md is the byte-by-byte specification.

Sans-IO: `FrameDecoder.feed(bytes)` returns events (`Frame` or `Bad`), never reads a port, and keeps
at most `max_length` encoded bytes of an unfinished frame.
"""

VERSION = 1

PUBLISH = 1
SUBSCRIBE = 2
ACK = 3
PING = 4
TYPE_NAMES = {PUBLISH: "publish", SUBSCRIBE: "subscribe", ACK: "ack", PING: "ping"}

FLAG_QOS_MASK = 0x03
FLAG_RETAIN = 0x04
_FLAG_RESERVED = 0xF8

#: ACK status: accepted (for a SUBSCRIBE: the granted QoS, 0 or 1), refused.
ACK_OK = 0x00
ACK_REFUSED = 0x80

#: version, type, flags, message id (2), topic length.
HEADER_SIZE = 6
CRC_SIZE = 2
#: Default bound on one encoded frame (delimiter excluded). A sensor reading is tens of bytes; 1 KiB
#: leaves room for a JSON payload while bounding what garbage at the wrong baud rate can make us hold.
DEFAULT_MAX_LENGTH = 1024

# Reasons a Bad event gives; the broker counts each per port.
BAD_CRC = "crc"
BAD_OVERLONG = "overlong"
BAD_GARBAGE = "garbage"
BAD_TOPIC = "topic"


# ---- CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF, no reflection, no final xor) ------------------

def _make_table():
    table = []
    for byte in range(256):
        crc = byte << 8
        for _ in range(8):
            if crc & 0x8000:
                crc = ((crc << 1) ^ 0x1021) & 0xFFFF
            else:
                crc = (crc << 1) & 0xFFFF
        table.append(crc)
    return table


_TABLE = _make_table()


def crc16_py(data, crc=0xFFFF):
    """CRC-16/CCITT-FALSE in plain Python (what a MicroPython board runs); check value of b"123456789"
    is 0x29B1."""
    table = _TABLE
    for byte in data:
        crc = ((crc << 8) & 0xFFFF) ^ table[((crc >> 8) ^ byte) & 0xFF]
    return crc


try:
    # CPython's binascii computes the same CRC in C (crc_hqx with init 0xFFFF); MicroPython's binascii
    # has no crc_hqx, so a board takes the table above. The tests check both agree.
    from binascii import crc_hqx as _crc_hqx

    def crc16(data, crc=0xFFFF):
        return _crc_hqx(data, crc)
except ImportError:
    crc16 = crc16_py


# ---- COBS (Consistent Overhead Byte Stuffing): no 0x00 inside, so 0x00 can delimit frames ----------

def cobs_encode(data):
    """COBS-encode `data` (bytes); the result holds no 0x00. The caller appends the delimiter."""
    out = bytearray()
    n = len(data)
    start = 0
    while True:
        # A block is up to 254 non-zero bytes, preceded by its length + 1.
        end = data.find(b"\x00", start)
        if end < 0:
            end = n
        while end - start >= 254:
            out.append(0xFF)  # a full block: 254 bytes and no zero after them
            out.extend(data[start:start + 254])
            start += 254
            if start == n:
                return bytes(out)
        out.append(end - start + 1)
        out.extend(data[start:end])
        if end >= n:
            return bytes(out)
        start = end + 1


def cobs_decode(data):
    """Decode one COBS block sequence (no delimiter); ValueError when it is not valid COBS."""
    if data.find(b"\x00") >= 0:
        raise ValueError("zero byte inside a COBS frame")
    out = bytearray()
    n = len(data)
    i = 0
    while i < n:
        code = data[i]
        end = i + code
        if end > n:
            raise ValueError("COBS block runs past the end of the frame")
        out.extend(data[i + 1:end])
        i = end
        if code != 0xFF and i < n:
            out.append(0)
    return bytes(out)


# ---- topics ------------------------------------------------------------------------------------

def topic_error(topic):
    """Why `topic` (str) cannot be published from a serial device, or None. No wildcards (MQTT forbids
    them in topic names [MQTT-3.3.2-2]), no NUL, not empty, not a $ topic (those are the broker's)."""
    if not topic:
        return "empty topic"
    if "+" in topic or "#" in topic:
        return "wildcard in topic"
    if "\x00" in topic:
        return "NUL in topic"
    if topic[0] == "$":
        return "topic starts with $"
    return None


def decode_topic(raw):
    """UTF-8 bytes -> (topic, None) or (None, reason)."""
    try:
        topic = raw.decode("utf-8")
    except UnicodeError:
        return None, "topic is not valid UTF-8"
    return topic, topic_error(topic)


# ---- events ------------------------------------------------------------------------------------

class Frame:
    """A decoded frame. `topic` is a str, `payload` bytes; for an ACK `status` is its payload byte."""

    def __init__(self, kind, msg_id=0, topic="", payload=b"", qos=0, retain=False):
        self.kind = kind
        self.msg_id = msg_id
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain

    @property
    def status(self):
        return self.payload[0] if self.payload else ACK_OK

    def __eq__(self, other):
        return (isinstance(other, Frame) and self.kind == other.kind and self.msg_id == other.msg_id
                and self.topic == other.topic and bytes(self.payload) == bytes(other.payload)
                and self.qos == other.qos and bool(self.retain) == bool(other.retain))

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Frame(%s, msg_id=%d, topic=%r, payload=%r, qos=%d, retain=%r)" % (
            TYPE_NAMES.get(self.kind, str(self.kind)), self.msg_id, self.topic, bytes(self.payload),
            self.qos, bool(self.retain))


class Bad:
    """Input that is not a valid frame or line: `reason` is one of the BAD_* names, `detail` says more."""

    def __init__(self, reason, detail=""):
        self.reason = reason
        self.detail = detail

    def __eq__(self, other):
        return isinstance(other, Bad) and self.reason == other.reason

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        return "Bad(%r, %r)" % (self.reason, self.detail)


# ---- encoding ----------------------------------------------------------------------------------

def encode_body(kind, msg_id=0, topic="", payload=b"", qos=0, retain=False):
    """The frame body (header, topic, payload, CRC) before COBS."""
    if kind not in TYPE_NAMES:
        raise ValueError("unknown frame type")
    if qos not in (0, 1):
        raise ValueError("QoS must be 0 or 1")
    if not 0 <= msg_id <= 0xFFFF:
        raise ValueError("message id must fit 16 bits")
    raw_topic = topic.encode("utf-8") if isinstance(topic, str) else bytes(topic)
    if len(raw_topic) > 255:
        raise ValueError("topic longer than 255 bytes")
    flags = qos | (FLAG_RETAIN if retain else 0)
    body = bytearray((VERSION, kind, flags, msg_id >> 8, msg_id & 0xFF, len(raw_topic)))
    body.extend(raw_topic)
    body.extend(payload)
    crc = crc16(body)
    body.append(crc >> 8)
    body.append(crc & 0xFF)
    return bytes(body)


def encode(kind, msg_id=0, topic="", payload=b"", qos=0, retain=False):
    """A whole frame as it goes on the wire: COBS(body) + 0x00."""
    return cobs_encode(encode_body(kind, msg_id, topic, payload, qos, retain)) + b"\x00"


def encode_publish(topic, payload, qos=0, retain=False, msg_id=0):
    return encode(PUBLISH, msg_id, topic, payload, qos, retain)


def encode_subscribe(topic_filter, msg_id, qos=0):
    return encode(SUBSCRIBE, msg_id, topic_filter, b"", qos)


def encode_ack(msg_id, status=ACK_OK):
    return encode(ACK, msg_id, "", bytes((status,)))


def encode_ping(msg_id):
    return encode(PING, msg_id)


def max_encoded_length(body_length):
    """Bytes COBS makes of a body of `body_length` bytes (delimiter excluded), at most."""
    return body_length + body_length // 254 + 1


# ---- decoding ----------------------------------------------------------------------------------

def decode_body(body):
    """A body (after COBS) -> Frame or Bad."""
    n = len(body)
    if n < HEADER_SIZE + CRC_SIZE:
        return Bad(BAD_GARBAGE, "frame too short")
    if crc16(body[:n - CRC_SIZE]) != (body[n - 2] << 8 | body[n - 1]):
        return Bad(BAD_CRC, "CRC mismatch")
    if body[0] != VERSION:
        return Bad(BAD_GARBAGE, "unknown version %d" % body[0])
    kind = body[1]
    if kind not in TYPE_NAMES:
        return Bad(BAD_GARBAGE, "unknown frame type %d" % kind)
    flags = body[2]
    qos = flags & FLAG_QOS_MASK
    if flags & _FLAG_RESERVED or qos > 1:
        return Bad(BAD_GARBAGE, "reserved flags set")
    msg_id = body[3] << 8 | body[4]
    topic_end = HEADER_SIZE + body[5]
    if topic_end > n - CRC_SIZE:
        return Bad(BAD_GARBAGE, "topic length past the end of the frame")
    topic = ""
    if kind == PUBLISH or kind == SUBSCRIBE:
        topic, error = decode_topic(body[HEADER_SIZE:topic_end])
        if topic is None or (error is not None and kind == PUBLISH):
            return Bad(BAD_TOPIC, error)
        if not topic:
            return Bad(BAD_TOPIC, "empty topic")
    elif topic_end != HEADER_SIZE:
        return Bad(BAD_GARBAGE, "topic in a frame type that has none")
    return Frame(kind, msg_id, topic, bytes(body[topic_end:n - CRC_SIZE]), qos, bool(flags & FLAG_RETAIN))


def decode(frame):
    """One wire frame (COBS bytes, with or without its trailing 0x00) -> Frame or Bad."""
    if frame and frame[len(frame) - 1] == 0:
        frame = frame[:len(frame) - 1]
    try:
        body = cobs_decode(frame)
    except ValueError as exc:
        return Bad(BAD_GARBAGE, str(exc))
    return decode_body(body)


class Splitter:
    """Cuts a byte stream at `delimiter` (bytes) and hands each piece to `piece(piece, events)`. Holds
    at most `max_length` + `slack` bytes of an unfinished piece: past that it reports the piece once as
    overlong and skips it up to the next delimiter. Shared by FrameDecoder and lines.LineDecoder."""

    def __init__(self, delimiter, max_length, slack=0):
        self.delimiter = delimiter
        self.max_length = max_length
        self._limit = max_length + slack
        self._buf = bytearray()
        self._skipping = False

    def feed(self, data):
        events = []
        buf = self._buf
        n = len(data)
        start = 0
        while start < n:
            end = data.find(self.delimiter, start)
            if end < 0:
                if not self._skipping:
                    if len(buf) + n - start > self._limit:
                        events.append(Bad(BAD_OVERLONG, "no delimiter within %d bytes" % self.max_length))
                        self._skipping = True
                        buf = bytearray()
                    else:
                        buf.extend(data[start:])
                break
            piece = data[start:end]
            start = end + 1
            if self._skipping:
                self._skipping = False  # the delimiter ends the overlong piece: in sync again
                continue
            if buf:
                buf.extend(piece)
                piece = bytes(buf)
                buf = bytearray()
            self.piece(piece, events)
        self._buf = buf
        return events

    def piece(self, piece, events):
        raise NotImplementedError


class FrameDecoder(Splitter):
    """Bytes in, events (Frame, Bad) out, with at most `max_length` bytes of an unfinished frame held.
    An empty frame (two 0x00 in a row) is ignored, so a board may send 0x00 to resynchronise."""

    def __init__(self, max_length=DEFAULT_MAX_LENGTH):
        Splitter.__init__(self, b"\x00", max_length)

    def piece(self, piece, events):
        if not piece:
            return
        if len(piece) > self.max_length:
            events.append(Bad(BAD_OVERLONG, "frame of %d bytes" % len(piece)))
            return
        events.append(decode(piece))

    def pending(self):
        """Bytes held of an unfinished frame."""
        return len(self._buf)
