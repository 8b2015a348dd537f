"""Log types (Mosquitto's log_type names) and the logger the loop and core write through.

A log call with a type that is not enabled costs one bit test; per-packet lines are additionally
guarded by the caller (`if broker.debug:`) so the hot path builds no strings when -v is off.

While the loop runs it holds its lines (`hold_lines`): they are kept and written to each stream in one
write at the end of the loop turn (`flush`), not one write system call each (stderr, the default
destination, writes through). A connect storm logs two lines per connection, and a write per line was
a tenth of the broker's work per connection. A line waits at most for the end of its turn (the loop
wakes at least every half second); what a SIGKILL takes is what the turn in progress logged. Lines
from other threads are written at once.
"""
from __future__ import annotations

import sys
import time
from _thread import get_ident  # not threading: a plain broker does not load it (tests/test_footprint.py)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterable, List, Optional, TextIO, Tuple

    LogFunc = Callable[[int, str], None]

__all__ = ["ERR", "WARNING", "NOTICE", "INFO", "DEBUG", "SUBSCRIBE", "UNSUBSCRIBE", "ALL", "DEFAULT_TYPES",
           "TYPE_BITS", "TOPIC_SEVERITY", "type_bits", "Logger", "null_log"]

ERR = 0x01
WARNING = 0x02
NOTICE = 0x04
INFO = 0x08
SUBSCRIBE = 0x10
UNSUBSCRIBE = 0x20
DEBUG = 0x40
ALL = 0xFF
#: Mosquitto's default log_type: error, warning, notice, information.
DEFAULT_TYPES = ERR | WARNING | NOTICE | INFO


#: log_type names (Mosquitto's) and their bits.
TYPE_BITS = {"error": ERR, "warning": WARNING, "notice": NOTICE, "information": INFO,
             "subscribe": SUBSCRIBE, "unsubscribe": UNSUBSCRIBE, "debug": DEBUG}
#: $SYS/broker/log/<severity> for the "topic" destination, as Mosquitto names them.
TOPIC_SEVERITY = {ERR: "E", WARNING: "W", NOTICE: "N", INFO: "I", SUBSCRIBE: "M/subscribe",
                  UNSUBSCRIBE: "M/unsubscribe", DEBUG: "D"}
_SYSLOG_PRIORITY = {ERR: 3, WARNING: 4, NOTICE: 5, INFO: 6, SUBSCRIBE: 6, UNSUBSCRIBE: 6, DEBUG: 7}


def type_bits(names: Iterable[str]) -> int:
    bits = 0
    for name in names:
        bits |= TYPE_BITS[name]
    return bits


class Logger:
    """Writes `<timestamp>: <message>` lines, like Mosquitto, to its destinations: streams (stderr by
    default), a file, syslog, and the `topic` destination, whose lines are kept in `topic_lines` for
    the loop to publish at the end of the turn (publishing from inside a log call could re-enter the
    routing that logged)."""

    def __init__(self, types: int = DEFAULT_TYPES, stream: Optional[TextIO] = None, timestamp: bool = True) -> None:
        self.types = types
        self.streams: List[TextIO] = [stream if stream is not None else sys.stderr]
        self.timestamp = timestamp
        self.timestamp_format: Optional[str] = None
        self.syslog = False
        self.topic = False
        self.topic_lines: List[Tuple[int, str]] = []
        self._file: Optional[TextIO] = None
        #: the thread whose lines are held until `flush` (the loop's; see hold_lines), and those lines
        self._holder: Optional[int] = None
        #: (the second, its timestamp) of the last line: lines come in bursts (one tuple, so that the
        #: hash thread's lines never pair a second with another second's text)
        self._stamp = (-1, "")
        self._held: List[str] = []
        #: lines held and not written yet
        self.pending = False

    def configure(self, types: int, dests: Iterable[str], file_path: Optional[str] = None,
                  timestamp: bool = True, timestamp_format: Optional[str] = None,
                  facility: Optional[int] = None) -> None:
        """Apply log_type/log_dest/log_timestamp(_format); used at start-up and on reload. Raises
        OSError when the log file cannot be opened (the caller keeps the old settings then)."""
        self.flush()  # lines held so far go where they were logged for
        dests = tuple(dests)
        new_file = open(file_path, "a", encoding="utf-8") if "file" in dests and file_path else None
        if self._file is not None:
            self._file.close()
        self._file = new_file
        streams: List[TextIO] = []
        if "stdout" in dests:
            streams.append(sys.stdout)
        if "stderr" in dests:
            streams.append(sys.stderr)
        if new_file is not None:
            streams.append(new_file)
        self.streams = streams
        self.syslog = "syslog" in dests
        if self.syslog:
            import syslog
            # log_facility N: localN (LOG_LOCAL0 + N, as Mosquitto); else daemon
            where = syslog.LOG_DAEMON if facility is None else syslog.LOG_LOCAL0 + (facility << 3)
            syslog.openlog("edgebroker", syslog.LOG_PID, where)
        self.topic = "topic" in dests
        self.types = types
        self.timestamp = timestamp
        self.timestamp_format = timestamp_format
        self._stamp = (-1, "")

    def enabled(self, level: int) -> bool:
        return bool(self.types & level)

    def __call__(self, level: int, message: str) -> None:
        if not self.types & level:
            return
        if self.timestamp:
            second = int(time.time())
            stamped = self._stamp
            if stamped[0] != second:
                # whole seconds: time.strftime has no finer field
                stamped = self._stamp = (second, time.strftime(self.timestamp_format, time.localtime(second))
                                         if self.timestamp_format else str(second))
            line = f"{stamped[1]}: {message}\n"  # built once, with its newline (a connect storm logs
        else:                                        # two lines per connection)
            line = message + "\n"
        if self._holder == get_ident():  # (None, when no thread holds its lines, is no thread's ident)
            self._held.append(line)
            self.pending = True
        else:
            self._write(line)
        if self.syslog:
            import syslog
            syslog.syslog(_SYSLOG_PRIORITY.get(level, 6), message)
        if self.topic and len(self.topic_lines) < 10_000:  # bounded if the loop falls behind
            self.topic_lines.append((level, line[:-1]))

    def _write(self, text: str) -> None:
        for stream in self.streams:
            try:
                stream.write(text)
                stream.flush()
            except (OSError, ValueError):
                pass  # a closed terminal or a full disk must not take the broker down

    def hold_lines(self, on: bool) -> None:
        """On: the calling thread's lines are kept until `flush` (the loop calls it once per turn);
        off: written at once again, what was kept first."""
        self.flush()
        self._holder = get_ident() if on else None

    def flush(self) -> None:
        """Write the lines held since the last flush, in one write per stream."""
        if self._held:
            held, self._held = self._held, []
            self._write("".join(held))
        self.pending = False

    def close(self) -> None:
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


def null_log(level: int, message: str) -> None:
    """A log function that drops everything (embedded use, tests)."""
