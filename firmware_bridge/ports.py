"""Serial ports hosted in a broker's event loop: bytes from a UART become publishes, commands go back.

Theory of operation. A `Port` is one `[[serial]]` table. It opens the device with pyserial (which sets
the line speed and raw mode) and puts the file descriptor, non-blocking, in the host's selector
(`host.add_reader`). Each time the loop finds it readable the port reads at most READ_SIZE bytes, so a
flooding board gets one bounded slice per turn like every other client, feeds them to the shared
sans-IO decoder (firmware/lines.py or firmware/frames.py) and publishes what comes out through its
local client of the broker (`client.publish`), so ACLs, retained messages, $SYS and persistence apply
as for a network client. What goes back to the board (acknowledgements, messages on the command
topics) is buffered and written once per turn by `flush`, which the loop calls after the turn's
commit: an ACK for a board's QoS 1 frame never leaves before the message it acknowledges is durable.
A write that does not complete waits for `host.add_writer`.

Unplugging: a USB adapter that disappears makes read return nothing (end of file) or fail (EIO), and
the selector keeps reporting the descriptor readable. Any error of read, write or open (OSError, which
pyserial's SerialException is, or termios.error) closes the port, publishes "offline" on its retained
status topic and schedules a reopen by the same path (a /dev/serial/by-id symlink is followed anew), with
the delay doubling from reopen_delay up to reopen_delay_max. When it opens, "online".

Bad input costs a counter: bad CRC, overlong, garbage, bad topic; each port's counters are published
under $SYS/broker/serial/NAME/ and problems are logged at most once per LOG_INTERVAL per kind.

This module does not import edgebroker: it works against the small host interface (add_reader,
add_writer, remove_reader, remove_writer, add_timer, add_flusher; a client with publish and subscribe),
so another loop can host it.
"""
import errno
import os
import termios
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Optional

from .firmware import frames as F
from .firmware import lines as L

__all__ = ["Port", "DeviceError", "READ_SIZE", "COUNTERS"]

#: Bytes read per readable turn: a 115200-baud UART carries about 11.5 KB/s, so one read takes a
#: third of a second of its output, while a flooding board gets no more of a turn than a socket does.
READ_SIZE = 4096
#: Bytes of output buffered for a board that does not read (a command flood to a port whose board is
#: stuck): beyond it new commands are dropped and counted.
OUT_LIMIT = 64 * 1024
#: Seconds between two log lines about the same kind of bad input on one port.
LOG_INTERVAL = 10.0
#: Message ids of a board's QoS 1 frames remembered, so a resend whose ACK was lost is not published twice.
RECENT_IDS = 16
#: QoS 1 command frames awaiting the board's ACK at once; beyond, the oldest is given up (counted).
MAX_PENDING = 64
#: Sends of one unacknowledged command frame, the first included.
MAX_SENDS = 4

COUNTERS = ("bytes", "lines", "frames", "published", "bad_crc", "overlong", "garbage", "bad_topic",
            "commands", "dropped", "unsendable", "resent", "opened", "lost")
_REASON_COUNTER = {F.BAD_CRC: "bad_crc", F.BAD_OVERLONG: "overlong", F.BAD_GARBAGE: "garbage",
                   F.BAD_TOPIC: "bad_topic"}
_REASON_TEXT = {F.BAD_CRC: "frames with a bad CRC", F.BAD_OVERLONG: "overlong input",
                F.BAD_GARBAGE: "garbage", F.BAD_TOPIC: "invalid topics"}

#: What a port that went away raises: os/pyserial (SerialException is an OSError) and termios.
PORT_ERRORS = (OSError, termios.error)


class DeviceError(Exception):
    """A configured device cannot be used (missing at start with on_missing = "error")."""


class Log:
    """The host's log function with level names; levels maps "error", "warning", "notice", "info",
    "debug" to what `log` takes."""

    def __init__(self, log: Callable[[Any, str], None], levels: Dict[str, Any]) -> None:
        self._log = log
        self.levels = levels

    def __call__(self, level: str, message: str) -> None:
        self._log(self.levels[level], message)


