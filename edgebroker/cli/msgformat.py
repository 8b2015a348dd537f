"""How edgebroker-sub prints a message: mosquitto_sub's three output modes, byte for byte.

Payload only (the default), verbose (-v: topic, space, payload; an empty payload prints "(null)"), or a
-F format string, each followed by a newline unless -N. As in mosquitto_sub, an empty payload prints
nothing at all in the default mode. The -F language is sub_client_output.c's: %-sequences with an
optional "-" or "0" flag, field width and precision (%t %p %q %r %l %m %x %X %I %U %j %% and the MQTT 5
ones, which are always absent here), @-sequences passed to strftime (@N: nanoseconds), and \\ escapes.
Widths count bytes, as C's printf does; %p/%x/%X truncate to the width the way Mosquitto does.

Everything is built as bytes; `render(...)` returns them and the caller writes them.
"""
from __future__ import annotations

import json
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional

__all__ = ["render", "render_format"]

_ESCAPES = {"\\": b"\\", "0": b"\x00", "a": b"\x07", "e": b"\x1b", "n": b"\n", "r": b"\r", "t": b"\t",
            "v": b"\x0b"}


class _Clock:
    """The time of one message, read once (lazily) like sub_client_output.c's get_time()."""

    __slots__ = ("_ns",)

    def __init__(self) -> None:
        self._ns: Optional[int] = None

    @property
    def ns_total(self) -> int:
        if self._ns is None:
            self._ns = time.time_ns()
        return self._ns

    @property
    def seconds(self) -> int:
        return self.ns_total // 1_000_000_000

    @property
    def ns(self) -> int:
        return self.ns_total % 1_000_000_000

    def strftime(self, fmt: str) -> bytes:
        return time.strftime(fmt, time.localtime(self.seconds)).encode("utf-8", "surrogateescape")


def _payload(payload: bytes, hex_mode: int, align: str, pad: str, width: int) -> bytes:
    """write_payload(): with a width, the payload is cut to it (hex: to half of it), then padded."""
    length = len(payload)
    if width > 0:
        if length > width:
            length = width
        if hex_mode:
            length //= 2
            padlen = width - length * 2
        else:
            padlen = width - length
    else:
        padlen = width - length
    data = payload[:length]
    if hex_mode == 1:
        data = data.hex().encode()
    elif hex_mode == 2:
        data = data.hex().upper().encode()
    out = b""
    if align != "-" and padlen > 0:
        out += pad.encode() * padlen
    out += data
    if align == "-" and padlen > 0:
        out += b" " * padlen
    return out


def _int(value: int, align: str, pad: str, width: int) -> bytes:
    if width == 0:
        return str(value).encode()
    if align == "-":
        return str(value).ljust(width).encode()
    if pad == "0":
        return (f"{value:0{width}d}").encode()
    return str(value).rjust(width).encode()


def _str(value: bytes, align: str, width: int, precision: int) -> bytes:
    if precision >= 0:
        value = value[:precision]
    if len(value) >= width:
        return value
    fill = b" " * (width - len(value))
    return value + fill if align == "-" else fill + value


def _blank(pad: str, width: int) -> bytes:
    return pad.encode() * width


def _json(topic: str, payload: bytes, qos: int, retain: bool, mid: int, clock: _Clock) -> bytes:
    """%j: mosquitto_sub's JSON line (cJSON build): a printable ASCII payload as a string, any other
    as an array of byte values, an empty one as null."""
    micro = clock.ns // 1000
    tst = clock.strftime("%Y-%m-%dT%H:%M:%S").decode() + f".{micro:06d}Z" + clock.strftime("%z").decode()
    parts = [f'"tst":{json.dumps(tst)}', f'"topic":{json.dumps(topic, ensure_ascii=False)}',
             f'"qos":{qos}', f'"retain":{int(retain)}', f'"payloadlen":{len(payload)}']
    if qos > 0:
        parts.append(f'"mid":{mid}')
    if not payload:
        parts.append('"payload":null')
    elif all(0x20 <= b < 0x7F for b in payload):
        parts.append(f'"payload":{json.dumps(payload.decode("ascii"))}')
    else:
        parts.append('"payload":[' + ",".join(str(b) for b in payload) + "]")
    return ("{" + ",".join(parts) + "}").encode("utf-8", "surrogateescape")


