"""What both configuration syntaxes share below the option tables: where an option was set (`Origin`),
the kinds of value, and how each syntax reads a value of a kind, with errors naming file, line and option.

configfile.py (global options, listeners, devices, the builder) and configbridge.py (bridge blocks) read
files with these. The names keep their leading underscore: they are the readers' internals, not an API.
"""
from __future__ import annotations

import re

from .errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, List, NamedTuple, Optional, Protocol, Tuple
else:
    from .record import NamedTuple


class Origin(NamedTuple):
    """Where an option was set: file, line (None when unknown) and the option as the file spells it."""
    file: str
    line: Optional[int]
    option: str


if TYPE_CHECKING:
    class _Warns(Protocol):
        """What the value readers need of the builder: somewhere to put a warning."""

        def warn(self, origin: Origin, message: str) -> None: ...

# Kinds of value. Mosquitto's syntax has one whitespace-free token for numbers and booleans, and the rest
# of the line for strings (paths may contain spaces); TOML has typed values.
_INT, _FLOAT, _BOOL, _STR, _DURATION, _ENUM = "int", "float", "bool", "str", "duration", "enum"


def parse_duration(text: str) -> int:
    """Mosquitto's duration syntax, in seconds: a whole number and one of h d w m y (hour, day, week,
    month = 30 days, year = 365 days), e.g. `2d`. ValueError otherwise, and for 0."""
    m = re.fullmatch(r"(\d+)([hdwmy])", text)
    if not m:
        raise ValueError(text)
    seconds = int(m.group(1)) * {"h": 3600, "d": 86400, "w": 7 * 86400, "m": 30 * 86400, "y": 365 * 86400}[m.group(2)]
    if seconds <= 0:
        raise ValueError(text)
    return seconds


# ---- errors located at an option ----------------------------------------------------------------

def _bare(exc: ConfigError) -> str:
    """The message of a ConfigError without its `option: ` prefix (Config raises without file/line)."""
    text = str(exc)
    prefix = f"{exc.option}: " if exc.option else ""
    return text[len(prefix):] if prefix and text.startswith(prefix) else text


def _relocate(exc: ConfigError, origin: Origin) -> ConfigError:
    return ConfigError(_bare(exc), origin.file, origin.line, origin.option)


def _error(origin: Origin, message: str) -> ConfigError:
    return ConfigError(message, origin.file, origin.line, origin.option)


def _unknown(origin: Origin, known: List[str]) -> ConfigError:
    import difflib  # only for an unknown option: not worth its memory for the broker's whole life

    close = difflib.get_close_matches(origin.option, known, n=1, cutoff=0.7)
    return _error(origin, "unknown option" + (f" (did you mean {close[0]}?)" if close else ""))


# ---- mosquitto.conf values: the rest of an `option value` line ---------------------------------

def _m_token(origin: Origin, rest: str) -> str:
    """The one whitespace-free value of a line. A `# comment` after it is allowed (Mosquitto reads one
    token and ignores the rest); any other extra text is an error (Mosquitto would ignore it silently)."""
    if not rest:
        raise _error(origin, "missing value")
    parts = rest.split(None, 1)
    if len(parts) > 1 and not parts[1].startswith("#"):
        raise _error(origin, f"expected one value, got {rest!r}")
    return parts[0]


def _m_string(origin: Origin, rest: str, builder: _Warns) -> str:
    """The rest of the line, as Mosquitto takes strings (paths may contain spaces)."""
    if not rest:
        raise _error(origin, "missing value")
    if " #" in rest or "\t#" in rest:
        builder.warn(origin, f"the value is {rest!r}: for this option Mosquitto and edgebroker take the "
                             "whole rest of the line, so a trailing comment is part of it")
    return rest


def _m_int(origin: Origin, rest: str) -> int:
    token = _m_token(origin, rest)
    if not re.fullmatch(r"[+-]?\d+", token):
        raise _error(origin, f"expected a whole number, got {token!r}")
    return int(token)


def _m_bool(origin: Origin, rest: str) -> bool:
    token = _m_token(origin, rest)
    if token not in ("true", "false"):
        raise _error(origin, f"expected true or false, got {token!r}")
    return token == "true"


# ---- TOML values and lines ---------------------------------------------------------------------

_TYPE_NAMES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
               dict: "a table"}


def _t_describe(value: Any) -> str:
    return f"{value!r} ({_TYPE_NAMES.get(type(value), type(value).__name__)})"


def _t_value(kind: str, origin: Origin, value: Any, choices: Tuple[str, ...] = ()) -> Any:
    """A TOML value of `kind`; an _ENUM must be one of `choices`."""
    if kind == _INT:
        if type(value) is not int:
            raise _error(origin, f"expected an integer, got {_t_describe(value)}")
        return value
    if kind == _FLOAT:
        if type(value) not in (int, float):
            raise _error(origin, f"expected a number of seconds, got {_t_describe(value)}")
        return float(value)
    if kind == _BOOL:
        if type(value) is not bool:
            raise _error(origin, f"expected true or false, got {_t_describe(value)}")
        return value
    if kind == _DURATION:
        if type(value) in (int, float):
            return float(value)
        if type(value) is str:
            try:
                return float(parse_duration(value))
            except ValueError:
                pass
        raise _error(origin, "expected seconds or a duration such as \"2d\" (h d w m y: hour, day, week, "
                             f"month, year), got {_t_describe(value)}")
    if type(value) is not str:
        raise _error(origin, f"expected a string, got {_t_describe(value)}")
    if kind == _ENUM and value not in choices:
        raise _error(origin, f"expected one of {', '.join(choices)}, got {value!r}")
    return value


def _t_strings(origin: Origin, value: Any) -> List[str]:
    """A string or an array of strings."""
    items = value if isinstance(value, list) else [value]
    if not items or not all(type(v) is str for v in items):
        raise _error(origin, f"expected a string or an array of strings, got {_t_describe(value)}")
    return list(items)


class _TomlLines:
    """Finds the line of a key by a plain text search (tomllib does not report positions): top-level
    keys live before the first table header, a table's keys between its header and the next."""

    _HEADER = re.compile(r"\s*\[")

    def __init__(self, text: str) -> None:
        self.lines = text.split("\n")

    @staticmethod
    def _key_re(key: str) -> "re.Pattern[str]":
        k = re.escape(key)
        return re.compile(rf"\s*(?:{k}|\"{k}\"|'{k}')\s*[=.]")

    def top(self, key: str) -> Optional[int]:
        """The line of a top-level `key = ...`, else of a `[key]` or `[[key]]` header."""
        pattern = self._key_re(key)
        for number, line in enumerate(self.lines, 1):
            if self._HEADER.match(line):
                break
            if pattern.match(line):
                return number
        header = re.compile(rf"\s*\[\[?\s*(?:{re.escape(key)}|\"{re.escape(key)}\")\s*[].]")
        for number, line in enumerate(self.lines, 1):
            if header.match(line):
                return number
        return None

    def header(self, table: str, index: int) -> Optional[int]:
        pattern = re.compile(rf"\s*\[\[\s*{re.escape(table)}\s*\]\]")
        seen = -1
        for number, line in enumerate(self.lines, 1):
            if pattern.match(line):
                seen += 1
                if seen == index:
                    return number
        return None

    def in_table(self, table: str, index: int, key: str) -> Optional[int]:
        start = self.header(table, index)
        if start is None:
            return None
        pattern = self._key_re(key)
        for number in range(start + 1, len(self.lines) + 1):
            line = self.lines[number - 1]
            if self._HEADER.match(line):
                return None
            if pattern.match(line):
                return number
        return None
