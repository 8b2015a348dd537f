"""Text lines from serial sensors: what a board's print() emits, turned into (topic, payload) pairs.

Shared like frames.py and written in the same MicroPython subset (tests run it under MicroPython too),
so a board can check what it prints with the broker's own parser. Formats (one line each, LF or CRLF):

    line         `TOPIC PAYLOAD`            -> TOPIC gets PAYLOAD (the rest of the line, bytes as sent)
    kv           `key=value key2=value2`    -> one publish per key
    json         `{"key": value, ...}`      -> one publish per key (strings as they are, other values
                                               as JSON text)
    json-object  `{"key": value, ...}`      -> the whole line on one topic

Topics are relative to the port's topic prefix, which the broker adds. Rejected, each reported as a
`Bad` with a reason the broker counts: a line longer than max_length (`overlong`), a topic that is not
UTF-8 or holds a wildcard, NUL or a leading `$` (`topic`), anything else not in the format (`garbage`).
Sans-IO: `LineDecoder.feed(bytes)` returns complete lines and Bad events; it holds at most
max_length bytes of an unfinished line.
"""

import json

try:  # inside the firmware_bridge package (the broker, CPython)
    from .frames import BAD_GARBAGE, BAD_OVERLONG, BAD_TOPIC, Bad, Splitter, decode_topic, topic_error
except ImportError:  # a board: frames.py sits beside this file in /lib
    from frames import BAD_GARBAGE, BAD_OVERLONG, BAD_TOPIC, Bad, Splitter, decode_topic, topic_error

FORMATS = ("line", "kv", "json", "json-object")
#: Default bound on one line, terminator excluded: a sensor's reading is tens of bytes.
DEFAULT_MAX_LENGTH = 1024


class LineDecoder(Splitter):
    """Bytes in, lines (bytes, without LF or CRLF) and Bad events out. A line longer than max_length
    is reported once as overlong and skipped up to its LF. Empty lines are ignored."""

    def __init__(self, max_length=DEFAULT_MAX_LENGTH):
        # Slack of 1: a CR that ends a line of exactly max_length may still be waiting for its LF.
        Splitter.__init__(self, b"\n", max_length, 1)

    def piece(self, piece, events):
        if piece and piece[len(piece) - 1] == 13:  # CR of a CRLF
            piece = piece[:len(piece) - 1]
        if not piece:
            return
        if len(piece) > self.max_length:
            events.append(Bad(BAD_OVERLONG, "line of %d bytes" % len(piece)))
            return
        events.append(bytes(piece))


def _topic(raw):
    topic, error = decode_topic(raw)
    if error is not None:
        return Bad(BAD_TOPIC, error)
    return topic


def _json_value(value):
    if isinstance(value, str):
        return value.encode("utf-8")
    return json.dumps(value).encode("utf-8")


def _json_object(line):
    try:
        obj = json.loads(line.decode("utf-8"))
    except (ValueError, UnicodeError):  # MicroPython raises ValueError for bad JSON too
        return Bad(BAD_GARBAGE, "not a JSON object")
    if not isinstance(obj, dict):
        return Bad(BAD_GARBAGE, "not a JSON object")
    return obj


def parse(fmt, line):
    """One line (bytes, terminator removed) in format `fmt` -> a list of (topic, payload bytes), or a
    Bad. `json-object` gives one pair with topic "" (the broker publishes it on the prefix itself)."""
    if fmt == "line":
        parts = line.split(None, 1)
        if len(parts) != 2:
            return Bad(BAD_GARBAGE, "expected TOPIC PAYLOAD")
        topic = _topic(parts[0])
        if isinstance(topic, Bad):
            return topic
        return [(topic, parts[1])]
    if fmt == "kv":
        pairs = []
        for token in line.split():
            key, sep, value = token.partition(b"=")
            if not sep or not key or not value:
                return Bad(BAD_GARBAGE, "expected key=value pairs")
            topic = _topic(key)
            if isinstance(topic, Bad):
                return topic
            pairs.append((topic, value))
        return pairs
    if fmt == "json":
        obj = _json_object(line)
        if isinstance(obj, Bad):
            return obj
        if not obj:
            return Bad(BAD_GARBAGE, "empty JSON object")
        pairs = []
        for key in obj:
            error = topic_error(key)
            if error is not None:
                return Bad(BAD_TOPIC, error)
            pairs.append((key, _json_value(obj[key])))
        return pairs
    if fmt == "json-object":
        obj = _json_object(line)
        if isinstance(obj, Bad):
            return obj
        return [("", bytes(line))]
    raise ValueError("unknown line format")


def encode_line(topic, payload):
    """A downlink line `TOPIC PAYLOAD\\n` for a board that reads lines; None when it cannot be one line
    (a topic with white space, a payload with CR or LF)."""
    raw = topic.encode("utf-8")
    if not raw or b" " in raw or b"\t" in raw or b"\n" in raw or b"\r" in raw:
        return None
    if b"\n" in payload or b"\r" in payload:
        return None
    return raw + b" " + bytes(payload) + b"\n"