def _percent(spec: str, align: str, pad: str, width: int, precision: int, topic: str, payload: bytes,
             qos: int, retain: bool, mid: int, clock: _Clock) -> bytes:
    if spec == "%":
        return b"%"
    if spec in "AEFS":  # MQTT 5 properties: never present in 3.1.1
        return _blank(pad, width)
    if spec == "C":
        return _blank(" ", width)
    if spec in "DPR":
        return b""
    if spec == "I":
        return _str(clock.strftime("%Y-%m-%dT%H:%M:%S%z"), align, width, precision)
    if spec == "j":
        return _json(topic, payload, qos, retain, mid, clock)
    if spec == "l":
        return _int(len(payload), align, pad, width)
    if spec == "m":
        return _int(mid, align, pad, width)
    if spec == "p":
        return _payload(payload, 0, align, pad, width)
    if spec == "q":
        return bytes((qos + 48,))
    if spec == "r":
        return b"1" if retain else b"0"
    if spec == "t":
        return _str(topic.encode("utf-8"), align, width, precision)
    if spec == "U":
        return f"{clock.seconds}.{clock.ns:09d}".encode()
    if spec == "x":
        return _payload(payload, 1, align, pad, width)
    if spec == "X":
        return _payload(payload, 2, align, pad, width)
    return b""


def render_format(fmt: str, topic: str, payload: bytes, qos: int, retain: bool, mid: int,
                  eol: bool = True) -> bytes:
    """formatted_print(): the -F string (already checked by clientargs.check_format) for one message."""
    clock = _Clock()
    out: List[bytes] = []
    n = len(fmt)
    i = 0
    while i < n:
        c = fmt[i]
        if c == "%":
            align, pad, width, precision = "", " ", 0, -1
            if i < n - 1:
                i += 1
                if fmt[i] == "-":
                    align = "-"
                    if i < n - 1:
                        i += 1
                if fmt[i] == "0":
                    pad = "0"
                    if i < n - 1:
                        i += 1
                while i < n - 1 and fmt[i] in "0123456789":
                    width = width * 10 + int(fmt[i])
                    i += 1
                if fmt[i] == ".":
                    if i < n - 1:
                        i += 1
                        precision = 0
                        while i < n - 1 and fmt[i] in "0123456789":
                            precision = precision * 10 + int(fmt[i])
                            i += 1
                out.append(_percent(fmt[i], align, pad, width, precision, topic, payload, qos, retain, mid,
                                    clock))
        elif c == "@":
            if i < n - 1:
                i += 1
                if fmt[i] == "@":
                    out.append(b"@")
                elif fmt[i] == "N":
                    out.append(f"{clock.ns:09d}".encode())
                else:
                    try:
                        out.append(clock.strftime("%" + fmt[i]))
                    except ValueError:
                        pass  # strftime(3) printed nothing for it
        elif c == "\\":
            if i < n - 1:
                i += 1
                out.append(_ESCAPES.get(fmt[i], b""))
        else:
            out.append(c.encode("utf-8", "surrogateescape"))
        i += 1
    if eol:
        out.append(b"\n")
    return b"".join(out)


def render(topic: str, payload: bytes, qos: int, retain: bool, mid: int, verbose: bool = False,
           fmt: Optional[str] = None, eol: bool = True) -> bytes:
    """print_message(): the bytes mosquitto_sub writes for one message."""
    if fmt is not None:
        return render_format(fmt, topic, payload, qos, retain, mid, eol)
    newline = b"\n" if eol else b""
    if verbose:
        if payload:
            return topic.encode("utf-8") + b" " + payload + newline
        return topic.encode("utf-8") + b" (null)\n" if eol else b""
    return payload + newline if payload else b""