class Port:
    """One serial port in the loop: see the module's docstring. `settings` is an edgebroker.devices
    SerialPort (read by attribute); `host` the loop; `attach(client_id, on_message)` makes the local
    client and `detach(client)` ends it."""

    def __init__(self, settings: Any, host: Any, attach: Callable, detach: Callable, log: Log) -> None:
        self.settings = settings
        self.host = host
        self.log = log
        self._detach = detach
        self.name = settings.label
        self.prefix = settings.prefix
        self.counters: Dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.serial: Any = None
        self.fd = -1
        self.online = False
        self._frame = settings.format == "frame"
        self._decoder: Any = None
        self._out = bytearray()
        self._writing = False
        self._reopen_at = float("inf")
        self._delay = settings.reopen_delay
        self._recent: "OrderedDict[int, None]" = OrderedDict()   # a board's QoS 1 ids already published
        self._pending: "OrderedDict[int, List[Any]]" = OrderedDict()  # id -> [frame, deadline, sends]
        self._next_id = 0
        self._board_filters: List[str] = []
        self._log_next: Dict[str, float] = {}
        self._log_suppressed: Dict[str, int] = {}
        self._stopped = False
        self.client = attach(settings.client, self._on_message, settings.username)
        for topic_filter in settings.command_topics:
            self.client.subscribe(topic_filter, settings.command_qos)

    def __repr__(self) -> str:
        return f"<serial port {self.name} ({self.settings.port})>"

    # ---- opening and losing the device ----------------------------------------------------------

    def start(self, now: float, missing_is_error: bool) -> None:
        """Open the device now; when it cannot be opened, raise DeviceError if `missing_is_error`,
        else report it offline and retry in the background."""
        error = self._open(now)
        if error is None:
            return
        if missing_is_error:
            where = f"{self.settings.where}: " if self.settings.where else ""
            raise DeviceError(f"{where}serial port {self.name}: cannot open {self.settings.port}: {error} "
                              f"(on_missing = \"retry\" starts without it and waits for it)")
        self.log("warning", f"Warning: serial port {self.name}: cannot open {self.settings.port}: {error}; "
                            f"retrying every {self._delay:g} s or more.")
        self._set_status(False)
        self._reopen_at = now + self._delay

    def _open(self, now: float) -> Optional[str]:
        import serial  # pyserial: imported with the first port, never by a broker without one

        s = self.settings
        try:
            port = serial.Serial(s.port, s.baudrate, timeout=0, write_timeout=0, exclusive=True)
        except PORT_ERRORS as exc:
            return _describe(exc)
        try:
            fd = port.fileno()
            os.set_blocking(fd, False)
            try:
                port.reset_input_buffer()  # what piled up while nobody listened is stale
            except PORT_ERRORS:
                pass
        except PORT_ERRORS as exc:
            _close_quietly(port)
            return _describe(exc)
        self.serial = port
        self.fd = fd
        self._decoder = F.FrameDecoder(s.max_length) if self._frame else L.LineDecoder(s.max_length)
        self._delay = s.reopen_delay
        self._reopen_at = float("inf")
        self.counters["opened"] += 1
        self.host.add_reader(fd, self._on_readable)
        self.log("notice", f"Serial port {self.name}: opened {s.port} at {s.baudrate} baud ({s.format}).")
        self._set_status(True)
        return None

    def _lost(self, now: float, reason: str) -> None:
        """The device went away (or failed): close, say offline, retry later."""
        if self.fd < 0:
            return
        self.counters["lost"] += 1
        self.log("warning", f"Warning: serial port {self.name}: {reason}; closing it and retrying "
                            f"in {self._delay:g} s.")
        self._close()
        self._set_status(False)
        self._reopen_at = now + self._delay

    def _close(self) -> None:
        if self.fd >= 0:
            self.host.remove_reader(self.fd)
            if self._writing:
                self.host.remove_writer(self.fd)
                self._writing = False
        if self.serial is not None:
            _close_quietly(self.serial)
        self.serial = None
        self.fd = -1
        self._out = bytearray()
        self._decoder = None
        for topic_filter in self._board_filters:
            self.client.unsubscribe(topic_filter)
        self._board_filters = []
        dropped = len(self._pending)
        self._pending.clear()
        self.counters["dropped"] += dropped

    def _set_status(self, online: bool) -> None:
        self.online = online
        try:
            self.client.publish(self.settings.status, b"online" if online else b"offline", 1, True)
        except ValueError as exc:  # refused by the core (an ACL): the port works without it
            self.log("warning", f"Warning: serial port {self.name}: status not published: {exc}")

    def stop(self) -> None:
        """Close the port, say offline, end the local client."""
        if self._stopped:
            return
        self._stopped = True
        self._close()
        self._set_status(False)
        self._detach(self.client)

    # ---- the loop's calls -----------------------------------------------------------------------

    def timer(self, now: float) -> float:
        """Reopen when due; resend unacknowledged command frames; returns when it next needs a turn."""
        if self._stopped:
            return float("inf")
        if self.fd < 0 and now >= self._reopen_at:
            error = self._open(now)
            if error is not None:
                self._delay = min(self._delay * 2, self.settings.reopen_delay_max)
                self._reopen_at = now + self._delay
                self._log_limited("reopen", now, f"cannot open {self.settings.port}: {error}")
        due = self._reopen_at
        for msg_id, entry in list(self._pending.items()):
            frame, deadline, sends = entry
            if deadline is None:
                entry[1] = deadline = now + self.settings.ack_timeout
            elif now >= deadline:
                if sends >= MAX_SENDS:
                    del self._pending[msg_id]
                    self.counters["dropped"] += 1
                    self._log_limited("unacked", now, f"no ACK for command frame {msg_id} after {sends} sends")
                    continue
                entry[1] = deadline = now + self.settings.ack_timeout
                entry[2] = sends + 1
                self.counters["resent"] += 1
                self._write(frame)
            if deadline < due:
                due = deadline
        return due

    def _on_readable(self, now: float) -> None:
        try:
            data = os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return
        except PORT_ERRORS as exc:
            self._lost(now, f"read failed: {_describe(exc)}")
            return
        if not data:
            # A hung-up tty (adapter unplugged) reads as end of file, and stays readable.
            self._lost(now, "device gone (end of file)")
            return
        self.counters["bytes"] += len(data)
        events = self._decoder.feed(data)
        if self._frame:
            for event in events:
                self._on_frame(event, now)
        else:
            fmt = self.settings.format
            for event in events:
                if event.__class__ is bytes:
                    self.counters["lines"] += 1
                    event = L.parse(fmt, event)
                    if event.__class__ is list:
                        for topic, payload in event:
                            self._publish(topic, payload, self.settings.qos, self.settings.retain, now)
                        continue
                self._bad(event, now)

    def flush(self, now: float) -> None:
        """Write what the turn produced (after its commit)."""
        if not self._out or self.fd < 0 or self._writing:
            return
        self._send(now)

    def _on_writable(self, now: float) -> None:
        self._send(now)

    def _send(self, now: float) -> None:
        try:
            sent = os.write(self.fd, self._out)
        except BlockingIOError:
            sent = 0
        except PORT_ERRORS as exc:
            self._lost(now, f"write failed: {_describe(exc)}")
            return
        self._out = self._out[sent:]
        if self._out and not self._writing:
            self._writing = True
            self.host.add_writer(self.fd, self._on_writable)
        elif not self._out and self._writing:
            self._writing = False
            self.host.remove_writer(self.fd)

    def _write(self, data: bytes) -> bool:
        if self.fd < 0 or len(self._out) + len(data) > OUT_LIMIT:
            self.counters["dropped"] += 1
            return False
        self._out += data
        return True

    # ---- board to broker ------------------------------------------------------------------------

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool, now: float) -> bool:
        full = self.prefix + topic if topic else self.prefix.rstrip("/")
        try:
            self.client.publish(full, payload, qos, retain)
        except ValueError as exc:
            self.counters["bad_topic"] += 1
            self._log_limited(F.BAD_TOPIC, now, str(exc))
            return False
        self.counters["published"] += 1
        return True

    def _on_frame(self, event: Any, now: float) -> None:
        if event.__class__ is not F.Frame:
            self._bad(event, now)
            return
        self.counters["frames"] += 1
        kind = event.kind
        if kind == F.PUBLISH:
            s = self.settings
            qos = event.qos or s.qos
            retain = event.retain or s.retain
            if event.qos:
                msg_id = event.msg_id
                if msg_id in self._recent:  # a resend whose ACK was lost: acknowledge, do not publish again
                    self._write(F.encode_ack(msg_id))
                    return
                ok = self._publish(event.topic, event.payload, qos, retain, now)
                self._recent[msg_id] = None
                if len(self._recent) > RECENT_IDS:
                    self._recent.popitem(last=False)
                self._write(F.encode_ack(msg_id, F.ACK_OK if ok else F.ACK_REFUSED))
            else:
                self._publish(event.topic, event.payload, qos, retain, now)
        elif kind == F.ACK:
            self._pending.pop(event.msg_id, None)
        elif kind == F.PING:
            self._write(F.encode_ack(event.msg_id))
        elif kind == F.SUBSCRIBE:
            topic_filter = self.prefix + event.topic
            try:
                granted = self.client.subscribe(topic_filter, min(event.qos, 1))
            except ValueError:
                granted = F.ACK_REFUSED
            if granted != F.ACK_REFUSED and topic_filter not in self._board_filters:
                self._board_filters.append(topic_filter)
            self._write(F.encode_ack(event.msg_id, granted))

    def _bad(self, event: Any, now: float) -> None:
        self.counters[_REASON_COUNTER[event.reason]] += 1
        self._log_limited(event.reason, now, event.detail)

    def _log_limited(self, kind: str, now: float, detail: str) -> None:
        if now < self._log_next.get(kind, 0.0):
            self._log_suppressed[kind] = self._log_suppressed.get(kind, 0) + 1
            return
        self._log_next[kind] = now + LOG_INTERVAL
        more = self._log_suppressed.pop(kind, 0)
        what = _REASON_TEXT.get(kind, kind)
        tail = f" ({more} more since the last report)" if more else ""
        self.log("warning", f"Warning: serial port {self.name}: {what}: {detail}{tail}.")

    # ---- broker to board ------------------------------------------------------------------------

    def _on_message(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """A message on a command topic (or a filter the board subscribed to), from the core."""
        self.counters["commands"] += 1
        if self.fd < 0:
            self.counters["dropped"] += 1
            return
        rel = topic[len(self.prefix):] if self.prefix and topic.startswith(self.prefix) else topic
        if not self._frame:
            line = L.encode_line(rel, payload)
            if line is None:
                self.counters["unsendable"] += 1
                return
            self._write(line)
            return
        raw_topic = rel.encode("utf-8")
        if len(raw_topic) > 255 or len(raw_topic) + len(payload) + 8 > self.settings.max_length:
            self.counters["unsendable"] += 1
            return
        if qos:
            self._next_id = self._next_id % 0xFFFF + 1
            msg_id = self._next_id
            frame = F.encode(F.PUBLISH, msg_id, rel, payload, 1, retain)
            if self._write(frame):
                if len(self._pending) >= MAX_PENDING:
                    self._pending.popitem(last=False)
                    self.counters["dropped"] += 1
                # Sent once; the deadline (None here: the clock is the loop's) is set by the timer,
                # which runs later in this same turn.
                self._pending[msg_id] = [frame, None, 1]
        else:
            self._write(F.encode(F.PUBLISH, 0, rel, payload, 0, retain))

    # ---- $SYS -----------------------------------------------------------------------------------

    def sys_values(self) -> Dict[str, str]:
        base = f"$SYS/broker/serial/{self.name}/"
        values = {base + name: str(value) for name, value in self.counters.items()}
        values[base + "state"] = "online" if self.online else "offline"
        return values


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    if isinstance(exc, OSError) and exc.errno in errno.errorcode:
        return errno.errorcode[exc.errno]
    return str(exc) or exc.__class__.__name__


def _close_quietly(port: Any) -> None:
    try:
        port.close()
    except PORT_ERRORS:
        pass
