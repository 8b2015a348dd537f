"""Log types (Mosquitto's log_type names) and the logger the loop and core write through.

A log call with a type that is not enabled costs one bit test; per-packet lines are additionally
guarded by the caller (`if broker.debug:`) so the hot path builds no strings when -v is off.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, Optional, TextIO

__all__ = ["ERR", "WARNING", "NOTICE", "INFO", "DEBUG", "SUBSCRIBE", "UNSUBSCRIBE", "ALL", "DEFAULT_TYPES",
           "Logger", "LogFunc"]

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

LogFunc = Callable[[int, str], None]


class Logger:
    """Writes `<unix time>: <message>` lines, like Mosquitto, to one stream (stderr by default)."""

    def __init__(self, types: int = DEFAULT_TYPES, stream: Optional[TextIO] = None, timestamp: bool = True) -> None:
        self.types = types
        self.stream = stream if stream is not None else sys.stderr
        self.timestamp = timestamp

    def enabled(self, level: int) -> bool:
        return bool(self.types & level)

    def __call__(self, level: int, message: str) -> None:
        if not self.types & level:
            return
        line = f"{int(time.time())}: {message}\n" if self.timestamp else message + "\n"
        try:
            self.stream.write(line)
            self.stream.flush()
        except (OSError, ValueError):
            pass  # a closed terminal must not take the broker down


def null_log(level: int, message: str) -> None:
    """A log function that drops everything (embedded use, tests)."""
