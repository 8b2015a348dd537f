"""The error types edgebroker raises across module boundaries.

The codec raises exactly one error for malformed input, `MalformedPacket`; the broker answers it by
closing that one connection [MQTT-4.8.0-1]. Configuration errors carry the file, line and option.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import List, Optional

__all__ = ["EdgebrokerError", "MalformedPacket", "ConfigError", "ConfigErrors", "StoreError", "ListenError"]


class EdgebrokerError(Exception):
    """Base class of every error edgebroker raises on purpose."""


class MalformedPacket(EdgebrokerError):
    """Bytes that are not a valid MQTT packet; `rule` names the conformance statement broken, if any.
    `packets` holds the valid packets that came before the bad one in the same feed, so that what a
    client sent is handled the same however TCP split it."""

    def __init__(self, message: str, rule: str = "") -> None:
        super().__init__(f"{message} {rule}".rstrip())
        self.rule = rule
        self.packets: list = []


class ConfigError(EdgebrokerError):
    """A bad configuration: names the file, the line and the option."""

    def __init__(self, message: str, file: Optional[str] = None, line: Optional[int] = None,
                 option: Optional[str] = None) -> None:
        where = ""
        if file is not None:
            where = f"{file}:{line}: " if line is not None else f"{file}: "
        opt = f"{option}: " if option else ""
        super().__init__(f"{where}{opt}{message}")
        self.file, self.line, self.option = file, line, option


class ConfigErrors(ConfigError):
    """Several errors of one configuration reported at once (every option refused, in file order):
    `errors` holds them; str() has one per line. file, line and option are the first one's."""

    def __init__(self, errors: List[ConfigError]) -> None:
        EdgebrokerError.__init__(self, "\n".join(str(e) for e in errors))
        self.file, self.line, self.option = errors[0].file, errors[0].line, errors[0].option
        self.errors = list(errors)


class StoreError(EdgebrokerError):
    """The database cannot be used (damaged, in use by another broker, its directory missing...); the
    message names the file and what to do. Raised by the store and the database lock (dblock)."""


class ListenError(EdgebrokerError):
    """A listener could not be opened; the message names its address and port (or Unix socket path).
    `listener` is the config.Listener concerned, for the caller to say where the file set it."""

    def __init__(self, message: str, listener: object = None) -> None:
        super().__init__(message)
        self.listener = listener
